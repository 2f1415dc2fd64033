"""``benchmarks/data_scaling.py``: nested subsets, the fit and what it predicts, and its ``--quick`` point end to end
(real TTS speech, the real tiny.en teacher, a real 10-step distillation, ``run_eval.py``'s code), resumed and
refusing to mix recipes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import data_scaling as ds

from .helpers import read_tsv, write_tsv

REPO = Path(__file__).resolve().parents[1]


def test_smaller_sets_are_each_speakers_first_share_and_lie_inside_the_larger(tmp_path):
    rows = [
        {"audio": f"flac/{sp}_{i}.flac", "text": f"{sp} {i}", "speaker_id": sp, "duration": str(d)}
        for sp, d in (("a", 2.0), ("b", 5.0))
        for i in range(10)
    ]
    write_tsv(tmp_path / "train.tsv", rows)  # a: 20 s, b: 50 s
    half, s_half = ds.subset(tmp_path, 1.0, 2.0, tmp_path / "half")
    quarter, s_quarter = ds.subset(tmp_path, 0.5, 2.0, tmp_path / "quarter")
    h, q = read_tsv(half), read_tsv(quarter)
    assert [r["text"] for r in h] == [f"a {i}" for i in range(5)] + [f"b {i}" for i in range(5)]
    assert (s_half, s_quarter) == (35.0, 21.0)  # a: 10 + b: 25; a: 6 (3 clips reach 5 s) + b: 15 (3 reach 12.5 s)
    assert {r["text"] for r in q} < {r["text"] for r in h}
    assert all(Path(r["audio"]).is_absolute() and r["audio"].endswith(".flac") for r in h)


def _point(hours: float, gap_new: float, gap_real: float, ce: float) -> dict:
    return {
        "hours": hours,
        "gap": {"heldout_new_voices": {"value": gap_new}, "real": {"value": gap_real}},
        "ce": ce,
    }


def test_the_fit_is_a_line_in_log_hours_and_a_power_law_for_the_cross_entropy():
    assert ds.fit([_point(0.5, 12, 20, 2.0)]) == {}  # one size: nothing to fit
    pts = [_point(h, 10 - 2 * math.log2(h), 20 + math.log2(h), 1.5 * h**-0.3) for h in (0.25, 0.5, 1, 2)]
    f = ds.fit(pts)
    new, real = f["gap"]["heldout_new_voices"], f["gap"]["real"]
    assert new["intercept_at_1h"] == pytest.approx(10) and new["per_doubling"] == pytest.approx(-2)
    assert new["hours_to_goal"] == pytest.approx(2 ** ((10 - 3) / 2))  # 3 points: 11.3 h
    assert real["per_doubling"] == pytest.approx(1) and real["hours_to_goal"] is None  # a growing gap: never
    assert f["ce"]["at_1h"] == pytest.approx(1.5) and f["ce"]["exponent"] == pytest.approx(-0.3)
    # noise: a slope within two standard errors of zero predicts nothing; a steady fall still does
    noisy = [_point(h, 10 - 2 * math.log2(h), g, 1.0) for h, g in ((0.25, 37), (0.5, 17), (1, 35), (2, 20))]
    f = ds.fit(noisy)
    assert f["gap"]["real"]["per_doubling"] < 0 and f["gap"]["real"]["hours_to_goal"] is None
    assert f["gap"]["real"]["per_doubling_se"] > -f["gap"]["real"]["per_doubling"] / 2
    assert f["gap"]["heldout_new_voices"]["per_doubling_se"] == pytest.approx(0, abs=1e-6)
    assert f["gap"]["heldout_new_voices"]["hours_to_goal"] == pytest.approx(2 ** ((10 - 3) / 2))


def test_quick_point_end_to_end_then_a_changed_recipe_is_refused(tmp_path, quick_corpus_cache):
    """As a user runs it: its own process, one CPU device (the suite emulates 8)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    cmd = [sys.executable, "-m", "benchmarks.data_scaling", "--quick", "--cache", str(quick_corpus_cache)]
    cmd += ["--work", str(tmp_path / "work")]
    assert subprocess.run(cmd, cwd=REPO, env=env).returncode == 0
    out = tmp_path / "work" / "data_scaling.json"
    r = json.loads(out.read_text())
    assert [p["hours"] for p in r["points"]] == [0.025]  # the smallest size only
    p = r["points"][0]
    assert 0.025 <= p["train_hours"] < 0.05 and p["labelled"]["rows_written"] > 0  # a share of the 0.05 h corpus
    assert set(p["gap"]) == {"real", "heldout_new_voices", "heldout_seen_voice"}
    for g in p["gap"].values():
        lo, hi = g["interval_95"]
        assert lo <= g["value"] <= hi
    teacher_real = r["teacher"]["wer"]["real"]
    assert teacher_real < 10 and p["wer"]["real"] == pytest.approx(teacher_real + p["gap"]["real"]["value"])
    assert 0 < p["ce"] < 10 and r["fit"] == {} and r["recipe"]["max_steps"] == 10
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    refused = subprocess.run(cmd + ["--decoder_layers", "1"], cwd=REPO, env=env, capture_output=True, text=True)
    assert refused.returncode != 0 and "holds points of another recipe" in refused.stderr
    assert json.loads(out.read_text())["points"] == r["points"]  # nothing lost


def test_a_wide_run_writes_its_own_json_and_a_negative_size_is_refused(capsys):
    assert ds.parse_args([]).output.name == "data_scaling.json"
    assert ds.parse_args(["--wide_hours", "1"]).output.name == "data_scaling_wide.json"  # never mixed with the base
    with pytest.raises(SystemExit):
        ds.parse_args(["--wide_hours", "-1"])
    assert "--wide_hours -1.0: expected hours" in capsys.readouterr().err
