"""A truncated audio file is unreadable everywhere: a real FLAC recording cut to its first 40 % of bytes is
reported with the reason by transcribe (short-form and chunked long-form), eval and labelling, and never
transcribed, scored or labelled as if it were the whole clip (the old ffmpeg fallback decoded its first 2.8 s
and exited 0). Real tiny.en, batches of 2 on one device."""

from __future__ import annotations

import csv
import json

import jax
import pytest

from distil_whisper_jax.assets import librivox_recordings
from distil_whisper_jax.decode import transcribe as tr
from distil_whisper_jax.stages.evaluate import evaluation
from distil_whisper_jax.stages.label import pseudo_label as pl
from distil_whisper_jax.weights import loading

from .helpers import labelled_rows, write_tsv

ONE = jax.local_devices()[:1]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """``whole.flac`` (a LibriVox sentence, 2.99 s) and ``cut.flac`` (another, 7.10 s, its first 40 % of bytes)
    in a manifest with their transcripts."""
    d = tmp_path_factory.mktemp("truncated")
    (long_path, long_text), (short_path, short_text) = librivox_recordings()[:2]
    (d / "whole.flac").write_bytes(short_path.read_bytes())
    data = long_path.read_bytes()
    (d / "cut.flac").write_bytes(data[: int(0.4 * len(data))])
    return write_tsv(
        d / "m.tsv", [{"audio": "whole.flac", "text": short_text}, {"audio": "cut.flac", "text": long_text}]
    )


def _says_truncated(message: str) -> bool:
    return "cut.flac" in message and ("truncated or damaged" in message or "cannot decode the audio" in message)


@pytest.mark.parametrize("long_form", ["none", "chunked"])
def test_transcribe_reports_it_unreadable(tiny, manifest, long_form):
    paths = [manifest.parent / "whole.flac", manifest.parent / "cut.flac"]
    whole, cut = tr.transcribe(paths, tiny, batch_size=2, devices=ONE, progress=False, long_form=long_form)
    assert whole["text"].startswith("He was not an") and whole["text"].endswith("young man.")
    assert "text" not in cut and _says_truncated(cut["error"]), cut


def test_eval_counts_it_unreadable_and_does_not_score_it(tiny, manifest, tmp_path, monkeypatch):
    monkeypatch.setattr(evaluation, "load_pretrained", lambda path=None, flag="": tiny)
    cfg = evaluation.EvalConfig(
        dataset_name=str(manifest),
        output_dir=str(tmp_path),
        per_device_eval_batch_size=2,
        num_local_devices=1,
        predictions_csv=True,
    )
    assert evaluation.run(cfg) == 0
    d = json.loads((tmp_path / "results.json").read_text())["datasets"][str(manifest)]
    assert (d["num_samples"], d["scored"], d["unreadable"]) == (2, 1, 1)
    assert d["reference_words"] == 8 and d["audio_seconds"] == pytest.approx(2.99, abs=0.01)
    with open(tmp_path / "predictions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows[1]["prediction"] == "" and rows[1]["wer"] == "" and _says_truncated(rows[1]["error"])


def test_labelling_skips_it_as_a_bad_input(manifest, tmp_path):
    cfg = pl.PseudoLabelConfig(
        dataset_name=str(manifest),
        output_dir=str(tmp_path),
        model_name_or_path=str(loading.default_model_dir()),
        num_local_devices=1,
        per_device_eval_batch_size=2,
    )
    assert pl.run(cfg) == 0
    rows = labelled_rows(tmp_path)
    assert [r["pseudo_label_rows"] for r in rows] == [[0]] and rows[0]["duration"] == pytest.approx(2.99, abs=0.01)
    bad = json.loads((tmp_path / "report.json").read_text())["bad_inputs"]
    assert bad["count"] == 1 and bad["by_kind"] == {"truncated": 1}
    assert bad["examples"][0]["row"] == 1 and _says_truncated(bad["examples"][0]["reason"])
