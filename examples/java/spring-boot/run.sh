#!/usr/bin/env bash
# Runs the Spring Boot example (src/main/java/example/spring) on http://127.0.0.1:${PORT:-8080}
# against the sidecar at $SIDECAR_ADDR (default 127.0.0.1:50051; start one with `make run`), with
# src/main/resources/application.yaml. The example is compiled by the starter's build
# (clients/java-spring), which this script runs first unless given --no-build; that build needs the
# Java client installed in the same Maven repository (clients/java-spring/test.sh does both).
# Extra arguments go to the application (e.g. --server.port=9090).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
starter="$root/clients/java-spring"
if [[ "${1:-}" == "--no-build" ]]; then
  shift
else
  (cd "$root/clients/java" && mvn -q -B -Dmaven.repo.local="$root/.cache/m2" install -DskipTests -Dmaven.javadoc.skip=true -Dmaven.source.skip=true)
  (cd "$starter" && mvn -q -B -Dmaven.repo.local="$root/.cache/m2" test-compile)
fi
cp="$starter/target/classes:$starter/target/test-classes:$(cat "$starter/target/test-classpath.txt")"
exec java -cp "$cp" example.spring.ShopApplication \
  "--spring.config.additional-location=file:$here/src/main/resources/" "$@"
