"""What both demos share: each stage's typed config (and the command line a user would type for it), running a
stage from its config or its flags, timing it, failing with its directory, and small evaluation subsets that hear
every speaker."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from distil_whisper_jax.infra import config, delimited
from distil_whisper_jax.stages import distill, evaluate, export, label

StageName = Literal["label", "train", "eval", "export"]
# Each stage's run config and run(cfg), by the demo's name for it.
STAGES: dict[str, tuple[type, Callable[[Any], int]]] = {
    "label": (label.PseudoLabelConfig, label.run),
    "train": (distill.DistillConfig, distill.run),
    "eval": (evaluate.EvalConfig, evaluate.run),
    "export": (export.ExportConfig, export.run),
}


def spread_over_speakers(rows: list[dict[str, str]], n: int) -> list[dict[str, str]]:
    """``n`` rows taken round-robin over the speakers (every speaker's first clip, then every speaker's second,
    ...), returned in manifest order: a small evaluation set then hears every speaker, not the first few."""
    by_speaker: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_speaker.setdefault(r["speaker_id"], []).append(i)
    picked: list[int] = []
    depth = 0
    while len(picked) < min(n, len(rows)):
        for idx in by_speaker.values():
            if depth < len(idx) and len(picked) < n:
                picked.append(idx[depth])
        depth += 1
    return [rows[i] for i in sorted(picked)]


def subset_manifest(full: Path, rows: int | None, path: Path) -> Path:
    """``full`` itself when ``rows`` is falsy, else ``rows`` of it spread over every speaker, written to ``path``
    (atomically) with absolute audio paths."""
    if not rows:
        return full
    subset = spread_over_speakers(list(delimited.read_rows(full)), rows)
    for r in subset:
        r["audio"] = str((full.parent / r["audio"]).resolve())
    delimited.write_tsv_rows(path, delimited.read_header(full), subset)
    return path


def run_stage(name: StageName, argv: list[str]) -> int:
    """One stage from its flags, through the stage's own config parser and ``run(cfg)`` (as its CLI does); for
    callers that hold a command line (benchmarks, tests)."""
    cls, run_fn = STAGES[name]
    return run_fn(config.parse(cls, argv, prog=f"demo {name}"))


def commands(configs: dict[str, Any]) -> dict[str, list[str]]:
    """The command line a user would type for each stage's config (``config.to_argv``)."""
    return {name: config.to_argv(cfg) for name, cfg in configs.items()}


def timed(times: dict[str, float], name: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, its wall seconds recorded as ``times[name]``."""
    t = time.perf_counter()
    out = fn(*args)
    times[name] = time.perf_counter() - t
    return out


def check_stage(status: int, name: str, where: Path) -> None:
    """``RuntimeError`` naming the stage and its directory when it did not exit 0 (it has logged why)."""
    if status != 0:
        raise RuntimeError(f"{name} failed; see {where}")
