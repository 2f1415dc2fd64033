"""Chunked long-form transcription: every window of every file through batched generation.

Each file is cut into overlapping windows (``longform.chunk_windows``); the windows of all files are queued and
sent to the decoder ``batch_size`` at a time, so a few static-shape compiled programs serve them all (the last
batch is padded by the caller's decoder to the next of its row counts). When the last window of a file comes back,
the file's token sequences are stitched at their overlaps (``longform.merge_pieces``) and cut into timestamped
segments.

A window can make the decoder collapse: typically one starting in the middle of a phrase, which a small model
answers with a few words stamped over most of the window ("<|0.00|> the oldest most.<|21.76|>") and nothing
else. Such an output (``collapsed``) is decoded once more from a window with its first ``stride / 2`` seconds
cut off (the last ``stride / 2`` for the first window); the overlaps with the neighbours stay long enough for
the merge.

Memory: files are read block by block (``audio.stream_audio``, as ``transcribe`` passes them) and cut into
windows as the blocks arrive (``longform.stream_windows``), so only about one window per file and the windows
of the batch in flight are held: a recording of hours never sits in memory whole. Each window's token ids are
kept until its file is merged.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from distil_whisper_jax.core.model import WhisperConfig
from distil_whisper_jax.decode import longform
from distil_whisper_jax.speech import audio

log = logging.getLogger(__name__)

COLLAPSE_MIN_SECONDS = 8.0  # a segment at least this long ...
COLLAPSE_MAX_TOKENS_PER_SECOND = 1.0  # ... with fewer text tokens per second than this (speech: ~3-4)

# Decoder: a batch of waveforms (each at most one model input long) → generated ids per row, up to EOT.
Decoder = Callable[[list[np.ndarray]], list[list[int]]]


def window_sizes(config: WhisperConfig, chunk_length_s: float | None, stride_length_s: float | None) -> tuple[int, int]:
    """(chunk, stride) in samples. The chunk defaults to the model's input length; the stride (the overlap
    on each side) to a sixth of the chunk. ``ValueError`` naming the flag for sizes the model cannot take."""
    limit = config.input_seconds
    chunk_s = limit if chunk_length_s is None else float(chunk_length_s)
    if not 0 < chunk_s <= limit:
        raise ValueError(
            f"--chunk_length_s must be > 0 and at most the model's input length {limit:g} s, got {chunk_s:g}"
        )
    stride_s = chunk_s / 6 if stride_length_s is None else float(stride_length_s)
    if not 0 <= stride_s < chunk_s / 2:
        raise ValueError(
            f"stride_length_s must be ≥ 0 and less than half the chunk ({chunk_s / 2:g} s), got {stride_s:g}"
        )
    return int(round(chunk_s * audio.SAMPLE_RATE)), int(round(stride_s * audio.SAMPLE_RATE))


def collapsed(ids: Sequence[int], timestamp_begin: int, eot: int, window_seconds: float) -> bool:
    """Does a window's output contain a segment of at least ``COLLAPSE_MIN_SECONDS`` with some text but
    fewer than ``COLLAPSE_MAX_TOKENS_PER_SECOND`` text tokens per second? A segment left open ends with the
    window; one without text (the decoder stopping before speech cut by the window's end) is fine."""
    start, n_text = None, 0
    for t in list(ids) + [timestamp_begin + round(window_seconds / longform.SECONDS_PER_TIMESTAMP)]:
        if t >= timestamp_begin:
            time_s = (t - timestamp_begin) * longform.SECONDS_PER_TIMESTAMP
            if start is None:
                start, n_text = time_s, 0
                continue
            length = time_s - start
            if length >= COLLAPSE_MIN_SECONDS and 0 < n_text < COLLAPSE_MAX_TOKENS_PER_SECOND * length:
                return True
            start = None
        elif t < eot:
            n_text += 1
        elif t == eot:
            break
    return False


def retry_window(w: longform.Window, stride: int) -> longform.Window | None:
    """The window a collapsed output is decoded again from: ``stride / 2`` samples shorter at its start (at its
    end for a recording's first window); None for a recording of one window (nothing to overlap with)."""
    cut = stride // 2
    if (w.stride_left == 0 and w.stride_right == 0) or cut == 0:
        return None
    if w.stride_left == 0:
        return dataclasses.replace(w, end=w.end - cut, stride_right=w.stride_right - cut)
    return dataclasses.replace(w, start=w.start + cut, stride_left=w.stride_left - cut)


@dataclasses.dataclass
class _File:
    """A file whose windows are in flight: its windows and the ids decoded for each so far."""

    windows: list[longform.Window]
    n_samples: int
    outputs: dict[int, list[int]] = dataclasses.field(default_factory=dict)
    complete: bool = False  # every window of the file is known (its stream has ended)

    @property
    def done(self) -> bool:
        return self.complete and len(self.outputs) == len(self.windows)


@dataclasses.dataclass
class _Item:
    """One window waiting for the decoder; ``samples`` is ``audio[window.start:window.end]``."""

    file: int
    index: int
    window: longform.Window
    samples: np.ndarray
    retried: bool = False


def transcribe_files(
    names: Sequence[str],
    load: Callable[[int], np.ndarray | Iterable[np.ndarray]],
    decoder: Decoder,
    batch_size: int,
    chunk: int,
    stride: int,
    timestamp_begin: int,
    eot: int,
    decode_text: Callable[[list[int]], str],
    on_done: Callable[[int], None] | None = None,
) -> list[dict]:
    """One dict per input in order: ``{"file", "text", "segments"}`` or ``{"file", "error"}`` for an input
    that could not be read. Input ``i`` is named ``names[i]``; ``load(i)`` returns its 16 kHz waveform or an
    iterable of blocks of it (``audio.stream_audio``: then only the windows in flight are held), or raises
    ``audio.AudioError``; called once per input, in order. ``decoder`` must have been built with a
    timestamp prompt; ``on_done(i)`` is called as input ``i`` finishes (for progress)."""
    results: list[dict] = [{"file": str(n)} for n in names]
    open_files: dict[int, _File] = {}
    queue: list[_Item] = []

    def flush(batch: list[_Item]) -> None:
        for item, ids in zip(batch, decoder([q.samples for q in batch])):
            retry = None if item.retried else retry_window(item.window, stride)
            seconds = (item.window.end - item.window.start) / audio.SAMPLE_RATE
            if retry is not None and collapsed(ids, timestamp_begin, eot, seconds):
                lo, hi = retry.start - item.window.start, retry.end - item.window.start
                log.info(
                    "%s: the decoder collapsed on %.1f-%.1f s; decoding %.1f-%.1f s again",
                    names[item.file],
                    *(x / audio.SAMPLE_RATE for x in (item.window.start, item.window.end, retry.start, retry.end)),
                )
                queue.append(_Item(item.file, item.index, retry, item.samples[lo:hi], retried=True))
                continue
            state = open_files.get(item.file)
            if state is None:  # the file failed further in: its windows are dropped
                continue
            state.windows[item.index] = item.window
            state.outputs[item.index] = ids
            finish(item.file)

    def finish(i: int) -> None:
        if open_files[i].done:
            results[i].update(merge_file(open_files.pop(i), timestamp_begin, eot, decode_text))
            if on_done:
                on_done(i)

    for i in range(len(names)):
        try:
            source = load(i)
            blocks = [source] if isinstance(source, np.ndarray) else source
            open_files[i] = state = _File([], 0)
            for k, (w, samples) in enumerate(longform.stream_windows(blocks, chunk, stride)):
                state.windows.append(w)
                queue.append(_Item(i, k, w, samples))
                while len(queue) >= batch_size:
                    batch, queue[:] = queue[:batch_size], queue[batch_size:]
                    flush(batch)
            state.n_samples, state.complete = state.windows[-1].end, True
            finish(i)
        except audio.AudioError as e:
            open_files.pop(i, None)
            results[i] = {"file": str(names[i]), "error": str(e)}
            if on_done:
                on_done(i)
    while queue:
        batch, queue[:] = queue[:batch_size], queue[batch_size:]
        flush(batch)
    return results


def merge_file(
    state: _File, timestamp_begin: int, eot: int, decode_text: Callable[[list[int]], str]
) -> dict[str, object]:
    """``{"text", "segments"}`` of a file from its windows' ids: stitched at the overlaps, segment times
    absolute and clipped to the recording."""
    sr = audio.SAMPLE_RATE
    pieces = [
        longform.pieces_from_tokens(
            state.outputs[k], timestamp_begin, eot, offset=w.start / sr, end_time=w.end / sr, window=k
        )
        for k, w in enumerate(state.windows)
    ]
    merged = longform.merge_pieces(pieces)
    duration = round(state.n_samples / sr, 2)
    segments = []
    for s in longform.segments(merged, decode_text):
        if s["start"] is not None:  # a timestamp predicted in the padding after the end of the audio
            s["start"], s["end"] = min(s["start"], duration), min(s["end"], duration)
        segments.append(s)
    return {"text": decode_text([p.token for p in merged]).strip(), "segments": segments}
