"""Evaluation sets: every row of a dataset (opened by ``data``, any kind of source), as log-mel features
and reference texts, in order."""

from __future__ import annotations

import dataclasses

import numpy as np

from . import audio, data
from .train_data import RowReader, load_row_audio


@dataclasses.dataclass
class EvalSet:
    name: str
    features: np.ndarray  # [N, n_mels, 3000]
    texts: list[str]


def load_eval_set(
    name: str,
    split: str | None,
    audio_column: str | None,
    text_column: str | None,
    n_mels: int,
    max_samples: int | None = None,
    max_duration: float = 30.0,
) -> EvalSet:
    """All rows of an evaluation dataset (in order) with their reference texts and features. ``None``
    columns: the ones the dataset records (labelled output), else ``audio`` / ``text``."""
    (src,) = data.open_sources([data.SourceSpec(name, None, split)])
    audio_col = src.column_for("audio", audio_column, "audio")
    text_col = src.column_for("text", text_column, "text")
    data.require_columns(
        src,
        {"audio_column_name": audio_col, "eval_text_column_name": text_col},
        " for evaluation (the audio and its reference transcript)",
    )
    reader = RowReader(src, [audio_col, text_col])
    waves, texts = [], []
    for g in range(len(reader.groups.sizes)):
        for row in reader.group(g):
            if max_samples is not None and len(texts) >= max_samples:
                break
            wav = load_row_audio(row[audio_col], src, f"{name} row {len(texts)}")
            if len(wav) > max_duration * audio.SAMPLE_RATE:
                continue
            waves.append(wav)
            texts.append(row[text_col] or "")
    if not texts:
        raise ValueError(f"{name}: no evaluation rows (after the {max_duration} s duration limit)")
    return EvalSet(name, audio.log_mel_spectrogram(waves, n_mels=n_mels), texts)
