"""Pseudo-labelling end to end on the real tiny.en and real speech: labels, WER filter, report, device and
process counts, kill + resume, concatenation, bad inputs. Most runs share one compiled shape (global batch
2 over 2 of the 8 emulated devices, blocks of 2 rows), so the real model stays cheap."""

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from distil_whisper_jax.assets import bundled_clips, speech_manifest
from distil_whisper_jax.cli.pseudo_label import main
from distil_whisper_jax.data import blocks as data_blocks
from distil_whisper_jax.data import eval_sets
from distil_whisper_jax.data import sources as data
from distil_whisper_jax.data import stream as train_data
from distil_whisper_jax.data.row_audio import row_audio
from distil_whisper_jax.decode.transcribe import transcribe
from distil_whisper_jax.infra import config
from distil_whisper_jax.speech import audio
from distil_whisper_jax.speech.token_layout import special_tokens
from distil_whisper_jax.speech.wer import wer
from distil_whisper_jax.stages.label import pseudo_label as pl
from distil_whisper_jax.stages.label.units import PseudoLabelError

from . import fake_gcs
from .helpers import (
    free_bytes,
    free_port,
    labelled_rows,
    read_tsv,
    run_together,
    small_disk,
    subprocess_env,
    write_tsv,
)

ROOT = Path(__file__).resolve().parents[1]
# Four utterances of the bundled speech corpus (a TSV manifest, audio paths relative to it), two per
# speaker. Ground truth: row 0's is deliberately wrong (the filter must drop it), row 3's is missing.
PICK = (4, 25, 36, 34)  # 1-based rows of train.tsv: speaker A 1.9 s + 1.6 s, speaker B 4.8 s + 4.0 s
WRONG = "Please close the window before you leave the office."


def corpus_rows():
    rows = read_tsv(speech_manifest("train"))
    picked = [rows[i - 1] for i in PICK]
    truth = [r["text"] for r in picked]
    picked[0]["text"], picked[3]["text"] = WRONG, ""
    return picked, truth


