"""Verify exported files in their real runtimes against this project's JAX greedy output.

Each file is loaded by the program its users will run (transformers PyTorch, openai-whisper, whisper.cpp,
faster-whisper), in a subprocess (``export_runtimes``), and transcribes the same clips greedily without
timestamps. The verdicts: the transformers and openai-whisper files must give exactly the JAX text, the
whisper.cpp f16 file the same text after normalisation (it has its own mel front end), and a quantized
whisper.cpp file at most ``MAX_WER_INCREASE`` WER points worse than f16 (q8_0 1, q5_0/q5_1 1.5, q4_0/q4_1 3).
The CTranslate2 float32 directory must give the same text after normalisation in faster-whisper (its own
front end; ``beam_size=1``, ``temperature=0``, no timestamps, no VAD, no previous text) and exactly the JAX
text from ``ctranslate2.models.Whisper.generate`` on our own log-mel features; its float16 and int8
directories at most 1 WER point worse than float32 in faster-whisper, the rule of q8_0.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import soundfile as sf

from distil_whisper_jax.assets import bundled_clips
from distil_whisper_jax.data.sources import manifest_rows, resolve_path
from distil_whisper_jax.decode.transcribe import transcribe
from distil_whisper_jax.speech.audio import SAMPLE_RATE, load_audio
from distil_whisper_jax.speech.wer import english_normalizer, wer
from distil_whisper_jax.stages.export.runtimes import finish_runtime, result_key, start_runtime
from distil_whisper_jax.weights.loading import Pretrained

log = logging.getLogger(__name__)

# WER points a quantized file may lose against its full-precision sibling (BASE), which is verified exactly
MAX_WER_INCREASE = {"ggml-q8_0": 1.0, "ggml-q5_1": 1.5, "ggml-q5_0": 1.5, "ggml-q4_1": 3.0, "ggml-q4_0": 3.0}
MAX_WER_INCREASE |= {f: MAX_WER_INCREASE["ggml-q8_0"] for f in ("ct2-float16", "ct2-int8")}  # q8_0's rule
BASE = {f: f.split("-")[0] for f in MAX_WER_INCREASE}  # ggml-q8_0 → ggml (f16), ct2-int8 → ct2 (float32)
RUNTIME = {"hf": "hf", "openai": "openai"} | {
    f: "whispercpp" if f.startswith("ggml") else "fasterwhisper" for f in ("ggml", "ct2", *MAX_WER_INCREASE)
}
RUNTIME_NAMES = {
    "hf": "transformers (PyTorch)",
    "openai": "openai-whisper",
    "whispercpp": "whisper.cpp",
    "fasterwhisper": "faster-whisper (CTranslate2)",
}
VERIFY_MAX_NEW_TOKENS = 160  # one cap for every runtime, so a looping model stops at the same length everywhere


@dataclasses.dataclass
class Check:
    """One verified file: its runtime's transcripts against our JAX greedy transcripts."""

    fmt: str
    path: Path
    texts: list[str] | None  # None: the runtime failed (see ``error``)
    reference: list[str]  # JAX greedy output on the weights as this file stores them
    wer: float | None = None  # vs the clips' reference transcripts
    exact: int = 0  # clips whose text equals the JAX text exactly
    normalized: int = 0  # … after text normalisation
    loops: int = 0  # … only after also collapsing repeated phrases (a decoding loop ran a different length)
    features: int | None = None  # ct2: clips ctranslate2 transcribes exactly as JAX from our log-mel features
    passed: bool = False
    note: str = ""
    process: str = ""  # the runtime process that ran this file (one per runtime, one per ggml file)
    runtime_peak_mib: float | None = None  # that process's own peak resident memory

    @property
    def runtime(self) -> str:
        return RUNTIME_NAMES[RUNTIME[self.fmt]]


def fp16_rounded(params: Any) -> Any:
    """The params as an fp16 file stores them (fp32 values of the fp16 rounding)."""
    return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32).astype(np.float16).astype(np.float32), params)


