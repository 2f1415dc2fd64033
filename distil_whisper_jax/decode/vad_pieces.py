"""Speech-aware long-form transcription (``--long_form vad``): cut at pauses, decode the pieces in shared batches.

Each recording's speech is found by the voice-activity model (``speech.vad``). Its stretches of speech are
padded by up to ``PAD_S`` on each side (never past the middle of the pause to the next stretch), then packed
left to right into pieces of at most one model window (``plan``): a piece ends at the last pause that lets it
fit, so no word is cut and nothing needs stitching. Only a single stretch of speech longer than a window is cut
inside, at its least speech-like frame in the window's second half; such cuts are counted, logged and listed
in the result (``vad.split_speech``). The silence between pieces is not decoded; a piece keeps the pauses
inside it, so its timestamps are its offset plus the model's.

The pieces of all files are queued and sent to the decoder ``batch_size`` at a time (the one compiled program
chunked mode uses); a file is finished when its last piece comes back. A recording in which the VAD finds no
speech gives no text and no segments, without decoding anything: silence and noise never reach the model.

Memory: a recording is held whole while it is segmented and its pieces wait for the decoder (64 kB per
second of audio, 230 MB for an hour), unlike chunked and sequential modes, which hold a few windows.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from distil_whisper_jax.decode import longform
from distil_whisper_jax.speech import audio, vad

log = logging.getLogger(__name__)

PAD_S = 0.4  # speech padding on each side: the model hears the start and end of a stretch whole

Decoder = Callable[[list[np.ndarray]], list[list[int]]]


@dataclasses.dataclass(frozen=True)
class Plan:
    """Where a recording is cut, in frames of ``vad.FRAME`` samples: ``pieces`` ``[start, end)`` in order and
    apart, each at most the window; ``split`` the cut positions that fall inside speech (a stretch of speech
    longer than a window)."""

    pieces: list[tuple[int, int]]
    split: list[int]


def padded(spans: Sequence[tuple[int, int]], n: int, pad: int) -> list[tuple[int, int]]:
    """``spans`` widened by ``pad`` frames on each side, within ``[0, n)`` and never past the middle of the pause
    between two neighbours (so padded neighbours may touch, never overlap)."""
    out = []
    for k, (s, e) in enumerate(spans):
        lo = 0 if k == 0 else (spans[k - 1][1] + s) // 2
        hi = n if k == len(spans) - 1 else (e + spans[k + 1][0]) // 2
        out.append((max(s - pad, lo), min(e + pad, hi)))
    return out


def plan(
    spans: Sequence[tuple[int, int]], probs: np.ndarray, window: int, pad: int = 0, keep_silence: bool = False
) -> Plan:
    """Cut a recording of ``len(probs)`` frames, whose speech is ``spans``, into pieces of at most ``window``
    frames, only at pauses unless one stretch of speech is longer than ``window``.

    Greedy from the left: a piece ends at the last pause (between two padded stretches, which may touch) that
    it can reach; the cut goes in that pause's middle, or as far as the piece can reach. With ``keep_silence``
    the pieces cover the recording (labelling keeps every sample); otherwise each piece is trimmed to its
    speech and the silence between pieces is left out (no speech: no pieces)."""
    n = len(probs)
    if window < 2:
        raise ValueError(f"window must be at least 2 frames, got {window}")
    speech = padded(spans, n, pad)
    bounds = [b for s, e in speech for b in (s, e)]
    pauses = list(zip([0, *bounds], [*bounds, n]))[::2]  # (a, b): silence before, between and after the stretches
    pieces, split = [], []
    start = 0 if keep_silence or not speech else speech[0][0]
    while start < n and (keep_silence or speech):
        if n - start <= window:
            pieces.append((start, n))
            break
        cut = _last_pause(pauses, start, window)
        if cut is None:  # one stretch of speech longer than the window
            half = start + window // 2
            cut = half + int(np.argmin(probs[half : start + window]))
            split.append(cut)
        pieces.append((start, cut))
        start = cut
        if not keep_silence:
            start = next((max(s, cut) for s, e in speech if e > cut), n)
    if not keep_silence:
        pieces = [t for t in (_trim(p, speech) for p in pieces) if t is not None]
    return Plan(pieces, split)


def _last_pause(pauses: Sequence[tuple[int, int]], start: int, window: int) -> int | None:
    """The cut in the last pause a piece starting at ``start`` reaches (its middle, or the piece's limit), or
    None when no pause lies within ``(start, start + window]``."""
    for a, b in reversed(pauses):
        lo, hi = max(a, start + 1), min(b, start + window)
        if lo <= hi:
            return min(max((a + b) // 2, lo), hi)
    return None


def _trim(piece: tuple[int, int], speech: Sequence[tuple[int, int]]) -> tuple[int, int] | None:
    """``piece`` narrowed to the padded speech inside it (None when it has none)."""
    inside = [(max(s, piece[0]), min(e, piece[1])) for s, e in speech if s < piece[1] and e > piece[0]]
    return (inside[0][0], inside[-1][1]) if inside else None


@functools.cache
def default_vad() -> vad.SileroVad:
    """One VAD session per process (evaluation segments block after block)."""
    return vad.SileroVad()


def plan_recording(
    wav: np.ndarray, model: vad.SileroVad, window_samples: int, options: vad.VadOptions, keep_silence: bool = False
) -> Plan:
    """``plan`` of a 16 kHz waveform for windows of ``window_samples`` (a whole number of VAD frames fit)."""
    probs = model.probabilities(wav)
    pad = round(PAD_S * audio.SAMPLE_RATE / vad.FRAME)
    return plan(vad.speech_spans(probs, options), probs, window_samples // vad.FRAME, pad, keep_silence)


def samples_of(piece: tuple[int, int], n_samples: int) -> tuple[int, int]:
    """A piece's ``[start, end)`` in samples (the last frame of a recording may be partial)."""
    return min(piece[0] * vad.FRAME, n_samples), min(piece[1] * vad.FRAME, n_samples)


@dataclasses.dataclass
class _File:
    """A recording whose pieces are in flight."""

    pieces: list[tuple[int, int]]  # in samples
    n_samples: int
    split: list[int]  # in samples
    outputs: dict[int, list[int]] = dataclasses.field(default_factory=dict)


def transcribe_files(
    names: Sequence[str],
    load: Callable[[int], np.ndarray | Iterable[np.ndarray]],
    decoder: Decoder,
    batch_size: int,
    window_samples: int,
    timestamp_begin: int,
    eot: int,
    decode_text: Callable[[list[int]], str],
    model: vad.SileroVad | None = None,
    options: vad.VadOptions | None = None,
    on_done: Callable[[int], None] | None = None,
) -> list[dict]:
    """One dict per input in order: ``{"file", "text", "segments", "vad"}`` or ``{"file", "error"}``.

    ``load(i)`` returns input ``i``'s 16 kHz waveform or its blocks, or raises ``audio.AudioError``; ``decoder``
    must have a timestamp prompt. ``vad`` says how much speech was found, how many pieces were decoded and
    where a stretch of speech longer than a window was cut (``split_speech``, seconds)."""
    model, options = model or default_vad(), options or vad.VadOptions()
    results: list[dict] = [{"file": str(n)} for n in names]
    files: dict[int, _File] = {}
    queue: list[tuple[int, int, np.ndarray]] = []  # (file, piece, samples)

    def flush() -> None:
        batch, queue[:] = queue[:batch_size], queue[batch_size:]
        for (i, k, _), ids in zip(batch, decoder([q[2] for q in batch])):
            files[i].outputs[k] = ids
            if len(files[i].outputs) == len(files[i].pieces):
                results[i].update(merge_file(files.pop(i), timestamp_begin, eot, decode_text))
                if on_done:
                    on_done(i)

    for i in range(len(names)):
        try:
            source = load(i)
            wav = source if isinstance(source, np.ndarray) else np.concatenate([np.zeros(0, np.float32), *source])
        except audio.AudioError as e:
            results[i] = {"file": str(names[i]), "error": str(e)}
            if on_done:
                on_done(i)
            continue
        p = plan_recording(wav, model, window_samples, options)
        state = _File([samples_of(q, len(wav)) for q in p.pieces], len(wav), [c * vad.FRAME for c in p.split])
        for c in state.split:
            log.warning(
                "%s: speech without a pause for longer than the %.0f s window; cut inside it at %.2f s",
                names[i],
                window_samples / audio.SAMPLE_RATE,
                c / audio.SAMPLE_RATE,
            )
        if not state.pieces:
            results[i].update(merge_file(state, timestamp_begin, eot, decode_text))
            if on_done:
                on_done(i)
            continue
        files[i] = state
        queue += [(i, k, wav[s:e]) for k, (s, e) in enumerate(state.pieces)]
        while len(queue) >= batch_size:
            flush()
    while queue:
        flush()
    return results


def merge_file(state: _File, timestamp_begin: int, eot: int, decode_text: Callable[[list[int]], str]) -> dict:
    """``{"text", "segments", "vad"}`` of a recording from its pieces' ids: each piece's times offset by its start
    and kept inside it (a timestamp predicted in the padding after a piece's audio ends with the piece)."""
    sr = audio.SAMPLE_RATE
    tokens: list[longform.Piece] = []
    for k, (s, e) in enumerate(state.pieces):
        for p in longform.pieces_from_tokens(state.outputs[k], timestamp_begin, eot, s / sr, e / sr, window=k):
            tokens.append(
                dataclasses.replace(p, start=_clip(p.start, s / sr, e / sr), end=_clip(p.end, s / sr, e / sr))
            )
    speech = sum(e - s for s, e in state.pieces) / sr
    return {
        "text": decode_text([p.token for p in tokens]).strip(),
        "segments": longform.segments(tokens, decode_text),
        "vad": {
            "pieces": len(state.pieces),
            "seconds_decoded": round(speech, 2),
            "split_speech": [round(c / sr, 2) for c in state.split],
        },
    }


def _clip(t: float | None, lo: float, hi: float) -> float | None:
    return None if t is None else min(max(t, lo), hi)
