// Package version names the release this sidecar was built from. The
// number is written into version_gen.go from the repository's VERSION file
// by `make generate` (scripts/version.py), which sets the same number on the
// container image, the Helm chart and every client package.
package version
