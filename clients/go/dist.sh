#!/usr/bin/env bash
# Writes the Go client module (clients/go) at version v$(cat VERSION) into
# dist/go/ in the file layout of a Go module proxy:
#
#   dist/go/github.com/seed-a88e5317/resilience-sidecar/clients/go/@v/
#     list  vX.Y.Z.info  vX.Y.Z.mod  vX.Y.Z.zip
#
# so that GOPROXY=file://$PWD/dist/go,https://proxy.golang.org serves it
# (clients/go/install-test.sh does). The zip is made by golang.org/x/mod/zip
# (clients/go/internal/modzip), which enforces the module zip rules. Fails
# when resilience.Version (clients/go/resilience/version_gen.go, written by
# scripts/version.py) differs from VERSION. Idempotent: the same tree gives the same files (the .info time
# is the last commit's, or SOURCE_DATE_EPOCH).
set -euo pipefail

client_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$client_dir/../.." && pwd)"
module="github.com/seed-a88e5317/resilience-sidecar/clients/go"

version="$(tr -d ' \t\r\n' < "$root/VERSION")"
[[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || { echo "dist.sh: VERSION holds '$version', not X.Y.Z" >&2; exit 1; }
code_version="$(sed -n 's/^const Version = "\(.*\)"$/\1/p' "$client_dir/resilience/version_gen.go")"
if [[ "$code_version" != "$version" ]]; then
	echo "dist.sh: clients/go/resilience/version_gen.go says Version = \"$code_version\" but VERSION says $version: make them agree" >&2
	exit 1
fi

if [[ -n "${SOURCE_DATE_EPOCH:-}" ]]; then
	when="$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
else
	when="$(git -C "$root" log -1 --format=%cd --date=format-local:%Y-%m-%dT%H:%M:%SZ 2>/dev/null || true)"
	if [[ -z "$when" ]]; then
		echo "dist.sh: no git history to date the version: set SOURCE_DATE_EPOCH" >&2
		exit 1
	fi
fi

out="$root/dist/go"
vdir="$out/$module/@v"
rm -f "$vdir/v$version".{zip,mod,info}
mkdir -p "$out"
(cd "$client_dir/internal/modzip" && TZ=UTC go run . -dir "$client_dir" -module "$module" -version "v$version" -time "$when" -out "$out")
ls -l "$vdir"
