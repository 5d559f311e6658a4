#!/usr/bin/env bash
# build-kube-apiserver.sh builds kube-apiserver from the k8s.io/kubernetes Go
# module at a pinned release, through the module proxy, for the Kubernetes
# end-to-end tests (e2e/k8s). No prebuilt binary can be downloaded here, and
# `go install k8s.io/kubernetes/cmd/kube-apiserver@vX` is refused because
# kubernetes' go.mod has replace directives (its k8s.io/* staging modules point
# into its own tree). So a scratch module requires k8s.io/kubernetes and pins
# every staging module to the matching published v0.x.y; the replace list is
# generated from kubernetes' own go.mod, so a version bump needs no edit.
#
#   scripts/build-kube-apiserver.sh [OUT_DIR]     # default: .bin
#
# Writes OUT_DIR/kube-apiserver-$KUBE_VERSION (and nothing when it already
# exists and answers --version). A copy is kept in $KUBE_BIN_CACHE (default
# ~/.cache/resilience-sidecar), so a fresh clone on the same machine (CI's)
# copies it instead of building: only the first run pays the build (several
# minutes on two cores; Go's build cache makes a rebuild much cheaper too).
# Safe to run any number of times; a build is written under a temporary name
# and renamed, so an interrupted one leaves nothing.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.37.2}"
: "${GOTOOLCHAIN:=go1.27.3}"
export GOTOOLCHAIN
GO="${GO:-go}"

root="$(cd "$(dirname "$0")/.." && pwd)"
out_dir="${1:-$root/.bin}"
mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"
bin="$out_dir/kube-apiserver-$KUBE_VERSION"

if [[ -x "$bin" ]] && "$bin" --version >/dev/null 2>&1; then
	echo "kube-apiserver found: $bin ($("$bin" --version))"
	exit 0
fi
cache_dir="${KUBE_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/resilience-sidecar}"
cached="$cache_dir/kube-apiserver-$KUBE_VERSION"
if [[ -x "$cached" ]] && "$cached" --version 2>/dev/null | grep -qx "Kubernetes $KUBE_VERSION"; then
	cp "$cached" "$bin.tmp" && mv "$bin.tmp" "$bin"
	echo "kube-apiserver copied from $cached: $bin ($("$bin" --version))"
	exit 0
fi

# v1.37.2 -> staging modules v0.37.2.
minor_patch="${KUBE_VERSION#v1.}"
staging_version="v0.$minor_patch"
major=1
minor="${minor_patch%%.*}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "building kube-apiserver $KUBE_VERSION (staging modules $staging_version) into $bin"
gomod="$("$GO" mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
if [[ ! -s "$gomod" ]]; then
	echo "error: could not download k8s.io/kubernetes@$KUBE_VERSION through the module proxy" >&2
	exit 1
fi
go_line="$(grep -m1 '^go ' "$gomod")"

{
	echo "module kube-apiserver-build"
	echo
	echo "$go_line"
	echo
	echo "require k8s.io/kubernetes $KUBE_VERSION"
	echo
	echo "replace ("
	# "k8s.io/api => ./staging/src/k8s.io/api" -> "k8s.io/api => k8s.io/api v0.37.2"
	sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\./staging/src/.*$#\t\1 => \1 '"$staging_version"'#p' "$gomod"
	echo ")"
} >"$work/go.mod"
# godebug settings of kubernetes' go.mod apply to its binaries: keep them.
grep '^godebug ' "$gomod" >>"$work/go.mod" || true

ver_pkgs=(k8s.io/component-base/version k8s.io/client-go/pkg/version)
ldflags="-s -w"
for p in "${ver_pkgs[@]}"; do
	ldflags+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
	ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done

start=$(date +%s)
(
	cd "$work"
	CGO_ENABLED=0 GOFLAGS=-mod=mod "$GO" build -trimpath -ldflags="$ldflags" \
		-o "$bin.tmp" k8s.io/kubernetes/cmd/kube-apiserver
)
mv "$bin.tmp" "$bin"
if mkdir -p "$cache_dir" 2>/dev/null && cp "$bin" "$cached.tmp" 2>/dev/null; then
	mv "$cached.tmp" "$cached"
fi
echo "built $bin in $(($(date +%s) - start)) s: $("$bin" --version)"
