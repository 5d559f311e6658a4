#!/usr/bin/env bash
# Runs the Java example (src/example/ExactlyOnceShop.java) against the sidecar at $SIDECAR_ADDR
# (default 127.0.0.1:50051; start one with `make run`). The example is compiled by the Java
# client's build (clients/java), which this script runs first unless given --no-build.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
client="$root/clients/java"
if [[ "${1:-}" != "--no-build" ]]; then
  (cd "$client" && mvn -q -B -Dmaven.repo.local="$root/.cache/m2" test-compile)
fi
cp="$client/target/classes:$client/target/test-classes:$(cat "$client/target/test-classpath.txt")"
exec java -cp "$cp" example.ExactlyOnceShop
