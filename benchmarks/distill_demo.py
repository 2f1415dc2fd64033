"""The embedded-default distillation demo, end to end, with wall times, peak RSS and WERs.

    python benchmarks/distill_demo.py [--max_steps 300] [--train_rows N] [--eval_rows N] [--work DIR]

bundled tiny.en teacher → 2-layer student (create_student) → pseudo-labels of the bundled training corpus
(``pseudo_label.main --concatenate_audio``, contract A manifest) → ``run_distillation.py`` with a frozen,
shared, cached encoder → greedy WER on held-out sentences of the untrained student, the trained student
and the teacher. Training runs in a child process so its peak RSS is measured alone (target ≤ 4 GiB).
Prints a table and writes ``benchmarks/results/distill_demo.json`` atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max_steps", type=int, default=300)
    p.add_argument("--train_rows", type=int, default=None, help="label only the first N training clips")
    p.add_argument("--eval_rows", type=int, default=None, help="evaluate on the first N held-out clips")
    p.add_argument("--batch", type=int, default=4, help="per-device train batch (1 CPU device)")
    p.add_argument("--learning_rate", type=float, default=3e-4)
    p.add_argument("--max_label_length", type=int, default=160)
    p.add_argument("--work", default=None, help="working directory (default: a temp dir)")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(a.work or tempfile.mkdtemp(prefix="distill_demo_"))
    from distil_whisper_jax.demo import demo_commands

    cmds = demo_commands(work, a.max_steps, a.train_rows, a.eval_rows, a.batch, a.learning_rate, a.max_label_length)
    times = {}

    from distil_whisper_jax.cli.pseudo_label import main as pseudo_label
    from distil_whisper_jax.create_student import create_student

    t = time.perf_counter()
    create_student(None, work / "student", decoder_layers=2)
    times["create_student_s"] = time.perf_counter() - t
    t = time.perf_counter()
    if pseudo_label(cmds["label"]) != 0:
        raise SystemExit("pseudo-labelling failed")
    times["pseudo_label_s"] = time.perf_counter() - t
    label_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    report = json.loads((work / "labelled" / "report.json").read_text())

    t = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=str(REPO), XLA_FLAGS="--xla_force_host_platform_device_count=1")
    proc = subprocess.run(
        [sys.executable, str(REPO / "run_distillation.py"), *cmds["train"], "--disable_tqdm"], env=env, cwd=REPO
    )
    times["train_s"] = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"training failed ({proc.returncode})")
    train_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    rows = [json.loads(ln) for ln in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    wer_rows = [r for r in rows if any(k.endswith("/wer") for k in r)]
    key = next(k for k in wer_rows[0] if k.endswith("/wer"))
    result = {
        "config": {**vars(a), "work": str(work)},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0]},
        "labelled_rows": report.get("rows_written", report.get("rows")),
        "times": times,
        "peak_rss_gib": {"pseudo_label_and_setup": label_rss, "training": train_rss},
        "wer": {
            "student_untrained": wer_rows[0][key],
            "student_trained": wer_rows[-1][key],
            "teacher": wer_rows[0][key.replace("/wer", "/teacher_wer")],
        },
        "train_steps_per_s": [r["train/steps_per_s"] for r in rows if "train/steps_per_s" in r],
    }
    print(f"{'stage':<22}{'wall s':>10}")
    for k, v in times.items():
        print(f"{k:<22}{v:>10.1f}")
    print(f"peak RSS: labelling {label_rss:.2f} GiB, training {train_rss:.2f} GiB (target ≤ 4)")
    print(
        f"held-out WER: untrained student {result['wer']['student_untrained']:.1f}%, trained "
        f"{result['wer']['student_trained']:.1f}%, teacher {result['wer']['teacher']:.1f}%"
    )
    from distil_whisper_jax.utils import atomic_write

    with atomic_write(REPO / "benchmarks" / "results" / "distill_demo.json", "w") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
