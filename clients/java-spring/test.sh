#!/usr/bin/env bash
# Builds the Spring Boot starter and runs its tests (and the example in examples/java/spring-boot)
# against the real sidecar on a real redis-server: installs the Java client (clients/java, without
# its tests) into the Maven repository <repo>/.cache/m2, then `mvn -q -B verify` here, then prints
# the Surefire totals.
#
# Needs: Java 17+, Maven 3.8+, redis-server on PATH (scripts/ensure-redis.sh installs it if not),
# and the sidecar binary: $SIDECAR_BIN if set, else <repo>/.bin/sidecar, (re)built here with
# `go build` when Go is available. Extra arguments go to Maven (e.g. -Dtest=AnnotationsTest).
# Exits non-zero when anything fails.
set -euo pipefail
export GOTOOLCHAIN=go1.27.3

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

strip() { sed -u 's/\x1b\[0m//g'; } # Debian's Maven prints colour resets even with -B
repo="-Dmaven.repo.local=$root/.cache/m2"

# Offline first; online only when the cache lacks an artifact.
mvn_cached() {
  local log rc=0
  log=$(mktemp)
  mvn -o "$@" >"$log" 2>&1 || rc=$?
  if [[ $rc -ne 0 ]] && grep -qE 'in offline mode|has not been downloaded from it before' "$log"; then
    echo "test.sh: the Maven cache ($root/.cache/m2) lacks artifacts; resolving them online"
    rc=0
    set +e
    mvn "$@" 2>&1 | strip
    rc=${PIPESTATUS[0]}
    set -e
  else
    strip <"$log"
  fi
  rm -f "$log"
  return "$rc"
}

# The starter depends on the client by its coordinates: install this checkout's client first.
(cd "$root/clients/java" && mvn_cached -B -q "$repo" install -DskipTests \
  -Dmaven.javadoc.skip=true -Dmaven.source.skip=true)

rm -rf target/surefire-reports
rc=0
mvn_cached -B -q "$repo" verify "$@" || rc=$?

if compgen -G 'target/surefire-reports/*.txt' >/dev/null; then
  awk -F'[:,]' '/^Tests run:/ { r += $2; f += $4; e += $6; s += $8 }
    END { printf "Tests run: %d, Failures: %d, Errors: %d, Skipped: %d\n", r, f, e, s }' \
    target/surefire-reports/*.txt
fi
if [[ $rc -eq 0 ]]; then
  echo "test.sh: Spring Boot starter tests passed"
else
  echo "test.sh: Spring Boot starter build or tests FAILED (exit $rc)" >&2
fi
exit "$rc"
