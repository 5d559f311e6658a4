#!/usr/bin/env bash
# Tests of the Node client: install (npm ci, from package-lock.json), compile
# (tsc), and run the tests (node --test, through test/run.ts). The tests
# start a real redis-server (from PATH) and the real sidecar binary
# themselves, on free loopback ports, and stop them at the end. A full run
# also fails when a scenario of ../scenarios.txt has no passing test.
#
#   SIDECAR_BIN   the sidecar binary (default ../../.bin/sidecar, built here if missing)
#   test.sh [build-test/test/x.test.js ...]   run only those files (no scenario check)
#
# Runs from any directory; exits non-zero when anything fails.
set -euo pipefail
export GOTOOLCHAIN=go1.27.3 # go.mod needs go1.27.3 (README, "Two commands")
cd "$(dirname "${BASH_SOURCE[0]}")"

if [ -z "${SIDECAR_BIN:-}" ] && [ ! -x ../../.bin/sidecar ]; then
  echo "test.sh: building ../../.bin/sidecar" >&2
  (cd ../.. && go build -o .bin/sidecar ./cmd/sidecar)
fi
command -v redis-server >/dev/null || { echo "test.sh: redis-server is not on PATH (scripts/ensure-redis.sh installs it)" >&2; exit 1; }

npm ci --no-audit --no-fund --loglevel=error
rm -rf dist build-test
npm run --silent build
npm run --silent build:test
node build-test/test/run.js "$@"
