#!/usr/bin/env bash
# test-image.sh builds the test-only image (Dockerfile.test) from the
# host-built static binaries and checks it as Kubernetes would run it:
# --read-only, --cap-drop ALL, --user 65532. It checks the gRPC health
# service, a lock round trip against a real redis-server, and a clean exit
# (code 0) on SIGTERM, with the classic builder and, when buildx is there,
# with BuildKit. It prints the image's size.
#
#   make test-image      # builds .bin/*-static first
#
# Needs dockerd (Debian's docker.io, installed with apt-get when missing, as
# root) and redis-server. When no engine answers, it starts its own dockerd
# (--bridge=none --iptables=false: containers use the host's network) on a
# private socket and data root, and stops it at exit. Traffic stays on
# loopback.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/.bin"
image="resilience-sidecar:test"
grpcurl="$bin/grpcurl"

for f in "$bin/sidecar-static" "$bin/sidecar-injector-static" "$grpcurl"; do
	[[ -x "$f" ]] || { echo "test-image: $f missing: run make build-static tools" >&2; exit 1; }
done
command -v redis-server >/dev/null || { echo "test-image: redis-server missing: run make redis" >&2; exit 1; }

if ! command -v dockerd >/dev/null 2>&1; then
	if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
		echo "dockerd not found; installing docker.io with apt-get..."
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io
		service docker stop >/dev/null 2>&1 || true
	else
		echo "test-image: dockerd not found; install Docker (Debian: apt-get install docker.io)" >&2
		exit 1
	fi
fi

work="$(mktemp -d)"
pids=()
cleanup() {
	docker rm -f rs-image-test >/dev/null 2>&1 || true
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
		kill "${pids[i]}" 2>/dev/null || true
		for _ in $(seq 100); do kill -0 "${pids[i]}" 2>/dev/null || break; sleep 0.1; done
		kill -9 "${pids[i]}" 2>/dev/null || true
	done
	rm -rf "$work" 2>/dev/null || true
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }

if ! docker info >/dev/null 2>&1; then
	echo "no Docker engine answers: starting dockerd on a private socket"
	export DOCKER_HOST="unix://$work/docker.sock"
	dockerd --host "$DOCKER_HOST" --data-root "$work/docker" --exec-root "$work/exec" --pidfile "$work/docker.pid" \
		--bridge=none --iptables=false --ip-forward=false --ip-masq=false >"$work/dockerd.log" 2>&1 &
	pids+=($!)
	for _ in $(seq 300); do docker info >/dev/null 2>&1 && break; sleep 0.1; done
	docker info >/dev/null 2>&1 || { echo "test-image: dockerd did not start:" >&2; tail -20 "$work/dockerd.log" >&2; exit 1; }
fi

# The build context: the binaries, CA certificates, passwd and group.
ctx="$work/context"
mkdir -p "$ctx/etc/ssl/certs"
cp "$bin/sidecar-static" "$ctx/sidecar"
cp "$bin/sidecar-injector-static" "$ctx/sidecar-injector"
cp /etc/ssl/certs/ca-certificates.crt "$ctx/etc/ssl/certs/"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$ctx/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$ctx/etc/group"

builders=(classic)
if docker buildx version >/dev/null 2>&1; then builders+=(buildkit); fi

redis_port="$(free_port)"
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

for builder in "${builders[@]}"; do
	echo "== $builder builder"
	if [[ "$builder" == classic ]]; then
		DOCKER_BUILDKIT=0 docker build -q -f "$root/Dockerfile.test" -t "$image" "$ctx" >/dev/null
	else
		DOCKER_BUILDKIT=1 docker build -q -f "$root/Dockerfile.test" -t "$image" "$ctx" >/dev/null
	fi
	size="$(docker image inspect -f '{{.Size}}' "$image")"
	echo "image $image: $((size / 1024 / 1024)) MiB ($size bytes)"

	port="$(free_port)"
	docker run -d --name rs-image-test --network host --read-only --cap-drop ALL --user 65532 \
		"$image" --listen "127.0.0.1:$port" --metrics-listen "" --redis-url "redis://127.0.0.1:$redis_port" >/dev/null
	ok=""
	for _ in $(seq 100); do
		if "$grpcurl" -plaintext -max-time 2 "127.0.0.1:$port" grpc.health.v1.Health/Check 2>/dev/null | grep -q '"SERVING"'; then ok=1; break; fi
		sleep 0.1
	done
	[[ -n "$ok" ]] || { echo "test-image: the sidecar never reported SERVING:" >&2; docker logs rs-image-test >&2; exit 1; }
	echo "gRPC health: SERVING"

	acquired="$("$grpcurl" -plaintext -d '{"key":"image-test","ttl":"30s","owner":"test-image"}' "127.0.0.1:$port" resilience.v1.LockService/AcquireLock)"
	lease="$(python3 -c 'import json,sys; r=json.load(sys.stdin); assert r.get("acquired") is True, r; print(r["lease"]["leaseId"])' <<<"$acquired")"
	[[ "$(redis-cli -p "$redis_port" dbsize)" -gt 0 ]] || { echo "test-image: the lock is not in Redis" >&2; exit 1; }
	"$grpcurl" -plaintext -d "{\"key\":\"image-test\",\"lease_id\":\"$lease\"}" "127.0.0.1:$port" resilience.v1.LockService/ReleaseLock >/dev/null
	echo "lock round trip through Redis: acquired and released lease $lease"

	docker stop -t 20 rs-image-test >/dev/null
	code="$(docker inspect -f '{{.State.ExitCode}}' rs-image-test)"
	[[ "$code" == 0 ]] || { echo "test-image: exit code $code after SIGTERM:" >&2; docker logs rs-image-test >&2; exit 1; }
	echo "SIGTERM: exit code 0"
	docker rm rs-image-test >/dev/null
done
echo "test-image: ok (${builders[*]})"
