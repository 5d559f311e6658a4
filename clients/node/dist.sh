#!/usr/bin/env bash
# Builds the npm package of the Node client into <repo>/dist/node/
# (seed-a88e5317-resilience-sidecar-<version>.tgz, as `npm pack` names it)
# and lints it (publint, @arethetypeswrong/cli). Fails when package.json's
# version is not the one in <repo>/VERSION. Prints the tarball's path.
# Runs from any directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
root=$(cd ../.. && pwd)

[ -f "$root/VERSION" ] || { echo "dist.sh: $root/VERSION is missing" >&2; exit 1; }
want=$(tr -d '[:space:]' <"$root/VERSION")
have=$(node -p 'require("./package.json").version')
if [ "$want" != "$have" ]; then
  echo "dist.sh: clients/node/package.json has version $have, but VERSION says $want" >&2
  exit 1
fi

npm ci --no-audit --no-fund --loglevel=error
out="$root/dist/node"
mkdir -p "$out"
tgz="$out/seed-a88e5317-resilience-sidecar-$want.tgz"
rm -f "$tgz"
npm pack --silent --pack-destination "$out" >/dev/null # prepack builds dist/
[ -f "$tgz" ] || { echo "dist.sh: npm pack did not write $tgz" >&2; exit 1; }
node_modules/.bin/publint run "$tgz" --strict >&2
node_modules/.bin/attw "$tgz" >&2
echo "$tgz"
