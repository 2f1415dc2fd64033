"""``benchmarks/distill_quality.py``: its text reader and sentence rules, its smoke check, and its ``--quick`` run
end to end (real TTS speech, the real tiny.en teacher, a real 20-step distillation, ``run_eval.py``'s code)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from benchmarks import distill_quality as dq
from benchmarks import tts_corpus as tc
from distil_whisper_jax.assets import SPEECH_DIR
from tools import espeak_ng

from .helpers import read_tsv

REPO = Path(__file__).resolve().parents[1]


def _r_strings(strings: list[str | None], kind: int = 16) -> bytes:
    """One object of an R lazy-load file, as R writes it: length + zlib(XDR serialisation of a vector)."""
    body = b"X\n" + struct.pack(">III", 3, 0x40201, 0x30500) + struct.pack(">I", 5) + b"UTF-8"
    body += struct.pack(">II", kind, len(strings))
    for s in strings:
        if s is None:
            body += struct.pack(">Ii", 9, -1)  # NA_character_
        else:
            b = s.encode("utf-8")
            body += struct.pack(">Ii", 0x8009, len(b)) + b
    return struct.pack(">I", len(body)) + zlib.compress(body)


def test_r_data_files_are_read_vector_by_vector(tmp_path, monkeypatch):
    path = tmp_path / "Rdata.rdb"
    path.write_bytes(
        _r_strings(["EMMA", "By Jane Austen", None, "Emma Woodhouse, handsome, clever, and rich."])
        + _r_strings(["1", "2"], kind=13)  # an integer vector: not text, skipped
        + _r_strings(["SENSE AND SENSIBILITY", "The family of Dashwood had long been settled in Sussex."])
    )
    assert list(tc.r_character_vectors(path)) == [
        ["EMMA", "By Jane Austen", "Emma Woodhouse, handsome, clever, and rich."],
        ["SENSE AND SENSIBILITY", "The family of Dashwood had long been settled in Sussex."],
    ]
    texts = tc.read_texts(path)
    assert list(texts) == ["EMMA", "SENSE AND SENSIBILITY"]
    path.write_bytes(struct.pack(">I", 4) + zlib.compress(b"RDX2"))
    with pytest.raises(ValueError, match="not R's XDR"):
        list(tc.r_character_vectors(path))
    with pytest.raises(SystemExit, match="no such file"):
        tc.read_texts(tmp_path / "missing.rdb")
    monkeypatch.setattr(tc, "AUSTEN_RDB", tmp_path / "janeaustenr" / "Rdata.rdb")  # as on a machine without it
    with pytest.raises(SystemExit, match="apt-get install r-cran-janeaustenr"):  # named before its bytes are hashed
        tc.build_corpus(tc.AUSTEN_RDB, 0.01, 1, tmp_path / "cache")
    with pytest.raises(SystemExit, match=r"--text .*missing\.txt: no such file"):
        tc.build_corpus(tmp_path / "missing.txt", 0.01, 1, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # refused before any work


def test_sentences_are_speakable_and_unique():
    text = (
        "CHAPTER IV _Mr._ Knightley, a sensible man about seven or eight and thirty, was a very old friend. "
        '"I do not know," said she, "what you can mean by it at all, Mrs. Weston!" '
        "He paid 20 pounds for the horse and was very glad of the bargain. Too short. "
        "Mr. Knightley, a sensible man about seven or eight and thirty, was a very old friend. "
        "She had been mistress of his house from a very early period--and she was very glad of it. "
        "Mr. Knightley, a sensible man about seven or eight and thirty, was a very old friend."
    )
    assert tc.sentences(text) == [  # the first glued to a heading in capitals (dropped), the last a duplicate
        "I do not know, said she, what you can mean by it at all, Mrs Weston!",
        "Mr Knightley, a sensible man about seven or eight and thirty, was a very old friend.",
        "She had been mistress of his house from a very early period, and she was very glad of it.",
    ]


def test_the_smoke_check_needs_a_lower_cross_entropy_on_every_set():
    def point(step, ce):
        return {"step": step, "wer": dict.fromkeys(ce, 100.0), "teacher_wer": {}, "ce": ce, "kl": {}}

    assert dq.not_better([point(0, {"a": 5.0, "b": 4.0}), point(20, {"a": 3.0, "b": 3.9})]) == []
    assert dq.not_better([point(0, {"a": 5.0, "b": 4.0}), point(20, {"a": 3.0, "b": 4.0})]) == ["b"]
    assert dq.not_better([point(0, {"a": 5.0})]) == ["no evaluations"]


def test_wer_gaps_come_with_a_paired_bootstrap_interval_over_utterances(tmp_path):
    """The gap is corpus-level (errors over words, not a mean of row WERs), and its interval resamples the two
    models' rows together: a student that loses words on one utterance of many gets a wide interval that still
    holds zero, one that loses words on every utterance a narrow one that does not."""
    teacher = [[1, 10], [0, 20], [2, 10], [0, 57]]  # 3 errors in 97 words
    gap, lo, hi = dq.gap_interval(teacher, [[1, 10], [0, 20], [7, 10], [0, 57]])
    assert gap == pytest.approx(500 / 97) and lo == 0 <= hi and hi > gap
    gap, lo, hi = dq.gap_interval(teacher, [[2, 10], [2, 20], [3, 10], [5, 57]])
    assert gap == pytest.approx(900 / 97) and 0 < lo < gap < hi
    assert dq.gap_interval(teacher, teacher) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="not the same set"):
        dq.gap_interval(teacher, teacher[:3])
    csv = tmp_path / "predictions.csv"
    csv.write_text(
        "dataset,row,id,reference,prediction,reference_normalised,prediction_normalised,wer,error\n"
        "/x/real.tsv,0,a,A b c.,a b,a b c,a b,33.333333,\n"
        "/y/heldout_new_voices.tsv,0,b,Go.,,go,,100.0,\n"
        "/x/real.tsv,1,c,Hi there,hi there,hi there,hi there,0.0,\n"
    )
    assert dq.row_errors(csv) == {"real": [[1.0, 3], [0.0, 2]], "heldout_new_voices": [[1.0, 1]]}


def test_espeak_library_speaks_each_utterance_the_same_whatever_came_before():
    """The espeak-ng library of espeakng-loader, no program: a clip depends only on its text and voice settings
    (the library's C state and rand() would otherwise carry over from earlier utterances), also when threads
    share it; voices resolve as the program's -v does (``en-gb+f2`` by language)."""
    text = "She had been mistress of his house from a very early period."
    voices = [("en-us+f3", 160, 60, 2), ("en-gb-x-rp+klatt", 160, 50, 2), ("en-gb+f2", 165, 55, 0)]
    first = [espeak_ng.speak(text, *v) for v in voices]
    for x, sr in first:
        assert sr == 22050 and 2.5 < len(x) / sr < 6 and 0.1 < np.max(np.abs(x)) <= 1
    time.sleep(1.1)  # espeak-ng 1.52 seeds its noise from the clock (seconds) unless it is seeded
    again = [espeak_ng.speak(text, *v)[0] for v in reversed(voices)][::-1]
    assert all(np.array_equal(x, y) for (x, _), y in zip(first, again))
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda v: espeak_ng.speak(text, *v)[0], voices * 3))
    assert all(np.array_equal(first[i % 3][0], y) for i, y in enumerate(threaded))
    assert espeak_ng.version().startswith("espeak-ng 1.52")
    with pytest.raises(RuntimeError, match="'xx-nonesuch'"):
        espeak_ng.speak(text, "xx-nonesuch", 160)


