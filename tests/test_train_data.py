"""The training stream on the shared data layer: duration filters without a ``duration`` column (audio
headers), the one WER-filter rule (strict threshold, empty references, rows without ground truth, a
dataset without a ``wer`` column) and column roles read from a labelled directory's ``schema.json``."""

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from distil_whisper_jax.assets import bundled_clips
from distil_whisper_jax.data import eval_sets, sources, wer_filter
from distil_whisper_jax.data import stream as train_data
from distil_whisper_jax.speech import audio


def _stream(path, tiny, specials, **kw):
    opts = train_data.DataOptions(labels=train_data.LabelOptions(max_label_length=64), **kw)
    return train_data.TrainStream(train_data.open_sources(str(path)), None, tiny.tokenizer, specials, opts, seed=0)


def _kept_rows(stream, n_rows):
    """Row ids kept over one whole epoch of a one-source stream."""
    kept = set()
    while stream.state.epochs[0] == 0 and stream.state.cursors[0] < n_rows:
        before = stream.state.epochs[0]
        ex = stream.next_example()
        if stream.state.epochs[0] == before:
            kept.add(ex.key[1])
    return kept


@pytest.fixture(scope="module")
def tsv_with_long_clip(tmp_path_factory):
    """A TSV manifest (no duration column) of the bundled clips, the 42 s one included."""
    d = tmp_path_factory.mktemp("tsv")
    lines = ["audio\twhisper_transcript"]
    for p, text in bundled_clips(None):
        shutil.copy(p, d / p.name)
        lines.append(f"{p.name}\t{text}")
    (d / "train.tsv").write_text("\n".join(lines) + "\n")
    return d / "train.tsv"


def test_duration_filter_without_duration_column_reads_audio_headers(tsv_with_long_clip, tiny, specials):
    names = [p.name for p, _ in bundled_clips(None)]
    long_row = names.index("piper_moon_long.flac")
    s = _stream(tsv_with_long_clip, tiny, specials)  # default max 30 s: the 42 s clip must never reach a batch
    for _ in range(4):  # several epochs of batches, each featurised as training would
        batch = s.next_batch(3)
        assert long_row not in [e.key[1] for e in batch]
        train_data.features(batch, s.sources, s.opts, 80)
    assert s.state.filtered["duration"] >= 2
    # min/max from the header: only the 5-12 s clips (piper_train 5.3 s, jfk 11 s)
    s = _stream(tsv_with_long_clip, tiny, specials, min_duration_in_seconds=5.0, max_duration_in_seconds=12.0)
    assert _kept_rows(s, len(names)) == {names.index("piper_train.flac"), names.index("jfk.flac")}
    # durations are read when the stream is built: a missing file is reported before any training step
    bad = tsv_with_long_clip.parent / "bad.tsv"
    bad.write_text(tsv_with_long_clip.read_text() + "missing.wav\tx\n")
    with pytest.raises(audio.AudioError, match=rf"bad.tsv row {len(names)}: .*missing.wav"):
        _stream(bad, tiny, specials)


def test_wer_rule_cases():
    drop = lambda ref, w, keep=False, hyp=True: wer_filter.drop_reason(ref, hyp, w, 10.0, keep)  # noqa: E731
    assert drop(True, 9.99) is None and drop(True, 10.0) == "wer"  # strictly below the threshold
    assert drop(True, None) == "empty_reference"
    assert drop(False, None) == "no_ground_truth" and drop(False, None, keep=True) is None
    assert drop(True, 0.0, hyp=False) == "no_pseudo_label"
    assert wer_filter.drop_reason(False, False, None, None, False) is None  # no threshold: keep everything
    assert wer_filter.row_wer("[laughter]", "ha ha", None) == (None, 0, 0)  # normalises to nothing
    assert wer_filter.row_wer("  ", "x", None) == (None, 0, 0) and not wer_filter.has_ground_truth("  ")
    w, errs, words = wer_filter.row_wer("Go forward ten meters.", "<|0.00|> go forward 10 meters<|1.50|>", None)
    assert (w, errs, words) == (0.0, 0, 4)  # normalised, timestamps ignored


@pytest.fixture(scope="module")
def texts_dir(tmp_path_factory, clips, clip_audio):
    """Labelled-style rows with ``text`` and ``whisper_transcript`` but no ``wer`` column."""
    wav = clip_audio[0][: 16000 * 2]
    buf = io.BytesIO()
    sf.write(buf, wav, 16000, format="FLAC", subtype="PCM_16")
    cell = {"bytes": buf.getvalue(), "path": "a.flac"}
    pairs = [
        ("go forward ten meters", "Go forward 10 meters."),  # WER 0
        ("the cat sat on the mat today with a hat", "the cat sat on the mat today with a"),  # 10
        ("the cat sat on", "the cat sat in"),  # 25
        ("[laughter]", "ha ha"),  # reference normalises to nothing
        (None, "no ground truth here"),
        ("   ", "blank ground truth"),
    ]
    rows = [{"audio": cell, "text": t, "whisper_transcript": h, "duration": 2.0} for t, h in pairs]
    d = tmp_path_factory.mktemp("texts")
    pq.write_table(pa.Table.from_pylist(rows), d / "part-0.parquet")
    return d


def test_training_wer_filter_computes_wer_without_column(texts_dir, tiny, specials):
    s = _stream(texts_dir, tiny, specials, wer_threshold=10.0)
    assert _kept_rows(s, 6) == {0}  # 10 % is not below 10; empty and missing references dropped
    assert {k: s.state.filtered[k] > 0 for k in ("wer", "empty_reference", "no_ground_truth")} == dict.fromkeys(
        ("wer", "empty_reference", "no_ground_truth"), True
    )
    s = _stream(texts_dir, tiny, specials, wer_threshold=30.0, keep_rows_without_ground_truth=True)
    assert _kept_rows(s, 6) == {0, 1, 2, 4, 5}  # audio-only rows kept on request; [laughter] never
    s = _stream(texts_dir, tiny, specials)  # no threshold: every row
    assert _kept_rows(s, 6) == set(range(6))


def test_labelled_directory_records_columns_and_trains_without_column_flags(
    tmp_path, clips, clip_audio, tiny, specials
):
    """A directory with ``schema.json`` (as the labeller writes it) whose audio column is ``wav``: the stream
    and the evaluation set find the audio and the ground truth without flags."""
    rows = []
    for (path, text), wav in zip(clips[:3], clip_audio[:3]):
        buf = io.BytesIO()
        sf.write(buf, wav[: 16000 * 3], 16000, format="FLAC", subtype="PCM_16")
        rows.append(
            {"wav": {"bytes": buf.getvalue(), "path": Path(path).name}, "sentence": text, "whisper_transcript": text}
        )
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "shard-00000000.parquet")
    (tmp_path / sources.SCHEMA_FILE).write_text(json.dumps({"columns": {"audio": "wav", "text": "sentence"}}))
    s = _stream(tmp_path, tiny, specials, wer_threshold=50.0)
    batch = s.next_batch(2)
    assert train_data.features(batch, s.sources, s.opts, 80).shape == (2, 80, 3000)
    ev = eval_sets.load_eval_set(str(tmp_path), None, None, None, 80)
    assert ev.texts == [t for _, t in clips[:3]]
    with pytest.raises(sources.DataConfigError, match=r"missing column\(s\) \['audio'\]"):
        _stream(tmp_path, tiny, specials, audio_column_name="audio")  # a flag still overrides the recorded role
    np.testing.assert_array_equal(ev.features[0], audio.log_mel_spectrogram([clip_audio[0][: 16000 * 3]], 80)[0])
