"""Student creation: maximally spaced layer maps, exact slices of the real tiny.en, a reloadable directory."""

import json

import jax
import numpy as np
import pytest

from distil_whisper_jax.cli import create_student as cs
from distil_whisper_jax.core.model import Whisper, count_params
from distil_whisper_jax.weights.loading import DEFAULT_MODEL, load_pretrained
from distil_whisper_jax.weights.student import layer_map, make_student, params_digest


@pytest.mark.parametrize(
    "t, s, expected",
    [
        (32, 2, [0, 31]),
        (32, 3, [0, 15, 31]),
        (32, 4, [0, 10, 20, 31]),
        (32, 8, [0, 4, 8, 13, 17, 22, 26, 31]),
        (24, 8, [0, 3, 6, 9, 13, 16, 19, 23]),
        (12, 8, [0, 1, 3, 4, 6, 7, 9, 11]),
        (4, 2, [0, 3]),
        (4, 1, [3]),
        (4, 4, [0, 1, 2, 3]),
    ],
)
def test_layer_map_matches_the_original_tables(t, s, expected):
    assert layer_map(t, s) == expected


@pytest.mark.parametrize("s", [0, 5])
def test_layer_map_rejects_impossible_sizes(s):
    with pytest.raises(ValueError, match="between 1 and the teacher's 4"):
        layer_map(4, s)


def test_two_layer_student_is_the_teachers_first_and_last_layer(tiny, clip_audio):
    config, params, info = make_student(tiny.config, tiny.params, 2)
    assert info == {"decoder_layer_map": [0, 3], "encoder_layer_map": None}
    assert config == tiny.config.replace(decoder_layers=2)
    flat_t = dict(jax.tree_util.tree_leaves_with_path(tiny.params))
    flat_s = jax.tree_util.tree_leaves_with_path(params)
    assert len(flat_s) == len(flat_t)
    for path, leaf in flat_s:
        keys = [k.key for k in path]
        want = np.asarray(flat_t[path])
        if keys[:2] == ["decoder", "layers"]:
            want = want[[0, 3]]
        np.testing.assert_array_equal(leaf, want, err_msg="/".join(keys))  # bit for bit
    # a copy, not a view: training the student must never touch the teacher
    assert not np.shares_memory(
        params["encoder"]["conv1"]["kernel"], np.asarray(tiny.params["encoder"]["conv1"]["kernel"])
    )

    from distil_whisper_jax.speech.audio import log_mel_spectrogram

    mel = log_mel_spectrogram(clip_audio[:1], tiny.config.num_mel_bins)
    enc_t = Whisper(tiny.config).apply({"params": tiny.params}, mel, method="encode")
    enc_s = Whisper(config).apply({"params": params}, mel, method="encode")
    np.testing.assert_array_equal(np.asarray(enc_s), np.asarray(enc_t))


def test_reduced_encoder_and_shorter_context(tiny):
    config, params, info = make_student(tiny.config, tiny.params, 1, encoder_layers=2, max_source_positions=750)
    assert info["encoder_layer_map"] == [0, 3] and info["decoder_layer_map"] == [3]
    assert (config.encoder_layers, config.decoder_layers, config.max_source_positions) == (2, 1, 750)
    np.testing.assert_array_equal(
        params["encoder"]["embed_positions"]["embedding"],
        np.asarray(tiny.params["encoder"]["embed_positions"]["embedding"])[:750],
    )
    with pytest.raises(ValueError, match="max_source_positions"):
        make_student(tiny.config, tiny.params, 2, max_source_positions=3000)
    with pytest.raises(ValueError, match="multiple of 50"):  # 14.8 s: no whole-second feature extractor
        make_student(tiny.config, tiny.params, 2, max_source_positions=740)


