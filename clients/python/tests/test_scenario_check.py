"""The scenario check (tests/scenarios.py) itself: a full run with a listed
id that no passing test covers fails; a filtered run is not checked; a
marker naming an unlisted id is an error. Each case runs pytest in a
subprocess on a small generated suite that loads the same plugin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CONFTEST = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
import scenarios

def pytest_configure(config):
    scenarios.register(config)
"""

SUITE = """
import pytest

@pytest.mark.scenario("alpha")
def test_alpha():
    pass

@pytest.mark.scenario("beta")
def test_beta():
    assert BETA_PASSES
"""


def run_suite(tmp_path: Path, ids: str, beta_passes: bool = True, *args: str, extra: str = "") -> subprocess.CompletedProcess:
    suite = tmp_path / "suite"
    tests = suite / "tests"
    tests.mkdir(parents=True, exist_ok=True)
    (suite / "pytest.ini").write_text("[pytest]\ntestpaths = tests\n")
    (tests / "conftest.py").write_text(CONFTEST)
    (tests / "test_mini.py").write_text(SUITE.replace("BETA_PASSES", str(beta_passes)) + extra)
    listing = tmp_path / "scenarios.txt"
    listing.write_text(ids)
    env = {**os.environ, "RESILIENCE_SCENARIOS": str(listing)}
    # The plugin's "full run" is relative to its own directory (tests/ here),
    # so the generated suite is judged by its args: none means testpaths.
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
        cwd=suite, env=env, capture_output=True, text=True, timeout=120,
    )


def test_every_listed_id_passing_is_a_pass(tmp_path: Path) -> None:
    out = run_suite(tmp_path, "# comment\nalpha\nbeta\n")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "all 2 scenarios" in out.stdout


def test_a_listed_id_without_a_test_fails_the_full_run(tmp_path: Path) -> None:
    out = run_suite(tmp_path, "alpha\nbeta\ngamma\n")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "2 passed" in out.stdout
    assert "no passing test for gamma" in out.stdout


def test_a_failing_scenario_test_is_named_too(tmp_path: Path) -> None:
    out = run_suite(tmp_path, "alpha\nbeta\n", False)
    assert out.returncode == 1
    assert "no passing test for beta" in out.stdout


def test_a_filtered_run_is_not_checked(tmp_path: Path) -> None:
    out = run_suite(tmp_path, "alpha\nbeta\ngamma\n", True, "-k", "alpha")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "scenario check" not in out.stdout


def test_a_marker_with_an_unlisted_id_is_an_error(tmp_path: Path) -> None:
    extra = '\n@pytest.mark.scenario("typo")\ndef test_typo():\n    pass\n'
    out = run_suite(tmp_path, "alpha\nbeta\n", True, extra=extra)
    assert out.returncode != 0
    assert "typo" in out.stdout + out.stderr
