"""Export a checkpoint to 🤗 transformers, openai-whisper, whisper.cpp and faster-whisper (CTranslate2), and
verify each in its runtime.

    python -m distil_whisper_jax.export --model PATH_OR_HUB_ID --formats hf,openai,ggml,ggml-q8_0 \\
        --output_dir E [--dtype float16|float32] [--no-verify] [--overwrite]

Writes ``E/hf/`` (transformers directory with a model card), ``E/original-model.bin`` (openai-whisper,
fp16), ``E/ggml-model.bin`` (whisper.cpp f16) and ``E/ggml-model-<type>.bin`` for each quantized whisper.cpp
format asked for (``ggml-q8_0``, ``ggml-q5_1``, ``ggml-q5_0``, ``ggml-q4_1``, ``ggml-q4_0``; the default
``--formats`` leaves out the 4/5-bit ones), and ``E/ct2/``, ``E/ct2-float16/``, ``E/ct2-int8/`` (faster-whisper
model directories, the ``ct2`` extra; asked for by name only). Without ``--model`` it
exports the bundled tiny.en. Architecture constraints of every requested format, existing outputs (refused
unless ``--overwrite``) and the writability of ``E`` are checked before anything is written; each output is
written to a temp name and renamed, and temporaries a killed export left behind are removed at start.
``--verify`` (default) transcribes the bundled clips with every exported file in its real runtime, each in a
subprocess, and compares with this project's JAX greedy output (see ``export_verify``); the verdicts also go
to ``E/verification.json``, with each runtime process's own peak memory. Exit status 1 if a
check fails or an output cannot be written (the message names the file and the cause), 2 on bad input.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from distil_whisper_jax.infra import compile_cache, storage
from distil_whisper_jax.infra import config as config_lib
from distil_whisper_jax.infra.compile_cache import CompileCacheFlags
from distil_whisper_jax.infra.files import (
    atomic_dir,
    atomic_write,
    check_writable,
    remove_stale_temporaries,
    write_error,
)
from distil_whisper_jax.speech.token_layout import SpecialTokens
from distil_whisper_jax.speech.wer import wer
from distil_whisper_jax.stages.export.card import find_distil_info, model_card, read_distil_info
from distil_whisper_jax.stages.export.verify import (
    Check,
    clips_within,
    differences,
    format_table,
    verification_clips,
    verify,
)
from distil_whisper_jax.weights.convert import ct2 as ct2_format
from distil_whisper_jax.weights.convert import ggml as ggml_format
from distil_whisper_jax.weights.convert import hf as hf_format
from distil_whisper_jax.weights.convert import openai as openai_format
from distil_whisper_jax.weights.loading import Pretrained, load_pretrained
from distil_whisper_jax.weights.student import DISTIL_INFO, DRAFT_VOCAB

log = logging.getLogger(__name__)

GGML_QUANT_FORMATS = tuple(f"ggml-{q}" for q in ("q8_0", "q5_1", "q5_0", "q4_1", "q4_0"))
CT2_FORMATS = tuple(ct2_format.QUANTIZATIONS)  # ct2 (float32), ct2-float16, ct2-int8
FORMATS = ("hf", "openai", "ggml", *GGML_QUANT_FORMATS, *CT2_FORMATS)  # every format --formats accepts
DEFAULT_FORMATS = ("hf", "openai", "ggml", "ggml-q8_0")
OUTPUT_NAMES = (
    {"hf": "hf", "openai": "original-model.bin", "ggml": "ggml-model.bin"}
    | {f: f"ggml-model-{f.removeprefix('ggml-')}.bin" for f in GGML_QUANT_FORMATS}
    | {f: f for f in CT2_FORMATS}
)
DTYPES = {"float32": np.float32, "float16": np.float16}
VERIFICATION_RECORD = "verification.json"  # --verify's verdicts, written beside the files it checked
# Temp names of the writers below (``atomic_write`` files, ``atomic_dir`` folders), for stale clean-up.
TEMPORARIES = (
    ".hf.tmp-*",
    ".hf.old-*",
    ".ct2*.tmp-*",
    ".ct2*.old-*",
    ".original-model.bin.*.tmp",
    ".ggml-model*.bin.*.tmp",
)


@dataclasses.dataclass(frozen=True)
class ExportConfig(CompileCacheFlags):
    """What to export, where, and whether to verify it in the real runtimes."""

    output_dir: str = config_lib.flag(help="where to write hf/, original-model.bin, ggml-model*.bin, ct2*/")
    model_name_or_path: str | None = config_lib.flag(
        None,
        "Orbax checkpoint dir, transformers or CTranslate2 dir, openai or ggml file, or hub id; "
        "default: the bundled tiny.en",
        aliases=("model",),
    )
    formats: str = config_lib.flag(
        ",".join(DEFAULT_FORMATS),
        "comma-separated subset of " + ",".join(FORMATS) + " (ct2*: faster-whisper directories, the ct2 extra)",
    )
    dtype: Literal["float16", "float32"] = config_lib.flag(
        "float32", "dtype of hf/model.safetensors (openai is always fp16, ggml f16 or its --formats type)"
    )
    verify: bool = config_lib.flag(True, "transcribe clips with each file in its real runtime", group="verification")
    verify_audio: str | None = config_lib.flag(
        None,
        "manifest (.tsv/.csv/.jsonl with 'audio' and 'text' columns, audio paths relative to it) of the clips "
        "to verify on, e.g. held-out data the model was trained for; default: the bundled clips",
        group="verification",
    )
    verify_max_clips: int | None = config_lib.flag(None, "verify on at most this many clips", group="verification")
    overwrite: bool = config_lib.flag(False, "replace existing outputs")
    threads: int = config_lib.flag(1, "CPU threads per runtime subprocess during --verify", group="verification")

    def validate(self) -> tuple[str, ...]:
        """The parsed ``--formats``; ``ValueError`` naming the flag for any value out of range."""
        formats = parse_formats(self.formats)
        if self.threads < 1:
            raise ValueError(f"--threads must be ≥ 1, got {self.threads}")
        if self.verify_max_clips is not None and self.verify_max_clips < 1:
            raise ValueError(f"--verify_max_clips must be ≥ 1, got {self.verify_max_clips}")
        if any(f in CT2_FORMATS for f in formats):
            ct2_format.check_ct2_available(need_faster_whisper=self.verify)
        return formats


def parse_formats(spec: str) -> tuple[str, ...]:
    """``"hf,openai"`` → ``("hf", "openai")``; ``ValueError`` naming ``--formats`` on unknown names."""
    names = tuple(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
    unknown = [n for n in names if n not in FORMATS]
    bad_ct2 = [n for n in unknown if n.startswith("ct2")]
    if bad_ct2:
        valid = ", ".join(f"{f} ({q})" for f, q in ct2_format.QUANTIZATIONS.items())
        raise ValueError(f"--formats: unknown CTranslate2 quantisation {bad_ct2[0]!r}; choose from {valid}")
    if unknown or not names:
        raise ValueError(f"--formats: unknown format(s) {unknown or [spec]}; choose from {','.join(FORMATS)}")
    return names


def check_exportable(config: Any, formats: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the format and constraint when ``config`` cannot be written as one of
    ``formats`` (openai-whisper and whisper.cpp hard-code ffn_dim = 4·d_model and one model width; whisper.cpp
    also derives its special tokens from n_vocab and its quantized types need rows of whole 32-value blocks)."""
    for fmt in formats:
        try:
            SpecialTokens.from_vocab_size(config.vocab_size)  # every target needs the Whisper token layout
            if fmt == "hf" and config.max_source_positions % 50:
                raise ValueError(f"max_source_positions {config.max_source_positions} is not whole seconds (× 50)")
            if fmt == "openai":
                openai_format.dims_from_config(config)
            elif fmt.startswith("ggml"):
                ggml_format.check_ggml_config(config, ggml_quant(fmt))
            elif fmt in CT2_FORMATS:
                ct2_format.check_ct2_config(config)
        except ValueError as e:
            raise ValueError(f"cannot export to {fmt}: {e}") from None