ROWS, TRUTH = corpus_rows()
B2 = dict(num_local_devices=2, per_device_eval_batch_size=1, rows_per_shard=2)
B2_ARGV = ["--num_local_devices", "2", "--per_device_eval_batch_size", "1", "--rows_per_shard", "2"]
THRESHOLD = 10.0
# the WER filter in mark mode; the row without ground truth is kept (and unmarked) on request
MARK = dict(wer_threshold=THRESHOLD, wer_filter_mode="mark", keep_rows_without_ground_truth=True)
MARK_ARGV = ["--wer_threshold", str(THRESHOLD), "--wer_filter_mode", "mark", "--keep_rows_without_ground_truth"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A manifest of real speech with audio paths relative to it."""
    d = tmp_path_factory.mktemp("corpus")
    (d / "flac").mkdir()
    for r in ROWS:
        shutil.copy(speech_manifest("train").parent / r["audio"], d / r["audio"])
    return write_tsv(d / "train.tsv", ROWS)


def run(out, manifest, **kw):
    return pl.run(pl.PseudoLabelConfig(dataset_name=str(manifest), output_dir=str(out), **{**B2, **kw}))


def strip_timing(report):
    report = dict(report)
    report.pop("throughput")
    return report


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus):
    """The uninterrupted run that the others are compared with (mark mode: every row kept)."""
    out = tmp_path_factory.mktemp("ref")
    assert run(out, corpus, **MARK) == 0
    return out


def test_labels_equal_greedy_transcripts_and_8_devices_equal_1(reference, corpus, tiny, tmp_path):
    rows = labelled_rows(reference)
    assert [r["pseudo_label_rows"] for r in rows] == [[0], [1], [2], [3]]
    # the labelled output: audio is 16-bit FLAC of the 16 kHz audio the teacher heard; durations; the other columns
    for r, src in zip(rows, ROWS):
        wav, sr = sf.read(io.BytesIO(r["audio"]["bytes"]), dtype="float32")
        assert sr == 16000 and sf.info(io.BytesIO(r["audio"]["bytes"])).subtype == "PCM_16"
        np.testing.assert_array_equal(wav, audio.load_audio(corpus.parent / src["audio"]))
        assert r["duration"] == pytest.approx(float(src["duration"]), abs=1e-3)  # float64, replaces the input's
        assert (r["text"], r["speaker_id"]) == (src["text"], src["speaker_id"])
        assert r["condition_on_prev"] == []  # no speaker column given, no concatenation
        assert (
            r["whisper_transcript"] == tiny.tokenizer.decode(r["whisper_token_ids"], skip_special_tokens=True).strip()
        )
    # 8 devices x 1 (the corpus twice: one full batch of 8) and 1 device x 2 give the same rows
    out8, out1 = tmp_path / "d8", tmp_path / "d1"
    cfg8 = dict(rows_per_shard=8, per_device_eval_batch_size=1, num_local_devices=None, **MARK)
    assert pl.run(pl.PseudoLabelConfig(dataset_name=f"{corpus}+{corpus}", output_dir=str(out8), **cfg8)) == 0
    assert run(out1, corpus, rows_per_shard=2, num_local_devices=1, per_device_eval_batch_size=2, **MARK) == 0
    assert labelled_rows(out1) == rows
    rows8 = labelled_rows(out8)
    assert [r["pseudo_label_rows"] for r in rows8] == [[i] for i in range(8)]
    same = lambda r: {**r, "pseudo_label_rows": None, "audio": r["audio"]["bytes"]}  # noqa: E731 (names hold the row)
    assert [same(r) for r in rows8] == [same(r) for r in rows * 2]
    # the labels are transcribe()'s greedy transcripts (8 devices, batch 8: the same compiled shape)
    paths = [corpus.parent / r["audio"] for r in ROWS] * 2
    texts = [r["text"] for r in transcribe(paths, tiny, batch_size=8, max_new_tokens=256, progress=False)]
    assert [r["whisper_transcript"] for r in rows8] == texts


def test_wer_filter_marks_and_drops_exactly_rows_above_threshold(reference, corpus, tmp_path):
    rows = labelled_rows(reference)
    refs = [r["text"] or None for r in ROWS]
    expected = [None if t is None else wer([t], [r["whisper_transcript"]]) for t, r in zip(refs, rows)]
    assert [r["wer"] for r in rows] == pytest.approx(expected)
    assert expected[0] > THRESHOLD and expected[3] is None  # the wrong and the missing ground truth
    assert [r["wer_above_threshold"] for r in rows] == [w is not None and w > THRESHOLD for w in expected]
    assert run(tmp_path, corpus, wer_threshold=THRESHOLD, keep_rows_without_ground_truth=True) == 0
    kept = labelled_rows(tmp_path)
    keep = [r for r in rows if not r["wer_above_threshold"]]
    assert [r["pseudo_label_rows"] for r in kept] == [r["pseudo_label_rows"] for r in keep]
    assert [r["whisper_transcript"] for r in kept] == [r["whisper_transcript"] for r in keep]
    # report numbers match the data
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["rows_read"] == rep["rows_labelled"] == 4
    assert rep["rows_written"] == len(kept) and rep["rows_dropped_by_wer"] == 4 - len(kept)
    assert rep["rows_without_ground_truth"] == 1 and rep["bad_inputs"]["count"] == 0
    assert rep["audio_hours_labelled"] == pytest.approx(sum(r["duration"] for r in rows) / 3600)
    assert rep["audio_hours_written"] == pytest.approx(sum(r["duration"] for r in kept) / 3600)
    with_gt = [(t, r["whisper_transcript"]) for t, r in zip(refs, rows) if t]
    assert rep["wer_all_labelled"] == pytest.approx(wer(*zip(*with_gt)), abs=1e-3)
    kept_gt = [(t, r["whisper_transcript"]) for t, r in zip(refs, rows) if t and not r["wer_above_threshold"]]
    assert rep["wer_written"] == pytest.approx(wer(*zip(*kept_gt)), abs=1e-3)
    assert "rows dropped by WER filter | 1 |" in (tmp_path / "report.md").read_text()


def _two_processes(out, manifest, *flags):
    """Label with 2 jax.distributed processes of 2 devices each; returns their logs."""
    port = free_port()
    cmd = [
        sys.executable,
        str(ROOT / "run_pseudo_label.py"),
        "--dataset_name",
        str(manifest),
        "--output_dir",
        str(out),
        *B2_ARGV,
        *flags,
        "--coordinator_address",
        f"localhost:{port}",
        "--num_processes",
        "2",
    ]
    return run_together([cmd + ["--process_id", str(i)] for i in range(2)], subprocess_env(2))


def test_two_jax_distributed_processes_give_the_same_rows_exactly_once(reference, corpus, tmp_path):
    logs = _two_processes(tmp_path, corpus, *MARK_ARGV)
    assert "process 1 of 2" in logs[1] and "process 0 of 2" in logs[0]
    rows = labelled_rows(tmp_path)
    assert rows == labelled_rows(reference)  # same rows, in input order, each exactly once
    blocks = [json.loads(p.read_text()) for p in sorted((tmp_path / ".plabel").glob("block-*.json"))]
    assert [(b["block"], b["process"]) for b in blocks] == [(0, 0), (1, 1)]
    assert strip_timing(json.loads((tmp_path / "report.json").read_text())) == strip_timing(
        json.loads((reference / "report.json").read_text())
    )


def test_two_processes_label_a_remote_parquet_dataset_like_the_local_manifest(reference, corpus, tmp_path):
    """The corpus as Parquet with the audio inside, behind a URL (fsspec's ``local://``): two processes, each
    reading only its own row groups (tests/test_per_host_reading.py counts the bytes), label it like the manifest."""
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    cells = [{"bytes": (corpus.parent / r["audio"]).read_bytes(), "path": r["audio"]} for r in ROWS]
    table = pa.table({"audio": pa.array(cells, struct), **{k: [r[k] for r in ROWS] for k in ROWS[0] if k != "audio"}})
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "train.parquet", row_group_size=2)
    _two_processes(tmp_path / "out", f"local://{tmp_path / 'in'}", *MARK_ARGV)

    def without_audio_path(rows):
        return [{**r, "audio": r["audio"]["bytes"]} if isinstance(r["audio"], dict) else r for r in rows]

    assert without_audio_path(labelled_rows(tmp_path / "out")) == without_audio_path(labelled_rows(reference))


def test_labels_go_to_a_bucket_url_and_resume_there(reference, corpus, tmp_path):
    """``--output_dir gs://...`` (a GCS stand-in that runs here): every shard, the bookkeeping and the report
    reach the bucket, a rerun resumes from what is there, and a bucket that does not exist fails first."""
    gcs = fake_gcs.use(tmp_path / "gcs")
    assert run("gs://bucket/lab", corpus, **MARK) == 0
    assert labelled_rows(tmp_path / "gcs" / "bucket" / "lab") == labelled_rows(reference)
    names = {k.removeprefix("bucket/lab/") for k in gcs.written}
    assert {"shard-00000000.parquet", "shard-00000001.parquet", "report.json", "report.md", "schema.json"} <= names
    assert not list((tmp_path / "gcs").rglob("*.tmp"))
    report = json.loads((tmp_path / "gcs" / "bucket" / "lab" / "report.json").read_text())
    assert strip_timing(report) == strip_timing(json.loads((reference / "report.json").read_text()))
    gcs.written.clear()
    assert run("gs://bucket/lab", corpus, **MARK) == 0  # resumed: every block is done, no shard is redone
    assert not [k for k in gcs.written if k.endswith(".parquet")]
    with pytest.raises(ValueError, match="--output_dir gs://nobucket/lab: cannot write there .*no such bucket"):
        run("gs://nobucket/lab", corpus, **MARK)


def test_sigkill_then_rerun_equals_uninterrupted_run(reference, corpus, tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "run_pseudo_label.py"),
        "--dataset_name",
        str(corpus),
        "--output_dir",
        str(tmp_path),
        *B2_ARGV,
        *MARK_ARGV,
    ]
    proc = subprocess.Popen(cmd, env=subprocess_env(2), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = tmp_path / ".plabel" / "block-00000000.json"
    deadline = time.time() + 600
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)  # mid-run: block 1 is being labelled
    proc.wait()
    assert not (tmp_path / "report.json").exists() and not (tmp_path / ".plabel" / "block-00000001.json").exists()
    assert run(tmp_path, corpus, **MARK) == 0
    assert labelled_rows(tmp_path) == labelled_rows(reference)
    assert sorted(p.name for p in tmp_path.glob("*.parquet")) == sorted(p.name for p in reference.glob("*.parquet"))
    assert not list(tmp_path.glob(".*.tmp"))
    assert strip_timing(json.loads((tmp_path / "report.json").read_text())) == strip_timing(
        json.loads((reference / "report.json").read_text())
    )
    # a finished run started again does nothing and changes nothing
    before = {p.name: p.read_bytes() for p in tmp_path.glob("*.parquet")}
    assert run(tmp_path, corpus, **MARK) == 0
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.parquet")} == before
    # different settings in the same directory: refused before any work, naming each difference
    with pytest.raises(data.DataConfigError, match=r"wer_filter_mode: 'mark' → 'drop'; wer_threshold: 10.0 → 50.0"):
        run(tmp_path, corpus, wer_threshold=50.0, keep_rows_without_ground_truth=True)
    # batch size, devices and processes may change: a restart with others resumes (here: nothing left to do)
    assert run(tmp_path, corpus, per_device_eval_batch_size=2, num_local_devices=1, **MARK) == 0


def test_concatenation_respects_limit_and_keeps_text_aligned(corpus, tmp_path):
    assert (
        run(
            tmp_path,
            corpus,
            concatenate_audio=True,
            speaker_id_column_name="speaker_id",
            max_duration_in_seconds=5.0,
            rows_per_shard=4,
        )
        == 0
    )
    rows = labelled_rows(tmp_path)
    # speaker A: rows 0+1 (3.5 s) joined; speaker B: rows 2 (4.8 s) and 3 (4.0 s) would exceed 5 s
    assert [r["pseudo_label_rows"] for r in rows] == [[0, 1], [2], [3]]
    assert rows[0]["text"] == ROWS[0]["text"] + " " + ROWS[1]["text"]
    assert rows[0]["speaker_id"] == ROWS[0]["speaker_id"]
    wavs = [audio.load_audio(corpus.parent / r["audio"]) for r in ROWS]
    for r in rows:
        got, _ = sf.read(io.BytesIO(r["audio"]["bytes"]), dtype="float32")
        np.testing.assert_array_equal(got, np.concatenate([wavs[i] for i in r["pseudo_label_rows"]]))
        assert r["duration"] <= 5.0
    # the pack's label covers both utterances, in order
    assert wer([TRUTH[0] + " " + TRUTH[1]], [rows[0]["whisper_transcript"]]) < 25
    # condition_on_prev: only when the previous row is the same speaker and directly before
    assert rows[1]["condition_on_prev"] == [] and rows[2]["condition_on_prev"] == rows[1]["whisper_token_ids"]
    assert rows[2]["wer"] is None  # row 3 has no ground truth


def _unit(n, rows, speaker="a", text="x", part=0, pieces=1):
    return pl.Unit(np.full(n, len(rows), np.int16), {}, text, speaker, rows, part, pieces)


def test_pack_and_split_long_are_exact():
    units = [
        _unit(10, [0]),
        _unit(15, [1]),
        _unit(10, [2]),
        _unit(5, [3], "b"),
        _unit(5, [5], "b"),
        pl.Bad(6, "m", "bad"),
        _unit(4, [7], "b", None),
        _unit(4, [8], "b"),
        _unit(5, [9], "b", None, 0, 2),
        _unit(5, [9], "b", None, 1, 2),
    ]
    out = list(pl.pack(iter(units), max_len=30, by_speaker=True))
    got = [(u.rows, len(u.audio), u.text) if isinstance(u, pl.Unit) else "bad" for u in out]
    assert got == [
        ([0, 1], 25, "x x"),
        ([2], 10, "x"),
        ([3], 5, "x"),
        ([5], 5, "x"),
        "bad",
        ([7, 8], 8, None),
        ([9], 5, None),
        ([9], 5, None),
    ]  # pieces of a cut clip stand alone
    x = (np.random.default_rng(0).standard_normal(95_000) * 1000).astype(np.int16)
    x[40_000:41_000] = 0  # a pause inside the search window
    pieces = pl.split_long(x, 48_000, search=16_000)
    assert np.array_equal(np.concatenate(pieces), x) and all(len(p) <= 48_000 for p in pieces)
    assert 40_000 <= len(pieces[0]) <= 41_000


def test_blocks_cover_every_row_exactly_once(tmp_path):
    m = write_tsv(tmp_path / "m.tsv", [{"audio": f"{i}.wav", "text": str(i), "speaker": "s"} for i in range(7)])
    src = data.open_sources(data.parse_sources(f"{m}+{m}"))
    seen = []
    for p in range(3):
        info = {}
        for b, rows in data_blocks.owned_blocks(src, 2, p, 3, skip=lambda b: b == 4, info=info):
            assert b % 3 == p
            seen += [(i, k, r["audio"]) for i, k, r in rows]
        assert info["total_rows"] == 14
    assert sorted(i for i, _, _ in seen) == [i for i in range(14) if i // 2 != 4]
    assert [(k, a) for i, k, a in sorted(seen)][:3] == [(0, "0.wav"), (0, "1.wav"), (0, "2.wav")]
    info = {}
    assert [b for b, rows in data_blocks.owned_blocks(src, 4, 0, 1, limit=9, info=info) for _ in rows] == [0] * 4 + [
        1
    ] * 4 + [2] and info["total_rows"] == 9


def test_other_inputs_load_from_disk_audiofolder_and_parquet_output(reference, corpus, tmp_path):
    flac = corpus.parent / ROWS[2]["audio"]
    expected = audio.load_audio(flac)
    cell = pa.array(
        [{"bytes": flac.read_bytes(), "path": flac.name}], pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    )
    ds = datasets.Dataset(pa.table({"audio": cell, "text": ["t"]})).cast(
        datasets.Features({"audio": datasets.Audio(), "text": datasets.Value("string")})
    )
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "disk"))
    (tmp_path / "folder").mkdir()
    shutil.copy(flac, tmp_path / "folder" / flac.name)
    (tmp_path / "folder" / "metadata.csv").write_text(f"file_name,transcription\n{flac.name},t\n")
    for name, split in ((tmp_path / "disk", "train"), (f"audiofolder:{tmp_path / 'folder'}", None)):
        (src,) = data.open_sources(data.parse_sources(str(name), None, split))
        row = next(src.rows_from(0))
        np.testing.assert_allclose(row_audio(row["audio"], src.base_dir), expected, atol=1e-6)
    # the labelled output reads back as a dataset: audio bytes decode to the exact audio that was labelled
    (src,) = data.open_sources(data.parse_sources(str(reference)))
    assert src.num_rows == 4 and "whisper_transcript" in src.columns
    rows = list(src.rows_from(2))
    np.testing.assert_array_equal(row_audio(rows[0]["audio"], src.base_dir), expected)
    hf = datasets.load_dataset("parquet", data_files=str(reference / "*.parquet"), split="train")
    assert hf["whisper_transcript"] == [r["whisper_transcript"] for r in labelled_rows(reference)]
    with pytest.raises(data.DataConfigError, match="no split 'test'"):
        data.open_sources(data.parse_sources(str(tmp_path / "disk"), None, "test"))


@pytest.fixture(scope="module")
def bad_manifest(tmp_path_factory, clips):
    d = tmp_path_factory.mktemp("bad")
    src = {p.name: p for p, _ in clips}
    x, sr = sf.read(src["goforward.wav"], dtype="float32")
    stereo = resample_poly(x, 441, 160)
    sf.write(d / "stereo44k.wav", np.stack([stereo, stereo], 1), 44100, subtype="PCM_16")
    (d / "empty.wav").write_bytes(b"")
    (d / "corrupt.flac").write_bytes(b"fLaC" + bytes(range(256)) * 4)
    sf.write(d / "zero.wav", np.zeros((0,), np.float32), 16000)
    sf.write(d / "nan.wav", np.full(1600, np.nan, np.float32), 16000, subtype="FLOAT")
    long_clip = [p for p, _ in bundled_clips(None) if p.name == "piper_moon_long.flac"][0]
    lines = [
        {"audio": "missing.wav", "text": "a"},
        {"audio": "empty.wav", "text": "a"},
        {"audio": "corrupt.flac", "text": "a"},
        {"audio": "zero.wav", "text": "a"},
        {"audio": "nan.wav", "text": "a"},
        {"audio": "stereo44k.wav", "text": "Go forward ten meters."},
        {"audio": str(long_clip), "text": "long"},
        {"audio": "", "text": "a"},
    ]
    with open(d / "m.jsonl", "w") as f:
        for i, line in enumerate(lines):
            f.write(json.dumps(line) + "\n")
            if i == 2:
                f.write("{not json\n")
    return d / "m.jsonl"


def test_bad_inputs_are_skipped_and_counted(bad_manifest, tmp_path):
    assert run(tmp_path / "skip", bad_manifest, rows_per_shard=9) == 0
    rows = labelled_rows(tmp_path / "skip")
    assert [r["pseudo_label_rows"] for r in rows] == [[6]]  # only the stereo 44.1 kHz clip is usable
    assert rows[0]["whisper_transcript"] == "Go forward 10 meters." and rows[0]["wer"] == 0.0
    rep = json.loads((tmp_path / "skip" / "report.json").read_text())
    assert rep["rows_read"] == 9 and rep["rows_labelled"] == 1
    assert rep["bad_inputs"]["by_kind"] == {
        "bad_manifest_line": 1,
        "empty_file": 1,
        "missing_audio": 1,
        "missing_file": 1,
        "non_finite": 1,
        "too_long": 1,
        "undecodable": 1,
        "zero_length": 1,
    }
    assert [e["row"] for e in rep["bad_inputs"]["examples"]] == [0, 1, 2, 3, 4, 5, 7, 8]
    assert "missing.wav" in rep["bad_inputs"]["examples"][0]["reason"]
    # --strict: the first bad row fails the job, nothing is written
    with pytest.raises(PseudoLabelError, match="--strict"):
        run(tmp_path / "strict", bad_manifest, strict=True)
    assert not list((tmp_path / "strict").glob("*.parquet"))


def test_long_clip_is_chunked_into_aligned_pieces(bad_manifest, tmp_path):
    assert run(tmp_path, bad_manifest, long_audio="chunk", max_samples=8, rows_per_shard=1) == 0
    rows = [r for r in labelled_rows(tmp_path) if r["pseudo_label_rows"] == [7]]
    assert [r["pseudo_label_part"] for r in rows] == [0, 1]
    assert all(r["duration"] <= 30.0 and r["wer"] is None and r["text"] is None for r in rows)
    assert rows[1]["condition_on_prev"] == rows[0]["whisper_token_ids"]
    joined = " ".join(r["whisper_transcript"] for r in rows)
    truth = "Welcome back to the show. Today we're talking about the Moon"
    assert joined.startswith(truth[:30]) and "week" in joined[-30:]
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["long_clip_pieces_after_first"] == 1 and "too_long" not in rep["bad_inputs"]["by_kind"]


def test_configuration_errors_fail_before_any_work(corpus, tmp_path, capsys):
    cases = [
        (["--text_column_name", "transcript"], "--text_column_name 'transcript'"),
        (["--audio_column_name", "wav"], "--audio_column_name 'wav'"),
        (["--speaker_id_column_name", "spk"], "--speaker_id_column_name"),
        (["--dataset_config_name", "a+b"], "has 2 '+'-separated entries"),
        (["--max_duration_in_seconds", "40"], "(0, 30]"),
    ]
    for extra, msg in cases:
        assert main(["--dataset_name", str(corpus), "--output_dir", str(tmp_path / "o"), *B2_ARGV, *extra]) == 2
        assert msg in capsys.readouterr().err
    assert main(["--dataset_name", "no-such-org/no-such-dataset", "--output_dir", str(tmp_path / "o")]) == 2
    assert "cannot load it" in capsys.readouterr().err
    assert main(["--dataset_name", str(tmp_path / "nope.tsv"), "--output_dir", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_block_boundaries_and_restarts_keep_previous_text_prompts(corpus, tmp_path):
    assert run(tmp_path / "whole", corpus, speaker_id_column_name="speaker_id", rows_per_shard=4) == 0
    whole = labelled_rows(tmp_path / "whole")
    ids = [r["whisper_token_ids"] for r in whole]
    # rows 1 and 3 continue rows 0 and 2 (speakers A A B B)
    assert [r["condition_on_prev"] for r in whole] == [[], ids[0], [], ids[2]]
    out = tmp_path / "blocks"
    cfg = pl.PseudoLabelConfig(
        dataset_name=str(corpus),
        output_dir=str(out),
        speaker_id_column_name="speaker_id",
        **{**B2, "rows_per_shard": 1},
    )
    assert pl.run(cfg) == 0
    assert labelled_rows(out) == whole  # one row per block: each block's first row is still prompted
    assert json.loads((out / ".plabel" / "config.json").read_text()) == config.to_dict(cfg)  # the whole config
    # a restart after blocks 1 and 3 were lost: their prompts come from blocks 0 and 2 of the earlier run
    for b in (1, 3):
        (out / ".plabel" / f"block-{b:08d}.json").unlink()
        (out / f"shard-{b:08d}.parquet").unlink()
    (out / "report.json").unlink()
    assert pl.run(cfg) == 0
    assert labelled_rows(out) == whole


def test_two_processes_prompt_each_blocks_first_row_like_one(corpus, tmp_path):
    """Blocks of one row alternate between the processes: each block's first row waits for the previous
    block's label from the other process, and the output equals one process's."""
    assert run(tmp_path / "one", corpus, speaker_id_column_name="speaker_id", rows_per_shard=4) == 0
    _two_processes(tmp_path / "two", corpus, "--speaker_id_column_name", "speaker_id", "--rows_per_shard", "1")
    rows = labelled_rows(tmp_path / "two")
    assert rows == labelled_rows(tmp_path / "one") and rows[1]["condition_on_prev"] == rows[0]["whisper_token_ids"]


def test_one_wer_rule_and_a_labelled_dir_trains_without_column_flags(corpus, tmp_path, tiny):
    """Labelling drops rows whose ground truth is missing or normalises to nothing (the rule training uses);
    the output of a manifest whose audio column is ``wav`` trains and evaluates with no column flags."""
    texts = [WRONG, "[inaudible]", ROWS[2]["text"], ""]
    rows = [{"wav": str(corpus.parent / r["audio"]), "sentence": t} for r, t in zip(ROWS, texts)]
    manifest = write_tsv(tmp_path / "m.tsv", rows)
    out = tmp_path / "out"
    assert run(out, manifest, audio_column_name="wav", text_column_name="sentence", wer_threshold=THRESHOLD) == 0
    kept = labelled_rows(out)
    assert [r["pseudo_label_rows"] for r in kept] == [[2]] and kept[0]["wer"] < THRESHOLD
    rep = json.loads((out / "report.json").read_text())
    assert rep["rows_dropped_by_wer"] == 3 and rep["rows_without_ground_truth"] == 1
    assert json.loads((out / data.SCHEMA_FILE).read_text())["columns"]["audio"] == "wav"
    # training: the stream finds the audio ('wav') and the ground truth ('sentence') in schema.json
    opts = train_data.DataOptions(wer_threshold=THRESHOLD)
    sources = train_data.open_sources(str(out))
    stream = train_data.TrainStream(sources, None, tiny.tokenizer, special_tokens(tiny.tokenizer), opts, seed=0)
    batch = stream.next_batch(2)
    feats = train_data.features(batch, stream.sources, opts, tiny.config.num_mel_bins)
    expected = audio.log_mel_spectrogram([audio.load_audio(corpus.parent / ROWS[2]["audio"])], n_mels=80)[0]
    np.testing.assert_allclose(feats[0], expected, atol=1e-4)
    ev = eval_sets.load_eval_set(str(out), None, None, None, tiny.config.num_mel_bins)
    assert ev.texts == [ROWS[2]["text"]]


def test_a_damaged_shard_is_labelled_again_on_resume(reference, corpus, tmp_path, caplog):
    """A finished block whose shard was truncated (or lost) used to be trusted ('0 blocks', success): on resume
    its footer and row count are checked, and a damaged block is labelled again, with a warning naming the file."""
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    truncated, lost = out / "shard-00000001.parquet", out / "shard-00000000.parquet"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    lost.unlink()
    with caplog.at_level("INFO"):
        assert run(out, corpus, **MARK) == 0
    assert f"{truncated}: unreadable" in caplog.text and "block 1 is labelled again" in caplog.text
    assert f"{lost}: missing, though block 0 is marked done with 2 rows" in caplog.text
    assert re.search(r"process 0: 2 blocks, 4 rows", caplog.text)
    assert labelled_rows(out) == labelled_rows(reference)
    caplog.clear()
    with caplog.at_level("INFO"):  # now intact: nothing is labelled again
        assert run(out, corpus, **MARK) == 0
    assert "labelled again" not in caplog.text and re.search(r"process 0: 0 blocks", caplog.text)


def test_a_full_disk_stops_with_the_file_and_cause_and_a_rerun_continues(reference, corpus, tmp_path, capsys):
    """The disk fills up while block 1's shard is written: exit status 1 and one line naming that file and the
    cause (it was a raw pyarrow traceback); no partial file under a final name, block 0 stays done, and the same
    command continues once there is room."""
    from distil_whisper_jax.cli.pseudo_label import main

    shard0, shard1 = (reference / f"shard-0000000{b}.parquet" for b in (0, 1))
    assert shard1.stat().st_size > shard0.stat().st_size + 64 * 1024  # room for block 0 and its JSON, not block 1
    with small_disk(tmp_path / "disk", "2m") as disk:
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (free_bytes(disk) - shard0.stat().st_size - 64 * 1024))
        out = disk / "labelled"
        argv = ["--dataset_name", str(corpus), "--output_dir", str(out), *B2_ARGV, *MARK_ARGV]
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert f"error: cannot write {out / 'shard-00000001.parquet'}: no space left on device" in err, err
        assert "Traceback" not in err
        assert sorted(p.name for p in out.iterdir()) == [".plabel", "schema.json", "shard-00000000.parquet"]
        assert (out / ".plabel" / "block-00000000.json").exists()
        assert not (out / ".plabel" / "block-00000001.json").exists()
        filler.unlink()
        assert main(argv) == 0
        assert labelled_rows(out) == labelled_rows(reference)
