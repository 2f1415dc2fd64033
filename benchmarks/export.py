"""Export benchmark: tiny.en → hf, openai, ggml, ggml-q8_0 with verification, timed by stage.

    python benchmarks/export.py [--output_dir DIR] [--threads 1]

Runs what ``python -m distil_whisper_jax.export`` runs, with a timer around each stage, and the CPU time of
this process and of the runtime subprocesses (the machine may be shared, so CPU seconds are the stable figure;
the peer is the runtimes' own work, measured in the same run). Prints a table and writes
``benchmarks/results/export.json`` (atomically).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from distil_whisper_jax import export as ex  # noqa: E402
from distil_whisper_jax import export_verify  # noqa: E402
from distil_whisper_jax.assets import bundled_clips  # noqa: E402
from distil_whisper_jax.models import load_pretrained  # noqa: E402
from distil_whisper_jax.utils import atomic_write  # noqa: E402


def cpu() -> tuple[float, float]:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output_dir", default=None, help="default: a temporary directory")
    p.add_argument("--threads", type=int, default=1, help="threads per runtime subprocess")
    p.add_argument("--json", default=str(ROOT / "results" / "export.json"))
    args = p.parse_args(argv)
    out = Path(args.output_dir or tempfile.mkdtemp(prefix="export-bench-"))
    stages = []

    def stage(name, fn):
        c0, w0 = cpu(), time.perf_counter()
        result = fn()
        c1 = cpu()
        stages.append(
            {
                "stage": name,
                "wall_s": time.perf_counter() - w0,
                "cpu_s": c1[0] - c0[0],
                "subprocess_cpu_s": c1[1] - c0[1],
            }
        )
        return result

    t0 = time.perf_counter()
    pre = stage("load tiny.en (CT2 fp16) + tokenizer", lambda: (lambda p: (p.tokenizer, p)[1])(load_pretrained()))
    paths = {}
    for fmt in ex.FORMATS:
        paths.update(stage(f"write {fmt}", lambda fmt=fmt: ex.export(pre, [fmt], out, overwrite=True)))
    clips = bundled_clips()
    (checks,) = stage(
        "verify (JAX reference + runtime subprocesses)",
        lambda: export_verify.verify([(pre, paths)], clips, threads=args.threads),
    )
    total = time.perf_counter() - t0
    sizes = {fmt: ex.size_of(path) for fmt, path in paths.items()}

    print("\n| stage | wall s | CPU s (this process) | CPU s (subprocesses) |\n|---|---:|---:|---:|")
    for s in stages:
        print(f"| {s['stage']} | {s['wall_s']:.1f} | {s['cpu_s']:.1f} | {s['subprocess_cpu_s']:.1f} |")
    print(
        f"| **total** | **{total:.1f}** | {sum(s['cpu_s'] for s in stages):.1f} | "
        f"{sum(s['subprocess_cpu_s'] for s in stages):.1f} |\n"
    )
    print("| file | bytes |\n|---|---:|")
    for fmt, n in sizes.items():
        print(f"| {paths[fmt].name} | {n:,} |")
    print("\n" + export_verify.format_table(checks))
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None
    result = {
        "total_wall_s": total,
        "stages": stages,
        "sizes_bytes": sizes,
        "clips": len(clips),
        "load_average": load,
        "all_passed": all(c.passed for c in checks),
        "checks": [
            {
                "format": c.fmt,
                "exact": c.exact,
                "normalized": c.normalized,
                "wer": c.wer,
                "passed": c.passed,
                "note": c.note,
            }
            for c in checks
        ],
    }
    with atomic_write(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nwrote {args.json}; machine load average {load}")
    return 0 if result["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