def ggml_quant(fmt: str) -> str:
    """The ggml file type of a whisper.cpp format: ``"ggml"`` → ``"f16"``, ``"ggml-q5_0"`` → ``"q5_0"``."""
    return "f16" if fmt == "ggml" else fmt.removeprefix("ggml-")


def output_paths(output_dir: str | os.PathLike, formats: Sequence[str]) -> dict[str, Path]:
    return {fmt: Path(output_dir) / OUTPUT_NAMES[fmt] for fmt in formats}


def remove_stale_outputs(output_dir: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of a killed export (whose process is gone) from ``output_dir``."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    removed = remove_stale_temporaries(out, TEMPORARIES)
    if (out / "hf").is_dir():
        removed += remove_stale_temporaries(out / "hf", [".*.tmp"])
    for p in removed:
        log.info("removed %s, left by an export that was killed", p)
    return removed


# ----------------------------------------------------------------------------------------------
# Writing


def _write_hf(pre: Pretrained, path: Path, formats: Sequence[str], dtype: str) -> None:
    gen = pre.generation_defaults
    gen_config = hf_format.hf_generation_config(
        pre.config, gen.suppress_tokens, gen.begin_suppress_tokens, gen.alignment_heads
    )
    info_file = find_distil_info(pre.source)
    info = read_distil_info(info_file)
    with atomic_dir(path) as d:
        hf_format.write_hf_dir(d, pre.config, pre.params, DTYPES[dtype], gen_config, pre.tokenizer)
        if info_file is not None:  # local, or in the bucket of an Orbax run restored from a URL
            (d / DISTIL_INFO).write_bytes(info_file.read_bytes())
            draft = info_file.with_name(DRAFT_VOCAB)  # the student's draft shortlist (--assistant_vocab_size)
            if draft.is_file():
                (d / DRAFT_VOCAB).write_bytes(draft.read_bytes())
        with atomic_write(d / "README.md", "w") as f:
            f.write(model_card(pre, info, formats, dtype))


def _write_ct2(pre: Pretrained, fmt: str, path: Path) -> None:
    """A faster-whisper directory: CTranslate2's files, then the tokenizer and feature extractor it reads."""
    state = hf_format.flax_to_hf(pre.params, pre.config)
    vocabulary = ct2_format.ct2_vocabulary_tokens(pre.tokenizer, pre.config.vocab_size)
    quantization = ct2_format.QUANTIZATIONS[fmt]
    with atomic_dir(path) as d:
        ct2_format.write_ct2_dir(d, pre.config, state, quantization, pre.generation_defaults, vocabulary)
        hf_format.write_processor_files(d, pre.config, pre.tokenizer)


def _write(pre: Pretrained, fmt: str, path: Path, formats: Sequence[str], dtype: str) -> None:
    if fmt == "hf":
        _write_hf(pre, path, formats, dtype)
    elif fmt in CT2_FORMATS:
        _write_ct2(pre, fmt, path)
    elif fmt == "openai":
        openai_format.write_openai_checkpoint(
            path, pre.config, hf_format.flax_to_hf(pre.params, pre.config), dtype=np.float16
        )
    else:
        ggml_format.write_ggml(path, pre.config, pre.params, pre.tokenizer, quant=ggml_quant(fmt))


def export(
    pre: Pretrained,
    formats: Sequence[str],
    output_dir: str | os.PathLike,
    dtype: str = "float32",
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write ``formats`` of ``pre`` under ``output_dir``; returns {format: path}. Everything is checked
    (architecture, dtype, existing outputs, provenance file, a writable ``output_dir``) before the first
    byte is written; a write that fails raises ``utils.OutputWriteError`` naming the file and the cause."""
    formats = tuple(formats)
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if any(f in CT2_FORMATS for f in formats):
        ct2_format.check_ct2_available()
    check_exportable(pre.config, formats)
    paths = output_paths(output_dir, formats)
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise ValueError(f"output(s) already exist: {', '.join(existing)}; pass --overwrite to replace them")
    read_distil_info(find_distil_info(pre.source))
    check_writable(output_dir, "--output_dir")
    if any(f == "hf" or f.startswith(("ggml", "ct2")) for f in formats):
        pre.tokenizer  # noqa: B018 (load it now: a missing tokenizer is bad input, found before writing)
    try:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(output_dir, e) from e
    for fmt, path in paths.items():
        t0 = time.perf_counter()
        try:
            _write(pre, fmt, path, formats, dtype)
        except OSError as e:
            raise write_error(path, e) from e
        log.info("wrote %s: %s (%.1f MB, %.1f s)", fmt, path, size_of(path) / 1e6, time.perf_counter() - t0)
    return paths


def size_of(path: Path) -> int:
    """Bytes of a file, or of every file under a directory."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


# ----------------------------------------------------------------------------------------------
# The command


def _report_verification(cfg: ExportConfig, pre: Pretrained, paths: dict[str, Path], clips: list) -> bool:
    """Verify, print the table and differences, put the table into the model card; True if all passed."""
    (checks,) = verify([(pre, paths)], clips, cfg.threads, cfg.dtype)
    jax_wer = wer([t for _, t in clips], checks[0].reference) if checks else None
    table = format_table(checks, jax_wer)
    verified_on = f"{len(clips)} clips of {cfg.verify_audio}" if cfg.verify_audio else f"{len(clips)} bundled clips"
    print(f"\nverification on {verified_on} (greedy, no timestamps):\n\n{table}\n")
    for diff in differences(checks, [c for c, _ in clips]):
        print(diff)
    _write_verification_record(Path(cfg.output_dir) / VERIFICATION_RECORD, checks, verified_on, jax_wer)
    if "hf" in paths:
        info = read_distil_info(find_distil_info(pre.source))
        card = model_card(pre, info, tuple(paths), cfg.dtype, verification=table, verified_on=verified_on)
        try:
            with atomic_write(paths["hf"] / "README.md", "w") as f:
                f.write(card)
        except OSError as e:
            raise write_error(paths["hf"] / "README.md", e) from e
    return all(c.passed for c in checks)


def _write_verification_record(path: Path, checks: Sequence[Check], verified_on: str, jax_wer: float | None) -> None:
    """The verification as JSON beside the files, for scripts: each file's verdict, WER, matches and the peak
    memory of the runtime process that ran it (its own, measured inside it)."""
    fields = ("fmt", "runtime", "wer", "exact", "normalized", "loops", "features", "passed", "note", "process")
    files: dict[str, list[str]] = {}  # runtime process → the files it verified (they run at the same time)
    for c in checks:
        files.setdefault(c.process, []).append(c.path.name)
    peaks = {" + ".join(files[c.process]): c.runtime_peak_mib for c in checks}
    record = {
        "verified_on": verified_on,
        "clips": len(checks[0].reference) if checks else 0,
        "jax_wer": jax_wer,
        "checks": [
            {k: getattr(c, k) for k in fields} | {"file": c.path.name, "runtime_peak_mib": c.runtime_peak_mib}
            for c in checks
        ],
        "process_peak_mib": peaks,  # each runtime process's own peak, named by the files it verified
    }
    try:
        with atomic_write(path, "w") as f:
            json.dump(record, f, indent=2)
    except OSError as e:
        raise write_error(path, e) from e
    reported = [f"{names} {mib:.0f} MiB" for names, mib in peaks.items() if mib is not None]
    log.info("verification processes' own peak memory: %s", ", ".join(reported) or "not reported")


def run(cfg: ExportConfig) -> int:
    """Export (and verify) as ``cfg`` says; 0 when every check passed, 1 otherwise. Bad input raises
    ``ValueError`` and a failed write ``utils.OutputWriteError``, both before or instead of a traceback."""
    if storage.is_url(cfg.output_dir):
        return _run_to_bucket(cfg)
    t0 = time.perf_counter()
    formats = cfg.validate()
    check_writable(cfg.output_dir, "--output_dir")
    remove_stale_outputs(cfg.output_dir)
    clips = verification_clips(cfg.verify_audio, cfg.verify_max_clips) if cfg.verify else []
    compile_cache.enable(cfg)
    pre = load_pretrained(cfg.model_name_or_path, "--model_name_or_path")
    t_load = time.perf_counter() - t0
    clips = clips_within(clips, pre.config.input_seconds, cfg.verify_audio) if clips else clips
    paths = export(pre, formats, cfg.output_dir, cfg.dtype, cfg.overwrite)
    (Path(cfg.output_dir) / VERIFICATION_RECORD).unlink(missing_ok=True)  # it described the files just replaced
    t_export = time.perf_counter() - t0
    print(f"\nexported {pre.source} in {t_export:.1f} s:")
    for fmt, path in paths.items():
        print(f"  {fmt:<10} {path}  {size_of(path) / 1e6:.1f} MB")
    if not cfg.verify:
        return 0
    with compile_cache.CompileClock() as clock:
        passed = _report_verification(cfg, pre, paths, clips)
    total = time.perf_counter() - t0
    print(f"total {total:.1f} s (loading {t_load:.1f} s, export {t_export:.1f} s, {clock.summary()})")
    return 0 if passed else 1


def _run_to_bucket(cfg: ExportConfig) -> int:
    """``--output_dir`` is a bucket URL: export and verify in a local temp directory, then upload the files."""
    formats = cfg.validate()
    dest = storage.location(cfg.output_dir)
    check_writable(dest, "--output_dir")
    existing = [str(dest / p.name) for p in output_paths(Path("."), formats).values() if (dest / p.name).exists()]
    if existing and not cfg.overwrite:
        raise ValueError(f"output(s) already exist: {', '.join(existing)}; pass --overwrite to replace them")
    with tempfile.TemporaryDirectory(prefix="distil-whisper-jax-export-") as d:
        code = run(dataclasses.replace(cfg, output_dir=d, overwrite=True))
        storage.upload_tree(Path(d), dest)
    log.info("uploaded the export to %s", dest)
    return code