def _jax_texts(pre: Pretrained, clips: Sequence[Path], max_new_tokens: int) -> list[str]:
    # One device: the reference is about numerics, and a batch sharded over many (emulated) CPU devices
    # would only cost more.
    results = transcribe(
        clips,
        pre,
        batch_size=len(clips),
        max_new_tokens=max_new_tokens,
        progress=False,
        devices=jax.local_devices()[:1],
    )
    return [r.get("text", "") for r in results]


def _references(pre: Pretrained, clips: Sequence[Path], max_new_tokens: int) -> tuple[list[str], list[str]]:
    """JAX texts on the exact weights and on their fp16 rounding (computed once when they are the same)."""
    exact = _jax_texts(pre, clips, max_new_tokens)
    rounded_params = fp16_rounded(pre.params)
    same = all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree_util.tree_leaves(pre.params), jax.tree_util.tree_leaves(rounded_params))
    )
    rounded = exact if same else _jax_texts(dataclasses.replace(pre, params=rounded_params), clips, max_new_tokens)
    return exact, rounded


def _run_groups(jobs: Sequence[tuple[Pretrained, Mapping[str, Path]]]) -> dict[str, list[tuple[str, str]]]:
    """Runtime processes: the PyTorch runtimes share one (one torch import), the CTranslate2 directories
    another; every ggml file gets its own (a bad one segfaults whisper.cpp, and must not take the other
    results with it). A float32 CTranslate2 directory also runs on our features (``ct2features``)."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for _, outputs in jobs:
        for fmt, path in outputs.items():
            runtime = RUNTIME[fmt]
            key = {"whispercpp": f"ggml:{path}", "fasterwhisper": "ct2"}.get(runtime, "torch")
            groups.setdefault(key, []).append((runtime, str(path)))
            if fmt == "ct2":
                groups[key].append(("ct2features", str(path)))
    return groups


def _check(
    fmt: str, path: Path, got: list[str] | str, ref: list[str], refs: Sequence[str], norm, features=None
) -> Check:
    check = Check(fmt, Path(path), None if isinstance(got, str) else got, ref)
    if isinstance(features, str):  # the ct2features run failed: the check fails with its reason
        got = features
    if isinstance(got, str):
        check.note = got
    else:
        if features is not None:
            check.features = sum(a == b for a, b in zip(features, ref))
        check.wer = wer(refs, got)
        check.exact = sum(a == b for a, b in zip(got, ref))
        check.normalized = sum(norm(a) == norm(b) for a, b in zip(got, ref))
        check.loops = sum(
            norm(a) != norm(b) and collapse_repeats(norm(a).split()) == collapse_repeats(norm(b).split())
            for a, b in zip(got, ref)
        )
    return check


def collapse_repeats(words: list[str], max_n: int = 8) -> list[str]:
    """``words`` with every immediately repeated phrase (up to ``max_n`` words) kept once.

    A model caught in a repetition loop ("the update. the update. the update.") stops after a number of
    repeats that a last-digit difference in fp16 arithmetic can change; collapsing the repeats compares what
    was said, not how long the loop ran.
    """
    out = list(words)
    changed = True
    while changed:
        changed = False
        for n in range(1, max_n + 1):
            i = 0
            while i + 2 * n <= len(out):
                if out[i : i + n] == out[i + n : i + 2 * n]:
                    del out[i + n : i + 2 * n]
                    changed = True
                else:
                    i += 1
    return out


def verify(
    jobs: Sequence[tuple[Pretrained, Mapping[str, Path]]],
    clips: Sequence[tuple[Path, str]],
    threads: int = 1,
    dtype: str = "float32",
    max_new_tokens: int = VERIFY_MAX_NEW_TOKENS,
) -> list[list[Check]]:
    """Verify exported files of one or more models (one list of checks per job). Runtime subprocesses
    start first and run while this process computes the JAX references."""
    paths, refs = [c for c, _ in clips], [t for _, t in clips]
    groups = _run_groups(jobs)
    procs = {key: start_runtime(models, paths, threads, max_new_tokens) for key, models in groups.items()}
    references = [_references(pre, paths, max_new_tokens) for pre, _ in jobs]
    results: dict[str, list[str] | str] = {}
    process: dict[str, tuple[str, float | None]] = {}  # model path → (process, its peak memory)
    for key, proc in procs.items():
        done = finish_runtime(proc)
        for runtime, model in groups[key]:
            k = result_key(runtime, model)
            results[k] = done.transcripts[k] if done.transcripts is not None else done.error
            process[k] = key, done.peak_rss_mib

    norm = english_normalizer()
    report = []
    for (_, outputs), (exact_ref, rounded_ref) in zip(jobs, references):
        checks = [
            _check(
                fmt,
                path,
                results[str(path)],
                exact_ref if (fmt == "hf" and dtype == "float32") or fmt == "ct2" else rounded_ref,
                refs,
                norm,
                results.get(result_key("ct2features", str(path))) if fmt == "ct2" else None,
            )
            for fmt, path in outputs.items()
        ]
        for c in checks:
            c.process, c.runtime_peak_mib = process[str(c.path)]
        _judge(checks, wer(refs, rounded_ref))
        report.append(checks)
    return report


def _judge(checks: list[Check], jax_wer: float) -> None:
    by_fmt = {c.fmt: c for c in checks}
    for c in checks:
        if c.texts is None:
            continue
        n = len(c.texts)
        if c.fmt in ("hf", "openai"):
            c.passed = c.exact == n
            c.note = "identical to JAX" if c.passed else "differs from JAX greedy output"
        elif c.fmt in ("ggml", "ct2"):
            # own mel front ends (and whisper.cpp's fp16): the text must match, except for how often a decoding
            # loop repeats; CTranslate2 on our own features must give the JAX text exactly
            c.passed = c.normalized + c.loops == n and c.features in (None, n)
            c.note = "same text as JAX (normalised)" if c.passed else "text differs from JAX after normalisation"
            if c.passed and c.loops:
                c.note += f"; {c.loops} clip(s) differ only in how many times a repeated phrase loops"
            if c.features is not None:
                c.note += f"; ctranslate2 on our log-mel: {c.features}/{n} identical to JAX"
        else:
            full = by_fmt.get(BASE[c.fmt])
            base = full.wer if full is not None and full.wer is not None else jax_wer
            delta, limit = c.wer - base, MAX_WER_INCREASE[c.fmt]
            c.passed = delta <= limit
            name = {"ggml": "f16", "ct2": "float32"}[BASE[c.fmt]] if full is not None else "JAX"
            c.note = f"WER {delta:+.2f} vs {name} (limit +{limit:g})"


def format_table(checks: Sequence[Check], jax_wer: float | None = None) -> str:
    """Markdown table: runtime, file, transcript match, WER, verdict."""
    lines = ["| runtime | file | same as JAX (exact / normalised) | WER % | result |", "|---|---|---|---:|---|"]
    if jax_wer is not None:
        lines.append(f"| this project (JAX, greedy) | – | – | {jax_wer:.2f} | reference |")
    for c in checks:
        if c.texts is None:
            lines.append(f"| {c.runtime} | {c.path.name} | – | – | **FAIL**: {c.note} |")
            continue
        n = len(c.texts)
        lines.append(
            f"| {c.runtime} | {c.path.name} | {c.exact}/{n} / {c.normalized}/{n} | {c.wer:.2f} | "
            f"{'pass' if c.passed else '**FAIL**'}: {c.note} |"
        )
    return "\n".join(lines)


def differences(checks: Sequence[Check], clips: Sequence[Path]) -> list[str]:
    """Per failed check, each clip whose runtime text differs from the JAX text, both texts shown."""
    out = []
    for c in checks:
        for clip, got, want in zip(clips, c.texts or [], c.reference):
            if got != want and not c.passed:
                out.append(f"{c.fmt} {Path(clip).name}:\n  runtime: {got}\n  JAX:     {want}")
    return out


def verification_clips(manifest: str | None, max_clips: int | None = None) -> list[tuple[Path, str]]:
    """(audio path, reference text) to verify on: the rows of ``manifest`` or the bundled clips, at most
    ``max_clips``. Clips must be ≤ 30 s (verification is short-form greedy)."""
    if max_clips is not None and max_clips < 1:
        raise ValueError(f"--verify_max_clips must be ≥ 1, got {max_clips}")
    if manifest is None:
        return bundled_clips()[:max_clips]
    path = Path(manifest)
    if path.suffix not in (".tsv", ".csv", ".jsonl") or not path.is_file():
        raise ValueError(f"--verify_audio {manifest}: expected an existing .tsv/.csv/.jsonl manifest")
    clips = []
    for n, row in enumerate(manifest_rows(path), 1):
        if "__error__" in row or not row.get("audio") or row.get("text") is None:
            raise ValueError(
                f"--verify_audio {manifest}: row {n} needs 'audio' and 'text' "
                f"({row.get('__error__', 'missing column')})"
            )
        audio = resolve_path(row["audio"], path.resolve().parent)
        if not audio.is_file():
            raise ValueError(f"--verify_audio {manifest}: row {n}: audio file {audio} does not exist")
        clips.append((audio, row["text"]))
        if max_clips is not None and len(clips) == max_clips:
            break
    if not clips:
        raise ValueError(f"--verify_audio {manifest}: manifest has no rows")
    return clips


def clips_within(clips: Sequence[tuple[Path, str]], seconds: float, manifest: str | None) -> list[tuple[Path, str]]:
    """The clips that fit the model's input (verification is short-form). Bundled clips longer than that
    (a 15 s student) are left out with a log line; a ``--verify_audio`` clip that is too long is an error."""
    kept = []
    for path, text in clips:
        length = len(load_audio(path)) / SAMPLE_RATE
        if length <= seconds:
            kept.append((path, text))
        elif manifest is not None:
            raise ValueError(
                f"--verify_audio {manifest}: {path} is {length:.1f} s, longer than the model's {seconds:g} s input"
            )
    if len(kept) < len(clips):
        log.info(
            "verifying on %d of %d bundled clips: the others exceed the model's %g s input",
            len(kept),
            len(clips),
            seconds,
        )
    if not kept:
        raise ValueError(f"no verification clip fits the model's {seconds:g} s input; pass --verify_audio")
    return kept


def joined_clips(
    clips: Sequence[tuple[Path, str]], seconds: float, directory: str | Path, gap: float = 0.5
) -> list[tuple[Path, str]]:
    """Consecutive ``clips`` joined into 16 kHz WAV files of at most ``seconds`` (``gap`` s of silence between
    clips), each with the clips' reference texts joined. whisper.cpp and openai-whisper pad every clip to a 30 s
    window, so many short clips (the held-out corpus: 1.6–6 s) verify several times faster joined."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    silence = np.zeros(int(gap * SAMPLE_RATE), np.float32)
    groups: list[list[tuple[np.ndarray, str]]] = [[]]
    for path, text in clips:
        audio = load_audio(path)
        length = sum(len(a) + len(silence) for a, _ in groups[-1]) + len(audio)
        if groups[-1] and length > seconds * SAMPLE_RATE:
            groups.append([])
        groups[-1].append((audio, text))
    out = []
    for i, group in enumerate(g for g in groups if g):
        audio = np.concatenate([x for a, _ in group for x in (silence, a)][1:])
        path = directory / f"joined_{i:03d}.wav"
        sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
        out.append((path, " ".join(t.strip() for _, t in group)))
    return out
