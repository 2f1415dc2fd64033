"""Chunked long-form transcription with the real tiny.en on a > 2-minute recording of real speech.

The recording (``conftest.recording``) is the bundled clips and the bundled LibriVox sentences joined
with short silences, twice (the second time in reverse order). Every run here uses batch 8, fp32 and a timestamp
prompt, so the 8-device runs share one compiled program; the 1-device run compiles a second one.
"""

from __future__ import annotations

import io
import json

import jax
import numpy as np
import pytest
import soundfile as sf
import srt
import webvtt

from distil_whisper_jax.cli import transcribe as cli
from distil_whisper_jax.decode import chunked
from distil_whisper_jax.decode import transcribe as tr
from distil_whisper_jax.decode.transcribe import TranscribeConfig
from distil_whisper_jax.speech import audio, subtitles
from distil_whisper_jax.speech.wer import wer


@pytest.fixture(scope="module")
def chunked_run(recording, odd_inputs, tmp_path_factory):
    """The long recording (and the odd inputs) through ``run`` with ``--long_form chunked --output_dir``
    (8 devices, batch 8: 9 + 1 + 2 windows in two batches)."""
    out = tmp_path_factory.mktemp("out")
    inputs = (str(recording[0]), *map(str, odd_inputs))
    cfg = TranscribeConfig(inputs=inputs, long_form="chunked", output_dir=str(out), output_json=str(out / "all.json"))
    assert tr.run(cfg) == 0
    results = json.loads((out / "all.json").read_text())
    assert [r["file"] for r in results] == list(inputs)
    assert json.loads((out / "long.json").read_text()) == results[0]
    return out, results[0], results[1:]


def test_chunked_wer_within_two_points_of_the_pieces(tiny, pieces, recording, chunked_run):
    one_by_one = tr.transcribe([p for p, _ in pieces], tiny, batch_size=8, return_timestamps=True, progress=False)
    texts = {r["file"]: r["text"] for r in one_by_one}
    order = pieces + pieces[::-1]
    baseline = wer([recording[1]], [" ".join(texts[str(p)] for p, _ in order)])
    long_wer = wer([recording[1]], [chunked_run[1]["text"]])
    print(f"WER: chunked long-form {long_wer:.2f}, pieces one by one {baseline:.2f}")
    assert long_wer <= baseline + 2.0


def test_segments_are_monotonic_inside_the_audio_and_carry_the_text(recording, chunked_run):
    result = chunked_run[1]
    segs = result["segments"]
    assert len(segs) > 10
    prev_end = 0.0
    for s in segs:
        assert prev_end <= s["start"] <= s["end"] <= recording[2]
        prev_end = s["end"]
    assert segs[-1]["end"] > recording[2] - 30  # the segments reach the last window
    assert "".join(s["text"] for s in segs).split() == result["text"].split()


def test_a_click_and_silence_give_results_inside_their_audio(chunked_run, odd_inputs):
    for r, path in zip(chunked_run[2], odd_inputs):
        assert "error" not in r and isinstance(r["text"], str)
        for s in r["segments"]:
            assert 0 <= s["start"] <= s["end"] <= sf.info(path).duration + 1e-6


def test_chunked_is_identical_on_one_and_eight_devices(tiny, recording, chunked_run):
    one = tr.transcribe([recording[0]], tiny, long_form="chunked", devices=jax.local_devices()[:1], progress=False)[0]
    assert one["text"] == chunked_run[1]["text"]
    assert one["segments"] == chunked_run[1]["segments"]


def _vtt_seconds(clock: str) -> float:
    h, m, s = clock.split(":")
    return 3600 * int(h) + 60 * int(m) + float(s)


def test_output_dir_files_parse(chunked_run):
    out, result, _ = chunked_run
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["all.json"] + [f"{n}.{e}" for n in ("click", "long", "silence") for e in subtitles.WRITERS])
    assert (out / "long.txt").read_text() == result["text"] + "\n"
    subs = list(srt.parse((out / "long.srt").read_text()))
    captions = webvtt.from_buffer(io.StringIO((out / "long.vtt").read_text()))
    timed = [s for s in result["segments"] if s["text"].strip()]
    assert len(subs) == len(captions) == len(timed)
    for sub, cap, seg in zip(subs, captions, timed):
        assert sub.content == cap.text == seg["text"].strip()
        assert sub.start.total_seconds() == pytest.approx(seg["start"], abs=1e-3)
        assert sub.end.total_seconds() == pytest.approx(seg["end"], abs=1e-3)
        assert _vtt_seconds(cap.start) == pytest.approx(seg["start"], abs=1e-3)
        assert _vtt_seconds(cap.end) == pytest.approx(seg["end"], abs=1e-3)


