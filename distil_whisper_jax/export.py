"""Export a checkpoint to 🤗 transformers, openai-whisper and whisper.cpp, and verify each in its runtime.

    python -m distil_whisper_jax.export --model PATH_OR_HUB_ID --formats hf,openai,ggml,ggml-q8_0 \\
        --output_dir E [--dtype float16|float32] [--no-verify] [--overwrite]

Writes ``E/hf/`` (transformers directory with a model card), ``E/original-model.bin`` (openai-whisper,
fp16), ``E/ggml-model.bin`` (whisper.cpp f16) and ``E/ggml-model-q8_0.bin``. Without ``--model`` it
exports the bundled tiny.en. Architecture constraints of every requested format are checked, and
existing outputs refused (unless ``--overwrite``), before anything is written; each output is written to a
temp name and renamed. ``--verify`` (default) transcribes the bundled clips with every exported file in
its real runtime, each in a subprocess, and compares with this project's JAX greedy output: hf/openai must
match it exactly, whisper.cpp f16 after text normalisation, q8_0 within 1 WER point of f16. Exit status 1
if a check fails, 2 on bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .models import Pretrained, load_pretrained
from .convert import ggml as ggml_format
from .convert import hf as hf_format
from .convert import openai as openai_format
from .utils import setup_logging

log = logging.getLogger(__name__)

FORMATS = ("hf", "openai", "ggml", "ggml-q8_0")
OUTPUT_NAMES = {
    "hf": "hf",
    "openai": "original-model.bin",
    "ggml": "ggml-model.bin",
    "ggml-q8_0": "ggml-model-q8_0.bin",
}
RUNTIME = {"hf": "hf", "openai": "openai", "ggml": "whispercpp", "ggml-q8_0": "whispercpp"}
DTYPES = {"float32": np.float32, "float16": np.float16}
VERIFY_MAX_NEW_TOKENS = 160  # one cap for every runtime, so a looping model stops at the same length everywhere
Q8_0_MAX_WER_INCREASE = 1.0  # WER points q8_0 may lose against f16 (issue 5)
DISTIL_INFO = "distil_info.json"


def parse_formats(spec: str) -> tuple[str, ...]:
    """``"hf,openai"`` → ``("hf", "openai")``; ``ValueError`` naming ``--formats`` on unknown names."""
    names = tuple(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise ValueError(f"--formats: unknown format(s) {unknown or [spec]}; choose from {','.join(FORMATS)}")
    return names


def check_exportable(config: Any, formats: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the format and constraint when ``config`` cannot be written as one of
    ``formats`` (openai-whisper and whisper.cpp hard-code ffn_dim = 4·d_model and one model width; whisper.cpp
    also derives its special tokens from n_vocab and needs 32-value rows for q8_0)."""
    from .tokenizer import SpecialTokens

    for fmt in formats:
        try:
            SpecialTokens.from_vocab_size(config.vocab_size)  # every target needs the Whisper token layout
            if fmt == "openai":
                openai_format.dims_from_config(config)
            elif fmt.startswith("ggml"):
                ggml_format.check_ggml_config(config, "q8_0" if fmt == "ggml-q8_0" else "f16")
        except ValueError as e:
            raise ValueError(f"cannot export to {fmt}: {e}") from None


def output_paths(output_dir: str | os.PathLike, formats: Sequence[str]) -> dict[str, Path]:
    return {fmt: Path(output_dir) / OUTPUT_NAMES[fmt] for fmt in formats}


# ----------------------------------------------------------------------------------------------
# Provenance and model card (contract D)


def find_distil_info(source: str | os.PathLike) -> Path | None:
    """``distil_info.json`` next to the model: in its directory (or a file's directory), or for an Orbax
    ``O/checkpoints[/<step>]`` in the run directory ``O``."""
    p = Path(source)
    base = p if p.is_dir() else p.parent
    candidates = [base]
    if base.name == "checkpoints":
        candidates.append(base.parent)
    elif base.parent.name == "checkpoints":
        candidates.append(base.parent.parent)
    return next((c / DISTIL_INFO for c in candidates if (c / DISTIL_INFO).is_file()), None)


def read_distil_info(path: Path | None) -> dict | None:
    """The provenance dict (contract D), or None; ``ValueError`` naming the file if it is malformed."""
    if path is None:
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable provenance file ({e})") from None
    if not isinstance(info, dict) or not isinstance(info.get("teacher"), str):
        raise ValueError(f"{path}: expected a JSON object with a string 'teacher' (distil_info.json, contract D)")
    return info


def _md_value(value: Any) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) if value else "none"
    return str(value)