def test_cli_writes_a_reloadable_student(tiny, tmp_path, caplog):
    out = tmp_path / "student"
    with caplog.at_level("INFO"):
        assert cs.main(["--decoder_layers", "2", "--output_dir", str(out)]) == 0
    back = load_pretrained(out)
    _, params, _ = make_student(tiny.config, tiny.params, 2)
    assert back.config.decoder_layers == 2 and count_params(back.params) == count_params(params)
    info = json.loads((out / "distil_info.json").read_text())
    assert info["decoder_layer_map"] == [0, 3] and info["teacher_decoder_layers"] == 4
    # the teacher is recorded portably: the bundled name (not this machine's path) and its weights' digest
    assert info["teacher"] == DEFAULT_MODEL and info["teacher_sha256"] == params_digest(tiny.params)
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["suppress_tokens"] == list(tiny.generation_defaults.suppress_tokens)
    assert all(0 <= layer < 2 for layer, _ in gen["alignment_heads"])
    assert back.tokenizer.decode(back.tokenizer(" hello world").input_ids, skip_special_tokens=True) == " hello world"
    assert "decoder layers (teacher layers [0, 3])" in caplog.text
    assert cs.main(["--decoder_layers", "9", "--output_dir", str(tmp_path / "bad")]) == 2


def test_params_digest_is_the_same_from_every_format_and_changes_with_the_weights(tiny, tmp_path):
    """The bundled tiny.en (CTranslate2 fp16) and its transformers copy (fp32 safetensors) hold the same
    values, so they get the same digest; any changed weight changes it."""
    from distil_whisper_jax.weights.convert.hf import write_hf_dir

    write_hf_dir(tmp_path / "hf", tiny.config, tiny.params, tokenizer=tiny.tokenizer)
    hf = load_pretrained(tmp_path / "hf")
    assert hf.fmt == "hf" and tiny.fmt == "ct2"
    assert params_digest(hf.params) == params_digest(tiny.params)
    changed = jax.tree_util.tree_map(np.array, hf.params)
    changed["decoder"]["layers"]["mlp"]["fc1"]["kernel"][0, 0, 0] += 1e-3
    assert params_digest(changed) != params_digest(tiny.params)


def _tree(d) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_a_non_empty_output_dir_is_refused_before_the_teacher_loads(tmp_path, capsys):
    """A finished distillation run in --output_dir used to be overwritten silently (it then transcribed as the
    untrained student). The teacher named here does not exist: the refusal comes first, nothing is touched."""
    run = tmp_path / "run"
    (run / "hf").mkdir(parents=True)
    (run / "hf" / "model.safetensors").write_bytes(b"trained weights")
    (run / "metrics.jsonl").write_text('{"step": 5000}\n')
    before = _tree(run)
    argv = ["--teacher_model_name_or_path", str(tmp_path / "no-teacher"), "--output_dir", str(run)]
    assert cs.main(argv) == 2
    err = capsys.readouterr().err
    assert f"--output_dir {run} is not empty (it holds hf, metrics.jsonl)" in err
    assert "use an empty directory or --overwrite_output_dir" in err and "no-teacher" not in err
    assert _tree(run) == before
    (tmp_path / "empty").mkdir()  # an existing empty directory is fine (the teacher is then loaded: its error)
    assert cs.main([*argv[:2], "--output_dir", str(tmp_path / "empty")]) == 2
    assert "no-teacher" in capsys.readouterr().err


def test_overwrite_output_dir_replaces_everything_with_the_student(tiny, tmp_path):
    out = tmp_path / "student"
    (out / "checkpoints" / "300").mkdir(parents=True)
    (out / "model.safetensors").write_bytes(b"an older model")
    assert cs.main(["--decoder_layers", "2", "--output_dir", str(out), "--overwrite_output_dir"]) == 0
    assert not (out / "checkpoints").exists()
    _, params, _ = make_student(tiny.config, tiny.params, 2)
    back = load_pretrained(out)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, back.params, params))
    # a teacher inside the directory to be cleared is refused, not deleted
    with pytest.raises(ValueError, match=r"holds the teacher .*student/teacher"):
        (out / "teacher").mkdir()
        for name in ("config.json", "model.safetensors", "generation_config.json"):
            (out / "teacher" / name).write_bytes((out / name).read_bytes())
        from distil_whisper_jax.stages.student.create_student import create_student

        create_student(str(out / "teacher"), out, 1, overwrite=True)
    assert (out / "teacher" / "model.safetensors").is_file()
