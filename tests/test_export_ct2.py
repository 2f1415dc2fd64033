"""faster-whisper (CTranslate2) export: ``--formats ct2,ct2-float16,ct2-int8``, verified in faster-whisper.

The bundled tiny.en and a 2-layer student are exported to CTranslate2 directories, which faster-whisper and
ctranslate2 transcribe in a subprocess (``export_verify``, as ``--verify`` does) and this project's loader reads
back. Verification uses the three shortest bundled clips and a 48-token cap, like ``tests/test_export.py``, so
the JAX references reuse that module's compiled programs when both run in one session.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from distil_whisper_jax.cli import export as cli
from distil_whisper_jax.stages.export import export as ex
from distil_whisper_jax.stages.export import verify as export_verify
from distil_whisper_jax.weights.convert import ct2, tree_equal
from distil_whisper_jax.weights.convert.hf import flax_to_hf, write_hf_dir
from distil_whisper_jax.weights.loading import load_pretrained

from .helpers import export_cli, random_params, small_config

MAX_NEW_TOKENS = 48


@pytest.fixture(scope="module")
def student(tiny, tmp_path_factory):
    """A 2-layer student of tiny.en (teacher decoder layers 0 and 3): fp32 weights, unlike the fp16 teacher."""
    from distil_whisper_jax.stages.student.create_student import create_student

    return load_pretrained(create_student(tiny, tmp_path_factory.mktemp("student") / "s", decoder_layers=2))


@pytest.fixture(scope="module")
def session(tiny, student, clips, tmp_path_factory):
    """tiny.en and the student exported to every CTranslate2 type, all verified in one pass."""
    root = tmp_path_factory.mktemp("export_ct2")
    outputs = {
        "tiny": ex.export(tiny, ex.CT2_FORMATS, root / "tiny"),
        "student": ex.export(student, ex.CT2_FORMATS, root / "student"),
    }
    checks = export_verify.verify(
        [(tiny, outputs["tiny"]), (student, outputs["student"])], clips[:3], max_new_tokens=MAX_NEW_TOKENS
    )
    return {"root": root, "outputs": outputs, "checks": dict(zip(("tiny", "student"), checks))}


@pytest.mark.parametrize("model", ["tiny", "student"])
def test_faster_whisper_gives_the_jax_text(session, model):
    """float32: faster-whisper's text (its own log-mel) equals JAX's after normalisation, and ctranslate2 on our
    log-mel gives JAX's text exactly; float16 and int8 within 1 WER point of float32 (q8_0's rule)."""
    checks = {c.fmt: c for c in session["checks"][model]}
    print("\n" + export_verify.format_table(list(checks.values())))
    assert set(checks) == set(ex.CT2_FORMATS)
    for c in checks.values():
        assert c.texts is not None and len(c.texts) == 3, f"{c.fmt}: {c.note}"
        assert c.passed, (c.fmt, c.note)
    f32 = checks["ct2"]
    assert f32.normalized + f32.loops == 3 and f32.features == 3, f32.note
    for fmt in ("ct2-float16", "ct2-int8"):
        assert export_verify.MAX_WER_INCREASE[fmt] == export_verify.MAX_WER_INCREASE["ggml-q8_0"] == 1.0
        assert checks[fmt].wer <= f32.wer + 1.0 and "vs float32" in checks[fmt].note
    if model == "tiny":  # real weights on real speech: every clip, not just consistent
        assert f32.normalized == 3 and f32.wer < 10


def test_tokens_identical_when_ctranslate2_gets_our_features(session, tiny, student, clip_audio):
    """``ctranslate2.models.Whisper.generate`` on our log-mel features: the very token ids of JAX greedy decoding."""
    from distil_whisper_jax.decode.decoding import decoder
    from distil_whisper_jax.stages.export.runtimes import ct2_features_tokens

    waves = clip_audio[:3]
    for name, pre in (("tiny", tiny), ("student", student)):
        dec = decoder(pre, 3, max_new_tokens=MAX_NEW_TOKENS, devices=jax.local_devices()[:1])
        want = [list(map(int, ids)) for ids in dec(waves)]
        got = ct2_features_tokens(str(session["outputs"][name]["ct2"]), waves, 2, MAX_NEW_TOKENS)
        assert got == want, name


def test_same_files_as_ctranslate2s_own_converter(session, student, tmp_path):
    """Our numpy → ``WhisperSpec`` route writes byte for byte the ``model.bin`` and ``vocabulary.json`` that
    ``ctranslate2.converters.TransformersConverter`` (torch) writes from our transformers export, float32 and
    int8, and the same config except ``lang_ids``: the converter finds none for an English-only transformers
    directory, we write the language tokens of the vocabulary layout."""
    from ctranslate2.converters import TransformersConverter

    ex.export(student, ["hf"], tmp_path)
    for fmt in ("ct2", "ct2-int8"):
        theirs = tmp_path / f"theirs-{fmt}"
        TransformersConverter(str(tmp_path / "hf")).convert(str(theirs), quantization=ct2.QUANTIZATIONS[fmt])
        ours = session["outputs"]["student"][fmt]
        for name in ("model.bin", "vocabulary.json"):
            assert (ours / name).read_bytes() == (theirs / name).read_bytes(), (fmt, name)
        mine, conv = json.loads((ours / "config.json").read_text()), json.loads((theirs / "config.json").read_text())
        assert mine.pop("lang_ids") == list(student.generation_defaults.lang_ids) and conv.pop("lang_ids") == []
        assert mine == conv


def test_round_trip_and_transcribe(session, tiny, student, clips, capsys):
    """The loader reads each directory back: float32 exactly, float16 as the fp16 rounding (tiny.en's weights are
    fp16 values, so exactly), int8 within half a quantisation step (|w| max / 254 per row); the generation
    defaults and tokenizer come back too; ``distil-whisper-transcribe --model DIR`` works on it."""
    from distil_whisper_jax.cli import transcribe as transcribe_cli

    for name, pre in (("tiny", tiny), ("student", student)):
        for fmt, path in session["outputs"][name].items():
            back = load_pretrained(path)
            assert back.fmt == "ct2" and back.config == pre.config, (name, fmt)
            assert back.generation_defaults.as_dict() == pre.generation_defaults.as_dict(), (name, fmt)
            assert sorted(back.tokenizer.get_vocab().items()) == sorted(pre.tokenizer.get_vocab().items())
            if fmt == "ct2":
                assert tree_equal(back.params, pre.params), (name, fmt)
            elif fmt == "ct2-float16":
                assert tree_equal(back.params, export_verify.fp16_rounded(pre.params)), (name, fmt)
            else:
                for a, b in zip(jax.tree_util.tree_leaves(back.params), jax.tree_util.tree_leaves(pre.params)):
                    assert np.abs(a - b).max() <= np.abs(b).max() / 254 * 1.01 + 1e-7, (name, fmt)
                assert not tree_equal(back.params, pre.params)
    int8 = session["outputs"]["tiny"]["ct2-int8"]
    files = {"model.bin", "config.json", "vocabulary.json", "tokenizer.json", "preprocessor_config.json"}
    assert files <= {p.name for p in int8.iterdir()}
    assert transcribe_cli.main(["--model", str(int8), str(clips[0][0])]) == 0
    assert "Go forward 10 meters." in capsys.readouterr().out


@pytest.fixture(scope="module")
def small():
    """test_export's small random Whisper with a 15 s input (max_source_positions 750)."""
    config = small_config(max_source_positions=750)
    return config, random_params(config)


