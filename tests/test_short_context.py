"""A model with a shorter encoder context (``max_source_positions`` 750: 15 s of audio) works in every
stage. The model here is the real tiny.en with its position table cut to 750 rows and all its decoder
layers, so it still transcribes speech of ≤ 15 s correctly: its outputs can be compared with the full
model's, in our runtime and in transformers, openai-whisper and whisper.cpp. (Training such a student is
tested in test_distill.py on the small random teacher.)"""

import json
from pathlib import Path

import pytest

from distil_whisper_jax.assets import bundled_clips
from distil_whisper_jax.decode.transcribe import transcribe
from distil_whisper_jax.stages.export import export as export_lib
from distil_whisper_jax.stages.label import pseudo_label as pl
from distil_whisper_jax.stages.student.create_student import create_student
from distil_whisper_jax.weights.loading import load_pretrained

from .helpers import labelled_rows

SHORT = ("goforward.wav", "jfk.flac", "piper_train.flac")  # the bundled clips of ≤ 15 s


@pytest.fixture(scope="module")
def short_model(tmp_path_factory, tiny):
    out = tmp_path_factory.mktemp("tiny750")
    create_student(tiny, out, decoder_layers=tiny.config.decoder_layers, max_source_positions=750)
    return out


@pytest.fixture(scope="module")
def short_clips():
    clips = [(p, t) for p, t in bundled_clips() if Path(p).name in SHORT]
    assert len(clips) == len(SHORT)
    return clips


def test_transcribes_like_the_full_model_and_refuses_longer_audio(short_model, short_clips, tiny):
    pre = load_pretrained(short_model)
    assert pre.config.max_source_positions == 750 and pre.config.input_seconds == 15.0
    paths = [p for p, _ in short_clips]
    short = transcribe(paths, pre, batch_size=8, progress=False)
    full = transcribe(paths, tiny, batch_size=8, progress=False)
    assert [r["text"] for r in short] == [r["text"] for r in full]
    long_clip = next(p for p, _ in bundled_clips() if Path(p).name == "piper_roadtrip.flac")  # 25 s
    (res,) = transcribe([long_clip], pre, batch_size=8, progress=False)
    assert "15 s input" in res["error"] and "--long_form chunked" in res["error"]
    (res,) = transcribe([long_clip], pre, batch_size=8, progress=False, long_form="chunked")
    assert "Chicago" in res["text"] and res["segments"][-1]["end"] <= 25.3


def test_exports_run_in_every_runtime(short_model, tmp_path):
    """hf, openai and ggml (f16 + q8_0) exports each transcribe the clips the model can take exactly as our
    runtime does (verification leaves out the bundled clips longer than 15 s)."""
    out = tmp_path / "export"
    assert export_lib.run(export_lib.ExportConfig(output_dir=str(out), model_name_or_path=str(short_model))) == 0
    extractor = json.loads((out / "hf" / "preprocessor_config.json").read_text())
    assert (extractor["chunk_length"], extractor["nb_max_frames"], extractor["n_samples"]) == (15, 1500, 240000)
    for path in (out / "hf", out / "original-model.bin", out / "ggml-model.bin"):
        assert load_pretrained(path).config.max_source_positions == 750
    record = json.loads((out / "verification.json").read_text())  # the verdicts, for scripts
    assert [c["file"] for c in record["checks"]] == [
        "hf",
        "original-model.bin",
        "ggml-model.bin",
        "ggml-model-q8_0.bin",
    ]
    assert all(c["passed"] for c in record["checks"]) and record["clips"] >= 1
    assert all(50 < c["runtime_peak_mib"] < 4096 for c in record["checks"]), record
    assert list(record["process_peak_mib"]) == ["hf + original-model.bin", "ggml-model.bin", "ggml-model-q8_0.bin"]


def test_labelling_uses_the_models_window(short_model, short_clips, tmp_path):
    manifest = tmp_path / "clips.tsv"
    manifest.write_text("audio\ttext\n" + "".join(f"{p}\t{t}\n" for p, t in short_clips))
    common = dict(dataset_name=str(manifest), model_name_or_path=str(short_model), per_device_eval_batch_size=1)
    with pytest.raises(ValueError, match="--max_duration_in_seconds 30: the teacher's encoder takes 15 s"):
        pl.run(pl.PseudoLabelConfig(output_dir=str(tmp_path / "refused"), **common))
    out = tmp_path / "labelled"
    assert pl.run(pl.PseudoLabelConfig(output_dir=str(out), max_duration_in_seconds=15.0, **common)) == 0
    rows = labelled_rows(out)
    expected = transcribe([p for p, _ in short_clips], short_model, progress=False, max_new_tokens=256)
    assert [r["whisper_transcript"] for r in rows] == [r["text"] for r in expected]
