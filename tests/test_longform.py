"""Long-form pieces without a model: chunk windows, the overlap merge, segments, subtitle files."""

from __future__ import annotations

import io

import numpy as np
import pytest
import srt
import webvtt

from distil_whisper_jax.decode import longform
from distil_whisper_jax.speech import subtitles

TB, EOT = 1000, 999  # timestamp_begin and end-of-text of a toy vocabulary


@pytest.mark.parametrize("n", [1, 39, 40, 41, 100, 101, 1234])
def test_windows_cover_the_recording(n):
    ws = longform.chunk_windows(n, 40, 10)
    assert ws[0].start == 0 and ws[0].stride_left == 0 and ws[-1].end == n and ws[-1].stride_right == 0
    covered = np.zeros(n, bool)
    for a, b in zip(ws, ws[1:]):
        assert b.start - a.start == 20 and a.end - b.start == 20  # overlap = 2 strides
        assert a.stride_right == b.stride_left == 10
    for w in ws:
        assert 0 < w.end - w.start <= 40
        covered[w.start : w.end] = True
    assert covered.all()


@pytest.mark.parametrize("n", [0, 1, 39, 40, 41, 100, 101, 1234])
@pytest.mark.parametrize("block", [1, 7, 40, 41, 5000])
def test_streamed_windows_equal_the_whole_recordings(n, block):
    """Windows cut as blocks arrive are chunk_windows of the whole recording, with the same samples."""
    x = np.arange(n, dtype=np.float32)
    got = list(longform.stream_windows((x[i : i + block] for i in range(0, n, block)), 40, 10))
    assert [w for w, _ in got] == longform.chunk_windows(n, 40, 10)
    for w, samples in got:
        np.testing.assert_array_equal(samples, x[w.start : w.end])


def test_streamed_windows_hold_about_one_window():
    """A 2-hour recording in 1 s blocks: the generator never holds more than a window and a block."""
    chunk, stride, block = 30 * 16000, 5 * 16000, 16000
    held = []

    def blocks():
        for _ in range(2 * 3600):
            held.append(gen.gi_frame.f_locals["buf"].size if gen.gi_frame else 0)
            yield np.zeros(block, np.float32)

    gen = longform.stream_windows(blocks(), chunk, stride)
    n = sum(1 for _ in gen)
    assert n == len(longform.chunk_windows(2 * 3600 * 16000, chunk, stride))
    assert max(held) <= chunk + block


def test_windows_reject_bad_sizes():
    with pytest.raises(ValueError, match="half the chunk"):
        longform.chunk_windows(100, 40, 20)
    with pytest.raises(ValueError):
        longform.chunk_windows(100, 0, 0)


def _split(seq, size, step):
    return [seq[i : i + size] for i in range(0, max(len(seq) - size, 0) + step, step) if seq[i : i + size]]


@pytest.mark.parametrize("size,step", [(40, 30), (40, 20), (25, 15)])
def test_merge_reconstructs_overlapping_windows(size, step):
    rng = np.random.default_rng(0)
    seq = list(rng.integers(0, 500, 200))
    parts = _split(seq, size, step)
    merged = parts[0]
    for p in parts[1:]:
        cl, cr = longform.best_overlap(merged, p)
        merged = merged[:cl] + p[cr:]
    assert merged == seq


def test_merge_survives_disagreement_at_window_edges():
    # Each window mishears its first and last two tokens (cut words); the middle of the overlap agrees.
    seq = list(range(100, 160))
    a = seq[:32] + [1, 2]
    b = [3, 4] + seq[22:]
    cl, cr = longform.best_overlap(a, b)
    assert a[:cl] + b[cr:] == seq


def test_no_overlap_concatenates():
    assert longform.best_overlap([1, 2, 3], [4, 5, 6]) == (3, 0)
    assert longform.best_overlap([], [4, 5]) == (0, 0)


def _timed_tokens(words, t0, t1):
    """One segment: <|t0|> words <|t1|> with times relative to the window."""
    return [TB + round(t0 / 0.02)] + words + [TB + round(t1 / 0.02)]


