"""The audio of a dataset row: decoded to 16 kHz mono, or just its duration from the file header."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from distil_whisper_jax.data.sources import resolve_path
from distil_whisper_jax.speech import audio as audio_lib


def row_audio(value: Any, base_dir: Path | None, sampling_rate: int = audio_lib.SAMPLE_RATE) -> np.ndarray:
    """Decode a row's audio cell to float32 mono at ``sampling_rate``.

    Accepts a path (relative to ``base_dir``), the 🤗 Audio storage ``{"bytes", "path"}``, or a decoded
    ``{"array", "sampling_rate"}``. Raises ``audio.AudioError`` naming the file for anything unusable."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise audio_lib.AudioError("audio cell is empty (no path or bytes)")
    if isinstance(value, (str, os.PathLike)):
        return audio_lib.load_audio(resolve_path(value, base_dir), sampling_rate)
    if isinstance(value, dict):
        if value.get("array") is not None:
            arr = np.asarray(value["array"], np.float32)
            sr = value.get("sampling_rate")
            if sr is None:
                raise audio_lib.AudioError("decoded audio has no sampling_rate")
            if arr.ndim == 2:  # [channels, time] as 🤗 returns for multichannel
                arr = arr.mean(axis=0 if arr.shape[0] < arr.shape[1] else 1)
            if arr.size == 0:
                raise audio_lib.AudioError("zero-length audio array")
            if not np.isfinite(arr).all():
                raise audio_lib.AudioError("audio array contains non-finite samples (NaN or inf)")
            return audio_lib.resample(arr, int(sr), sampling_rate)
        path = value.get("path")
        if value.get("bytes") is not None:
            return audio_lib.decode_audio_bytes(value["bytes"], path or "<audio bytes>", sampling_rate)
        if path:
            return audio_lib.load_audio(resolve_path(path, base_dir), sampling_rate)
    raise audio_lib.AudioError(f"audio cell holds neither a path nor bytes ({type(value).__name__})")


def audio_duration(value: Any, base_dir: Path | None) -> float:
    """Seconds of audio in a row's audio cell, from the file header when soundfile can read it (no decoding);
    otherwise the audio is decoded. Raises ``audio.AudioError`` naming the file for anything unusable."""
    if isinstance(value, dict) and value.get("array") is not None and value.get("sampling_rate"):
        return np.shape(value["array"])[-1] / float(value["sampling_rate"])
    header: Any = None
    if isinstance(value, (str, os.PathLike)) and str(value).strip():
        header = str(resolve_path(value, base_dir))
    elif isinstance(value, dict) and value.get("bytes") is not None:
        header = io.BytesIO(value["bytes"])
    elif isinstance(value, dict) and value.get("path"):
        header = str(resolve_path(value["path"], base_dir))
    if header is not None:
        try:
            info = sf.info(header)
            if info.frames > 0 and info.samplerate > 0:
                return info.frames / info.samplerate
        except (sf.LibsndfileError, RuntimeError, OSError):
            pass  # not a format libsndfile reads (or no such file): decoding says which
    return len(row_audio(value, base_dir)) / audio_lib.SAMPLE_RATE
