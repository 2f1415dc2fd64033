"""The demo (``python -m distil_whisper_jax``) end to end: wall time per stage, held-out WERs, peak RSS.

    python -m benchmarks.distill_demo [--max_steps 100] [--eval_rows 24] [--train_rows N] [--work DIR]

Runs exactly the demo's pipeline (``demo.run_pipeline``: bundled tiny.en teacher → 2-layer student → pseudo-labels
of the bundled training corpus, concatenated per speaker → distillation with the frozen encoder shared and cached →
greedy WER on held-out sentences spread over every speaker → export to four formats, each verified in its runtime),
in this process, from a fresh directory. Prints a table and writes ``benchmarks/results/distill_demo.json``
atomically; README and ``docs/benchmarks.md`` quote it (``tests/test_docs.py`` checks the quotes).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS_DIR, run_record
from distil_whisper_jax.infra.files import atomic_write, setup_logging
from distil_whisper_jax.stages.demo import demo

DEFAULT_OUTPUT = RESULTS_DIR / "distill_demo.json"


def verification_peaks_gib(export_dir: Path) -> dict[str, float]:
    """Peak resident memory of each runtime process of the export's verification (from its
    ``verification.json``, measured inside each process); they run at the same time, ``sum`` adds them up."""
    record = json.loads((export_dir / "verification.json").read_text())
    peaks = {names: mib / 1024 for names, mib in record["process_peak_mib"].items()}
    return peaks | {"sum": sum(peaks.values())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max_steps", type=int, default=100)
    p.add_argument("--train_rows", type=int, default=None, help="label only the first N training clips")
    p.add_argument("--eval_rows", type=int, default=24, help="held-out clips, spread over the speakers (0 = all)")
    p.add_argument("--work", default=None, help="working directory (default: a new temp dir)")
    p.add_argument("--output", default=str(DEFAULT_OUTPUT), help="JSON results file (written atomically)")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    setup_logging()
    work = Path(a.work or tempfile.mkdtemp(prefix="distill_demo_"))
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    r = demo.run_pipeline(work, max_steps=a.max_steps, train_rows=a.train_rows, eval_rows=a.eval_rows or None)
    total = time.perf_counter() - t0
    result = {
        **run_record(load_start),
        "config": {**vars(a), "work": str(work)},
        "labelled_rows": r["labelled"]["rows_written"],
        "times": {f"{'train' if k == 'distill' else k}_s": v for k, v in r["times_s"].items()},
        "total_s": total,
        "wer": r["heldout_wer"],
        "export_status": r["export_status"],
        "peak_rss_gib": {
            "demo_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            # each runtime's own peak, measured inside its process (a forked child's ru_maxrss is the parent's)
            "verification_subprocesses": verification_peaks_gib(work / "export"),
        },
    }
    print(f"{'stage':<22}{'wall s':>10}")
    for k, v in r["times_s"].items():
        print(f"{k:<22}{v:>10.1f}")
    print(f"{'total':<22}{total:>10.1f}")
    rss = result["peak_rss_gib"]
    runtimes = ", ".join(f"{k} {v:.2f}" for k, v in rss["verification_subprocesses"].items())
    print(f"peak RSS: demo process {rss['demo_process']:.2f} GiB; verification processes (GiB): {runtimes}")
    w = result["wer"]
    print(
        f"held-out WER: teacher {w['teacher']:.1f} %, student before training {w['student_untrained']:.1f} %, "
        f"after {w['student_trained']:.1f} %; export verification {'passed' if r['export_status'] == 0 else 'FAILED'}"
    )
    with atomic_write(a.output, "w") as f:
        json.dump(result, f, indent=2)
    return r["export_status"]


if __name__ == "__main__":
    sys.exit(main())