def test_segments_across_a_junction_are_monotonic_and_complete():
    # Window 0 covers 0-30 s, window 1 starts at 20 s; both hear words 40-49 in the overlap.
    w0 = _timed_tokens(list(range(10, 40)), 0.0, 14.0) + _timed_tokens(list(range(40, 50)), 20.0, 29.5) + [EOT]
    w1 = _timed_tokens(list(range(40, 50)), 0.4, 9.0) + _timed_tokens(list(range(50, 70)), 9.0, 25.0) + [EOT]
    pieces = [
        longform.pieces_from_tokens(w0, TB, EOT, offset=0.0, end_time=30.0, window=0),
        longform.pieces_from_tokens(w1, TB, EOT, offset=20.0, end_time=50.0, window=1),
    ]
    merged = longform.merge_pieces(pieces)
    assert [p.token for p in merged] == list(range(10, 70))
    segs = longform.segments(merged, decode=lambda ids: " ".join(map(str, ids)))
    assert [s["start"] for s in segs] == [0.0, 20.0, 29.0]
    assert [s["end"] for s in segs] == [14.0, 29.0, 45.0]  # junction: starts as window 0 heard it, ends as window 1 did
    assert " ".join(s["text"] for s in segs) == " ".join(map(str, range(10, 70)))


def test_merge_never_aligns_with_text_older_than_the_previous_window():
    # The same sentence (tokens 10-29) is spoken at the start and again at the end. Window 1 stopped before
    # the repeat, and window 2 holds only the repeat: it shares nothing with window 1, so it must be
    # appended, not aligned with the first occurrence in window 0 (which would drop everything between).
    sentence = list(range(10, 30))
    w0 = _timed_tokens(sentence + list(range(30, 50)), 0.0, 28.0) + [EOT]
    w1 = _timed_tokens(list(range(40, 70)), 0.0, 22.0) + [EOT]
    w2 = _timed_tokens(sentence, 2.0, 10.0) + [EOT]
    pieces = [
        longform.pieces_from_tokens(w, TB, EOT, offset=20.0 * k, end_time=20.0 * k + 30, window=k)
        for k, w in enumerate((w0, w1, w2))
    ]
    merged = [p.token for p in longform.merge_pieces(pieces)]
    assert merged == sentence + list(range(30, 70)) + sentence


def test_merge_aligns_only_segments_that_meet_in_time():
    # Window 1 said tokens 5, 6 early on (20-25 s); window 2 (from 40 s) starts with 5, 6 again, but its
    # speech begins after window 1's last segment ended: nothing was heard twice, so nothing is cut.
    w1 = _timed_tokens([5, 6, 70, 71], 0.0, 5.0) + _timed_tokens(list(range(72, 80)), 5.0, 21.0) + [EOT]
    w2 = _timed_tokens([5, 6, 90, 91], 2.5, 10.0) + [EOT]
    pieces = [
        [],
        longform.pieces_from_tokens(w1, TB, EOT, offset=20.0, end_time=50.0, window=1),
        longform.pieces_from_tokens(w2, TB, EOT, offset=40.0, end_time=70.0, window=2),
    ]
    merged = [p.token for p in longform.merge_pieces(pieces)]
    assert merged == [5, 6, 70, 71] + list(range(72, 80)) + [5, 6, 90, 91]


def test_unterminated_segment_ends_at_window_end_and_untimed_output_has_no_times():
    p = longform.pieces_from_tokens([TB, 5, 6], TB, EOT, offset=10.0, end_time=40.0, window=0)
    assert (p[0].start, p[-1].end) == (10.0, 40.0)
    p = longform.pieces_from_tokens([5, 6, EOT, 7], TB, EOT, offset=10.0, end_time=40.0, window=0)
    assert [x.token for x in p] == [5, 6] and p[0].start is None
    segs = longform.segments(p, decode=lambda ids: "x")
    assert segs == [{"start": None, "end": None, "text": "x"}]


SEGS = [
    {"start": 0.0, "end": 2.5, "text": " Hello there."},
    {"start": 2.5, "end": 3661.25, "text": " A long --> one."},
    {"start": 3661.25, "end": None, "text": " Open end."},
    {"start": 3662.0, "end": 3663.0, "text": "  "},
]


def test_srt_parses_with_a_real_parser():
    subs = list(srt.parse(subtitles.to_srt(SEGS)))
    assert [s.content for s in subs] == ["Hello there.", "A long -> one.", "Open end."]
    assert subs[1].end.total_seconds() == pytest.approx(3661.25)
    assert all(s.start <= s.end for s in subs)


def test_vtt_parses_with_a_real_parser():
    captions = webvtt.from_buffer(io.StringIO(subtitles.to_vtt(SEGS)))
    assert [c.text for c in captions] == ["Hello there.", "A long -> one.", "Open end."]
    assert captions[1].end == "01:01:01.250"
