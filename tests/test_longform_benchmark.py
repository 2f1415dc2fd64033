"""``benchmarks/longform.py``: its recordings hear every clip once (the benchmark it replaces joined the same clips
again and again), the multilingual prompts are read as the Debian packages lay them out, and its ``--quick`` run
works end to end (this project's vad mode and faster-whisper's batched pipeline on a minute of real speech, each
in its own process, the tiny.en weights exported by this project)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import longform as lf
from benchmarks import longform_audio as la
from distil_whisper_jax.assets import librivox_recordings, speech_manifest
from distil_whisper_jax.data.sources import manifest_rows
from distil_whisper_jax.speech import audio

REPO = Path(__file__).resolve().parents[1]


def test_english_recording_hears_each_clip_once_in_order(tmp_path):
    rec = la.english_recording(None, tmp_path)
    rows = list(manifest_rows(speech_manifest("heldout")))
    texts = [t for _, t in librivox_recordings()] + [r["text"] for r in rows]
    assert len(rec.sources) == len(texts) == len(set(rec.sources))
    assert rec.reference == " ".join(texts)
    wav = audio.load_audio(rec.path)
    clips = [audio.load_audio(p) for p, _ in librivox_recordings()]
    expected = sum(len(c) for c in clips) + sum(round(float(r["duration"]) * 16000) for r in rows)
    expected += round(la.GAP_S * 16000) * (len(texts) - 1)
    assert abs(len(wav) - expected) <= len(texts)  # the clips and the gaps, nothing more
    first = clips[0]
    assert np.abs(wav[: len(first)] - first).max() < 1e-3  # 16-bit WAV of the first clip, as recorded


def test_a_repeated_clip_is_refused(tmp_path):
    a, b = np.ones(800, np.float32) * 0.1, np.ones(900, np.float32) * 0.2
    la.join("ok", [("a", a, "one"), ("b", b, "two")], tmp_path / "ok.wav", "en", "tiny.en")
    with pytest.raises(ValueError, match="clip a appears twice"):
        la.join("x", [("a", a, "one"), ("b", b, "two"), ("a", a, "one")], tmp_path / "x.wav", "en", "tiny.en")
    with pytest.raises(ValueError, match="clip c has the same audio as a"):
        la.join("x", [("a", a, "one"), ("c", a.copy(), "three")], tmp_path / "x.wav", "en", "tiny.en")


def _fake_asterisk(root: Path, lang: str, entries: list[tuple[str, str, Path | None]]) -> dict:
    """A Debian layout: the base package's ``core-sounds-LANG.txt.gz`` and the voice's ``.g722`` files (here
    FLAC bytes under that name: the reader goes by content)."""
    doc = root / "doc" / f"asterisk-core-sounds-{lang}"
    doc.mkdir(parents=True)
    lines = [f"; Core Asterisk Sounds in {lang}", ""] + [f"{name}: {text}" for name, text, _ in entries]
    with gzip.open(doc / f"core-sounds-{lang}.txt.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    for name, _, clip in entries:
        if clip is not None:
            (root / "sounds" / lang / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(clip, root / "sounds" / lang / f"{name}.g722")
    return {"sounds_dir": root / "sounds", "doc_dir": root / "doc"}


def test_asterisk_prompts_speech_only_in_file_order_each_once(tmp_path):
    clips = [p for p, _ in librivox_recordings()]
    dirs = _fake_asterisk(
        tmp_path,
        "fr",
        [
            ("b-first", "Bonjour, [pause] madame.", clips[0]),
            ("beep", "[ascending tones]", clips[1]),  # not speech
            ("a-second", "Au revoir.", clips[2]),
            ("missing", "Pas de fichier.", None),  # no audio: left out
            ("again", "au revoir.", clips[3]),  # a text already taken
            ("same-audio", "Même son.", clips[0]),  # the audio of an earlier prompt
            ("digits/1", "un", clips[4]),
        ],
    )
    entries = la.asterisk_entries("fr", **dirs)
    assert [(p.name, t) for p, t in entries] == [
        ("b-first.g722", "Bonjour, madame."),
        ("a-second.g722", "Au revoir."),
        ("same-audio.g722", "Même son."),
        ("1.g722", "un"),
    ]
    rec = la.multilingual_recording("fr", None, tmp_path / "out", **dirs)
    assert rec.sources == ("fr/b-first.g722", "fr/a-second.g722", "fr/digits/1.g722")
    assert rec.reference == "Bonjour, madame. Au revoir. un"
    assert (rec.language, rec.model) == ("fr", "base")
    short = la.multilingual_recording("fr", 1.0, tmp_path / "out", **dirs)
    assert short.sources == ("fr/b-first.g722",)


def test_asterisk_reader_names_the_packages_and_refuses_english(tmp_path):
    with pytest.raises(SystemExit, match="apt-get install asterisk-core-sounds-it asterisk-core-sounds-it-g722"):
        la.asterisk_entries("it", sounds_dir=tmp_path, doc_dir=tmp_path)
    with pytest.raises(ValueError, match="must be one of fr, es, it, ru"):
        la.asterisk_entries("en", sounds_dir=tmp_path, doc_dir=tmp_path)


def test_quick_run_end_to_end(tmp_path):
    out = tmp_path / "longform.json"
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(tmp_path / "xla")
    cmd = [sys.executable, "-m", "benchmarks.longform", "--quick", "--output", str(out)]
    proc = subprocess.run([*cmd, "--compilation_cache_dir", cache], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = json.loads(out.read_text())
    assert d["quick"] and d["complete"] and d["engines"] == ["ours-vad", "fw-batched"]
    assert {"load_avg_1m_start", "load_avg_1m_end"} <= set(d["machine"])
    rec = d["recordings"]["en"]
    assert 55 <= rec["seconds"] < 75 and rec["clips"] == len(set(rec["sources"]))
    rows = {r["engine"]: r for r in rec["rows"]}
    for r in rows.values():
        assert r["wer"] < 10.0, (r["engine"], r["wer"], r["text"])  # tiny.en on clean read speech: a few %
        assert r["same_text_both_passes"]
        assert r["decode_speed"] == pytest.approx(rec["seconds"] / r["decode_s"], rel=0.02)
        assert r["whole_process_s"] > r["start_and_load_s"] and r["whole_process_s"] >= r["first_decode_s"]
    ours, fw = rows["ours-vad"], rows["fw-batched"]
    assert fw["decode_vs_fw_batched"] == 1.0
    assert ours["decode_vs_fw_batched"] == pytest.approx(ours["decode_speed"] / fw["decode_speed"], abs=0.01)
    # the measured run of ours starts from the cache the cold run filled: its programs are loaded, not compiled
    (cold,) = d["cold_cache_runs"]
    assert ours["compile_first_decode"]["programs_loaded"] >= 1
    assert ours["compile_first_decode"]["programs_stored"] <= cold["programs_stored"]
    s = d["summary"]["recordings"]["en"]
    assert s["goal_met"] == (
        ours["wer"] <= fw["wer"] and min(ours["decode_vs_fw_batched"], ours["whole_process_vs_fw_batched"]) >= 1
    )
    assert "| this project `--long_form vad`, batch 8 |" in proc.stdout


def test_the_goal_is_judged_against_the_faster_peer_setting():
    """On an AMD CPU CTranslate2 uses oneDNN unless ``CT2_USE_MKL=1``: the goal holds only against the faster."""

    def row(engine, wer, decode, whole):
        return {"engine": engine, "wer": wer, "decode_speed": decode, "whole_process_speed": whole}

    rows = [
        row("ours-vad", 5.0, 30.0, 20.0),
        row("fw-batched", 6.0, 25.0, 18.0),
        row("fw-batched-mkl", 6.0, 32.0, 19.0),
    ]
    lf.relative(rows)
    for r in rows:
        r["decode_s"], r["whole_process_s"] = 60 / r["decode_speed"], 60 / r["whole_process_speed"]
    s = lf.summary({"en": {"seconds": 60.0, "rows": rows}})["recordings"]["en"]
    assert s["vad_vs_fw_batched_decode"] == 1.2 and s["vad_vs_fastest_fw_batched_decode"] == 0.94
    assert s["vad_vs_fastest_fw_batched_whole_process"] == 1.05 and not s["goal_met"]
    rows[2]["decode_speed"] = 29.0
    assert lf.summary({"en": {"seconds": 60.0, "rows": rows}})["recordings"]["en"]["goal_met"]
