"""The scenario check: every id in clients/scenarios.txt must have a passing
test marked ``@pytest.mark.scenario("<id>")``, or the full run fails.

The check runs only when the whole suite was selected (no -k, -m,
--deselect, --lf, and no narrower path than the test directory), since a
filtered run leaves scenarios out on purpose. A marker naming an id that is
not in the file is a usage error. $RESILIENCE_SCENARIOS overrides the file
(the check's own tests use it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Set

import pytest

DEFAULT_FILE = Path(__file__).resolve().parents[2] / "scenarios.txt"
MARKER = "scenario"


def read_ids(path: Path) -> List[str]:
    ids = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            ids.append(line)
    return ids


class ScenarioCheck:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.path = Path(os.environ.get("RESILIENCE_SCENARIOS") or DEFAULT_FILE)
        self.ids = read_ids(self.path)
        self.passed: Set[str] = set()
        self.checked = False
        self.failed_reason = ""

    def pytest_collection_modifyitems(self, items: List[pytest.Item]) -> None:
        known = set(self.ids)
        for item in items:
            for mark in item.iter_markers(MARKER):
                if len(mark.args) != 1 or mark.args[0] not in known:
                    raise pytest.UsageError(
                        f"{item.nodeid}: @pytest.mark.scenario{mark.args!r} does not name one id of {self.path}"
                    )

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):  # type: ignore[no-untyped-def]
        outcome = yield
        report = outcome.get_result()
        if report.when == "call" and report.passed:
            for mark in item.iter_markers(MARKER):
                self.passed.add(mark.args[0])

    def _full_run(self, session: pytest.Session) -> bool:
        opt = self.config.option
        if getattr(opt, "keyword", "") or getattr(opt, "markexpr", "") or getattr(opt, "deselect", None):
            return False
        if getattr(opt, "lf", False) or getattr(opt, "collectonly", False):
            return False
        if self.config.args_source == pytest.Config.ArgsSource.TESTPATHS:
            return True
        tests_dir = Path(__file__).resolve().parent
        return all(Path(self.config.invocation_params.dir, a).resolve() == tests_dir for a in self.config.args)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if not self._full_run(session):
            return
        self.checked = True
        missing = [i for i in self.ids if i not in self.passed]
        if not missing:
            return
        self.failed_reason = (
            f"scenario check: no passing test for {', '.join(missing)} "
            f"(ids of {self.path}; mark a test with @pytest.mark.scenario(\"<id>\"))"
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:  # type: ignore[no-untyped-def]
        if self.failed_reason:
            terminalreporter.section("scenario check", red=True)
            terminalreporter.line(self.failed_reason, red=True)
        elif self.checked:
            terminalreporter.line(f"scenario check: all {len(self.ids)} scenarios of {self.path.name} passed")


def register(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}(id): the test covers this scenario id of clients/scenarios.txt")
    config.pluginmanager.register(ScenarioCheck(config), "resilience-scenario-check")
