#!/usr/bin/env bash
# Regenerates the committed TypeScript stubs in clients/node/src/gen/ with buf
# and protoc-gen-es (pinned in package-lock.json), from ../../proto (the
# sidecar's API) and proto/ (the vendored google.rpc error details), as
# buf.gen.yaml says. Deterministic: running it twice changes nothing.
#
#   BUF=/path/to/buf scripts/generate.sh     (default: ../../.bin/buf, from `make tools`)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
buf="${BUF:-$here/../../.bin/buf}"
# A relative BUF path is relative to the caller's directory.
case "$buf" in
  /*) ;;
  */*) buf="$PWD/$buf" ;;
esac
cd "$here"

if [ ! -x node_modules/.bin/protoc-gen-es ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
"$buf" generate --template buf.gen.yaml
