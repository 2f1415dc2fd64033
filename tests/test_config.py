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


@dataclasses.dataclass(frozen=True)
class Renamed:
    steps: int = config.flag(10, "optimizer steps", deprecated=("num_steps",))
    model_name_or_path: str | None = config.flag(None, "the model", aliases=("model",))


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_alias_and_deprecated_names_work_in_config_files_as_on_the_command_line(tmp_path, suffix):
    f = tmp_path / f"run{suffix}"
    values = {"model": "m", "num_steps": 3}
    f.write_text(json.dumps(values) if suffix == ".json" else "model: m\nnum_steps: 3\n")
    with pytest.warns(FutureWarning, match="--num_steps is deprecated; use --steps"):
        from_file = config.parse(Renamed, ["--config", str(f)])
    with pytest.warns(FutureWarning, match="--num_steps is deprecated; use --steps"):
        from_flags = config.parse(Renamed, ["--model", "m", "--num_steps", "3"])
    assert from_file == from_flags == Renamed(model_name_or_path="m", steps=3)
    with pytest.warns(FutureWarning, match="--num_steps is deprecated"):
        assert config.from_dict(Renamed, {"num_steps": 4}).steps == 4


def test_an_alias_key_in_a_real_stage_config_file_is_not_unknown(tmp_path):
    f = tmp_path / "eval.yaml"
    f.write_text("max_eval_samples: 5\ngeneration_num_beams: 2\nmodel: m\n")
    cfg = config.parse(EvalConfig, ["--config", str(f), "--dataset_name", "d", "--output_dir", "o"])
    assert (cfg.max_samples, cfg.num_beams, cfg.model_name_or_path) == (5, 2, "m")


def test_deprecated_flag_warns_on_the_command_line_and_in_a_file(tmp_path):
    base = ["--dataset_name", "x", "--output_dir", "o"]
    with pytest.warns(FutureWarning, match="--distributed is deprecated; use --jax_distributed"):
        assert config.parse(PseudoLabelConfig, [*base, "--distributed"]).jax_distributed
    f = tmp_path / "label.json"
    f.write_text('{"distributed": true}')
    with pytest.warns(FutureWarning, match="--distributed is deprecated; use --jax_distributed"):
        assert config.parse(PseudoLabelConfig, ["--config", str(f), *base]).jax_distributed


def test_one_flag_under_two_names_in_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "run.yaml"
    f.write_text("model: a\nmodel_name_or_path: b\n")
    with pytest.raises(SystemExit):
        config.parse(Renamed, ["--config", str(f)])
    assert "are the same flag --model_name_or_path" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["", "\n", "{}"])
@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_an_empty_config_file_is_an_empty_config_json_or_yaml(tmp_path, suffix, text):
    f = tmp_path / f"run{suffix}"
    f.write_text(text)
    assert config.parse(Toy, ["--config", str(f), "--output_dir", "o"]) == Toy(output_dir="o")


def test_transcribe_inputs_come_from_a_config_file_or_the_command_line(tmp_path, capsys):
    from distil_whisper_jax.decode.transcribe import TranscribeConfig

    f = tmp_path / "t.yaml"
    f.write_text("inputs: [a.wav, b.wav]\nmodel: m\n")
    cfg = config.parse(TranscribeConfig, ["--config", str(f)], positional=("inputs",))
    assert cfg.inputs == ("a.wav", "b.wav") and cfg.model_name_or_path == "m"
    cfg = config.parse(TranscribeConfig, ["--config", str(f), "c.wav"], positional=("inputs",))
    assert cfg.inputs == ("c.wav",)
    with pytest.raises(SystemExit):
        config.parse(TranscribeConfig, [], positional=("inputs",))
    assert "missing required inputs" in capsys.readouterr().err


def test_every_command_takes_model_and_model_name_or_path():
    from distil_whisper_jax.decode.transcribe import TranscribeConfig
    from distil_whisper_jax.stages.demo.demo import DemoConfig
    from distil_whisper_jax.stages.export.export import ExportConfig

    required = {
        PseudoLabelConfig: ["--dataset_name", "d", "--output_dir", "o"],
        DistillConfig: ["--train_dataset_name", "d", "--output_dir", "o", "--max_steps", "2"],
        EvalConfig: ["--dataset_name", "d", "--output_dir", "o"],
        ExportConfig: ["--output_dir", "o"],
        TranscribeConfig: ["a.wav"],
        DemoConfig: [],
    }
    for cls, rest in required.items():
        positional = ("inputs",) if cls is TranscribeConfig else ()
        for name in ("--model", "--model_name_or_path"):
            cfg = config.parse(cls, [name, "m", *rest], positional=positional)
            assert cfg.model_name_or_path == "m", (cls, name)


def test_kd_temperature_keeps_upstreams_temperature_flag_and_old_runs_resume(tmp_path):
    base = ["--model_name_or_path", "s", "--train_dataset_name", "d", "--output_dir", "o", "--max_steps", "2"]
    assert config.parse(DistillConfig, [*base, "--temperature", "3"]).kd_temperature == 3.0
    f = tmp_path / "distill.yaml"
    f.write_text("temperature: 4\n")
    assert config.parse(DistillConfig, ["--config", str(f), *base]).kd_temperature == 4.0
    cfg = config.parse(DistillConfig, base)
    stored = {k: v for k, v in config.to_dict(cfg).items() if k != "kd_temperature"}
    stored["temperature"] = cfg.kd_temperature  # a run config written before the rename
    meta = {"config": {"d_model": 4}, "global_batch": 8, "teacher_sha256": "t", "teacher": "t"}
    check_resume(cfg, {**meta, "run_config": stored}, {**meta, "run_config": config.to_dict(cfg)})


def test_to_argv_is_the_command_line_that_parses_back_to_the_config():
    cfg = Toy(output_dir="o", steps=5, fast=True, verify=False, name="x", files=("a", "b"))
    argv = config.to_argv(cfg)
    assert argv == ["--output_dir", "o", "--steps", "5", "--fast", "--no-verify", "--name", "x", "--files", "a", "b"]
    assert config.parse(Toy, argv) == cfg
    assert config.to_argv(Toy(output_dir="o")) == ["--output_dir", "o"]


def test_a_config_with_all_of_a_shared_groups_flags_inherits_the_group():
    """Shared flags are declared once (infra.flag_groups, multihost): no stage re-declares a group's flags with
    its own default or help."""
    from distil_whisper_jax.decode.transcribe import TranscribeConfig
    from distil_whisper_jax.infra import flag_groups
    from distil_whisper_jax.stages.export.export import ExportConfig

    groups = (flag_groups.HubDatasetFlags, flag_groups.GenerationDeviceFlags, flag_groups.DecodingFlags)
    for group in (*groups, MultiHostConfig):
        names = {f.name for f in dataclasses.fields(group)}
        for cls in (PseudoLabelConfig, DistillConfig, EvalConfig, TranscribeConfig, ExportConfig):
            if names <= {f.name for f in dataclasses.fields(cls)}:
                assert issubclass(cls, group), (cls.__name__, group.__name__)
