"""What a test run costs: wall time, peak memory of the pytest process and of the process tree, machine load.

Registered by ``tests/conftest.py``; writes only when asked (``pytest --suite-record FILE.json``). The JSON is what
README's figures for the suite's duration and peak memory come from (``benchmarks/results/test_suite.json``), and
its per-test rows show which tests cost the time and the memory. ``peak_memory_mib`` is the largest memory the
pytest process and the processes it started held together at any moment (``process_tree``: proportional set
sizes, sampled once a second): what a machine must have free to run the suite. ``pytest_peak_mib`` is the pytest
process's own peak resident set (``VmHWM``).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

from tests.process_tree import TreeSampler


def _status_kib(field: str) -> int:
    """``VmRSS``/``VmHWM`` of this process from /proc, in KiB (0 where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class SuiteRecord:
    """Pytest plugin: one row per test (duration, resident memory after it, peaks so far), summary at the end."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] = []
        self.start = time.time()
        self.load_start = os.getloadavg()
        self._test_start: dict[str, float] = {}
        self.outcomes: dict[str, int] = {}
        self.tree = TreeSampler(os.getpid()).start()

    def pytest_runtest_logstart(self, nodeid, location) -> None:
        self._test_start[nodeid] = time.perf_counter()
        self.tree.new_window()

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
                # the process tree's peak during the test (0 for a test shorter than the 1 s sampling interval)
                "tree_peak_mib": self.tree.new_window() // 1024,
            }
        )

    def pytest_sessionfinish(self, session, exitstatus) -> None:
        self.tree.stop()
        pytest_peak = _status_kib("VmHWM") // 1024
        record = {
            "wall_seconds": round(time.time() - self.start, 1),
            "exit_status": int(exitstatus),
            "outcomes": self.outcomes,
            # sampled once a second, so never below what the pytest process alone is known to have peaked at
            "peak_memory_mib": max(self.tree.peak_kib // 1024, pytest_peak),
            "pytest_peak_mib": pytest_peak,
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