def test_long_file_without_long_form_names_the_flag(tiny, recording):
    [r] = tr.transcribe([recording[0]], tiny, progress=False)
    assert "longer than the model's 30 s input" in r["error"] and "--long_form chunked" in r["error"]


def test_bad_long_form_settings_are_refused_before_any_work(tiny, recording, tmp_path, capsys):
    assert cli.main([str(recording[0]), "--long_form", "sequential", "--num_beams", "2"]) == 2
    assert "--long_form sequential decodes greedily" in capsys.readouterr().err
    assert cli.main([str(recording[0]), "--chunk_length_s", "20"]) == 2
    assert "--chunk_length_s needs --long_form chunked" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--chunk_length_s must be > 0 and at most the model's input length 30 s"):
        tr.transcribe([recording[0]], tiny, long_form="chunked", chunk_length_s=31)
    with pytest.raises(ValueError, match="less than half the chunk"):
        chunked.window_sizes(tiny.config, 20, 10)
    (tmp_path / "a").mkdir()
    sf.write(tmp_path / "a" / "long.flac", np.zeros(1600, np.float32), audio.SAMPLE_RATE)
    with pytest.raises(ValueError, match="would both write long"):
        tr.run(TranscribeConfig(inputs=(str(recording[0]), str(tmp_path / "a")), output_dir=str(tmp_path / "o")))


def test_window_sizes_follow_the_model_input(tiny):
    assert chunked.window_sizes(tiny.config, None, None) == (480000, 80000)
    student = tiny.config.replace(max_source_positions=750)
    assert student.input_seconds == 15.0
    assert chunked.window_sizes(student, None, None) == (240000, 40000)


def test_collapse_is_a_long_segment_with_few_words():
    tb, eot = 1000, 999
    ts = lambda s: tb + round(s / 0.02)  # noqa: E731
    assert chunked.collapsed([ts(0), 5, 6, 7, ts(21.76), eot], tb, eot, 30.0)  # 3 tokens in 21.76 s
    assert chunked.collapsed([ts(0), 5, 6, 7], tb, eot, 30.0)  # left open: ends with the window
    speech = [ts(0)] + list(range(40)) + [ts(12.0), ts(12.0), eot]  # the empty open segment is fine
    assert not chunked.collapsed(speech, tb, eot, 30.0)
    assert not chunked.collapsed([ts(0), 5, ts(2.0), eot], tb, eot, 30.0)  # short segments are fine


def test_retry_window_keeps_an_overlap_with_both_neighbours():
    ws = chunked.longform.chunk_windows(1000, 300, 50)
    first, middle, last = (
        chunked.retry_window(ws[0], 50),
        chunked.retry_window(ws[1], 50),
        chunked.retry_window(ws[-1], 50),
    )
    assert (first.start, first.end) == (0, 275) and first.end > ws[1].start
    assert (middle.start, middle.end) == (ws[1].start + 25, ws[1].end) and middle.start < ws[0].end
    assert (last.start, last.end) == (ws[-1].start + 25, 1000)
    assert chunked.retry_window(chunked.longform.chunk_windows(200, 300, 50)[0], 50) is None


def test_output_dir_write_errors_are_returned_not_raised(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    result = {"file": "a.wav", "text": "hi", "segments": [{"start": 0.0, "end": 1.0, "text": " hi"}]}
    errors = tr.write_outputs([result, {"file": "b.wav", "error": "unreadable"}], [blocker / "a", tmp_path / "b"])
    assert len(errors) == len(subtitles.WRITERS) and all(str(blocker) in e for e in errors)
    assert not (tmp_path / "b.txt").exists()  # nothing is written for an unreadable input
    assert tr.write_outputs([result], [tmp_path / "a"]) == []
    assert list(srt.parse((tmp_path / "a.srt").read_text()))[0].content == "hi"
