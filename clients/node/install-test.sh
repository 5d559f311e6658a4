#!/usr/bin/env bash
# Installs the Node package from <repo>/dist/node/ (clients/node/dist.sh,
# `make dist`) into a fresh npm project outside the repository, its
# dependencies from the npm registry, and checks it as a user would:
#   - an ES module program (import) and a CommonJS program (require) take a
#     lock, run idempotent twice, and serve two requests with one
#     Idempotency-Key through the middleware on node:http (the second is
#     replayed), against a real sidecar started here (embedded store);
#   - tsc --noEmit of an ESM and a CommonJS TypeScript file importing every
#     public type of the root and of ./middleware.
#
#   SIDECAR_BIN   the sidecar binary (default <repo>/.bin/sidecar)
#
# Runs from any directory; exits non-zero on any error.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

version=$(tr -d '[:space:]' <"$root/VERSION")
tgz="$root/dist/node/seed-a88e5317-resilience-sidecar-$version.tgz"
[ -f "$tgz" ] || { echo "install-test.sh: $tgz is missing: run clients/node/dist.sh (make dist) first" >&2; exit 1; }
bin=${SIDECAR_BIN:-$root/.bin/sidecar}
[ -x "$bin" ] || { echo "install-test.sh: sidecar binary $bin not found (make build, or set SIDECAR_BIN)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/resilience-node-install.XXXXXX")
sidecar_pid=""
cleanup() {
  if [ -n "$sidecar_pid" ]; then kill "$sidecar_pid" 2>/dev/null || true; wait "$sidecar_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

cd "$work"
npm init -y >/dev/null
# TypeScript and @types/node only for the type check, at the versions the
# client is developed with.
npm install --no-audit --no-fund --loglevel=error "$tgz" typescript@5.9.3 @types/node@20.19.43
cp "$here/scripts/install-test/esm.mjs" "$here/scripts/install-test/cjs.cjs" "$here/scripts/install-test/gen-types.mjs" .

port=$(node -e 'const s = require("node:net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })')
"$bin" --listen "127.0.0.1:$port" --metrics-listen "" --http-listen "" --log-level warn >"$work/sidecar.log" 2>&1 &
sidecar_pid=$!
for i in $(seq 1 150); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
  kill -0 "$sidecar_pid" 2>/dev/null || { cat "$work/sidecar.log" >&2; echo "install-test.sh: the sidecar exited" >&2; exit 1; }
  [ "$i" -lt 150 ] || { echo "install-test.sh: the sidecar did not listen on $port" >&2; exit 1; }
  sleep 0.1 # real time must pass: the sidecar is starting
done

export SIDECAR_ADDR="127.0.0.1:$port"
node esm.mjs
node cjs.cjs
node gen-types.mjs
node_modules/.bin/tsc --noEmit --strict --module nodenext --moduleResolution nodenext --target es2022 --types node check.mts check.cts
echo "install-test.sh: OK: $(basename "$tgz") installed in a fresh project; ESM and CommonJS programs and the type check passed"