def test_15s_student_is_refused_because_ctranslate2_refuses_30s_windows(small, tiny, tmp_path, capsys):
    """faster-whisper pads every window to 3000 frames; a 750-position CTranslate2 encoder refuses them (shown
    on such a model written with the spec directly), so the export refuses the student before writing anything."""
    import ctranslate2

    config, params = small
    spec = ct2.whisper_spec(config, flax_to_hf(params, config))
    spec.register_vocabulary(ct2.ct2_vocabulary_tokens(tiny.tokenizer, config.vocab_size))
    spec.validate()
    (tmp_path / "raw").mkdir()
    spec.save(str(tmp_path / "raw"))
    net = ctranslate2.models.Whisper(str(tmp_path / "raw"))
    prompt = [[50257, 50362]]
    assert net.generate(ctranslate2.StorageView.from_array(np.zeros((1, 80, 1500), np.float32)), prompt, max_length=4)
    with pytest.raises(ValueError, match=r"expected an input with shape \(1, 80, 1500\)"):
        net.generate(ctranslate2.StorageView.from_array(np.zeros((1, 80, 3000), np.float32)), prompt, max_length=4)

    with pytest.raises(ValueError, match="cannot export to ct2-int8: max_source_positions 750 .*30 s windows"):
        ex.check_exportable(config, ["hf", "ct2-int8"])
    write_hf_dir(tmp_path / "s15", config, params, tokenizer=tiny.tokenizer)
    out = tmp_path / "E"
    assert cli.main(["--model", str(tmp_path / "s15"), "--output_dir", str(out), "--formats", "hf,ct2"]) == 2
    err = capsys.readouterr().err
    assert "cannot export to ct2" in err and "faster-whisper always feeds 30 s windows" in err and "hf" in err
    assert not out.exists()


