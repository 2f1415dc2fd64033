"""Benchmark: what the persistent compilation cache buys a command that runs again (the warm start).

    python -m benchmarks.warm_start [--rows 24] [--quick]

Each command runs as a user runs it, a fresh process from the shell: once untimed (so that every timed run finds
the Python packages and the model in the OS's file cache), then with an empty cache (cold: compiles and stores
its programs), again with that cache (warm: loads them) and with the cache off (``--no-compilation_cache``).
Commands: ``run_eval.py`` on the bundled held-out sentences (tiny.en, batches of 8 over the local devices) and
``distil-whisper-transcribe`` on the bundled clips. Reported per run: the whole
process's wall seconds (Python start, imports, model loading, compiling, decoding, writing), and from the
command's own log line the model-loading seconds, the compiling seconds (tracing, lowering, and XLA's compile
or the cache's load) and the programs compiled / loaded from the cache. Prints the table and writes
``benchmarks/results/warm_start.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import run_record
from distil_whisper_jax.assets import bundled_clips, speech_manifest
from distil_whisper_jax.infra.files import atomic_write

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "warm_start.json"
_TIMES = re.compile(
    r"loading the model\(s\) ([\d.]+) s, compiling ([\d.]+) s "
    r"\((\d+) programs compiled, (\d+) of them stored; (\d+) loaded from the cache\)"
)
MODES = {"cold": [], "warm": [], "off": ["--no-compilation_cache"]}


def _commands(rows: int, work: Path) -> dict[str, list[str]]:
    """The measured command lines (without the cache flags), by name."""
    manifest = speech_manifest("heldout")
    clips = [str(path) for path, _ in bundled_clips()]
    evaluate = [sys.executable, str(REPO / "run_eval.py"), "--dataset_name", str(manifest)]
    evaluate += ["--max_eval_samples", str(rows), "--per_device_eval_batch_size", "8", "--output_dir"]
    transcribe = [sys.executable, "-m", "distil_whisper_jax.transcribe", *clips, "--batch_size", "8"]
    return {"run_eval.py": [*evaluate, str(work / "eval")], "transcribe": transcribe}


def _run(argv: list[str], env: dict[str, str]) -> dict:
    """One command in a fresh process: its wall seconds and the load/compile figures of its log line."""
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    found = _TIMES.findall(done.stderr)
    if len(found) != 1:
        raise SystemExit(f"{' '.join(argv)}: expected one 'loading ... compiling ...' log line, found {found}")
    load, compile_s, compiled, stored, loaded = found[0]
    return {
        "wall_seconds": round(wall, 2),
        "load_seconds": float(load),
        "compile_seconds": float(compile_s),
        "programs_compiled": int(compiled),
        "programs_stored": int(stored),
        "programs_loaded": int(loaded),
    }


def measure(rows: int, work: Path) -> dict[str, dict[str, dict]]:
    """{command: {off|cold|warm: figures}}; one cache directory per command, empty before its cold run."""
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    out: dict[str, dict[str, dict]] = {}
    for name, argv in _commands(rows, work).items():
        cache = work / f"xla-{len(out)}"
        _run([*argv, "--no-compilation_cache"], env)  # untimed: the files it reads come into the OS's cache first
        out[name] = {}
        for mode, flags in MODES.items():
            out[name][mode] = _run([*argv, "--compilation_cache_dir", str(cache), *flags], env)
            print(f"  {name} {mode}: {out[name][mode]}", file=sys.stderr, flush=True)
    return out


def table(results: dict[str, dict[str, dict]]) -> str:
    lines = [
        "| command | cache | process s | loading s | compiling s | programs compiled / loaded | off / this |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, runs in results.items():
        for mode, r in runs.items():
            ratio = runs["off"]["wall_seconds"] / r["wall_seconds"]
            lines.append(
                f"| {name} | {mode} | {r['wall_seconds']:.1f} | {r['load_seconds']:.1f} | {r['compile_seconds']:.1f} "
                f"| {r['programs_compiled']} / {r['programs_loaded']} | {ratio:.2f}× |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=24, help="held-out sentences run_eval.py scores")
    p.add_argument("--quick", action="store_true", help="4 rows; results are printed, not written")
    p.add_argument("--output", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    load_start = os.getloadavg()[0]
    rows = 4 if a.quick else a.rows
    with tempfile.TemporaryDirectory(prefix="warm-start-") as d:
        results = measure(rows, Path(d))
    print(table(results))
    if a.quick:
        return 0
    record = {**run_record(load_start), "rows": rows, "results": results}
    with atomic_write(a.output, "w") as f:
        json.dump(record, f, indent=2)
    print(f"wrote {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
