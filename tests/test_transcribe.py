"""The transcribe CLI and the default demo, end to end on the bundled tiny.en and clips."""

import json
import shutil
import subprocess
import sys

import pytest
import soundfile as sf

from distil_whisper_jax import transcribe as tr
from distil_whisper_jax.evaluate import wer


def test_cli_prints_file_tab_text_in_input_order(clips, capsys):
    files = [str(p) for p, _ in clips][::-1]
    assert tr.main(files + ["--batch_size", "4"]) == 0
    lines = capsys.readouterr().out.strip().split("\n")
    assert [l.split("\t")[0] for l in lines] == files
    texts = [l.split("\t", 1)[1] for l in lines]
    refs = {str(p): t for p, t in clips}
    assert wer([refs[f] for f in files], texts) < 15.0


def test_output_json_with_timestamps(clips, tmp_path):
    out = tmp_path / "out.json"
    files = [str(p) for p, _ in clips[:3]]
    assert tr.main(files + ["--return_timestamps", "--output_json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert [r["file"] for r in results] == files
    for r, f in zip(results, files):
        duration = sf.info(f).duration
        assert r["text"] and r["segments"]
        for s in r["segments"]:
            assert 0 <= s["start"] < s["end"] <= duration + 1.0
        assert " ".join(s["text"].strip() for s in r["segments"]).split() == r["text"].split()


def test_folder_input_and_bad_files_are_reported(clips, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(clips[0][0], folder / clips[0][0].name)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "notes.wav").write_text("this is not audio")
    rc = tr.main([str(folder), str(tmp_path / "missing.flac")])
    captured = capsys.readouterr()
    assert rc == 1
    assert "empty.wav" in captured.err and "notes.wav" in captured.err and "missing.flac" in captured.err
    good = [l for l in captured.out.strip().split("\n") if l]
    assert len(good) == 1 and good[0].startswith(str(folder / clips[0][0].name))


def test_clear_errors_for_bad_arguments(clips, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert tr.main([str(empty)]) == 2
    assert "no audio files" in capsys.readouterr().err
    assert tr.main([str(clips[0][0]), "--model", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tr.main([str(clips[0][0]), "--dtype", "float16"])
    assert "invalid choice" in capsys.readouterr().err


def test_demo_runs_and_reports_wer():
    proc = subprocess.run(
        [sys.executable, "-m", "distil_whisper_jax", "--stage", "transcribe"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "WER" in proc.stdout and "clips" in proc.stdout
