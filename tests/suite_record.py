"""What a test run costs: wall time, peak memory of the pytest process and of its children, machine load.

Registered by ``tests/conftest.py``; writes only when asked (``pytest --suite-record FILE.json``). The JSON is what
README's figures for the suite's duration and peak memory come from (``benchmarks/results/test_suite.json``), and
its per-test rows show which tests cost the time and the memory. Peak memory is the largest resident set of any one
process (the pytest process, or the largest child it waited for, e.g. a demo or a two-process run): what a machine
must have free to run the suite.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from pathlib import Path


def _status_kib(field: str) -> int:
    """``VmRSS``/``VmHWM`` of this process from /proc, in KiB (0 where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children_peak_kib() -> int:
    """The largest resident set of any finished child process, in KiB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


class SuiteRecord:
    """Pytest plugin: one row per test (duration, resident memory after it, peaks so far), summary at the end."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] = []
        self.start = time.time()
        self.load_start = os.getloadavg()
        self._test_start: dict[str, float] = {}
        self.outcomes: dict[str, int] = {}

    def pytest_runtest_logstart(self, nodeid, location) -> None:
        self._test_start[nodeid] = time.perf_counter()

    def pytest_runtest_logreport(self, report) -> None:
        if report.when == "call" or (report.when == "setup" and not report.passed):
            self.outcomes[report.outcome] = self.outcomes.get(report.outcome, 0) + 1

    def pytest_runtest_logfinish(self, nodeid, location) -> None:
        began = self._test_start.pop(nodeid, None)
        self.rows.append(
            {
                "test": nodeid,
                "seconds": round(time.perf_counter() - began, 2) if began is not None else None,
                "rss_mib": _status_kib("VmRSS") // 1024,
                "pytest_peak_mib": _status_kib("VmHWM") // 1024,
                "children_peak_mib": _children_peak_kib() // 1024,
            }
        )

    def pytest_sessionfinish(self, session, exitstatus) -> None:
        pytest_peak = _status_kib("VmHWM") // 1024
        children_peak = _children_peak_kib() // 1024
        record = {
            "wall_seconds": round(time.time() - self.start, 1),
            "exit_status": int(exitstatus),
            "outcomes": self.outcomes,
            "peak_memory_mib": max(pytest_peak, children_peak),
            "pytest_peak_mib": pytest_peak,
            "children_peak_mib": children_peak,
            "load_average_start": [round(x, 2) for x in self.load_start],
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
            "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0],
            "machine": platform.machine(),
            "args": session.config.invocation_params.args,
            "tests": self.rows,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        tmp.replace(self.path)
