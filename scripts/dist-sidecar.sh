#!/usr/bin/env bash
# dist-sidecar.sh writes the sidecar's own release artifacts into dist/:
#
#   dist/sidecar/resilience-sidecar_<VERSION>_linux_<arch>.tar.gz
#       sidecar and sidecar-injector, static (CGO_ENABLED=0, -trimpath),
#       with the README and LICENSE; amd64 and arm64
#   dist/helm/resilience-sidecar-<VERSION>.tgz   the Helm chart (helm package)
#
# The version is VERSION's; the chart must say the same (scripts/version.py
# check, run first, fails otherwise). Usage: HELM=path scripts/dist-sidecar.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python3 scripts/version.py check
version="$(cat VERSION)"
go="${GO:-go}"
helm="${HELM:?HELM must name the helm binary (make helm)}"

rm -rf dist/sidecar dist/helm
mkdir -p dist/sidecar dist/helm
for arch in amd64 arm64; do
	stage="$(mktemp -d)"
	name="resilience-sidecar_${version}_linux_${arch}"
	mkdir "$stage/$name"
	for cmd in sidecar sidecar-injector; do
		CGO_ENABLED=0 GOOS=linux GOARCH="$arch" "$go" build -trimpath -ldflags='-s -w' \
			-o "$stage/$name/$cmd" "./cmd/$cmd"
	done
	cp README.md LICENSE "$stage/$name/"
	# Reproducible archive: fixed order, owner and times.
	tar -C "$stage" --sort=name --owner=0 --group=0 --numeric-owner \
		--mtime='2000-01-01 00:00:00Z' -czf "dist/sidecar/$name.tar.gz" "$name"
	rm -rf "$stage"
done
"$helm" package deploy/helm/resilience-sidecar --version "$version" --app-version "$version" -d dist/helm >/dev/null
ls -l dist/sidecar dist/helm
