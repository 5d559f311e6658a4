#!/usr/bin/env bash
# install-test.sh installs the built wheel (<repo>/dist/python, from
# clients/python/dist.sh) the way a user does, into fresh venvs in a temp dir
# outside the repository (dependencies from PyPI), and runs
# scripts/install_check.py (a lock, an idempotent call, the aio client, the
# ASGI middleware) against a real sidecar it starts on the embedded store.
#
# The venvs (each fails the script on any error):
#   oldest    the oldest supported Python (3.10), dependencies as pip resolves them
#   newest    the newest supported Python (3.13), with the [fastapi] extra:
#             a FastAPI app behind IdempotencyMiddleware
#   floors    Python 3.10 with every dependency at the floor pyproject.toml
#             declares: protobuf 5.26.1, grpcio 1.63.0, grpcio-health-checking
#             1.63.0, googleapis-common-protos 1.63.1
#   pb5       an app pinned to protobuf 5.x (protobuf==5.29.6, the last 5.x)
#   pb6       an app pinned to protobuf 6.x (protobuf==6.33.6, the last 6.x),
#             installing the sdist (built into a wheel by pip, away from the repo)
# Arguments choose a subset (e.g. `install-test.sh oldest pb5`).
#
#   SIDECAR_BIN   sidecar binary (default <repo>/.bin/sidecar)
#   PY_OLDEST     Python 3.10 (default: python3.10 on PATH, else pyenv's 3.10.x)
#   PY_NEWEST     Python 3.13 (default: python3.13 on PATH, else pyenv's 3.13.x)
#   PYTHON        interpreter of the pb5 and pb6 venvs (default python3)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
version="$(tr -d '[:space:]' <"$root/VERSION")"
wheel="$root/dist/python/resilience_sidecar-$version-py3-none-any.whl"
sdist="$root/dist/python/resilience_sidecar-$version.tar.gz"
sidecar="${SIDECAR_BIN:-$root/.bin/sidecar}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

for f in "$wheel" "$sdist"; do
	if [[ ! -f "$f" ]]; then
		echo "error: no $f: run clients/python/dist.sh first" >&2
		exit 1
	fi
done
if [[ ! -x "$sidecar" ]]; then
	echo "error: no sidecar binary at $sidecar (make build, or set SIDECAR_BIN)" >&2
	exit 1
fi

# find_python MINOR OVERRIDE: an interpreter of Python 3.MINOR.
find_python() {
	local minor="$1" override="$2" py
	local candidates=()
	if [[ -n "$override" ]]; then
		candidates=("$override")
	else
		command -v "python3.$minor" >/dev/null 2>&1 && candidates+=("$(command -v "python3.$minor")")
		mapfile -t -O "${#candidates[@]}" candidates < <(ls -d /root/.pyenv/versions/3."$minor".*/bin/python 2>/dev/null | sort -rV)
	fi
	for py in "${candidates[@]}"; do
		if "$py" -c "import sys; sys.exit(sys.version_info[:2] != (3, $minor))" 2>/dev/null; then
			echo "$py"
			return 0
		fi
	done
	echo "error: no Python 3.$minor found (put python3.$minor on PATH or set PY_OLDEST/PY_NEWEST)" >&2
	return 1
}

work="$(mktemp -d "${TMPDIR:-/tmp}/resilience-install-test.XXXXXX")"
sidecar_pid=""
cleanup() {
	if [[ -n "$sidecar_pid" ]]; then
		kill "$sidecar_pid" 2>/dev/null || true
		wait "$sidecar_pid" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

# A sidecar on the embedded store, on a free port.
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
env -u SIDECAR_REDIS_URL "$sidecar" --listen "127.0.0.1:$port" --metrics-listen "" >"$work/sidecar.log" 2>&1 &
sidecar_pid=$!
for _ in $(seq 1 150); do
	if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
		break
	fi
	if ! kill -0 "$sidecar_pid" 2>/dev/null; then
		cat "$work/sidecar.log" >&2
		echo "error: the sidecar exited" >&2
		exit 1
	fi
	sleep 0.1 # real time: the sidecar starts listening
done

# run NAME PYTHON ARTIFACT EXTRA CHECK_ARGS PIN...: a venv in $work/NAME (an
# app project outside the repository) with the artifact and the pins installed.
run() {
	local name="$1" py="$2" artifact="$3" extra="$4" check_args="$5"
	shift 5
	local app="$work/$name"
	mkdir -p "$app"
	echo "== $name: $("$py" -V 2>&1), $(basename "$artifact")${*:+, pins: $*}${extra:+, extra [$extra]}"
	"$py" -m venv "$app/venv"
	cp "$here/scripts/install_check.py" "$app/main.py"
	local spec="$artifact"
	[[ -n "$extra" ]] && spec="$artifact[$extra]"
	(cd "$app" && venv/bin/python -m pip install -q "$spec" "$@") || {
		echo "error: $name: pip install failed" >&2
		return 1
	}
	# The app sees the installed package, never the checkout.
	(cd "$app" && venv/bin/python -c 'import resilience_sidecar, sys; p = resilience_sidecar.__file__; sys.exit(0 if "/site-packages/" in p else "imported from " + p)')
	(cd "$app" && venv/bin/python -W error::UserWarning main.py --addr "127.0.0.1:$port" $check_args) || {
		echo "error: $name: the program failed" >&2
		return 1
	}
}

want=("$@")
[[ ${#want[@]} -eq 0 ]] && want=(oldest newest floors pb5 pb6)
passed=0
for w in "${want[@]}"; do
	case "$w" in
	oldest | floors) py="$(find_python 10 "${PY_OLDEST:-}")" ;;
	newest) py="$(find_python 13 "${PY_NEWEST:-}")" ;;
	*) py="${PYTHON:-python3}" ;;
	esac
	case "$w" in
	oldest) run oldest "$py" "$wheel" "" "" ;;
	newest) run newest "$py" "$wheel" fastapi "--asgi" ;;
	floors) run floors "$py" "$wheel" "" "" \
		protobuf==5.26.1 grpcio==1.63.0 grpcio-health-checking==1.63.0 googleapis-common-protos==1.63.1 ;;
	pb5) run pb5 "$py" "$wheel" "" "" "protobuf==5.29.6" ;;
	pb6) run pb6 "$py" "$sdist" "" "" "protobuf==6.33.6" ;;
	*)
		echo "error: unknown venv '$w' (oldest, newest, floors, pb5, pb6)" >&2
		exit 2
		;;
	esac
	passed=$((passed + 1))
done
echo "install-test: $passed passed, 0 failed"