def test_help_lists_the_ct2_formats(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "ct2,ct2-float16,ct2-int8" in capsys.readouterr().out.replace("\n", "").replace(" ", "")


def test_missing_ct2_extra_is_named_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # import ctranslate2 raises ImportError
    monkeypatch.setattr(ex, "load_pretrained", lambda *a: pytest.fail("model loaded before the extra was checked"))
    assert export_cli(tmp_path, "--formats", "hf,ct2-int8") == 2
    err = capsys.readouterr().err
    assert 'pip install "distil-whisper-jax[ct2]"' in err and "ctranslate2" in err
    monkeypatch.setitem(sys.modules, "faster_whisper", None)  # --verify also needs faster-whisper
    monkeypatch.delitem(sys.modules, "ctranslate2")
    assert cli.main(["--output_dir", str(tmp_path / "E"), "--formats", "ct2"]) == 2
    assert "distil-whisper-jax[ct2]" in (err := capsys.readouterr().err) and "faster_whisper" in err
    assert not (tmp_path / "E").exists()


def test_unknown_quantisation_is_refused_listing_the_valid_ones(tmp_path, capsys):
    assert export_cli(tmp_path, "--formats", "ct2-int4") == 2
    err = capsys.readouterr().err
    assert "unknown CTranslate2 quantisation 'ct2-int4'" in err
    assert "ct2 (float32), ct2-float16 (float16), ct2-int8 (int8)" in err
    assert not (tmp_path / "E").exists()


def test_existing_output_refused_and_killed_export_leaves_no_partial_dir(tiny, tmp_path, capsys, monkeypatch):
    out = tmp_path / "E"
    (out / "ct2-int8").mkdir(parents=True)
    (out / "ct2-int8" / "model.bin").write_bytes(b"precious")
    assert export_cli(tmp_path, "--formats", "ct2-int8") == 2
    err = capsys.readouterr().err
    assert "already exist" in err and str(out / "ct2-int8") in err and "--overwrite" in err
    assert (out / "ct2-int8" / "model.bin").read_bytes() == b"precious"

    # a build that fails half-way (after model.bin) leaves neither a partial directory nor its temp name
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ex.hf_format, "write_processor_files", boom)
    with pytest.raises(OSError, match="disk full"):
        ex.export(tiny, ["ct2"], out)
    assert sorted(p.name for p in out.iterdir()) == ["ct2-int8"]
    monkeypatch.undo()

    # a killed export's temp directory is removed by the next run
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = out / f".ct2-int8.tmp-{dead.pid}"
    stale.mkdir()
    (stale / "model.bin").write_bytes(b"partial")
    monkeypatch.setattr(ex, "load_pretrained", lambda *a: tiny)
    assert export_cli(tmp_path, "--formats", "ct2-int8", "--overwrite") == 0
    assert not stale.exists() and sorted(os.listdir(out)) == ["ct2-int8"]
    assert load_pretrained(out / "ct2-int8").config == tiny.config
