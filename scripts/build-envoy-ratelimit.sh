#!/usr/bin/env bash
# Builds envoyproxy/ratelimit's server (its src/service_cmd package) from its
# Go module at the pinned pseudo-version (ENVOY_RATELIMIT_VERSION, from the
# Makefile unless set) through the Go module proxy, into
# .bin/envoy-ratelimit-<version>, once: a later run finds the binary and only
# prints its path. Used by the side-by-side rate-limit benchmark
# (`make bench BENCH_FLAGS='-groups ratelimit'`, docs/performance.md).
#
# The module has no replace directives, so `go install pkg@version` builds it
# with the versions its own go.mod and go.sum pin (checked against the
# checksum database), outside this module's dependency graph.
#
# Prints the binary's absolute path on stdout; everything else goes to stderr.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
version="${ENVOY_RATELIMIT_VERSION:-$(sed -n 's/^ENVOY_RATELIMIT_VERSION *:= *//p' "$root/Makefile")}"
if [ -z "$version" ]; then
	echo "build-envoy-ratelimit: no ENVOY_RATELIMIT_VERSION (set it, or pin it in the Makefile)" >&2
	exit 1
fi
bin="$root/.bin/envoy-ratelimit-$version"
if [ ! -x "$bin" ]; then
	# go.mod of this project needs this toolchain; envoyproxy/ratelimit's
	# (go 1.25) builds with it too. The Makefile exports it already.
	export GOTOOLCHAIN="${GOTOOLCHAIN:-go1.27.3}"
	tmp="$(mktemp -d)"
	trap 'rm -rf "$tmp"' EXIT
	echo "build-envoy-ratelimit: go install github.com/envoyproxy/ratelimit/src/service_cmd@$version (once; about 2 minutes on 2 cores)" >&2
	(cd "$tmp" && GOBIN="$tmp/bin" go install "github.com/envoyproxy/ratelimit/src/service_cmd@$version") >&2
	mkdir -p "$root/.bin"
	# Renamed into place: an interrupted build leaves nothing that looks complete.
	mv "$tmp/bin/service_cmd" "$bin.tmp.$$"
	mv "$bin.tmp.$$" "$bin"
fi
echo "$bin"
