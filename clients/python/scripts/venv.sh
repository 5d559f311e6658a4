# Sourced by generate.sh and test.sh: makes sure clients/python/.venv exists,
# built from a Python 3.10 or newer ($PYTHON, else python3), and sets VENV_PY.
# shellcheck shell=bash

venv_dir="$here/.venv"
VENV_PY="$venv_dir/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

if [[ ! -x "$VENV_PY" ]] || ! "$VENV_PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
	base_py="${PYTHON:-python3}"
	if ! command -v "$base_py" >/dev/null 2>&1; then
		echo "error: $base_py not found; install Python 3.10 or newer, or set PYTHON" >&2
		exit 1
	fi
	if ! "$base_py" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
		echo "error: $base_py is $("$base_py" -V 2>&1); Python 3.10 or newer is needed (set PYTHON)" >&2
		exit 1
	fi
	rm -rf "$venv_dir"
	"$base_py" -m venv "$venv_dir"
fi
