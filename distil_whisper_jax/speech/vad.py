"""Voice activity: where a 16 kHz recording has speech, from Silero VAD v6 (an ONNX model run by onnxruntime).

The model reads the audio in frames of 512 samples (32 ms), each preceded by the last 64 samples of the frame
before it (zeros before the first), and carries a recurrent state (``h``, ``c``) from frame to frame; it gives
one speech probability per frame. The probabilities are turned into stretches of speech (``speech_spans``):
speech starts at a frame at or above ``threshold`` and ends when the probability has stayed below a lower
threshold for ``min_silence_s`` (hysteresis, so a word's weak ending does not split it); stretches shorter than
``min_speech_s`` (a click, a cough) are dropped.

The model file ships in ``assets/vad/`` (provenance and licence there); onnxruntime is a dependency of the
package and is imported only when a VAD is built, so the other decoding modes never load it. This module knows
only audio; cutting a recording into model windows at the pauses is ``decode/vad_pieces.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from distil_whisper_jax.assets import ASSETS_DIR
from distil_whisper_jax.speech import audio

MODEL_PATH = ASSETS_DIR / "vad" / "silero_vad_v6.onnx"
FRAME = 512  # samples per VAD frame at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous frame the model sees before each frame
STATE_SHAPE = (1, 1, 128)
FRAMES_PER_RUN = 2048  # frames per onnxruntime call (~65 s): bounds the input tensor for recordings of hours


class VadUnavailableError(ValueError):
    """The VAD model or its runtime is missing. A ``ValueError`` so that commands report it, like a bad flag,
    before any work starts."""


@dataclasses.dataclass(frozen=True)
class VadOptions:
    """How frame probabilities become stretches of speech (defaults: Silero's threshold, the short silence
    faster-whisper's batched pipeline splits at, Silero's shortest speech)."""

    threshold: float = 0.5  # a frame at or above this starts speech
    neg_threshold: float | None = None  # speech ends below this (default: threshold - 0.15, at least 0.01)
    min_silence_s: float = 0.16  # ... once it has stayed below for this long
    min_speech_s: float = 0.25  # shorter stretches of speech are dropped

    def check(self) -> None:
        """``ValueError`` for settings that cannot work."""
        if not 0 < self.threshold < 1:
            raise ValueError(f"VAD threshold must be in (0, 1), got {self.threshold}")
        if self.neg_threshold is not None and not 0 < self.neg_threshold <= self.threshold:
            raise ValueError(f"VAD neg_threshold must be in (0, threshold], got {self.neg_threshold}")
        if self.min_silence_s < 0 or self.min_speech_s < 0:
            raise ValueError("VAD min_silence_s and min_speech_s must be ≥ 0")

    @property
    def low(self) -> float:
        return self.neg_threshold if self.neg_threshold is not None else max(self.threshold - 0.15, 0.01)


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as e:
        raise VadUnavailableError(
            "--long_form vad needs onnxruntime, which distil-whisper-jax depends on but is not installed here "
            f"({e}); install it with: pip install onnxruntime (or reinstall distil-whisper-jax)"
        ) from None
    return onnxruntime


def check_available(model_path: Path = MODEL_PATH) -> None:
    """``VadUnavailableError`` naming what provides the runtime or the model file when either is missing."""
    _onnxruntime()
    if not Path(model_path).is_file():
        raise VadUnavailableError(
            f"--long_form vad: the Silero VAD model {model_path} is missing; it ships with distil-whisper-jax "
            "(reinstall the package)"
        )


class SileroVad:
    """Silero VAD v6 on onnxruntime's CPU provider, one thread (it runs at hundreds of times real time; the
    cores are left to the decoder)."""

    def __init__(self, model_path: Path = MODEL_PATH) -> None:
        check_available(model_path)
        ort = _onnxruntime()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        opts.log_severity_level = 4
        self.session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])

    def probabilities(self, wav: np.ndarray | Iterable[np.ndarray]) -> np.ndarray:
        """Speech probability of each 512-sample frame of a 16 kHz waveform (or of its blocks, in order); the
        last partial frame is padded with zeros. ``ceil(len / 512)`` float32 values."""
        blocks = [wav] if isinstance(wav, np.ndarray) else wav
        h = c = np.zeros(STATE_SHAPE, np.float32)
        context = np.zeros(CONTEXT, np.float32)
        rest = np.zeros(0, np.float32)
        out: list[np.ndarray] = []
        for block in [*blocks, None]:
            if block is None:  # end: the partial frame, zero-padded
                if not len(rest):
                    break
                rest = np.pad(rest, (0, FRAME - len(rest)))
            else:
                rest = np.concatenate([rest, np.asarray(block, np.float32).reshape(-1)])
            n = len(rest) // FRAME
            for i in range(0, n, FRAMES_PER_RUN):
                frames = rest[i * FRAME : min(n, i + FRAMES_PER_RUN) * FRAME].reshape(-1, FRAME)
                ctx = np.concatenate([context[None], frames[:-1, -CONTEXT:]])
                p, h, c = self.session.run(None, {"input": np.concatenate([ctx, frames], 1), "h": h, "c": c})
                out.append(np.asarray(p, np.float32).reshape(-1))
                context = frames[-1, -CONTEXT:].copy()
            rest = rest[n * FRAME :]
        return np.concatenate(out) if out else np.zeros(0, np.float32)


def speech_spans(probs: np.ndarray, options: VadOptions | None = None) -> list[tuple[int, int]]:
    """Stretches of speech ``[start, end)`` in frames (multiply by ``FRAME`` for samples), in order and apart.

    Speech starts at the first frame at or above ``options.threshold``; it ends at the first frame of a run
    below ``options.low`` that lasts ``min_silence_s`` (a frame back at the threshold cancels the run); a
    stretch still open at the end ends with the recording. Stretches shorter than ``min_speech_s`` are dropped.
    """
    options = options or VadOptions()
    options.check()
    sec = audio.SAMPLE_RATE / FRAME
    min_silence, min_speech = round(options.min_silence_s * sec), round(options.min_speech_s * sec)
    spans: list[tuple[int, int]] = []
    start = silence = None
    for i, p in enumerate(np.asarray(probs, np.float32).tolist()):
        if start is None:
            if p >= options.threshold:
                start, silence = i, None
            continue
        if p >= options.threshold:
            silence = None
        elif p < options.low and silence is None:
            silence = i
        if silence is not None and i + 1 - silence >= max(min_silence, 1):
            spans.append((start, silence))
            start = silence = None
    if start is not None:
        spans.append((start, len(probs)))
    return [(s, e) for s, e in spans if e - s >= max(min_speech, 1)]
