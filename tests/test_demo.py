"""The demo's held-out evaluation set and its command line (the full run is benchmarks/distill_demo.py)."""

import collections
import csv
from pathlib import Path

from distil_whisper_jax import demo
from distil_whisper_jax.assets import speech_manifest
from distil_whisper_jax.cli import demo as demo_cli


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def rows_used(argv: list[str], manifest_flag: str, limit_flag: str) -> list[dict]:
    """The manifest rows a stage reads, from its flags: the manifest, cut to the row limit if one is given."""
    manifest = Path(argv[argv.index(manifest_flag) + 1])
    rows = read_rows(manifest)
    for r in rows:
        r["audio"] = str(manifest.parent / r["audio"])  # absolute paths stay absolute
    if limit_flag in argv:
        rows = rows[: int(argv[argv.index(limit_flag) + 1])]
    return rows


def test_demo_evaluates_and_verifies_on_every_heldout_speaker(tmp_path):
    speakers = {r["speaker_id"] for r in read_rows(speech_manifest("heldout"))}
    assert len(speakers) == 8
    cmds = demo.demo_commands(tmp_path, 100, None, 24, 4, 3e-4, 160)
    for argv, manifest_flag, limit_flag in (
        (cmds["train"], "--eval_dataset_name", "--max_eval_samples"),
        (cmds["export"], "--verify_audio", "--verify_max_clips"),
    ):
        rows = rows_used(argv, manifest_flag, limit_flag)
        assert len(rows) == 24
        assert collections.Counter(r["speaker_id"] for r in rows) == {s: 3 for s in speakers}
        assert all(Path(r["audio"]).is_file() for r in rows)
    # metrics keep the split's name ("eval/heldout/..."), as with the full manifest
    assert Path(cmds["train"][cmds["train"].index("--eval_dataset_name") + 1]).stem == "heldout"


def test_spread_over_speakers_round_robin_in_manifest_order():
    rows = [{"speaker_id": s, "i": i} for i, s in enumerate("aaaabbbcc")]
    assert [r["i"] for r in demo.spread_over_speakers(rows, 3)] == [0, 4, 7]
    assert [r["i"] for r in demo.spread_over_speakers(rows, 5)] == [0, 1, 4, 5, 7]
    assert [r["i"] for r in demo.spread_over_speakers(rows, 8)] == [0, 1, 2, 4, 5, 6, 7, 8]
    assert len(demo.spread_over_speakers(rows, 50)) == len(rows)


def test_demo_without_eval_rows_uses_the_whole_split(tmp_path):
    cmds = demo.demo_commands(tmp_path, 10, None, None, 4, 3e-4, 160)
    assert rows_used(cmds["train"], "--eval_dataset_name", "--max_eval_samples") == [
        dict(r, audio=str(speech_manifest("heldout").parent / r["audio"]))
        for r in read_rows(speech_manifest("heldout"))
    ]


def test_demo_cli_refuses_bad_values_before_work(tmp_path, capsys):
    assert demo_cli.main(["--max_steps", "0", "--output_dir", str(tmp_path / "o")]) == 2
    assert "--max_steps must be ≥ 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    cfg = tmp_path / "demo.json"
    cfg.write_text('{"eval_rows": -1}')
    assert demo_cli.main(["--config", str(cfg)]) == 2
    assert "--eval_rows" in capsys.readouterr().err
