#!/usr/bin/env bash
# dist.sh builds the Python client's sdist and wheel with `python -m build`
# (the wheel is built from the unpacked sdist, so the sdist is known to build
# on its own) into <repo>/dist/python/, replacing earlier ones there.
#
# Fails when pyproject.toml's version is not the content of <repo>/VERSION,
# or when an artifact lacks a file users import (the stubs, their .pyi,
# py.typed, the ASGI middleware) or carries one it should not (tests).
#
#   PYTHON   interpreter for clients/python/.venv (default python3, 3.10+)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$root/dist/python"

if [[ ! -f "$root/VERSION" ]]; then
	echo "error: $root/VERSION not found" >&2
	exit 1
fi
want="$(tr -d '[:space:]' <"$root/VERSION")"
have="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$here/pyproject.toml")"
if [[ "$have" != "$want" ]]; then
	echo "error: clients/python/pyproject.toml has version '$have', VERSION has '$want'" >&2
	exit 1
fi

# shellcheck source=scripts/venv.sh
source "$here/scripts/venv.sh"
"$VENV_PY" -m pip install -q "build==1.6.1"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$VENV_PY" -m build --outdir "$tmp" "$here" >"$tmp/build.log" 2>&1 || {
	cat "$tmp/build.log" >&2
	echo "error: python -m build failed" >&2
	exit 1
}
rm -rf "$here/build" "$here"/*.egg-info

sdist="$tmp/resilience_sidecar-$want.tar.gz"
wheel="$tmp/resilience_sidecar-$want-py3-none-any.whl"
for f in "$sdist" "$wheel"; do
	if [[ ! -f "$f" ]]; then
		echo "error: build did not produce $(basename "$f") (got: $(ls "$tmp"))" >&2
		exit 1
	fi
done

"$VENV_PY" - "$sdist" "$wheel" "$want" <<'PY'
import sys, tarfile, zipfile

sdist, wheel, version = sys.argv[1:]
need = ["resilience_sidecar/__init__.py", "resilience_sidecar/py.typed", "resilience_sidecar/asgi.py",
        "resilience_sidecar/aio/__init__.py", "resilience_sidecar/v1/lock_pb2.py",
        "resilience_sidecar/v1/lock_pb2.pyi", "resilience_sidecar/v1/lock_pb2_grpc.py"]
errors = []
names = zipfile.ZipFile(wheel).namelist()
for n in need:
    if n not in names:
        errors.append(f"wheel lacks {n}")
errors += [f"wheel carries {n}" for n in names if n.startswith("tests/")]
meta = zipfile.ZipFile(wheel).read(f"resilience_sidecar-{version}.dist-info/METADATA").decode()
for line in ("Requires-Python: >=3.10", "Requires-Dist: protobuf<8,>=5.26.1", "Provides-Extra: fastapi"):
    if line not in meta:
        errors.append(f"wheel METADATA lacks {line!r}")
prefix = f"resilience_sidecar-{version}/"
snames = tarfile.open(sdist).getnames()
for n in need + ["pyproject.toml", "README.md", "LICENSE"]:
    if prefix + n not in snames:
        errors.append(f"sdist lacks {n}")
pyproject = tarfile.open(sdist).extractfile(prefix + "pyproject.toml").read().decode()
if "../" in pyproject:
    errors.append("sdist's pyproject.toml refers outside the package (../)")
if errors:
    sys.exit("error: " + "; ".join(errors))
PY

mkdir -p "$out"
rm -f "$out"/resilience_sidecar-*
cp "$sdist" "$wheel" "$out"/
echo "built $(cd "$root" && ls dist/python/resilience_sidecar-"$want"*)"
