"""The data of a distillation run: the labelled training sources (filters, mixing weights, label options) and
the held-out sets, opened the same way on every process."""

from __future__ import annotations

import dataclasses
import logging

import jax

from distil_whisper_jax.data import eval_sets as eval_data
from distil_whisper_jax.data import row_language
from distil_whisper_jax.data import stream as train_data
from distil_whisper_jax.data.sources import Source
from distil_whisper_jax.speech.token_layout import special_tokens
from distil_whisper_jax.stages.distill.config import DistillConfig
from distil_whisper_jax.weights.loading import Pretrained

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainData:
    """The opened training sources, their mixing weights and filters, and the held-out sets."""

    names: list[str]
    sources: list[Source]
    weights: list[float] | None
    opts: train_data.DataOptions
    eval_sets: list[eval_data.EvalSet]


def max_duration(cfg: DistillConfig, student: Pretrained) -> float:
    """``--max_duration_in_seconds``, defaulting to the student's input length (15 s for a 750-position
    student); ``ValueError`` when it asks for more audio than the student's encoder takes."""
    window = student.config.input_seconds
    if cfg.max_duration_in_seconds is None:
        return window
    if cfg.max_duration_in_seconds > window:
        raise ValueError(
            f"--max_duration_in_seconds {cfg.max_duration_in_seconds:g}: the student's encoder takes {window:g} s "
            f"of audio ({student.config.max_source_positions} positions); give at most {window:g}"
        )
    return cfg.max_duration_in_seconds


def open_data(cfg: DistillConfig, student: Pretrained, teacher: Pretrained) -> TrainData:
    """The labelled training sources, their mixing weights and filters, and the evaluation sets.

    Every process opens the same sources and walks the same stream; each featurises only its share of
    each global batch. Features are sized for the teacher; a shorter-context student reads their start."""
    longest = max_duration(cfg, student)
    names = train_data.split_plus(cfg.train_dataset_name)
    languages = [lang or "en" for lang in row_language.per_source(cfg.language, len(names))]
    row_language.check_model(special_tokens(student.tokenizer), languages, None, f"the student {student.source}")
    label_opts = train_data.LabelOptions(
        cfg.max_label_length,
        cfg.timestamp_probability,
        cfg.condition_on_prev_probability,
        cfg.truncate_long_labels,
        cfg.language,
        cfg.task,
    )
    opts = train_data.DataOptions(
        audio_column_name=cfg.audio_column_name,
        train_text_column_name=cfg.train_text_column_name,
        min_duration_in_seconds=cfg.min_duration_in_seconds,
        max_duration_in_seconds=longest,
        wer_threshold=cfg.wer_threshold,
        keep_rows_without_ground_truth=cfg.keep_rows_without_ground_truth,
        labels=dataclasses.replace(label_opts, language=None),
        languages=tuple(languages),
        language_column_name=cfg.language_column_name,
    )
    sources = train_data.open_sources(cfg.train_dataset_name, cfg.train_split_name)
    weights = train_data.weights_from_flag(cfg.train_dataset_samples, len(names))
    eval_sets = [
        eval_data.load_eval_set(
            n,
            cfg.eval_split_name,
            cfg.audio_column_name,
            cfg.eval_text_column_name,
            student.config.num_mel_bins,
            cfg.max_eval_samples,
            max_duration=longest,
            n_frames=teacher.config.n_frames,
        )
        for n in train_data.split_plus(cfg.eval_dataset_name)
    ]
    return TrainData(names, sources, weights, opts, eval_sets)


def identity(data: TrainData) -> list[dict]:
    """Each training dataset as it is now (its name and the cheap facts its source records: files with their
    sizes and row counts, a manifest's hash, a 🤗 dataset's fingerprint), stored with every checkpoint so that a
    resume notices data changed under the same name (``setup.check_resume``)."""
    return [{"dataset": s.label, **s.identity} for s in data.sources]


def log_data(cfg: DistillConfig, data: TrainData, global_batch: int) -> None:
    log.info(
        "data: %s (%s rows), global batch %d = %d per device × %d devices × %d accumulation, %d processes; eval: %s",
        data.names,
        [sum(s.row_groups().sizes) for s in data.sources],
        global_batch,
        cfg.per_device_train_batch_size,
        jax.device_count(),
        cfg.gradient_accumulation_steps,
        jax.process_count(),
        [(e.name, len(e.texts)) for e in data.eval_sets],
    )
