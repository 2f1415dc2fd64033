"""``benchmarks/student_speed.py --quick``: cuts of the real tiny.en timed at batch 1 from the audio files, every
model held to the teacher's token count (no timing is asserted: speed is the benchmark's to report)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_quick_run_times_every_cut_on_the_teachers_token_budget(tmp_path):
    out = tmp_path / "speed.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as a user runs it
    cmd = [sys.executable, "-m", "benchmarks.student_speed", "--quick", "--output", str(out)]
    assert subprocess.run(cmd, cwd=REPO, env=env).returncode == 0
    r = json.loads(out.read_text())
    rows = r["rows"]
    assert [(x["decoder_layers"], x["window_s"]) for x in rows] == [(4, 30.0), (2, 30.0), (2, 15.0)]
    assert r["clips"] == ["goforward.wav", "jfk.flac", "sense_and_sensibility_01_austen_64kb-0870.flac"]
    assert len({x["tokens"] for x in rows}) == 1 and 10 < rows[0]["tokens"] < 40  # the teacher's mean, for all
    assert rows[0]["speedup"] == 1.0 and all(x["ms_per_clip"] > 0 and len(x["rounds_ms"]) == 2 for x in rows)
    for x in rows:  # the split into a fixed part (one token) and a cost per further token
        assert x["speedup"] == rows[0]["ms_per_clip"] / x["ms_per_clip"] and x["fixed_ms"] > 0
        assert x["per_token_ms"] == pytest.approx((x["ms_per_clip"] - x["fixed_ms"]) / (x["tokens"] - 1))
