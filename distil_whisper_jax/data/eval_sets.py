"""Evaluation sets: every row of a dataset (opened by ``sources``, any kind of source), as log-mel features
and reference texts, in order."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from distil_whisper_jax.data import sources
from distil_whisper_jax.data.stream import RowReader, load_row_audio
from distil_whisper_jax.speech import audio

log = logging.getLogger(__name__)


@dataclasses.dataclass
class EvalSet:
    name: str
    features: np.ndarray  # [N, n_mels, 3000]
    texts: list[str]


def load_eval_set(
    name: str,
    split: str | None,
    audio_column_name: str | None,
    eval_text_column_name: str | None,
    n_mels: int,
    max_samples: int | None = None,
    max_duration: float = 30.0,
    n_frames: int = audio.N_FRAMES,
) -> EvalSet:
    """All rows of an evaluation dataset (in order) with their reference texts and features. ``None``
    columns: the ones the dataset records (labelled output), else ``audio`` / ``text``. The column parameters
    carry their flags' names, which an error names."""
    (src,) = sources.open_sources([sources.SourceSpec(name, None, split)])
    audio_col = src.column_for("audio", audio_column_name, "audio")
    text_col = src.column_for("text", eval_text_column_name, "text")
    sources.require_columns(
        src,
        {"audio_column_name": audio_col, "eval_text_column_name": text_col},
        " for evaluation (the audio and its reference transcript)",
    )
    reader = RowReader(src, [audio_col, text_col])
    waves, texts, too_long = [], [], 0
    rows = (row for g in range(len(reader.groups.sizes)) for row in reader.group(g))
    for i, row in enumerate(rows):
        if max_samples is not None and len(texts) >= max_samples:
            break
        wav = load_row_audio(row[audio_col], src, f"{name} row {i}")
        if len(wav) > max_duration * audio.SAMPLE_RATE:
            too_long += 1
            continue
        waves.append(wav)
        texts.append(row[text_col] or "")
    if too_long:
        log.info("%s: %d rows longer than %g s left out of the evaluation set", name, too_long, max_duration)
    if not texts:
        raise ValueError(f"{name}: no evaluation rows (after the {max_duration:g} s duration limit)")
    return EvalSet(name, audio.log_mel_spectrogram(waves, n_mels=n_mels, padding=n_frames * audio.HOP_LENGTH), texts)
