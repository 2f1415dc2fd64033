"""The memory a process and all its descendants hold at one moment, sampled in the background.

What a machine must have free to run the test suite is the largest sum, at any moment, of the memory of the
pytest process and of every process it started then (a two-process training, a demo, a runtime's verification
subprocess). Neither ``ru_maxrss`` figure says that: a child's own counts the parent's pages it was forked with,
and the children's is only the largest single child. So a thread reads, once a second, the proportional set size
(``Pss`` in ``/proc/PID/smaps_rollup``: shared pages such as jaxlib's code divided among the processes that map
them, so nothing is counted twice) of the process and its descendants, and keeps the largest sum.

Also runnable on its own, to watch a command started elsewhere:
``python -m tests.process_tree PID OUT.json`` samples PID's tree until PID exits and writes the peak.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

PROC = Path("/proc")


def _children_map() -> dict[int, list[int]]:
    """parent pid → child pids, for every process visible in /proc."""
    children: dict[int, list[int]] = {}
    for stat in PROC.glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended while we looked
            continue
        ppid = int(text.rsplit(")", 1)[1].split()[1])  # the name in parentheses may hold spaces
        children.setdefault(ppid, []).append(int(stat.parent.name))
    return children


def _pss_kib(pid: int) -> int:
    try:
        for line in (PROC / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def tree_pss_kib(root: int) -> int:
    """The summed ``Pss`` of ``root`` and all its descendants now, in KiB (0 without /proc)."""
    children, total, todo = _children_map(), 0, [root]
    while todo:
        pid = todo.pop()
        total += _pss_kib(pid)
        todo.extend(children.get(pid, ()))
    return total


class TreeSampler:
    """Samples ``tree_pss_kib(root)`` every ``interval`` seconds in a daemon thread; ``peak_kib`` is the largest
    sum seen since the start, ``window_peak_kib`` since the last ``new_window()``."""

    def __init__(self, root: int, interval: float = 1.0):
        self.root, self.interval = root, interval
        self.peak_kib = self.window_peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="process-tree-sampler", daemon=True)

    def start(self) -> TreeSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            now = tree_pss_kib(self.root)
            self.peak_kib = max(self.peak_kib, now)
            self.window_peak_kib = max(self.window_peak_kib, now)
            self._stop.wait(self.interval)

    def new_window(self) -> int:
        """The window's peak so far (KiB); a new window starts."""
        peak, self.window_peak_kib = self.window_peak_kib, 0
        return peak

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str]) -> int:
    pid, out = int(argv[0]), Path(argv[1])
    sampler, t0 = TreeSampler(pid).start(), time.time()
    while (PROC / str(pid)).exists():
        time.sleep(1.0)
    sampler.stop()
    out.write_text(
        json.dumps({"pid": pid, "seconds": round(time.time() - t0), "peak_pss_mib": sampler.peak_kib // 1024})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
