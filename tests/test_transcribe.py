"""The transcribe CLI and the default demo, end to end on the bundled tiny.en and clips."""

import json
import re
import shutil
import subprocess
import sys

import pytest
import soundfile as sf

from distil_whisper_jax.assets import bundled_clips
from distil_whisper_jax.cli import transcribe as cli
from distil_whisper_jax.decode import transcribe as tr
from distil_whisper_jax.decode.transcribe import TranscribeConfig
from distil_whisper_jax.speech.wer import normalizer_for, wer


def test_cli_prints_file_tab_text_in_input_order(clips, capsys):
    files = [str(p) for p, _ in clips][::-1]
    assert tr.run(TranscribeConfig(inputs=tuple(files), batch_size=4)) == 0
    lines = capsys.readouterr().out.strip().split("\n")
    assert [line.split("\t")[0] for line in lines] == files
    texts = [line.split("\t", 1)[1] for line in lines]
    refs = {str(p): t for p, t in clips}
    assert wer([refs[f] for f in files], texts) < 15.0


def test_output_json_with_timestamps(clips, tmp_path):
    out = tmp_path / "out.json"
    files = [str(p) for p, _ in clips[:3]]
    assert tr.run(TranscribeConfig(inputs=tuple(files), return_timestamps=True, output_json=str(out))) == 0
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
    rc = tr.run(TranscribeConfig(inputs=(str(folder), str(tmp_path / "missing.flac"))))
    captured = capsys.readouterr()
    assert rc == 1
    assert "empty.wav" in captured.err and "notes.wav" in captured.err and "missing.flac" in captured.err
    good = [line for line in captured.out.strip().split("\n") if line]
    assert len(good) == 1 and good[0].startswith(str(folder / clips[0][0].name))


def test_clear_errors_for_bad_arguments(clips, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main([str(empty)]) == 2
    assert "no audio files" in capsys.readouterr().err
    assert cli.main([str(clips[0][0]), "--model", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([str(clips[0][0]), "--dtype", "float16"])
    assert "invalid choice" in capsys.readouterr().err
    for bad in ("0", "-5"):  # 0 used to mean the default cap silently
        assert cli.main([str(clips[0][0]), "--max_new_tokens", bad]) == 2
        assert "--max_new_tokens must be ≥ 1" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_unwritable_output_json_is_refused_before_any_work(clips, tmp_path, capsys, monkeypatch, where):
    """A path under a regular file, or in /proc, cannot be written even by root: refused up front."""
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    target = blocker / "out.json" if where == "under_a_file" else "/proc/distil-whisper-out.json"
    monkeypatch.setattr(tr, "transcribe", lambda *a, **k: pytest.fail("transcribed before checking the output"))
    with pytest.raises(ValueError, match="--output_json") as err:
        tr.run(TranscribeConfig(inputs=(str(clips[0][0]),), output_json=str(target)))
    assert "cannot write" in str(err.value)
    assert cli.main([str(clips[0][0]), "--output_json", str(target)]) == 2
    assert "--output_json" in capsys.readouterr().err


def test_failed_json_write_keeps_the_transcripts(clips, tmp_path, capsys, monkeypatch):
    """The disk fills up after transcribing: the transcripts go to stdout, the error names path and cause."""
    import errno

    out = tmp_path / "out.json"
    real_dump = tr.json.dump

    def full_disk(obj, f, **kw):
        real_dump(obj, f, **kw)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tr.json, "dump", full_disk)
    files = [str(p) for p, _ in clips[:2]]
    assert tr.run(TranscribeConfig(inputs=tuple(files), output_json=str(out))) == 1
    captured = capsys.readouterr()
    assert [line.split("\t")[0] for line in captured.out.strip().split("\n")] == files
    assert str(out) in captured.err and "no space left on device" in captured.err
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no partial file, no temp left


def test_demo_transcribes_every_bundled_clip_right_and_prints_the_wer_of_its_transcripts():
    """``python -m distil_whisper_jax --stage transcribe``: tiny.en gets every bundled clip (≤ 30 s) right once
    both sides are normalised (its raw text differs: "Go forward 10 meters." for "Go forward ten meters.", commas
    dropped or added), so each clip's printed WER and the total are 0; the summary counts the clips and their
    seconds."""
    proc = subprocess.run(
        [sys.executable, "-m", "distil_whisper_jax", "--stage", "transcribe"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().split("\n")
    head = lines.index(f"{'clip':<28} {'WER %':>6}  transcript")
    clips = bundled_clips()
    printed = [line.split(None, 2) for line in lines[head + 1 : head + 1 + len(clips)]]
    assert [name for name, _, _ in printed] == [p.name for p, _ in clips]
    norm = normalizer_for("en")
    for (name, figure, text), (_, ref) in zip(printed, clips):
        assert norm(text) == norm(ref), name
        assert figure == "0.0", name
    assert any(text != ref for (_, _, text), (_, ref) in zip(printed, clips))  # the normaliser was needed
    seconds = sum(sf.info(str(p)).duration for p, _ in clips)
    summary = re.fullmatch(
        r"(\d+) clips, ([\d.]+) s of audio, [\d.]+ s wall \(incl. compile\): WER ([\d.]+) % .*", lines[-1]
    )
    assert summary, lines[-1]
    assert (int(summary[1]), float(summary[2]), summary[3]) == (len(clips), round(seconds, 1), "0.00")
