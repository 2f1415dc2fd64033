"""Speech-aware long-form transcription (``--long_form vad``): cut at pauses, decode the pieces in shared batches.

Each recording's speech is found by the voice-activity model (``speech.vad``). Its stretches of speech are
padded by up to ``PAD_S`` on each side (never past the middle of the pause to the next stretch), then packed
left to right into pieces of at most one model window (``plan``): a piece ends at the last pause that lets it
fit, so no word is cut and nothing needs stitching. Only a single stretch of speech longer than a window is cut
inside, at its least speech-like frame in the window's second half; such cuts are counted, logged and listed
in the result (``vad.split_speech``). The silence between pieces is not decoded; a piece keeps the pauses
inside it, so its timestamps are its offset plus the model's.

The pieces of all files are queued and sent to the decoder ``batch_size`` at a time (the compiled programs chunked
mode uses; a short batch runs as fewer rows, ``decoding.padded_rows``); a file is finished when its last piece
comes back. Whisper learned from windows that cut speech off, so when a piece's speech runs close to its end the
model may open a last segment and stop, leaving that speech to a next window that does not exist here; such a tail
(``open_tail``) is queued once more as a piece of its own, from the model's last timestamp (where openai-whisper's
next window would start), and so is speech the VAD heard after the output's last closed segment (``closed_end``).
A piece whose greedy output loops (``loops``: a unit of tokens repeated many times in a row) is decoded again
with openai-whisper's temperatures (``Fallback``, ``sequential.window_fallback``), a batch of such pieces at a
time, until it no longer loops; greedy decoding alone repeats one word to the token cap on some real recordings.
A recording in which the VAD finds no speech gives no text and no segments, without decoding anything: silence
and noise never reach the model.

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
TAIL_MIN_S = 0.5  # a tail the model left undecoded is decoded again when it is at least this long
UNSAID_MIN_S = 1.0  # ... and after a closed last segment, when the VAD heard at least this much speech in it

Decoder = Callable[[list[np.ndarray]], list[list[int]]]


LOOP_UNIT = 8  # tokens: the longest unit ``loops`` looks for
LOOP_REPEATS = 5  # a unit said this many times in a row (and at least LOOP_TOKENS tokens) is a loop, not speech
LOOP_TOKENS = 16


def loops(ids: Sequence[int], eot: int) -> bool:
    """Does the output say one unit of 1-``LOOP_UNIT`` text tokens ``LOOP_REPEATS`` times or more in a row,
    spanning at least ``LOOP_TOKENS`` tokens (timestamps between the repeats ignored)? That is how greedy decoding
    loops ("O O O O …" to the token cap). openai-whisper's gzip compression ratio is not used here: repetitive
    but correct text compresses well too, and UTF-8 Cyrillic even more (Russian prompts score 2.0-3.1 against
    its threshold of 2.4), so it sends correct pieces to sampling."""
    toks = [t for t in ids if t < eot]
    for unit in range(1, LOOP_UNIT + 1):
        run = 0
        for i in range(unit, len(toks)):
            run = run + 1 if toks[i] == toks[i - unit] else 0
            if run + unit >= max(LOOP_TOKENS, LOOP_REPEATS * unit):
                return True
    return False


@dataclasses.dataclass(frozen=True)
class Fallback:
    """What to do with a piece whose greedy output loops: ``loops(ids)`` says it does, ``decode`` decodes such
    pieces again (``sequential.window_fallback``: hotter, until the output no longer loops)."""

    loops: Callable[[list[int]], bool]
    decode: Decoder


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
            tail = probs[half : start + window]
            cut = half + len(tail) - 1 - int(np.argmin(tail[::-1]))  # the latest of equally low frames
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
    None when no pause lies within ``(start, start + window]``. A piece that starts inside that pause (the
    recording's leading silence, or the previous cut was in it) takes the rest of the pause whole: a cut in its
    middle would only make a piece of silence, and the next one another, frame by frame."""
    for a, b in reversed(pauses):
        lo, hi = max(a, start + 1), min(b, start + window)
        if lo <= hi:
            return hi if start >= a else min((a + b) // 2, hi)
    return None


def _trim(piece: tuple[int, int], speech: Sequence[tuple[int, int]]) -> tuple[int, int] | None:
    """``piece`` narrowed to the padded speech inside it (None when it has none)."""
    inside = [(max(s, piece[0]), min(e, piece[1])) for s, e in speech if s < piece[1] and e > piece[0]]
    return (inside[0][0], inside[-1][1]) if inside else None


@functools.cache
def default_vad() -> vad.SileroVad:
    """One VAD session per process (evaluation segments block after block)."""
    return vad.SileroVad()


def plan_probabilities(
    probs: np.ndarray, window_samples: int, options: vad.VadOptions | None = None, keep_silence: bool = False
) -> Plan:
    """``plan`` of a recording from its VAD probabilities, for windows of ``window_samples`` (a whole number of
    VAD frames fit), with ``PAD_S`` of padding."""
    pad = round(PAD_S * audio.SAMPLE_RATE / vad.FRAME)
    return plan(vad.speech_spans(probs, options), probs, window_samples // vad.FRAME, pad, keep_silence)


def samples_of(piece: tuple[int, int], n_samples: int) -> tuple[int, int]:
    """A piece's ``[start, end)`` in samples (the last frame of a recording may be partial)."""
    return min(piece[0] * vad.FRAME, n_samples), min(piece[1] * vad.FRAME, n_samples)


@dataclasses.dataclass
class _File:
    """A recording whose pieces are in flight."""

    pieces: list[tuple[int, int]]  # in samples; a tail decoded again is appended as a piece of its own
    n_samples: int
    split: list[int]  # in samples
    speech: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # the VAD's stretches, in samples
    outputs: dict[int, list[int]] = dataclasses.field(default_factory=dict)
    tail_of: dict[int, int] = dataclasses.field(default_factory=dict)  # tail piece -> the piece it continues
    hotter: int = 0  # pieces whose greedy output looped, decoded again by the fallback

    def take(self, k: int, ids: list[int], samples: np.ndarray, retry: bool, timestamp_begin: int, eot: int):
        """Record piece ``k``'s ids; returns ``(index, samples)`` of its tail to decode again, or None. The tail
        starts where the model opened its last segment, or where its last segment closed when the VAD heard
        speech after it that the model left unsaid (as openai-whisper's next window would start there)."""
        self.outputs[k] = ids
        if not retry:
            return None
        start, end = self.pieces[k]
        t, sr = open_tail(ids, timestamp_begin, eot), audio.SAMPLE_RATE
        if t is not None:
            cut = int(round(t * sr))
            if not 0 < cut < len(samples) - TAIL_MIN_S * sr:
                return None
        else:
            t = closed_end(ids, timestamp_begin, eot)
            cut = 0 if t is None else int(round(t * sr))
            if not 0 < cut < len(samples) or self.speech_in(start + cut, end) < UNSAID_MIN_S * sr:
                return None
        self.pieces.append((start + cut, end))
        self.tail_of[len(self.pieces) - 1] = k
        return len(self.pieces) - 1, samples[cut:]

    @property
    def done(self) -> bool:
        return len(self.outputs) == len(self.pieces)

    def speech_in(self, a: int, b: int) -> int:
        """Samples of the VAD's speech within ``[a, b)``."""
        return sum(max(0, min(e, b) - max(s, a)) for s, e in self.speech)


def open_tail(ids: Sequence[int], timestamp_begin: int, eot: int) -> float | None:
    """Where (seconds into the piece) the output opened a last segment and stopped without its text, or None.

    Whisper learned from 30 s windows that cut speech off: when the speech of a window runs close to its end,
    it often opens the last segment and stops, leaving that speech to the next window. A piece has no next
    window, so the tail from there is decoded again on its own (with silence after it, it is transcribed)."""
    stamps = [j for j, t in enumerate(ids) if t >= timestamp_begin]
    if len(stamps) % 2 == 0 or any(t < eot for t in ids[stamps[-1] + 1 :]):
        return None
    return (ids[stamps[-1]] - timestamp_begin) * longform.SECONDS_PER_TIMESTAMP


def closed_end(ids: Sequence[int], timestamp_begin: int, eot: int) -> float | None:
    """Where (seconds into the piece) the output's last segment closed, when it ends on a closed segment (an even
    number of timestamps, nothing after the last one), or None. Whisper may also stop after a complete segment
    with speech still to come in the window (that speech would open the next window); ``take`` decodes it again
    when the VAD heard it."""
    stamps = [j for j, t in enumerate(ids) if t >= timestamp_begin]
    if not stamps or len(stamps) % 2 or any(t < eot for t in ids[stamps[-1] + 1 :]):
        return None
    return (ids[stamps[-1]] - timestamp_begin) * longform.SECONDS_PER_TIMESTAMP


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
    fallback: Fallback | None = None,
) -> list[dict]:
    """One dict per input in order: ``{"file", "text", "segments", "vad"}`` or ``{"file", "error"}``.

    ``load(i)`` returns input ``i``'s 16 kHz waveform or its blocks, or raises ``audio.AudioError``; ``decoder``
    must have a timestamp prompt. ``vad`` says how much speech was found, how many pieces were decoded, how
    many of them looped and were decoded again by ``fallback`` (``decoded_again_hotter``) and where a stretch of
    speech longer than a window was cut (``split_speech``, seconds)."""
    model, options = model or default_vad(), options or vad.VadOptions()
    results: list[dict] = [{"file": str(n)} for n in names]
    files: dict[int, _File] = {}
    queue: list[tuple[int, int, np.ndarray, bool]] = []  # (file, piece, samples, may its tail be decoded again)
    hot: list[tuple[int, int, np.ndarray, bool]] = []  # pieces whose greedy output looped, for ``fallback``

    def finish(i: int, state: _File) -> None:
        results[i].update(merge_file(state, timestamp_begin, eot, decode_text))
        if on_done:
            on_done(i)

    def settle(item: tuple[int, int, np.ndarray, bool], ids: list[int]) -> None:
        i, k, samples, retry = item
        tail = files[i].take(k, ids, samples, retry, timestamp_begin, eot)
        if tail is not None:
            queue.append((i, *tail, False))
        elif files[i].done:
            finish(i, files.pop(i))

    def flush() -> None:
        batch, queue[:] = queue[:batch_size], queue[batch_size:]
        for item, ids in zip(batch, decoder([q[2] for q in batch])):
            if fallback is not None and fallback.loops(ids):
                files[item[0]].hotter += 1
                hot.append(item)
            else:
                settle(item, ids)

    def flush_hot() -> None:
        batch, hot[:] = hot[:batch_size], hot[batch_size:]
        for item, ids in zip(batch, fallback.decode([q[2] for q in batch])):
            settle(item, ids)

    for i in range(len(names)):
        try:
            source = load(i)
            wav = source if isinstance(source, np.ndarray) else np.concatenate([np.zeros(0, np.float32), *source])
        except audio.AudioError as e:
            results[i] = {"file": str(names[i]), "error": str(e)}
            if on_done:
                on_done(i)
            continue
        state = _planned(wav, str(names[i]), model, window_samples, options)
        if not state.pieces:  # no speech: nothing to decode
            finish(i, state)
            continue
        files[i] = state
        queue += [(i, k, wav[s:e], True) for k, (s, e) in enumerate(state.pieces)]
        while len(queue) >= batch_size:
            flush()
        while len(hot) >= batch_size:
            flush_hot()
    while queue or hot:  # a piece decoded again may leave a tail to decode
        if queue:
            flush()
        else:
            flush_hot()
    return results


def _planned(wav: np.ndarray, name: str, model: vad.SileroVad, window_samples: int, options: vad.VadOptions) -> _File:
    """A recording cut into pieces (none without speech); a cut inside speech is logged."""
    probs = model.probabilities(wav)
    p = plan_probabilities(probs, window_samples, options)
    state = _File([samples_of(q, len(wav)) for q in p.pieces], len(wav), [c * vad.FRAME for c in p.split])
    state.speech = [samples_of(q, len(wav)) for q in vad.speech_spans(probs, options)]
    for c in state.split:
        log.warning(
            "%s: speech without a pause for longer than the %.0f s window; cut inside it at %.2f s",
            name,
            window_samples / audio.SAMPLE_RATE,
            c / audio.SAMPLE_RATE,
        )
    return state


def merge_file(state: _File, timestamp_begin: int, eot: int, decode_text: Callable[[list[int]], str]) -> dict:
    """``{"text", "segments", "vad"}`` of a recording from its pieces' ids: each piece's times offset by its start
    and kept inside it (a timestamp predicted in the padding after a piece's audio ends with the piece; a piece
    whose tail was decoded again ends where the tail starts)."""
    sr = audio.SAMPLE_RATE
    tokens: list[longform.Piece] = []
    for k in sorted(range(len(state.pieces)), key=lambda k: state.pieces[k][0]):  # a tail follows its piece
        s, e = (x / sr for x in state.pieces[k])
        e = min([e] + [state.pieces[j][0] / sr for j, p in state.tail_of.items() if p == k])  # ... up to its tail
        for p in longform.pieces_from_tokens(state.outputs[k], timestamp_begin, eot, s, e, window=k):
            tokens.append(dataclasses.replace(p, start=_clip(p.start, s, e), end=_clip(p.end, s, e)))
    n_pieces = len(state.pieces) - len(state.tail_of)
    return {
        "text": decode_text([p.token for p in tokens]).strip(),
        "segments": longform.segments(tokens, decode_text),
        "vad": {
            "pieces": n_pieces,
            "speech_seconds": round(sum(e - s for s, e in state.pieces[:n_pieces]) / sr, 2),
            "tails_decoded_again": len(state.tail_of),
            "decoded_again_hotter": state.hotter,
            "split_speech": [round(c / sr, 2) for c in state.split],
        },
    }


def _clip(t: float | None, lo: float, hi: float) -> float | None:
    return None if t is None else min(max(t, lo), hi)
