"""Create a student from a teacher: keep the encoder, copy maximally spaced decoder layers.

    distil-whisper-create-student [--teacher_model_name_or_path T] --decoder_layers 2 --output_dir S

Writes a transformers directory (weights, config, generation config, tokenizer) plus ``distil_info.json``
(the teacher, portably: the bundled name, hub id or path, with a digest of its weights; and the layer
maps, read by distillation and by the exporter's model card), reloads it to check it is exactly the
slice that was intended, and logs the parameter counts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

from distil_whisper_jax.core.model import WhisperConfig, count_params
from distil_whisper_jax.infra import storage
from distil_whisper_jax.infra.config import flag
from distil_whisper_jax.infra.files import atomic_write, check_writable
from distil_whisper_jax.weights.convert import tree_equal
from distil_whisper_jax.weights.convert.hf import write_hf_dir
from distil_whisper_jax.weights.loading import Pretrained, load_pretrained
from distil_whisper_jax.weights.student import (
    DISTIL_INFO,
    make_student,
    params_digest,
    student_generation_config,
    teacher_reference,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CreateStudentConfig:
    """Flags of ``distil-whisper-create-student``."""

    output_dir: str = flag(help="where to write the student (transformers format): a directory or a bucket URL")
    teacher_model_name_or_path: str | None = flag(
        None,
        "teacher checkpoint (transformers dir, CTranslate2 dir, openai .pt, hub id, or any of these as a bucket URL); "
        "default: the bundled tiny.en",
    )
    decoder_layers: int = flag(2, "student decoder layers (2 → teacher's first and last)")
    encoder_layers: int | None = flag(None, "student encoder layers (default: all)")
    max_source_positions: int | None = flag(None, "shorter encoder context (e.g. 750 = 15 s); default: the teacher's")
    overwrite_output_dir: bool = flag(
        False, "replace a non-empty --output_dir: everything in it is deleted once the student is made"
    )


def run(cfg: CreateStudentConfig) -> storage.OutPath:
    """Create the student ``cfg`` describes; returns its directory (local, or the bucket URL's location)."""
    return create_student(
        cfg.teacher_model_name_or_path,
        cfg.output_dir,
        cfg.decoder_layers,
        cfg.encoder_layers,
        cfg.max_source_positions,
        cfg.overwrite_output_dir,
    )


def check_output_dir(dest: storage.OutPath, overwrite: bool) -> bool:
    """Whether ``dest`` holds anything; ``ValueError`` when it does and ``overwrite`` is off: a student written
    over a finished distillation run would silently replace what it learned."""
    found = sorted(p.name for p in dest.iterdir()) if dest.is_dir() else []
    if found and not overwrite:
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        raise ValueError(
            f"--output_dir {dest} is not empty (it holds {shown}); use an empty directory or --overwrite_output_dir"
        )
    return bool(found)


def create_student(
    teacher: str | Pretrained | None,
    output_dir: str | os.PathLike,
    decoder_layers: int,
    encoder_layers: int | None = None,
    max_source_positions: int | None = None,
    overwrite: bool = False,
) -> storage.OutPath:
    """Slice ``teacher`` (any loadable checkpoint; None = bundled tiny.en) into a student saved at ``output_dir``.

    ``output_dir`` must be empty unless ``overwrite`` (then its contents are deleted once the student is made),
    and writable (a bucket URL too): both checked before the teacher loads. The student is then written and its
    reload verified in a local directory, and uploaded whole once it passed (nothing partial reaches the
    bucket, nothing is renamed there)."""
    dest = storage.location(output_dir, "--output_dir")
    occupied = check_output_dir(dest, overwrite)
    check_writable(dest, "--output_dir")
    if isinstance(teacher, Pretrained):
        pre = teacher
    else:
        pre = load_pretrained(teacher, "--teacher_model_name_or_path")
    requested = pre.source if isinstance(teacher, Pretrained) else teacher
    config, params, maps = make_student(pre.config, pre.params, decoder_layers, encoder_layers, max_source_positions)
    if occupied:
        _clear_for_student(dest, pre)
    with storage.staged_dir(dest) as out:
        _write_student(out, pre, requested, config, params, maps)
    n_t, n_s = count_params(pre.params), count_params(params)
    log.info(
        "student: %d decoder layers (teacher layers %s), %s encoder; %.1fM params = %.0f%% of the teacher's "
        "%.1fM; saved to %s",
        decoder_layers,
        maps["decoder_layer_map"],
        "whole" if maps["encoder_layer_map"] is None else f"layers {maps['encoder_layer_map']} of the",
        n_s / 1e6,
        100 * n_s / n_t,
        n_t / 1e6,
        dest,
    )
    return dest


def _clear_for_student(dest: storage.OutPath, pre: Pretrained) -> None:
    """Delete what ``dest`` holds (``--overwrite_output_dir``), unless the teacher's own files are there."""
    teacher_files = Path(pre.source)
    if (
        not storage.is_remote(dest)
        and teacher_files.exists()
        and teacher_files.resolve().is_relative_to(dest.resolve())
    ):
        raise ValueError(f"--output_dir {dest} holds the teacher {pre.source}; write the student elsewhere")
    log.info("--overwrite_output_dir: deleting what %s holds", dest)
    storage.remove_tree(dest)


def _write_student(
    out: Path, pre: Pretrained, requested: str | os.PathLike | None, config: WhisperConfig, params: dict, maps: dict
) -> None:
    """The student's transformers directory and ``distil_info.json`` in the local ``out``, reloaded to check
    that it is exactly the slice (what every later stage will load)."""
    write_hf_dir(
        out,
        config,
        params,
        generation_config=student_generation_config(pre, config, maps["decoder_layer_map"]),
        tokenizer=pre.tokenizer,
    )
    info = {
        "teacher": teacher_reference(requested, pre.source),
        "teacher_sha256": params_digest(pre.params),
        "teacher_decoder_layers": pre.config.decoder_layers,
        "teacher_encoder_layers": pre.config.encoder_layers,
        **maps,
        "train_steps": 0,
    }
    with atomic_write(out / DISTIL_INFO, "w") as f:
        json.dump(info, f, indent=2)
    back = load_pretrained(out)
    if back.config != config or not tree_equal(back.params, params):
        raise RuntimeError(f"{out}: the saved student does not reload identically")
