"""examples/python/seed.py, run as a user would, against the real sidecar."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from harness import REPO_ROOT

SEED = REPO_ROOT / "examples" / "python" / "seed.py"


def run_seed(addr: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SIDECAR_ADDR": addr}
    return subprocess.run([sys.executable, str(SEED), *args], env=env, capture_output=True, text=True, timeout=120)


def test_seed_scenario(sidecar) -> None:
    proc = run_seed(sidecar.addr)
    out = proc.stdout
    assert proc.returncode == 0, f"seed.py failed ({proc.returncode}):\n{out}\n{proc.stderr}"

    payments = [line for line in out.splitlines() if line.startswith("payment: call ")]
    assert len(payments) == 3
    charge_ids = {line.split()[4] for line in payments}
    assert len(charge_ids) == 1, f"every retry must return the same charge: {payments}"
    assert "(ran the charge" in payments[0]
    assert all("stored result, not charged again" in line for line in payments[1:])

    summary = json.loads(next(line for line in out.splitlines() if line.startswith("summary: "))[len("summary: "):])
    assert summary["payment"]["charges"] == 1
    assert summary["payment"]["same_receipt"] is True
    assert summary["stock"]["stock_left"] == 1  # 10 - 4 buyers x 2 - 1
    assert summary["stock"]["stale_refused"] is True
    assert summary["stock"]["release"] == "LEASE_LOST"
    assert summary["events"] == {"announced_once": True, "shipped": 1, "ok": True}
    assert "courier unavailable on delivery 1, nacked" in out
    assert "shipped on delivery 2, acked" in out
    assert summary["ok"] is True
    assert out.rstrip().endswith("seed scenario: OK")


def test_seed_scenario_runs_again_with_fresh_keys(sidecar) -> None:
    """A second run against the same sidecar and Redis charges again, once."""
    proc = run_seed(sidecar.addr)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ledger holds 1 charge(s)" in proc.stdout


def test_seed_reports_a_missing_sidecar(tmp_path) -> None:
    from harness import free_port

    proc = run_seed(f"127.0.0.1:{free_port()}", "--ready-timeout", "1")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "not ready within 1s" in proc.stderr and "Traceback" not in proc.stderr
