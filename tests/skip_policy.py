"""A skipped test is a check that did not run, so the suite fails on any skip that is not on an explicit allow-list.

Registered by ``tests/conftest.py``. Each allowed skip names the test and the reason it may skip for (a regular
expression the whole reason must match); anything else that skips (a missing package, tool or library, a
module-level ``importorskip``) makes the run exit non-zero, and the summary at the end lists every skip with its
reason. An expected failure counts the same: an ``xfail`` (marker or ``pytest.xfail()``) is a check whose failure
is ignored, and an ``xpass`` one whose verdict is, so either fails the run unless allowed. Deselection
(``-m "not slow"``) is not a skip.
"""

from __future__ import annotations

import dataclasses
import re

import pytest

# test id (parametrisation stripped) → a regular expression the whole skip reason must match, and why it may skip.
ALLOWED_SKIPS: dict[str, tuple[str, str]] = {
    "tests/test_distill.py::test_full_disk_keeps_previous_checkpoint": (
        # tests/helpers.small_disk's reason with what util-linux's mount says for EPERM as root (and nothing else:
        # not root, a bad option, a missing mount point or program are failures)
        r"ALLOWED-SKIP: the kernel refuses to mount a small tmpfs here \(mount: \S+: permission denied\."
        r"(\s+dmesg\(1\) may have more information after failed mount system call\.)?\)",
        "mounting a 512 KiB tmpfs needs root and a kernel/container that permits mounts; CI runs as root, but some "
        "container runtimes forbid mount(2) even to root (EPERM)",
    ),
}


@dataclasses.dataclass(frozen=True)
class Skip:
    nodeid: str
    reason: str
    allowed_because: str | None  # None: not on the allow-list
    kind: str = "skipped"  # or "xfailed", "xpassed"


def skip_reason(report) -> str:
    """The reason text of a skipped test or collection report."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        reason = str(longrepr[2])
    else:
        reason = str(longrepr)
    return reason.removeprefix("Skipped: ")


def classify(nodeid: str, reason: str, allowed: dict[str, tuple[str, str]], kind: str = "skipped") -> Skip:
    """Allowed only if the test is on the list and its pattern matches the whole reason (a pattern that need only
    occur somewhere would also excuse other causes whose message shares the words)."""
    base = nodeid.split("[", 1)[0]
    rule = allowed.get(base)
    ok = rule is not None and re.fullmatch(rule[0], reason) is not None
    return Skip(nodeid, reason, rule[1] if ok else None, kind)


def not_run_kind(report) -> str | None:
    """ "skipped", "xfailed" (an ``xfail`` marker or ``pytest.xfail()``: reported as skipped, with ``wasxfail``),
    "xpassed" (a non-strict xfail that passed) or None (the check ran and its verdict counts)."""
    if hasattr(report, "wasxfail"):
        return "xfailed" if report.skipped else "xpassed" if report.passed else None
    return "skipped" if report.skipped else None


class SkipPolicy:
    """Pytest plugin: records skips, prints them at the end, and turns an unexplained skip into a failed run."""

    def __init__(self, allowed: dict[str, tuple[str, str]]):
        self.allowed = allowed
        self.skips: list[Skip] = []

    def _record(self, report) -> None:
        kind = not_run_kind(report)
        if kind == "skipped":
            self.skips.append(classify(report.nodeid, skip_reason(report), self.allowed))
        elif kind:
            self.skips.append(classify(report.nodeid, str(report.wasxfail), self.allowed, kind))

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
        terminalreporter.write_sep("=", f"skip policy: {len(self.skips)} skipped or xfail, {len(bad)} not allowed")
        for s in self.skips:
            what = f"{s.nodeid} ({s.kind}): {s.reason}" if s.kind != "skipped" else f"{s.nodeid}: {s.reason}"
            if s.allowed_because is None:
                terminalreporter.write_line(f"NOT ALLOWED {what}", red=True)
            else:
                terminalreporter.write_line(f"allowed     {what} ({s.allowed_because})")
        if bad:
            terminalreporter.write_line(
                "A skipped or xfail test is a check that did not run or whose verdict is ignored: install what it "
                "needs or fix it, or add it to ALLOWED_SKIPS in tests/skip_policy.py with the precise reason it "
                "cannot run on some machines.",
                red=True,
            )
