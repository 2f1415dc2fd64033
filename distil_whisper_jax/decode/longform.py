"""Long-form transcription pieces that need no model: chunk windows and the merge of chunk outputs.

Chunked long-form cuts a recording into windows of ``chunk`` samples that overlap by ``stride`` samples
on each side (the first window has no left overlap, the last none on the right), transcribes every window
independently (so all of them can run in one batched, device-parallel generation), and stitches the
token sequences back together. Each junction is found by sliding the new window's tokens along the tail
of the text so far and taking the offset with the most agreeing tokens; the text is cut in the middle of
the agreeing stretch, so each side keeps the half it heard with more context. This is the merge the
transformers ASR pipeline and whisper-jax use; here it runs on text tokens only, and timestamps travel
with the tokens as absolute times so that segments survive the merge.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

SECONDS_PER_TIMESTAMP = 0.02  # Whisper's timestamp tokens step in 20 ms
MERGE_SLACK_SECONDS = 1.0  # how far apart two windows' segment times may be and still be aligned


@dataclasses.dataclass(frozen=True)
class Window:
    """One chunk of a recording, in samples: ``audio[start:end]``; the stride is the overlap with the
    neighbouring windows (0 at the recording's ends)."""

    start: int
    end: int
    stride_left: int
    stride_right: int


def chunk_windows(n_samples: int, chunk: int, stride: int) -> list[Window]:
    """Windows of ``chunk`` samples advancing by ``chunk - 2 * stride`` that cover ``n_samples``.

    >>> [(w.start, w.end) for w in chunk_windows(100, 40, 10)]
    [(0, 40), (20, 60), (40, 80), (60, 100)]
    """
    if chunk <= 0 or stride < 0:
        raise ValueError(f"chunk must be > 0 and stride ≥ 0 samples, got chunk={chunk}, stride={stride}")
    step = chunk - 2 * stride
    if step <= 0:
        raise ValueError(f"stride ({stride} samples) must be less than half the chunk ({chunk} samples)")
    windows: list[Window] = []
    start = 0
    while True:
        end = min(start + chunk, n_samples)
        last = start + chunk >= n_samples
        windows.append(Window(start, end, 0 if start == 0 else stride, 0 if last else stride))
        if last:
            return windows
        start += step


def stream_windows(blocks: Iterable[np.ndarray], chunk: int, stride: int) -> Iterator[tuple[Window, np.ndarray]]:
    """``chunk_windows`` of a recording that arrives in blocks, with each window's samples: the same windows,
    while only about one window of samples is held (a 2-hour file is never decoded whole)."""
    chunk_windows(1, chunk, stride)  # the same ValueError for sizes that cannot work
    step = chunk - 2 * stride
    it = iter(blocks)
    buf, buf_start, start, done = np.zeros(0, np.float32), 0, 0, False
    while True:
        while not done and buf_start + len(buf) <= start + chunk:  # one sample more than the window: is it last?
            block = next(it, None)
            if block is None:
                done = True
            else:
                buf = np.concatenate([buf, np.asarray(block, np.float32)])
        n_known = buf_start + len(buf)
        last = done and start + chunk >= n_known
        end = min(start + chunk, n_known)
        yield (
            Window(start, end, 0 if start == 0 else stride, 0 if last else stride),
            buf[start - buf_start : end - buf_start].copy(),
        )
        if last:
            return
        start += step
        buf, buf_start = buf[start - buf_start :], start


def best_overlap(left: Sequence[int], right: Sequence[int]) -> tuple[int, int]:
    """Where to join ``right`` onto ``left``: ``(cut_left, cut_right)`` such that
    ``left[:cut_left] + right[cut_right:]`` is the merged sequence.

    Every offset of ``right`` against the end of ``left`` is scored by the fraction of aligned positions
    whose tokens agree (plus a tiny bonus for longer overlaps, so ties go to the longer one); an
    alignment needs at least two agreeing tokens. The cut is in the middle of the best aligned stretch.
    Without any such alignment the sequences are simply concatenated.
    """
    a, b = np.asarray(left, np.int64), np.asarray(right, np.int64)
    n, m = len(a), len(b)
    best, cut = 0.0, (n, 0)
    for i in range(1, n + m):  # i = number of positions of left's tail and right's head that are aligned
        l0, l1 = max(0, n - i), min(n, n + m - i)
        r0, r1 = max(0, i - n), min(m, i)
        matches = int(np.count_nonzero(a[l0:l1] == b[r0:r1]))
        score = matches / i + i / 10000.0
        if matches > 1 and score > best:
            best, cut = score, ((l0 + l1) // 2, (r0 + r1) // 2)
    return cut


@dataclasses.dataclass(frozen=True)
class Piece:
    """A text token with the absolute times of the segment it was predicted in (None without timestamps)."""

    token: int
    start: float | None
    end: float | None
    origin: tuple[int, int]  # (window index, segment index): tokens of one segment share it


def pieces_from_tokens(
    ids: Sequence[int], timestamp_begin: int, eot: int, offset: float, end_time: float, window: int
) -> list[Piece]:
    """Text tokens of one window's output with their segment's absolute start/end.

    Timestamp tokens (``≥ timestamp_begin``) are relative to the window start ``offset`` (seconds); a
    segment left open by the end of generation ends at ``end_time``. Without timestamp tokens every
    piece has ``start = end = None``.
    """
    pieces: list[Piece] = []
    pending: list[int] = []
    start: float | None = None
    seg = 0
    timed = any(t >= timestamp_begin for t in ids)

    def flush(stop: float | None) -> None:
        nonlocal seg
        if pending:
            s = start if timed else None
            e = stop if timed else None
            pieces.extend(Piece(t, s, e, (window, seg)) for t in pending)
            pending.clear()
        seg += 1

    for t in ids:
        if t == eot:
            break
        if t >= timestamp_begin:
            time_s = offset + (t - timestamp_begin) * SECONDS_PER_TIMESTAMP
            if start is None:
                start = time_s
            else:
                flush(time_s)
                start = None
        elif t < eot:  # text (other special tokens, e.g. a stray prompt token, carry no text)
            if start is None and timed:
                start = pieces[-1].end if pieces else offset
            pending.append(t)
    flush(end_time)
    return pieces


def merge_pieces(windows: Sequence[Sequence[Piece]]) -> list[Piece]:
    """Stitch the windows' pieces together at their best token overlaps (see ``best_overlap``).

    Only text that can have been heard twice is aligned: a window overlaps only its predecessor, so its
    tokens are compared with the merged text's tail from the previous window, never with older text
    (speech repeated minutes apart must not be taken for the overlap); and with timestamps, only the
    segments of both sides that meet in time (within ``MERGE_SLACK_SECONDS``). Without any agreeing
    stretch the new window is appended. The pieces of ``windows[k]`` must have been made with ``window=k``."""
    merged: list[Piece] = []
    for k, new in enumerate(windows):
        tail = len(merged)
        while tail > 0 and merged[tail - 1].origin[0] == k - 1:
            tail -= 1
        head = len(new)
        starts = [p.start for p in new if p.start is not None]
        ends = [p.end for p in merged[tail:] if p.end is not None]
        if starts and ends:
            first, last = min(starts) - MERGE_SLACK_SECONDS, max(ends) + MERGE_SLACK_SECONDS
            while tail < len(merged) and merged[tail].end is not None and merged[tail].end < first:
                tail += 1
            head = next((j for j, p in enumerate(new) if p.start is not None and p.start > last), len(new))
        cut_left, cut_right = best_overlap([p.token for p in merged[tail:]], [p.token for p in new[:head]])
        merged = merged[: tail + cut_left] + list(new[cut_right:])
    return merged


def segments(pieces: Sequence[Piece], decode: Callable[[list[int]], str]) -> list[dict]:
    """``{"start", "end", "text"}`` segments from merged pieces.

    Consecutive pieces of one (window, segment) form a segment. Where a junction cuts through a segment
    on both sides, the two halves overlap in time and are joined into one. Times are made monotonic
    (a start never precedes the previous end) and rounded to 10 ms.
    """
    groups: list[list[Piece]] = []
    for p in pieces:
        if groups and groups[-1][-1].origin == p.origin:
            groups[-1].append(p)
        elif groups and _overlaps(groups[-1], p):
            groups[-1].append(p)
        else:
            groups.append([p])
    out: list[dict] = []
    prev_end = 0.0
    for g in groups:
        start, end = g[0].start, g[-1].end
        if start is not None and end is not None:
            start = max(start, prev_end)
            end = max(end, start)
            prev_end = end
            start, end = round(start, 2), round(end, 2)
        out.append({"start": start, "end": end, "text": decode([p.token for p in g])})
    return out


def _overlaps(group: list[Piece], p: Piece) -> bool:
    """Does ``p`` start a different window's segment that overlaps ``group``'s segment in time?"""
    last = group[-1]
    return (
        last.origin[0] != p.origin[0]
        and last.end is not None
        and p.start is not None
        and p.start < last.end
        and p.origin != last.origin
    )
