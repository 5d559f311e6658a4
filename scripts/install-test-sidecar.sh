#!/usr/bin/env bash
# install-test-sidecar.sh installs the sidecar the way a user of the release
# would: unpacks dist/sidecar's linux tarball for this machine into a fresh
# directory outside the repository, checks that the binary says VERSION, and
# runs it on the embedded store until gRPC health answers SERVING (grpcurl from
# .bin, built by make tools). Then it renders the packaged Helm chart from
# dist/helm and checks the images carry the same version.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="$(cat "$root/VERSION")"
helm="${HELM:?HELM must name the helm binary (make helm)}"
grpcurl="${GRPCURL:-$root/.bin/grpcurl}"
case "$(uname -m)" in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) echo "unsupported machine $(uname -m)" >&2; exit 1 ;; esac

work="$(mktemp -d)"
pid=""
cleanup() { [[ -n "$pid" ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

tar -C "$work" -xzf "$root/dist/sidecar/resilience-sidecar_${version}_linux_${arch}.tar.gz"
bin="$work/resilience-sidecar_${version}_linux_${arch}/sidecar"
got="$("$bin" --version)"
[[ "$got" == "sidecar $version" ]] || { echo "install-test-sidecar: --version says '$got', want 'sidecar $version'" >&2; exit 1; }

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$bin" --listen "127.0.0.1:$port" --http-listen "" >"$work/sidecar.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
	if "$grpcurl" -plaintext "127.0.0.1:$port" grpc.health.v1.Health/Check 2>/dev/null | grep -q SERVING; then
		serving=1; break
	fi
	kill -0 "$pid" 2>/dev/null || break
	sleep 0.1 # real time: the process is starting
done
[[ "${serving:-}" == 1 ]] || { cat "$work/sidecar.log" >&2; echo "install-test-sidecar: the unpacked sidecar did not serve" >&2; exit 1; }

chart="$root/dist/helm/resilience-sidecar-$version.tgz"
images="$("$helm" template t "$chart" --kube-version "${KUBE_VERSION:-v1.37.2}" | grep -o 'ghcr.io/seed-a88e5317/resilience-sidecar:[^" ]*' | sort -u)"
[[ "$images" == "ghcr.io/seed-a88e5317/resilience-sidecar:$version" ]] || {
	echo "install-test-sidecar: the chart's images are '$images', want only :$version" >&2; exit 1; }
echo "install-test-sidecar: ok (sidecar $version served; chart $version renders image :$version)"