def model_card(
    pre: Pretrained,
    info: Mapping | None,
    formats: Sequence[str],
    dtype: str,
    verification: str | None = None,
    verified_on: str = "the bundled clips",
) -> str:
    """README.md for the HF directory: provenance (or "unknown"), architecture, eval WER, how to use each
    exported file, and the verification table when there is one."""
    from .model import count_params

    c, info = pre.config, dict(info or {})
    lang = "multilingual" if c.is_multilingual else "en"
    rows = [
        ("distilled from (teacher)", info.get("teacher")),
        ("teacher decoder layers", info.get("teacher_decoder_layers")),
        ("decoder layer map (student ← teacher layer)", info.get("decoder_layer_map")),
        (
            "encoder layer map",
            (
                "none (encoder kept whole)"
                if info.get("encoder_layer_map", 0) is None
                else info.get("encoder_layer_map")
            ),
        ),
        ("training steps", info.get("train_steps")),
        ("training data", info.get("train_datasets")),
    ]
    lines = [
        "---",
        *([] if c.is_multilingual else ["language: en"]),
        "library_name: transformers",
        "pipeline_tag: automatic-speech-recognition",
        "tags: [whisper, distil-whisper, audio, jax]",
        "---",
        "",
        f"# Whisper {'student' if info else 'model'} exported from `{Path(pre.source).name}`",
        "",
        f"Exported by distil-whisper-jax from `{pre.source}` (format: {pre.fmt}). "
        + (
            "Provenance from `distil_info.json`."
            if info
            else "No `distil_info.json` was found next to the source, so provenance is unknown."
        ),
        "",
        "## Provenance",
        "",
        "| | |",
        "|---|---|",
    ]
    lines += [f"| {k} | {_md_value(v)} |" for k, v in rows]
    lines += [
        "",
        "## Architecture",
        "",
        "| | |",
        "|---|---|",
        f"| parameters | {count_params(pre.params) / 1e6:.1f} M |",
        f"| d_model / heads | {c.d_model} / {c.encoder_attention_heads} enc, {c.decoder_attention_heads} dec |",
        f"| encoder layers | {c.encoder_layers} |",
        f"| decoder layers | {c.decoder_layers} |",
        f"| vocabulary | {c.vocab_size} ({lang}) |",
        f"| mel bins | {c.num_mel_bins} |",
        "",
        "## Evaluation (WER %)",
        "",
    ]
    evals = info.get("eval_wer") or {}
    if evals:
        lines += ["| split | student | teacher |", "|---|---:|---:|"]
        lines += [
            f"| {split} | {_md_value(v.get('student'))} | {_md_value(v.get('teacher'))} |" for split, v in evals.items()
        ]
    else:
        lines.append("unknown (no evaluation recorded in `distil_info.json`)")
    lines += ["", "## Files and how to use them", ""]
    usage = {
        "hf": (
            f"`hf/` (this directory): `model.safetensors` ({dtype}), configs, tokenizer, feature extractor",
            [
                "```python",
                "from transformers import pipeline",
                'asr = pipeline("automatic-speech-recognition", model="path/to/hf")',
                'print(asr("audio.wav")["text"])',
                "```",
            ],
        ),
        "openai": (
            "`original-model.bin`: openai-whisper checkpoint (fp16)",
            [
                "```python",
                "import whisper",
                'model = whisper.load_model("path/to/original-model.bin")',
                'print(model.transcribe("audio.wav")["text"])',
                "```",
            ],
        ),
        "ggml": (
            "`ggml-model.bin`: whisper.cpp model (f16)",
            ["```sh", "whisper-cli -m ggml-model.bin -f audio.wav", "```"],
        ),
        "ggml-q8_0": (
            "`ggml-model-q8_0.bin`: whisper.cpp model, 8-bit (q8_0) weights",
            ["```sh", "whisper-cli -m ggml-model-q8_0.bin -f audio.wav", "```"],
        ),
    }
    for fmt in formats:
        title, snippet = usage[fmt]
        lines += [f"- {title}", "", *snippet, ""]
    lines += ["With this project: `python -m distil_whisper_jax.transcribe audio.wav --model path/to/hf`.", ""]
    if verification:
        lines += [
            "## Export verification",
            "",
            "Each file was loaded in its own runtime (in a subprocess) and "
            f"transcribed {verified_on} greedily, compared with this project's JAX output:",
            "",
            verification,
            "",
        ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Writing


def _atomic_dir(final: Path, build) -> None:
    """Build a directory under a temp name next to ``final``, then swap it into place."""
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build(tmp)
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export(
    pre: Pretrained,
    formats: Sequence[str],
    output_dir: str | os.PathLike,
    dtype: str = "float32",
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write ``formats`` of ``pre`` under ``output_dir``; returns {format: path}. Everything is checked
    (architecture, dtype, existing outputs, provenance file) before the first byte is written."""
    formats = tuple(formats)
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    check_exportable(pre.config, formats)
    paths = output_paths(output_dir, formats)
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise ValueError(f"output(s) already exist: {', '.join(existing)}; pass --overwrite to replace them")
    info_file = find_distil_info(pre.source)
    info = read_distil_info(info_file)
    tokenizer = pre.tokenizer if any(f in formats for f in ("hf", "ggml", "ggml-q8_0")) else None
    Path(output_dir).mkdir(parents=True, exist_ok=True)

    for fmt, path in paths.items():
        t0 = time.perf_counter()
        if fmt == "hf":
            gen = pre.generation_defaults
            gen_config = hf_format.hf_generation_config(
                pre.config, gen.suppress_tokens, gen.begin_suppress_tokens, gen.alignment_heads
            )

            def build(d: Path) -> None:
                hf_format.write_hf_dir(d, pre.config, pre.params, DTYPES[dtype], gen_config, tokenizer)
                if info_file is not None:
                    shutil.copyfile(info_file, d / DISTIL_INFO)
                (d / "README.md").write_text(model_card(pre, info, formats, dtype))

            _atomic_dir(path, build)
        elif fmt == "openai":
            openai_format.write_openai_checkpoint(
                path, pre.config, hf_format.flax_to_hf(pre.params, pre.config), dtype=np.float16
            )
        else:
            ggml_format.write_ggml(
                path, pre.config, pre.params, tokenizer, quant="q8_0" if fmt == "ggml-q8_0" else "f16"
            )
        log.info("wrote %s: %s (%.1f MB, %.1f s)", fmt, path, _size(path) / 1e6, time.perf_counter() - t0)
    return paths


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


# ----------------------------------------------------------------------------------------------
# Verification


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
    passed: bool = False
    note: str = ""

    @property
    def runtime(self) -> str:
        return {"hf": "transformers (PyTorch)", "openai": "openai-whisper", "whispercpp": "whisper.cpp"}[
            RUNTIME[self.fmt]
        ]


def fp16_rounded(params: Any) -> Any:
    """The params as an fp16 file stores them (fp32 values of the fp16 rounding)."""
    import jax

    return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32).astype(np.float16).astype(np.float32), params)


def _jax_texts(pre: Pretrained, clips: Sequence[Path], max_new_tokens: int) -> list[str]:
    import jax

    from .transcribe import transcribe

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


def verify(
    jobs: Sequence[tuple[Pretrained, Mapping[str, Path]]],
    clips: Sequence[tuple[Path, str]],
    threads: int = 1,
    dtype: str = "float32",
    max_new_tokens: int = VERIFY_MAX_NEW_TOKENS,
) -> list[list[Check]]:
    """Verify exported files of one or more models (one list of checks per job). Runtime subprocesses
    start first and run while this process computes the JAX references; the transformers and openai-whisper
    files share one subprocess (one torch import), every ggml file gets its own (a bad one segfaults
    whisper.cpp, and must not take the other results with it)."""
    from .convert.runtimes import finish_runtime, start_runtime
    from .evaluate import english_normalizer, wer

    paths, refs = [c for c, _ in clips], [t for _, t in clips]
    groups: dict[str, list[tuple[str, str]]] = {}  # PyTorch runtimes share a process; each ggml file gets one
    for _, outputs in jobs:
        for fmt, path in outputs.items():
            key = f"ggml:{path}" if RUNTIME[fmt] == "whispercpp" else "torch"
            groups.setdefault(key, []).append((RUNTIME[fmt], str(path)))
    procs = {key: start_runtime(models, paths, threads, max_new_tokens) for key, models in groups.items()}

    import jax

    references = []
    for pre, outputs in jobs:
        exact = _jax_texts(pre, paths, max_new_tokens)
        rounded_params = fp16_rounded(pre.params)
        same = all(
            np.array_equal(a, b)
            for a, b in zip(jax.tree_util.tree_leaves(pre.params), jax.tree_util.tree_leaves(rounded_params))
        )
        rounded = exact if same else _jax_texts(dataclasses.replace(pre, params=rounded_params), paths, max_new_tokens)
        references.append((exact, rounded))

    results: dict[str, list[str] | str] = {}
    for key, proc in procs.items():
        got, error = finish_runtime(proc)
        for _, model in groups[key]:
            results[model] = got[model] if got is not None else error

    norm = english_normalizer()
    report = []
    for (pre, outputs), (exact_ref, rounded_ref) in zip(jobs, references):
        checks = []
        for fmt, path in outputs.items():
            ref = exact_ref if fmt == "hf" and dtype == "float32" else rounded_ref
            got = results[str(path)]
            check = Check(fmt, Path(path), None if isinstance(got, str) else got, ref)
            if isinstance(got, str):
                check.note = got
            else:
                check.wer = wer(refs, got)
                check.exact = sum(a == b for a, b in zip(got, ref))
                check.normalized = sum(norm(a) == norm(b) for a, b in zip(got, ref))
            checks.append(check)
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
        elif c.fmt == "ggml":
            c.passed = c.normalized == n
            c.note = "same text as JAX (normalised)" if c.passed else "text differs from JAX after normalisation"
        else:
            f16 = by_fmt.get("ggml")
            base = f16.wer if f16 is not None and f16.wer is not None else jax_wer
            delta = c.wer - base
            c.passed = delta <= Q8_0_MAX_WER_INCREASE
            c.note = f"WER {delta:+.2f} vs {'f16' if f16 is not None else 'JAX'} (limit +{Q8_0_MAX_WER_INCREASE:g})"


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


def _differences(checks: Sequence[Check], clips: Sequence[Path]) -> list[str]:
    out = []
    for c in checks:
        for clip, got, want in zip(clips, c.texts or [], c.reference):
            if got != want and not c.passed:
                out.append(f"{c.fmt} {Path(clip).name}:\n  runtime: {got}\n  JAX:     {want}")
    return out


# ----------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m distil_whisper_jax.export",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--model",
        default=None,
        help="Orbax checkpoint dir, transformers or CTranslate2 dir, openai "
        "or ggml file, or hub id; default: the bundled tiny.en",
    )
    p.add_argument("--formats", default=",".join(FORMATS), help="comma-separated subset of " + ",".join(FORMATS))
    p.add_argument("--output_dir", required=True, help="where to write hf/, original-model.bin, ggml-model*.bin")
    p.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="float32",
        help="dtype of hf/model.safetensors (openai is always fp16, ggml f16/q8_0)",
    )
    p.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="transcribe clips with each file in its real runtime",
    )
    p.add_argument(
        "--verify_audio",
        default=None,
        help="manifest (.tsv/.csv/.jsonl with 'audio' and 'text' columns, audio paths relative to it) of "
        "the clips to verify on, e.g. held-out data the model was trained for; default: the bundled clips",
    )
    p.add_argument("--verify_max_clips", type=int, default=None, help="verify on at most this many clips")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per runtime subprocess during --verify")
    return p


def verification_clips(manifest: str | None, max_clips: int | None = None) -> list[tuple[Path, str]]:
    """(audio path, reference text) to verify on: the rows of ``manifest`` or the bundled clips, at most
    ``max_clips``. Clips must be ≤ 30 s (verification is short-form greedy)."""
    if max_clips is not None and max_clips < 1:
        raise ValueError(f"--verify_max_clips must be ≥ 1, got {max_clips}")
    if manifest is None:
        from .assets import bundled_clips

        return bundled_clips()[:max_clips]
    from .data import manifest_rows, resolve_path

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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    t0 = time.perf_counter()
    try:
        formats = parse_formats(args.formats)
        if args.threads < 1:
            raise ValueError(f"--threads must be ≥ 1, got {args.threads}")
        clips = verification_clips(args.verify_audio, args.verify_max_clips) if args.verify else []
        pre = load_pretrained(args.model)
        paths = export(pre, formats, args.output_dir, args.dtype, args.overwrite)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t_export = time.perf_counter() - t0
    print(f"\nexported {pre.source} in {t_export:.1f} s:")
    for fmt, path in paths.items():
        print(f"  {fmt:<10} {path}  {_size(path) / 1e6:.1f} MB")
    if not args.verify:
        return 0

    from .evaluate import wer

    (checks,) = verify([(pre, paths)], clips, args.threads, args.dtype)
    jax_wer = wer([t for _, t in clips], checks[0].reference) if checks else None
    table = format_table(checks, jax_wer)
    verified_on = f"{len(clips)} clips of {args.verify_audio}" if args.verify_audio else f"{len(clips)} bundled clips"
    print(f"\nverification on {verified_on} (greedy, no timestamps):\n\n{table}\n")
    for diff in _differences(checks, [c for c, _ in clips]):
        print(diff)
    if "hf" in paths:
        from .utils import atomic_write

        info = read_distil_info(find_distil_info(pre.source))
        with atomic_write(paths["hf"] / "README.md", "w") as f:
            f.write(model_card(pre, info, formats, args.dtype, verification=table, verified_on=verified_on))
    print(f"total {time.perf_counter() - t0:.1f} s (export {t_export:.1f} s)")
    return 0 if all(c.passed for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
