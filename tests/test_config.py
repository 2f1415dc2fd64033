"""Run configs: parser derived from the dataclass, --config files, precedence, typo'd keys."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Literal

import pytest

from distil_whisper_jax.infra import config
from distil_whisper_jax.infra.multihost import MultiHostConfig
from distil_whisper_jax.stages.distill.config import DistillConfig
from distil_whisper_jax.stages.distill.setup import check_resume
from distil_whisper_jax.stages.evaluate.evaluation import EvalConfig
from distil_whisper_jax.stages.label.config import PseudoLabelConfig


@dataclasses.dataclass(frozen=True)
class Toy:
    output_dir: str = config.flag(help="where outputs go")
    steps: int = config.flag(10, "optimizer steps", group="training")
    rate: float = config.flag(1e-3, "learning rate", group="training")
    mode: Literal["a", "b"] = config.flag("a", "a choice")
    fast: bool = config.flag(False, "go fast")
    verify: bool = config.flag(True, "check outputs")
    name: str | None = config.flag(None, "optional name", aliases=("--old_name",))
    files: tuple[str, ...] = config.flag((), "several values")


def test_flags_defaults_and_types():
    cfg = config.parse(
        Toy, ["--output_dir", "o", "--steps", "5", "--fast", "--no-verify", "--old_name", "x", "--files", "a", "b"]
    )
    assert cfg == Toy(output_dir="o", steps=5, fast=True, verify=False, name="x", files=("a", "b"))
    assert config.parse(Toy, ["--output_dir", "o"]) == Toy(output_dir="o")


def test_help_lists_every_field(capsys):
    with pytest.raises(SystemExit):
        config.parse(Toy, ["--help"])
    out = capsys.readouterr().out
    for f in dataclasses.fields(Toy):
        assert f"--{f.name}" in out
    assert "optimizer steps (default: 10)" in out and "training" in out


def test_missing_required_and_bad_choice(capsys):
    with pytest.raises(SystemExit):
        config.parse(Toy, [])
    assert "--output_dir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        config.parse(Toy, ["--output_dir", "o", "--mode", "c"])


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_config_file_and_precedence(tmp_path, suffix):
    values = {"output_dir": "from_file", "steps": 7, "fast": True, "files": ["x"]}
    f = tmp_path / f"run{suffix}"
    f.write_text(
        json.dumps(values) if suffix == ".json" else "output_dir: from_file\nsteps: 7\nfast: true\nfiles: [x]\n"
    )
    cfg = config.parse(Toy, ["--config", str(f), "--steps", "9", "--no-fast"])
    assert cfg == Toy(output_dir="from_file", steps=9, fast=False, files=("x",))


def test_config_file_errors(tmp_path, capsys):
    f = tmp_path / "run.yaml"
    f.write_text("output_dir: o\nstesp: 3\n")
    with pytest.raises(SystemExit):
        config.parse(Toy, ["--config", str(f)])
    err = capsys.readouterr().err
    assert "stesp" in err and "did you mean 'steps'" in err and str(f) in err
    f.write_text("output_dir: o\nsteps: three\n")
    with pytest.raises(SystemExit):
        config.parse(Toy, ["--config", str(f)])
    assert "steps: expected an integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        config.parse(Toy, ["--config", str(tmp_path / "absent.yaml")])
    assert "cannot read" in capsys.readouterr().err


def test_round_trip_and_differences():
    cfg = Toy(output_dir="o", files=("a",))
    d = config.to_dict(cfg)
    assert config.from_dict(Toy, d) == cfg
    assert config.differences(d, {**d, "steps": 11}) == ["steps: 10 → 11"]
    assert config.differences(d, {**d, "steps": 11}, ignore=["steps"]) == []


def test_cli_logging_follows_stderr_after_a_capture_closes_it(monkeypatch, capsys):
    """A CLI run under one stderr (a test's capture, a redirected shell) must not leave the logging
    handler on that stream: records logged after it closes go to the stderr of that time."""
    import io
    import logging

    from distil_whisper_jax.infra.files import setup_logging

    root = logging.getLogger()
    before = list(root.handlers)
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    try:
        setup_logging()
        first.close()
        second = io.StringIO()
        monkeypatch.setattr(sys, "stderr", second)
        logging.getLogger("distil_whisper_jax.test").info("after the first stderr closed")
        written = second.getvalue()
        assert "Logging error" not in written, written
        assert "INFO distil_whisper_jax.test: after the first stderr closed" in written
    finally:
        for h in root.handlers:
            if h not in before:
                root.removeHandler(h)


def test_every_multi_host_stage_takes_the_same_flags_and_distributed_stays_an_alias():
    for cls in (PseudoLabelConfig, DistillConfig, EvalConfig):
        assert issubclass(cls, MultiHostConfig), cls
    base = ["--model_name_or_path", "s", "--train_dataset_name", "d", "--output_dir", "o", "--max_steps", "2"]
    old = config.parse(DistillConfig, [*base, "--distributed", "--num_processes", "2", "--process_id", "1"])
    new = config.parse(DistillConfig, [*base, "--jax_distributed"])
    assert old.jax_distributed and new.jax_distributed and old.multi_host
    assert not config.parse(DistillConfig, base).multi_host
    labelled = config.parse(PseudoLabelConfig, ["--dataset_name", "x", "--output_dir", "o", "--distributed"])
    assert labelled.jax_distributed
    with pytest.raises(ValueError, match="--process_id 2 must be < --num_processes 2"):
        dataclasses.replace(old, process_id=2).validate()
    # a run stored before the rename (field "distributed") resumes under the new name, launched differently
    stored = {k: v for k, v in config.to_dict(old).items() if k != "jax_distributed"}
    stored["distributed"] = True
    meta = {"config": {"d_model": 4}, "global_batch": 8, "teacher_sha256": "t", "teacher": "t"}
    check_resume(new, {**meta, "run_config": stored}, {**meta, "run_config": config.to_dict(new)})
    with pytest.raises(ValueError, match="--max_steps"):
        changed = config.to_dict(dataclasses.replace(new, max_steps=3))
        check_resume(new, {**meta, "run_config": stored}, {**meta, "run_config": changed})
