#!/usr/bin/env bash
# Builds the Java client and runs its tests (and the example in examples/java) against the real
# sidecar on a real redis-server: `mvn -q -B verify`, with the Maven repository cached in
# <repo>/.cache/m2, then prints the Surefire totals.
#
# The first run downloads Maven plugins and dependencies (Maven Central); later runs work offline:
# they try `mvn -o` first and go online only if the cache lacks something.
#
# Needs: Java 17+, Maven 3.8+, redis-server on PATH (scripts/ensure-redis.sh installs it if not),
# and the sidecar binary: $SIDECAR_BIN if set, else <repo>/.bin/sidecar, (re)built here with
# `go build` when Go is available. Extra arguments go to Maven (e.g. -Dtest=IdempotentTest).
# Exits non-zero when anything fails.
set -euo pipefail
export GOTOOLCHAIN=go1.27.3 # go.mod needs go1.27.3 (README, "Two commands")

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$here"

if [[ -z "${SIDECAR_BIN:-}" ]]; then
  if command -v go >/dev/null 2>&1; then
    (cd "$root" && go build -o .bin/sidecar ./cmd/sidecar)
  elif [[ ! -x "$root/.bin/sidecar" ]]; then
    echo "test.sh: no sidecar binary: set SIDECAR_BIN, or install Go to build $root/.bin/sidecar" >&2
    exit 1
  fi
fi
command -v redis-server >/dev/null 2>&1 || "$root/scripts/ensure-redis.sh"

args=(-B -q "-Dmaven.repo.local=$root/.cache/m2" verify "$@")
log=$(mktemp)
trap 'rm -f "$log"' EXIT
rm -rf target/surefire-reports

strip() { sed -u 's/\x1b\[0m//g'; } # Debian's Maven prints colour resets even with -B

# Offline first, quietly: if the cache lacks an artifact, say so in one line and go online.
rc=0
mvn -o "${args[@]}" >"$log" 2>&1 || rc=$?
if [[ $rc -ne 0 ]] && grep -qE 'in offline mode|has not been downloaded from it before' "$log"; then
  echo "test.sh: the Maven cache ($root/.cache/m2) lacks artifacts; resolving them online"
  rm -rf target/surefire-reports
  rc=0
  set +e
  mvn "${args[@]}" 2>&1 | strip
  rc=${PIPESTATUS[0]}
  set -e
else
  strip <"$log"
fi

# -q hides Surefire's summary: print the totals of this run's reports.
if compgen -G 'target/surefire-reports/*.txt' >/dev/null; then
  awk -F'[:,]' '/^Tests run:/ { r += $2; f += $4; e += $6; s += $8 }
    END { printf "Tests run: %d, Failures: %d, Errors: %d, Skipped: %d\n", r, f, e, s }' \
    target/surefire-reports/*.txt
fi
if [[ $rc -eq 0 ]]; then
  echo "test.sh: Java client tests passed"
else
  echo "test.sh: Java client build or tests FAILED (exit $rc)" >&2
fi
exit "$rc"