def test_quick_benchmark_runs_every_stage_and_the_student_learns(tmp_path, quick_corpus_cache):
    """As a user runs it: its own process, one CPU device (this suite's process emulates 8, which would make the
    benchmark's global batch 8 times larger)."""
    out = tmp_path / "result.json"
    work = tmp_path / "work"
    argv = ["--quick", "--output_dir", str(work), "--cache", str(quick_corpus_cache), "--output", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    run = subprocess.run([sys.executable, "-m", "benchmarks.distill_quality", *argv], cwd=REPO, env=env)
    assert run.returncode == 0
    r = json.loads(out.read_text())
    corpus = r["corpus"]["path"]

    train, new, seen = (
        read_tsv(f"{corpus}/{name}.tsv") for name in ("train", "heldout_new_voices", "heldout_seen_voice")
    )
    assert sum(float(x["duration"]) for x in train) >= 0.05 * 3600
    assert {x["text"] for x in train}.isdisjoint({x["text"] for x in new + seen})  # no sentence in both
    assert {x["speaker_id"] for x in train}.isdisjoint({x["speaker_id"] for x in new + seen})
    assert all(x["speaker_id"].startswith("joe") for x in seen)
    assert not any(x["speaker_id"].startswith("joe") for x in new)
    assert len({x["speaker_id"] for x in train}) == len(tc.TRAIN_SPEAKERS)
    assert 35 < r["real_audio_s"] < 45 and r["labelled"]["rows_written"] > 0
    models = r["models"]
    assert set(models) == {"teacher", "student_fresh", "student_trained"}
    for m in models.values():
        assert set(m["wer"]) == {"real", *dq.HELDOUT_SETS} and m["heldout_audio_s_per_s"] > 0
    assert models["teacher"]["wer"]["real"] < 10  # tiny.en on JFK, "go forward" and the LibriVox sentences
    first, last = r["curve"][0], r["curve"][-1]
    assert (first["step"], last["step"]) == (0, 20)
    assert all(last["ce"][k] < first["ce"][k] for k in ("real", "heldout_new_voices"))
    assert set(r["goals"]) == {"heldout_new_voices_wer_gap", "real_wer_gap", "speedup"}
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the student stays behind, a transformers directory with a card naming its teacher, recipe and data
    card = json.loads((work / "trained" / "student.json").read_text())
    assert card["student"] == str(work / "trained" / "hf") and (work / "trained" / "hf" / "config.json").is_file()
    assert (work / "untrained").is_dir() and card["untrained"] == str(work / "untrained")
    assert "tiny.en" in card["teacher"] and card["recipe"][0] == "run_distillation.py"
    assert "--freeze_encoder" in card["recipe"] and card["recipe"][card["recipe"].index("--max_steps") + 1] == "20"
    assert card["data"]["labelled"]["rows_written"] == r["labelled"]["rows_written"]
    assert card["wer"]["student_trained"] == models["student_trained"]["wer"]


def test_the_wide_corpus_adds_new_speakers_new_sentences_and_keeps_the_held_out_speech(
    tmp_path, quick_corpus_cache, monkeypatch
):
    """Real TTS (Piper sped up: flite is a Debian program the suite does not need); the base is the quick corpus."""
    text = SPEECH_DIR / "sentences.txt"  # the quick runs' text
    base = tc.build_corpus(text, 0.05, 8, quick_corpus_cache)
    sped = (tc.Speaker(tc.Sped(tc.PiperVoice(1.0, 0.667, 0.8), 1.25)),)
    wide = tc.widen_corpus(base, 0.01, text, 8, speakers=sped)
    assert wide.parent == base.parent and tc.widen_corpus(base, 0.01, text, 8, speakers=sped) == wide  # cached
    base_rows, rows = read_tsv(base / "train.tsv"), read_tsv(wide / "train.tsv")
    added = rows[len(base_rows) :]
    assert [(r["text"], r["speaker_id"]) for r in rows[: len(base_rows)]] == [
        (r["text"], r["speaker_id"]) for r in base_rows
    ]
    assert added and {r["speaker_id"] for r in added} == {"joe_l1.00_n0.67_x1.25_clean"}
    held = [read_tsv(wide / f"{k}.tsv") for k in tc.HELDOUT_SPEAKERS]
    assert held == [
        [{**r, "audio": f"../{base.name}/{r['audio']}"} for r in read_tsv(base / f"{k}.tsv")]
        for k in tc.HELDOUT_SPEAKERS
    ]
    seen = {r["text"] for r in base_rows} | {r["text"] for h in held for r in h}
    assert not seen & {r["text"] for r in added}  # sentences no base row or held-out row says
    for r in rows[:3] + added + held[0][:3]:  # every path resolves from the wide corpus's directory
        assert (wide / r["audio"]).resolve().is_file()
    info = json.loads((wide / "corpus.json").read_text())
    assert info["base"] == base.name and info["seconds"]["train_added"] == pytest.approx(
        sum(float(r["duration"]) for r in added), abs=0.01
    )
    monkeypatch.setenv("PATH", str(tmp_path))  # no flite program: the default speakers name the package first
    with pytest.raises(SystemExit, match="apt-get install flite"):
        tc.widen_corpus(base, 0.02, text, 8)
