#!/usr/bin/env bash
# test.sh runs the Python client's tests against the real sidecar binary and a
# real redis-server (the tests start both on free loopback ports and stop them).
# Works from any directory; arguments go to pytest (e.g. -k lock -x).
#
#   SIDECAR_BIN   sidecar binary to test (default: <repo>/.bin/sidecar, built
#                 here with `go build` when Go is on PATH so it matches the source)
#   PYTHON        interpreter for the virtualenv (default python3, 3.10+)
#
# Exits non-zero when a test fails or when no test ran.
set -euo pipefail
export GOTOOLCHAIN=go1.27.3 # go.mod needs go1.27.3 (README, "Two commands")

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

# shellcheck source=scripts/venv.sh
source "$here/scripts/venv.sh"

# Install the package (editable) with its test extra when pyproject.toml
# changed since the last install.
stamp="$venv_dir/.installed"
want="$(sha256sum <"$here/pyproject.toml" | cut -d" " -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
	(cd "$here" && "$VENV_PY" -m pip install -q -e ".[test]")
	echo "$want" >"$stamp"
fi

if [[ -z "${SIDECAR_BIN:-}" ]]; then
	if command -v go >/dev/null 2>&1; then
		(cd "$root" && go build -o .bin/sidecar ./cmd/sidecar)
	fi
	export SIDECAR_BIN="$root/.bin/sidecar"
fi
if [[ ! -x "$SIDECAR_BIN" ]]; then
	echo "error: no sidecar binary at $SIDECAR_BIN (build it: cd $root && go build -o .bin/sidecar ./cmd/sidecar)" >&2
	exit 1
fi
if ! command -v redis-server >/dev/null 2>&1; then
	"$root/scripts/ensure-redis.sh"
fi

cd "$here"
set +e
"$VENV_PY" -m pytest -p no:cacheprovider "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
	echo "error: pytest collected no tests" >&2
	exit 1
fi
exit $rc
