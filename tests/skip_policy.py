"""A skipped test is a check that did not run, so the suite fails on any skip that is not on an explicit allow-list.

Registered by ``tests/conftest.py``. Each allowed skip names the test and the reason it may skip for; anything else
that skips (a missing package, tool or library, a module-level ``importorskip``) makes the run exit non-zero, and
the summary at the end lists every skip with its reason. Deselection (``-m "not slow"``) is not a skip.
"""

from __future__ import annotations

import dataclasses
import re

import pytest

# test id (parametrisation stripped) → a regular expression the skip reason must match, and why it may skip.
ALLOWED_SKIPS: dict[str, tuple[str, str]] = {
    "tests/test_distill.py::test_full_disk_keeps_previous_checkpoint": (
        r"tmpfs",
        "mounting a 512 KiB tmpfs needs root and a kernel/container that permits mounts; CI runs as root, but some "
        "container runtimes forbid mount(2) even to root",
    ),
}


@dataclasses.dataclass(frozen=True)
class Skip:
    nodeid: str
    reason: str
    allowed_because: str | None  # None: not on the allow-list


def skip_reason(report) -> str:
    """The reason text of a skipped test or collection report."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2])
    else:
        reason = str(longrepr)
    return reason.removeprefix("Skipped: ")


def classify(nodeid: str, reason: str, allowed: dict[str, tuple[str, str]]) -> Skip:
    base = nodeid.split("[", 1)[0]
    rule = allowed.get(base)
    ok = rule is not None and re.search(rule[0], reason) is not None
    return Skip(nodeid, reason, rule[1] if ok else None)


class SkipPolicy:
    """Pytest plugin: records skips, prints them at the end, and turns an unexplained skip into a failed run."""

    def __init__(self, allowed: dict[str, tuple[str, str]]):
        self.allowed = allowed
        self.skips: list[Skip] = []

    def _record(self, report) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):  # an xfail is reported as skipped, but ran
            self.skips.append(classify(report.nodeid, skip_reason(report), self.allowed))

    def pytest_runtest_logreport(self, report) -> None:
        self._record(report)

    def pytest_collectreport(self, report) -> None:  # a module-level importorskip skips the whole file
        self._record(report)

    def unexplained(self) -> list[Skip]:
        return [s for s in self.skips if s.allowed_because is None]

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session, exitstatus) -> None:
        if self.unexplained() and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.skips:
            return
        bad = self.unexplained()
        terminalreporter.write_sep("=", f"skip policy: {len(self.skips)} skipped, {len(bad)} not allowed")
        for s in self.skips:
            if s.allowed_because is None:
                terminalreporter.write_line(f"NOT ALLOWED {s.nodeid}: {s.reason}", red=True)
            else:
                terminalreporter.write_line(f"allowed     {s.nodeid}: {s.reason} ({s.allowed_because})")
        if bad:
            terminalreporter.write_line(
                "A skipped test is a check that did not run: install what it needs, or add it to ALLOWED_SKIPS in "
                "tests/skip_policy.py with the reason it cannot run on some machines.",
                red=True,
            )
