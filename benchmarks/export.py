"""Export benchmark: tiny.en → hf, openai, ggml, ggml-q8_0 with verification, timed by stage; with ``--quant``,
tiny.en's whisper.cpp files of every type (f16, q8_0, q5_1, q5_0, q4_1, q4_0): size, write time and WER on the
bundled held-out speech; with ``--ct2``, the same for tiny.en's faster-whisper directories (float32, float16, int8).

    python benchmarks/export.py [--output_dir DIR] [--threads 1] [--quant | --ct2]

Runs what ``python -m distil_whisper_jax.export`` runs (default formats), with a timer around each stage, and the
CPU time of this process and of the runtime subprocesses (the machine may be shared, so CPU seconds are the stable
figure; the peer is the runtimes' own work, measured in the same run). Prints a table and writes
``benchmarks/results/export.json`` (atomically). ``--quant`` writes ``benchmarks/results/export_quant.json``
instead: each whisper.cpp file transcribes all 48 held-out sentences of the bundled speech corpus, joined into
≤ 28 s windows (whisper.cpp pads each clip to 30 s), and its WER is compared with the f16 file's. ``--ct2`` writes
``benchmarks/results/export_ct2.json``: the same measurement in faster-whisper, compared with the float32 directory.
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

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from distil_whisper_jax.assets import bundled_clips  # noqa: E402
from distil_whisper_jax.infra.files import atomic_write  # noqa: E402
from distil_whisper_jax.stages.export import export as ex  # noqa: E402
from distil_whisper_jax.stages.export import verify as export_verify  # noqa: E402
from distil_whisper_jax.weights.loading import load_pretrained  # noqa: E402


def cpu() -> tuple[float, float]:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output_dir", default=None, help="default: a temporary directory")
    p.add_argument("--threads", type=int, default=1, help="threads per runtime subprocess")
    p.add_argument("--json", default=None, help="default: benchmarks/results/export.json (export_quant.json)")
    p.add_argument("--quant", action="store_true", help="whisper.cpp file types on held-out speech instead")
    p.add_argument("--ct2", action="store_true", help="faster-whisper (CTranslate2) types on held-out speech instead")
    args = p.parse_args(argv)
    load_start = list(os.getloadavg())  # before any work: the figure that says whether the machine was idle
    out = Path(args.output_dir or tempfile.mkdtemp(prefix="export-bench-"))
    if args.quant:
        return quant_main(out, args.threads, args.json or str(ROOT / "results" / "export_quant.json"), load_start)
    if args.ct2:
        json_path = args.json or str(ROOT / "results" / "export_ct2.json")
        return quant_main(out, args.threads, json_path, load_start, ex.CT2_FORMATS)
    args.json = args.json or str(ROOT / "results" / "export.json")
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
    for fmt in ex.DEFAULT_FORMATS:
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
        "load_average_at_start": load_start,
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


QUANT_FORMATS = ("ggml", *ex.GGML_QUANT_FORMATS)


def quant_main(
    out: Path, threads: int, json_path: str, load_start: list[float], kinds: tuple[str, ...] = QUANT_FORMATS
) -> int:
    """Every whisper.cpp file type of tiny.en (or every CTranslate2 type): bytes, write time, held-out WER and its
    change against the full-precision file (f16; CTranslate2: float32), which is ``kinds[0]``."""
    from distil_whisper_jax.assets import speech_manifest

    pre = load_pretrained()
    pre.tokenizer  # noqa: B018 (loaded before the timed writes)
    writes, paths = {}, {}
    for fmt in kinds:
        c0, w0 = cpu()[0], time.perf_counter()
        paths.update(ex.export(pre, [fmt], out, overwrite=True))
        writes[fmt] = {"wall_s": time.perf_counter() - w0, "cpu_s": cpu()[0] - c0}
    rows = export_verify.verification_clips(str(speech_manifest("heldout")))
    clips = export_verify.joined_clips(rows, 28, out / "heldout-joined")
    w0 = time.perf_counter()
    (checks,) = export_verify.verify([(pre, paths)], clips, threads=threads)
    verify_s = time.perf_counter() - w0
    f16 = checks[0]
    assert f16.fmt == kinds[0]
    base = {"ggml": "f16", "ct2": "float32"}[kinds[0]]
    formats = {
        c.fmt: {
            "file": paths[c.fmt].name,
            "bytes": ex.size_of(paths[c.fmt]),
            f"vs_{base}_size": ex.size_of(paths[c.fmt]) / ex.size_of(paths[kinds[0]]),
            "write_wall_s": writes[c.fmt]["wall_s"],
            "write_cpu_s": writes[c.fmt]["cpu_s"],
            "wer": c.wer,
            f"wer_vs_{base}": None if c.wer is None or f16.wer is None else c.wer - f16.wer,
            "exact": c.exact,
            "normalized": c.normalized,
            "passed": c.passed,
            "note": c.note,
        }
        for c in checks
    }
    print(f"\n| file | bytes | × {base} | write s | held-out WER % | vs {base} |\n|---|---:|---:|---:|---:|---:|")
    for r in formats.values():
        delta = "–" if r[f"wer_vs_{base}"] is None else f"{r[f'wer_vs_{base}']:+.2f}"
        wer_s = "–" if r["wer"] is None else f"{r['wer']:.2f}"
        size = r[f"vs_{base}_size"]
        print(f"| {r['file']} | {r['bytes']:,} | {size:.2f} | {r['write_wall_s']:.1f} | {wer_s} | {delta} |")
    print("\n" + export_verify.format_table(checks))
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None
    result = {
        "clips": len(rows),
        "windows": len(clips),
        "words": sum(len(t.split()) for _, t in rows),
        "verify_wall_s": verify_s,
        "load_average_at_start": load_start,
        "load_average": load,
        "formats": formats,
        "all_passed": all(c.passed for c in checks[1:]),
    }
    with atomic_write(json_path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nwrote {json_path}; machine load average {load}")
    return 0 if result["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
