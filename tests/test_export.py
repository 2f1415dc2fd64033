"""Export: real tiny.en and a 2-layer student to every format, each verified in its real runtime in
a subprocess (transformers, openai-whisper, whisper.cpp); round trips back into Flax; q8_0 byte-identical to
ggml's own quantizer; fuzzed files rejected cleanly; bad inputs refused before anything is written.

One module-scoped export + verification session is shared by the tests (the subprocesses are the cost)."""

import contextlib
import ctypes
import glob
import json
import os
import random
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest

from distil_whisper_jax.cli import export as cli
from distil_whisper_jax.infra import files as utils
from distil_whisper_jax.stages.export import card as export_card
from distil_whisper_jax.stages.export import export as ex
from distil_whisper_jax.stages.export import verify as export_verify
from distil_whisper_jax.stages.export.runtimes import finish_runtime, start_runtime
from distil_whisper_jax.weights.convert import ggml, ggml_quant, tree_equal
from distil_whisper_jax.weights.convert import hf as hf_writer
from distil_whisper_jax.weights.convert import openai as openai_writer
from distil_whisper_jax.weights.convert.hf import flax_to_hf, write_hf_dir
from distil_whisper_jax.weights.convert.openai import read_openai_checkpoint, write_openai_checkpoint
from distil_whisper_jax.weights.loading import load_pretrained

from .helpers import export_cli, random_params, small_config


@pytest.fixture(scope="module")
def student(tiny, tmp_path_factory):
    """A 2-layer student of tiny.en (teacher decoder layers 0 and 3) as an HF dir with distil_info.json."""
    from distil_whisper_jax.stages.student.create_student import create_student

    out = create_student(tiny, tmp_path_factory.mktemp("student") / "s", decoder_layers=2)
    info = json.loads((out / "distil_info.json").read_text())
    info.update(train_datasets=["bundled clips"], eval_wer={"heldout": {"student": 101.5, "teacher": 4.2}})
    (out / "distil_info.json").write_text(json.dumps(info))
    (out / "draft_vocab.json").write_text(json.dumps({"ids": [13, 11], "counts": [5, 2]}))  # as distillation writes
    return load_pretrained(out)


@pytest.fixture(scope="module")
def verify_clips(clips):
    """The three shortest bundled clips (2.8, 5.3, 11 s; every runtime pads to 30 s anyway). The CLI verifies
    on all of them (docs/benchmarks.md); the test keeps to the ≤ 100 s budget."""
    return clips[:3]


@pytest.fixture(scope="module")
def session(tiny, student, verify_clips, tmp_path_factory):
    """tiny.en (hf fp32) exported to every format and the student (hf fp16) to the default ones; the default
    formats of both verified in one pass (the 4/5-bit files are verified on held-out speech, ``heldout_checks``).
    The untrained student loops on some clips, so decoding is capped at 48 tokens (in every runtime alike)."""
    root = tmp_path_factory.mktemp("export")
    outputs = {
        # every format but CTranslate2's (tests/test_export_ct2.py)
        "tiny": ex.export(tiny, [f for f in ex.FORMATS if f not in ex.CT2_FORMATS], root / "tiny"),
        "student": ex.export(student, ex.DEFAULT_FORMATS, root / "student", dtype="float16"),
    }
    default = {f: p for f, p in outputs["tiny"].items() if f in ex.DEFAULT_FORMATS}
    tiny_checks, student_checks = export_verify.verify(
        [(tiny, default), (student, outputs["student"])], verify_clips, max_new_tokens=48
    )
    return {"root": root, "outputs": outputs, "checks": {"tiny": tiny_checks, "student": student_checks}}


@pytest.mark.parametrize("model", ["tiny", "student"])
def test_every_runtime_reproduces_our_greedy_output(session, model, verify_clips):
    checks = {c.fmt: c for c in session["checks"][model]}
    print("\n" + export_verify.format_table(list(checks.values())))
    assert set(checks) == set(ex.DEFAULT_FORMATS)
    n = len(verify_clips)
    for c in checks.values():
        assert c.texts is not None, f"{c.fmt}: {c.note}"
        assert len(c.texts) == n
    # transformers and openai-whisper: the same greedy transcript, character for character.
    assert checks["hf"].exact == n and checks["hf"].texts == checks["hf"].reference
    assert checks["openai"].exact == n and checks["openai"].texts == checks["openai"].reference
    # whisper.cpp f16: the same text (it has its own mel front end and capitalisation rules).
    assert checks["ggml"].normalized == n
    # q8_0 loads in whisper.cpp and is within 1 WER point of f16.
    assert checks["ggml-q8_0"].wer <= checks["ggml"].wer + 1.0
    assert all(c.passed for c in checks.values())
    if model == "tiny":  # real weights on real speech: the reference is good, not just consistent
        assert checks["hf"].wer < 10


@pytest.fixture(scope="module")
def heldout_checks(session, tiny, tmp_path_factory):
    """tiny.en's whisper.cpp f16 and 4/5-bit files verified on the first 24 held-out sentences of the bundled
    speech corpus (~260 words, so a word is 0.4 WER points), joined into ≤ 28 s windows (whisper.cpp pads
    every clip to 30 s: 4 windows cost a sixth of 24 clips)."""
    from distil_whisper_jax.assets import speech_manifest

    rows = export_verify.verification_clips(str(speech_manifest("heldout")), 24)
    clips = export_verify.joined_clips(rows, 28, tmp_path_factory.mktemp("heldout"))
    out = session["outputs"]["tiny"]
    files = {f: out[f] for f in ("ggml", "ggml-q5_1", "ggml-q5_0", "ggml-q4_1", "ggml-q4_0")}
    (checks,) = export_verify.verify([(tiny, files)], clips)
    return {c.fmt: c for c in checks}


def test_4_and_5_bit_files_transcribe_in_whisper_cpp_close_to_f16(heldout_checks):
    """Each file loads and transcribes in whisper.cpp; WER against f16 rises by at most 1.5 points for q5_0 and
    q5_1, 3 for q4_0 and q4_1 (export_verify.MAX_WER_INCREASE, the verdict of ``--verify``)."""
    print("\n" + export_verify.format_table(list(heldout_checks.values())))
    f16 = heldout_checks["ggml"]
    assert f16.texts is not None and f16.wer < 10, f16.note
    for fmt, limit in (("ggml-q5_1", 1.5), ("ggml-q5_0", 1.5), ("ggml-q4_1", 3.0), ("ggml-q4_0", 3.0)):
        c = heldout_checks[fmt]
        assert c.texts is not None and len(c.texts) == len(f16.texts), f"{fmt}: {c.note}"
        print(f"{fmt}: WER {c.wer:.2f} vs f16 {f16.wer:.2f} ({c.wer - f16.wer:+.2f} points)")
        assert c.wer <= f16.wer + limit and c.passed, (fmt, c.note)
        assert export_verify.MAX_WER_INCREASE[fmt] == limit


# Largest round-trip error of a tensor as a fraction of its largest |value|: q8_0 half a step (amax/127/2),
# _0 types a whole step at the clamped end (amax/8, amax/16), _1 types half a step of (max-min)/15 or /31.
ROUND_TRIP_STEPS = {
    "ggml-q8_0": 1 / 254,
    "ggml-q5_0": 1 / 16,
    "ggml-q5_1": 1 / 31,
    "ggml-q4_0": 1 / 8,
    "ggml-q4_1": 1 / 15,
}


def test_round_trip_back_into_flax(session, tiny, student):
    out = session["outputs"]
    for name, pre in (("tiny", tiny), ("student", student)):
        for fmt, path in out[name].items():
            back = load_pretrained(path)
            assert back.config == pre.config, (name, fmt)
            if fmt in ROUND_TRIP_STEPS:  # per 32 values: |error| ≤ a fraction of amax (+ the fp16 rounding of d)
                for a, b in zip(jax.tree_util.tree_leaves(back.params), jax.tree_util.tree_leaves(pre.params)):
                    assert np.abs(a - b).max() <= np.abs(b).max() * ROUND_TRIP_STEPS[fmt] * 1.01 + 1e-6, fmt
                assert not tree_equal(back.params, pre.params)
            else:  # tiny.en's weights are fp16 values (CT2 fp16), so even fp16 files round-trip exactly
                assert tree_equal(back.params, pre.params), (name, fmt)


def test_round_trip_of_fp32_weights_rounds_only_to_fp16(tmp_path, small):
    config, params = small
    paths = ex.output_paths(tmp_path, ["openai", "ggml"])
    write_openai_checkpoint(paths["openai"], config, flax_to_hf(params, config))
    ggml.write_ggml(paths["ggml"], config, params, vocab=[b"a"] * 10)
    rounded = export_verify.fp16_rounded(params)
    assert not tree_equal(rounded, params)
    back = load_pretrained(paths["openai"])
    assert back.config == config and tree_equal(back.params, rounded)
    assert load_pretrained(paths["ggml"]).config == config
    back_config, state = ggml.read_ggml_model(paths["ggml"])
    for name, want in flax_to_hf(params, config).items():  # whisper.cpp f16: matrices F16, the rest F32
        if want.ndim >= 2 and "embed_positions" not in name:
            want = want.astype(np.float16).astype(np.float32)
        assert np.array_equal(state[name], want), name


def test_hf_dir_is_complete_and_card_has_provenance(session):
    tiny_hf, student_hf = session["outputs"]["tiny"]["hf"], session["outputs"]["student"]["hf"]
    for d in (tiny_hf, student_hf):
        names = {p.name for p in d.iterdir()}
        assert {
            "model.safetensors",
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "vocab.json",
            "merges.txt",
            "added_tokens.json",
            "special_tokens_map.json",
            "tokenizer_config.json",
            "preprocessor_config.json",
            "processor_config.json",
            "README.md",
        } <= names
        assert not [n for n in names if n.startswith(".")]  # no temp leftovers
        gen = json.loads((d / "generation_config.json").read_text())
        assert gen["no_timestamps_token_id"] == 50362 and gen["decoder_start_token_id"] == 50257
        assert gen["is_multilingual"] is False and gen["begin_suppress_tokens"] == [220, 50256]
        assert json.loads((d / "preprocessor_config.json").read_text())["feature_size"] == 80
    # tiny.en's CT2 config.json has alignment heads; the student keeps those on teacher layers 0 and 3.
    assert json.loads((tiny_hf / "generation_config.json").read_text())["alignment_heads"][0] == [1, 0]
    assert all(
        layer < 2 for layer, _ in json.loads((student_hf / "generation_config.json").read_text())["alignment_heads"]
    )
    from safetensors import safe_open

    with safe_open(str(student_hf / "model.safetensors"), "np") as f:  # --dtype float16
        assert f.get_tensor("model.decoder.embed_tokens.weight").dtype == np.float16
    card = (student_hf / "README.md").read_text()
    assert "| distilled from (teacher) |" in card and "0, 3" in card and "| heldout | 101.5 | 4.2 |" in card
    assert (student_hf / "distil_info.json").is_file()
    assert json.loads((student_hf / "draft_vocab.json").read_text()) == {"ids": [13, 11], "counts": [5, 2]}
    tiny_card = (tiny_hf / "README.md").read_text()
    assert "| distilled from (teacher) | unknown |" in tiny_card and "whisper.load_model" in tiny_card


def find_libggml() -> str:
    """ggml's shared library as pywhispercpp installs it: next to its extension module in site-packages,
    or in the wheel's ``pywhispercpp.libs``/``.libs`` folder (auditwheel renames it with a hash)."""
    import _pywhispercpp
    import pywhispercpp

    roots = {os.path.dirname(_pywhispercpp.__file__), os.path.dirname(os.path.dirname(pywhispercpp.__file__))}
    roots |= {os.path.join(r, d) for r in list(roots) for d in ("pywhispercpp.libs", ".libs")}
    roots.add(os.path.join(os.path.dirname(pywhispercpp.__file__), ".libs"))
    libs = sorted(lib for r in roots for lib in glob.glob(os.path.join(r, "libggml-base*.so*")))
    assert libs, f"libggml-base (pywhispercpp's ggml) not found under {sorted(roots)}"
    return libs[0]


@pytest.fixture(scope="module")
def libggml():
    fn = ctypes.CDLL(find_libggml()).ggml_quantize_chunk
    fn.restype = ctypes.c_size_t
    fn.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
    ]
    return fn


def _quantize_like_whisper_cpp(f16: bytes, quantize_chunk, quant: str = "q8_0") -> bytes:
    """whisper.cpp's examples/quantize re-done in Python around ggml's own C quantizer: copy header (ftype →
    2000 + GGML_FTYPE_MOSTLY_<quant>), filters and vocab; quantize every 2-D tensor except conv biases /
    positional tables to ggml_type <quant> (whisper.cpp's ftype and ggml's type enums number differently)."""
    ftype = {"q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9}[quant]  # whisper.cpp quantize.cpp / ggml.h
    ttype = {"q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8}[quant]  # enum ggml_type
    n_mels, n_vocab = struct.unpack_from("<i", f16, 40)[0], None
    out = bytearray(f16[:44]) + struct.pack("<i", 2000 + ftype)
    pos = 48
    n_mel, n_fft = struct.unpack_from("<2i", f16, pos)
    assert n_mel == n_mels
    pos += 8 + 4 * n_mel * n_fft
    (n_vocab,) = struct.unpack_from("<i", f16, pos)
    pos += 4
    for _ in range(n_vocab):
        pos += 4 + struct.unpack_from("<I", f16, pos)[0]
    out += f16[48:pos]
    skip = {"encoder.conv1.bias", "encoder.conv2.bias", "encoder.positional_embedding", "decoder.positional_embedding"}
    while pos < len(f16):
        n_dims, name_len, src_type = struct.unpack_from("<3i", f16, pos)
        ne = struct.unpack_from(f"<{n_dims}i", f16, pos + 12)
        name = f16[pos + 12 + 4 * n_dims : pos + 12 + 4 * n_dims + name_len].decode()
        head_end = pos + 12 + 4 * n_dims + name_len
        count = int(np.prod(ne))
        nbytes = count * (4 if src_type == 0 else 2)
        data = f16[head_end : head_end + nbytes]
        if n_dims == 2 and name not in skip:
            x = np.frombuffer(data, "<f2").astype(np.float32)
            dst = np.zeros(count * 2, np.uint8)
            size = quantize_chunk(ttype, x.ctypes.data, dst.ctypes.data, 0, count // ne[0], ne[0], None)
            out += struct.pack(f"<3i{n_dims}i", n_dims, name_len, ttype, *ne) + name.encode() + dst[:size].tobytes()
        else:
            out += f16[pos : head_end + nbytes]
        pos = head_end + nbytes
    return bytes(out)


QUANT_SIZES = {"q8_0": 43_550_778, "q5_1": 32_166_138, "q5_0": 29_889_210, "q4_1": 27_612_282, "q4_0": 25_335_354}


@pytest.mark.parametrize("quant", list(QUANT_SIZES))
def test_quantized_file_is_byte_identical_to_ggml_quantizer(session, libggml, quant):
    """Every quantized tensor's bytes are what ggml's own C quantizer (``ggml_quantize_chunk`` in pywhispercpp's
    libggml) makes from the f16 file's values. The file layout around them (header ftype, which tensors are
    quantized) is this test's re-creation of whisper.cpp's examples/quantize: neither that tool nor its
    ``ggml_common_quantize_0`` is in the installed package (libwhisper exports no quantize symbol), so the
    layout is checked by whisper.cpp loading and transcribing each file (the WER tests above), not against
    the tool's output."""
    out = session["outputs"]["tiny"]
    ours = out[f"ggml-{quant}"].read_bytes()
    theirs = _quantize_like_whisper_cpp(out["ggml"].read_bytes(), libggml, quant)
    assert len(ours) == len(theirs) == QUANT_SIZES[quant] and ours == theirs


@pytest.mark.parametrize("quant", ggml_quant.QUANTS)
def test_quantize_matches_ggml_on_ties_zeros_and_scales(libggml, quant):
    """Random rows at three scales, an all-zero block, exact halves (ties), a block whose largest magnitude
    occurs with both signs (the first one sets the _0 types' sign): the same bytes as libggml, and the
    round trip within ``ggml_quant.max_error`` per block (≤ a step; half a step for q8_0 and the _1 types)."""
    rng = np.random.default_rng(0)
    for scale in (1e-4, 1.0, 300.0):
        x = (rng.standard_normal((64, 96)) * scale).astype(np.float32)
        x[0, :32] = 0
        x[1, :32] = np.arange(32) - 15.5  # exact halves after scaling: roundf ties away from zero
        x[2, :32] = np.where(np.arange(32) % 2, 1, -1) * np.float32(scale)  # ±amax: the first (-) sets the sign
        dst = np.zeros(x.size * 2, np.uint8)
        size = libggml(ggml_quant.GGML_TYPES[quant], x.ctypes.data, dst.ctypes.data, 0, 64, 96, None)
        blocks = ggml_quant.quantize(x, quant)
        assert blocks.tobytes() == dst[:size].tobytes()
        err = np.abs(ggml_quant.dequantize(blocks, quant) - x.reshape(-1)).reshape(-1, 32).max(axis=1)
        bound = ggml_quant.max_error(x, quant)
        assert (err <= bound * 1.0001).all()
        assert err.max() > 0


# ----------------------------------------------------------------------------------------------
# Fuzzing and bad input


@pytest.fixture(scope="module")
def small():
    """A small random Whisper (d_model 64) that whisper.cpp's and openai's layouts accept."""
    config = small_config()
    return config, random_params(config)


def _mutate(data: bytes, rng: random.Random, header: int) -> tuple[str, bytes]:
    buf = bytearray(data)
    if rng.random() < 0.5:
        return "truncated", bytes(buf[: rng.randrange(len(buf))])
    for _ in range(rng.randrange(1, 4)):  # half the flips in the header/vocab/metadata region
        pos = rng.randrange(header) if rng.random() < 0.5 else rng.randrange(len(buf))
        buf[pos] ^= 1 << rng.randrange(8)
    return "flipped", bytes(buf)


def test_fuzzed_ggml_files_raise_clean_errors(small, tmp_path):
    config, params = small
    vocab = [bytes([i % 256]) * (1 + i % 3) for i in range(2000)]  # whisper.cpp allows fewer tokens than n_vocab
    data = ggml.write_ggml(tmp_path / "m.bin", config, params, vocab=vocab).read_bytes()
    ref = ggml.read_ggml_model(data)
    rng, outcome = random.Random(0), {}
    for _ in range(200):
        kind, buf = _mutate(data, rng, 80_000)  # header, filters, vocab, first records
        try:
            got = ggml.read_ggml_model(buf)
        except ValueError as e:
            assert "ggml model" in str(e)
            outcome[kind, "error"] = outcome.get((kind, "error"), 0) + 1
            continue
        assert kind == "flipped", "a truncated file was accepted"
        # ggml has no checksums: a flip inside tensor data can only be caught when it makes a non-finite value.
        assert got[0] == ref[0] and set(got[1]) == set(ref[1])
        same = all(np.array_equal(got[1][k], ref[1][k]) for k in ref[1])
        key = (kind, "loaded, same weights" if same else "loaded, changed weights")
        outcome[key] = outcome.get(key, 0) + 1
    print(outcome)
    # Every truncation raised (checked above); flips in lengths, shapes, names or types did too.
    assert outcome["truncated", "error"] > 50 and outcome["flipped", "error"] > 0


def _ggml_layout(data: bytes) -> dict[str, int]:
    """Byte offsets in a ggml file, walked independently of the reader: the header fields, the mel filters'
    shape, the vocab count and first token, and the first two tensor records (their header, shape, name, data)."""
    at = {"magic": 0} | {f: 4 + 4 * i for i, f in enumerate(ggml.HEADER)}
    at["ftype"] = 4 + 4 * len(ggml.HEADER)
    at["mel shape"] = at["ftype"] + 4
    n_mel, n_fft = struct.unpack_from("<2i", data, at["mel shape"])
    at["vocab count"] = at["mel shape"] + 8 + 4 * n_mel * n_fft
    (n_tokens,) = struct.unpack_from("<i", data, at["vocab count"])
    at["token 0"] = pos = at["vocab count"] + 4
    for _ in range(n_tokens):
        pos += 4 + struct.unpack_from("<I", data, pos)[0]
    for t in (0, 1):
        n_dims, name_len, ttype = struct.unpack_from("<3i", data, pos)
        ne = struct.unpack_from(f"<{n_dims}i", data, pos + 12)
        at[f"tensor {t}"], at[f"shape {t}"], at[f"name {t}"] = pos, pos + 12, pos + 12 + 4 * n_dims
        at[f"data {t}"] = at[f"name {t}"] + name_len
        at[f"type {t}"], at[f"ne0 {t}"] = ttype, ne[0]
        pos = at[f"data {t}"] + int(np.prod(ne)) * (4 if ttype == ggml.F32 else 2)
    at["end of tensor 1"] = pos
    return at


def _ggml_damage(data: bytes, at: dict[str, int]) -> dict[str, tuple[bytes, str]]:
    """Each kind of damage: the damaged bytes and the start of the message the reader must give."""
    name0 = data[at["name 0"] : at["data 0"]].decode()
    cut = "ggml model: truncated or corrupt ggml model ("

    def put(pos: int, raw: bytes) -> bytes:
        return data[:pos] + raw + data[pos + len(raw) :]

    def i32(v: int) -> bytes:
        return struct.pack("<i", v)

    nan = np.float32(np.nan).tobytes() if at["type 0"] == ggml.F32 else np.float16(np.nan).tobytes()
    return {
        "magic": (put(0, b"GGUF"), "ggml model: not a whisper.cpp ggml model (magic 0x46554747"),
        "header cut": (data[:20], f"{cut}reading header: need"),
        "header field zero": (put(at["n_audio_state"], i32(0)), f"{cut}header field n_audio_state = 0"),
        "ftype": (put(at["ftype"], i32(99)), "ggml model: ggml ftype 99 is not supported (supported: f32 = 0"),
        "heads": (put(at["n_audio_head"], i32(7)), "ggml model: corrupt ggml header ("),
        "mel shape": (put(at["mel shape"], i32(128)), f"{cut}mel filters are [128, 201], expected ["),
        "vocab count": (put(at["vocab count"], i32(10**6)), f"{cut}vocab block claims 1000000 tokens"),
        "token length": (put(at["token 0"], struct.pack("<I", 5000)), f"{cut}token 0 claims 5000 bytes"),
        "vocab cut": (data[: at["token 0"] + 10], f"{cut}vocab block ends early (token "),
        "tensor rank": (put(at["tensor 0"], i32(9)), f"{cut}tensor header n_dims=9"),
        "tensor name": (put(at["name 0"], b"X"), f"{cut}unknown tensor 'X{name0[1:]}'"),
        "name not utf-8": (put(at["name 0"], b"\xff"), f"{cut}tensor name is not UTF-8"),
        "tensor shape": (put(at["shape 0"], i32(at["ne0 0"] + 1)), f"{cut}tensor '{name0}' has shape"),
        "tensor type": (
            put(at["tensor 0"] + 8, i32(8 if at["type 0"] != 8 else 0)),
            f"{cut}tensor '{name0}' has ggml type",
        ),
        "nan": (put(at["data 0"], nan), f"{cut}tensor '{name0}' holds non-finite values"),
        "tensor cut": (data[: at["data 0"] + 6], f"{cut}reading data of {name0}: need"),
        "tensors missing": (data[: at["end of tensor 1"]], "ggml model: truncated or corrupt ggml model (missing "),
        "tensor twice": (
            data[: at["end of tensor 1"]] + data[at["tensor 0"] : at["tensor 1"]],
            f"{cut}tensor '{name0}' appears twice",
        ),
    }


def test_damaged_ggml_files_are_refused_with_the_damage_named(small, tmp_path):
    """One case per check of the reader, each with the message it must give (the fuzzing below only shows that
    random damage never escapes as another exception)."""
    config, params = small
    data = ggml.write_ggml(tmp_path / "m.bin", config, params, vocab=[b"ab"] * 100).read_bytes()
    for kind, (damaged, expect) in _ggml_damage(data, _ggml_layout(data)).items():
        try:
            ggml.read_ggml_model(damaged)
        except ValueError as e:
            assert str(e).startswith(expect), (kind, str(e))
        else:
            pytest.fail(f"{kind}: the damaged file was read")
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.bin: empty file, expected a whisper.cpp ggml model"):
        ggml.read_ggml_model(tmp_path / "empty.bin")


def test_fuzzed_openai_files_raise_clean_errors(small, tmp_path):
    config, params = small
    path = write_openai_checkpoint(tmp_path / "m.pt", config, flax_to_hf(params, config))
    data = path.read_bytes()
    ref = read_openai_checkpoint(path)
    rng, errors = random.Random(1), 0
    fuzzed = tmp_path / "fuzzed.pt"
    for _ in range(200):
        fuzzed.write_bytes(_mutate(data, rng, 4096)[1])
        try:
            got = read_openai_checkpoint(fuzzed)
        except ValueError as e:
            assert "fuzzed.pt" in str(e)
            errors += 1
            continue
        # The zip CRCs are checked, so whatever loads is exactly the original (e.g. a flip in zip padding).
        assert got[0] == ref[0] and all(np.array_equal(got[1][k], ref[1][k]) for k in ref[1])
    assert errors >= 190


def test_bad_ggml_file_crashes_only_the_runtime_subprocess(small, tmp_path, clips):
    config, params = small
    path = ggml.write_ggml(tmp_path / "m.bin", config, params, vocab=[b"a"] * 50256)
    data = path.read_bytes()
    path.write_bytes(data[:-1000])  # the last tensor is cut short: whisper.cpp fails to load
    got, error, peak = finish_runtime(start_runtime([("whispercpp", path)], [clips[0][0]]), timeout=120)
    assert got is None and ("signal" in error or "exit status" in error) and peak is None


def test_a_runtime_worker_reports_its_own_peak_memory_not_its_parents():
    """A worker forked from a large process (the demo, pytest) starts with the parent's pages mapped, and its
    ``ru_maxrss`` keeps that high-water mark; the worker's own figure must not."""
    ballast = bytearray(1024 * 2**20)
    ballast[::4096] = b"\x01" * len(ballast[::4096])  # make the pages resident
    child = (
        "import json, resource; from distil_whisper_jax.stages.export.runtimes import peak_rss_mib; "
        "print(json.dumps([peak_rss_mib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]))"
    )
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True).stdout
    own, inherited = json.loads(out.splitlines()[-1])
    del ballast
    assert inherited >= 1024  # what getrusage reports inside the child
    assert 10 < own < 600, own  # the worker's imports, not the parent's gigabyte


def test_architecture_constraints_checked_before_writing(tmp_path, small, capsys):
    config, params = small
    wide = config.replace(encoder_ffn_dim=192, decoder_ffn_dim=192)
    write_hf_dir(tmp_path / "wide", wide, random_params(wide))
    assert export_cli(tmp_path, "--model", str(tmp_path / "wide"), "--formats", "hf,openai") == 2
    err = capsys.readouterr().err
    assert "cannot export to openai" in err and "ffn_dim == 4·d_model" in err
    assert not (tmp_path / "E").exists()  # nothing written, not even the hf dir that was possible
    with pytest.raises(ValueError, match="q8_0 .* multiple of 32"):
        ex.check_exportable(
            config.replace(
                d_model=48,
                encoder_ffn_dim=192,
                decoder_ffn_dim=192,
                encoder_attention_heads=3,
                decoder_attention_heads=3,
            ),
            ["ggml-q8_0"],
        )
    ex.check_exportable(config, ex.FORMATS)  # d_model 64: every row is whole 32-value blocks; 30 s for ct2
    ex.check_exportable(config.replace(max_source_positions=750), ["ggml", "hf", "openai"])  # a 15 s student
    with pytest.raises(ValueError, match="cannot export to ggml: .*1..1500"):
        ex.check_exportable(config.replace(max_source_positions=3000), ["ggml"])
    with pytest.raises(ValueError, match="cannot export to hf: .*whole seconds"):
        ex.check_exportable(config.replace(max_source_positions=740), ["hf"])
    with pytest.raises(ValueError, match="not a Whisper vocabulary size"):
        ex.check_exportable(config.replace(vocab_size=1000), ["hf"])


def test_cli_bad_inputs(tmp_path, capsys):
    assert export_cli(tmp_path, "--formats", "hf,onnx") == 2
    err = capsys.readouterr().err
    assert "--formats" in err and "'onnx'" in err and ",".join(ex.FORMATS) in err and "ggml-q4_0" in err
    assert export_cli(tmp_path, "--formats", "ggml-q3_k") == 2
    assert "unknown format(s) ['ggml-q3_k']" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    assert export_cli(tmp_path, "--model", str(tmp_path / "junk.pt")) == 2
    assert "junk.pt" in capsys.readouterr().err
    assert not (tmp_path / "E").exists()


def test_existing_outputs_refused_without_overwrite(tmp_path, capsys):
    out = tmp_path / "E" / "original-model.bin"
    out.parent.mkdir()
    out.write_bytes(b"precious")
    assert export_cli(tmp_path, "--formats", "ggml,openai") == 2
    err = capsys.readouterr().err
    assert "already exist" in err and str(out) in err and "--overwrite" in err
    assert out.read_bytes() == b"precious" and not (tmp_path / "E" / "ggml-model.bin").exists()
    assert export_cli(tmp_path, "--formats", "openai", "--overwrite") == 0
    assert load_pretrained(out).config.d_model == 384
    assert sorted(p.name for p in out.parent.iterdir()) == ["original-model.bin"]


def test_failed_writes_leave_no_partial_outputs(tiny, tmp_path, monkeypatch):
    def boom(*a, **k):
        yield b"partial"
        raise OSError("disk full")

    monkeypatch.setattr(ggml, "_records", boom)
    with pytest.raises(OSError, match="disk full"):
        ex.export(tiny, ["ggml"], tmp_path)
    half_write = lambda d, *a, **k: ((d / "x").write_text("x"), 1 / 0)  # noqa: E731 - export made d (atomic_dir)
    monkeypatch.setattr(ex.hf_format, "write_hf_dir", half_write)
    with pytest.raises(ZeroDivisionError):
        ex.export(tiny, ["hf"], tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither the files nor their temp names


def test_malformed_distil_info_is_a_clear_error(tmp_path):
    (tmp_path / "distil_info.json").write_text('{"decoder_layer_map": [0, 3]}')
    with pytest.raises(ValueError, match="distil_info.json.*'teacher'"):
        export_card.read_distil_info(export_card.find_distil_info(tmp_path))
    run = tmp_path / "run"
    (run / "checkpoints" / "100").mkdir(parents=True)
    (run / "distil_info.json").write_text('{"teacher": "t"}')
    assert export_card.find_distil_info(run / "checkpoints" / "100") == run / "distil_info.json"


def test_verification_clips_from_a_manifest(tmp_path, capsys):
    from distil_whisper_jax.assets import bundled_clips, speech_manifest

    clips = export_verify.verification_clips(str(speech_manifest("heldout")), 3)
    assert len(clips) == 3 and all(p.is_absolute() and p.is_file() and text for p, text in clips)
    assert export_verify.verification_clips(None, 2) == bundled_clips()[:2]
    (tmp_path / "m.tsv").write_text("audio\ttext\nnope.flac\thello\n")
    with pytest.raises(ValueError, match=r"--verify_audio .*m.tsv: row 1: audio file .*nope.flac does not exist"):
        export_verify.verification_clips(str(tmp_path / "m.tsv"))
    (tmp_path / "m.csv").write_text("path,sentence\na.wav,hi\n")
    with pytest.raises(ValueError, match="row 1 needs 'audio' and 'text'"):
        export_verify.verification_clips(str(tmp_path / "m.csv"))
    # checked before anything is loaded or written
    assert export_cli(tmp_path, "--verify", "--verify_audio", str(tmp_path / "missing.tsv")) == 2
    assert "missing.tsv" in capsys.readouterr().err and not (tmp_path / "E").exists()
    assert export_cli(tmp_path, "--verify", "--verify_max_clips", "0") == 2
    assert "--verify_max_clips" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Write errors, stale temporaries, permissions


def test_unwritable_output_dir_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    """Root ignores permission bits, so the unwritable places are a path under a regular file and /proc."""
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    monkeypatch.setattr(ex, "load_pretrained", lambda *a: pytest.fail("model loaded before the output check"))
    for target in (blocker / "E", "/proc/distil-whisper-export"):
        with pytest.raises(ValueError, match="--output_dir .*cannot write there"):
            ex.run(ex.ExportConfig(output_dir=str(target), formats="openai", verify=False))
        assert cli.main(["--output_dir", str(target), "--formats", "openai", "--no-verify"]) == 2
        assert "cannot write there" in capsys.readouterr().err


@contextlib.contextmanager
def _full_disk(path, mode=None):
    """``atomic_write`` on a full disk: every byte goes to /dev/full, whose writes fail with ENOSPC."""
    with open("/dev/full", mode or "wb") as f:
        yield f
        f.flush()


@pytest.mark.parametrize("quant", ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0"])
def test_quantized_types_refuse_rows_that_are_not_whole_blocks(tmp_path, small, capsys, quant):
    """d_model 48: whisper.cpp would run it in f16, but its 48-value rows cannot be cut into 32-value blocks.
    The error names the type and the first tensor to be quantized; nothing is written, not even the f16 file."""
    config, _ = small
    narrow = config.replace(d_model=48, encoder_ffn_dim=192, decoder_ffn_dim=192)
    params = random_params(narrow)
    ggml.check_ggml_config(narrow, "f16")
    with pytest.raises(ValueError, match=rf"{quant} needs rows that are a multiple of 32 values: tensor '[\w.]+'"):
        ggml.write_ggml(tmp_path / "m.bin", narrow, params, vocab=[b"a"] * 10, quant=quant)
    assert list(tmp_path.iterdir()) == []
    write_hf_dir(tmp_path / "narrow", narrow, params)
    assert export_cli(tmp_path, "--model", str(tmp_path / "narrow"), "--formats", f"ggml,ggml-{quant}") == 2
    err = capsys.readouterr().err
    assert f"cannot export to ggml-{quant}: {quant} needs rows" in err and "tensor '" in err and "of 48" in err
    assert not (tmp_path / "E").exists()


@pytest.mark.parametrize("fmt", ["hf", "openai", "ggml"])
def test_full_disk_names_the_file_and_the_cause(tiny, tmp_path, capsys, monkeypatch, fmt):
    """Each real writer on a full disk: "no space left on device" and the file, not a traceback (torch.save
    to a path used to say "unexpected pos", and safetensors' writer silently left a truncated file)."""
    for writer in (hf_writer, openai_writer, ggml):
        monkeypatch.setattr(writer, "atomic_write", _full_disk)
    monkeypatch.setattr(ex, "load_pretrained", lambda *a: tiny)
    out = tmp_path / "E"
    with pytest.raises(utils.OutputWriteError, match="no space left on device") as err:
        ex.run(ex.ExportConfig(output_dir=str(out), formats=fmt, verify=False))
    assert str(out / ex.OUTPUT_NAMES[fmt]) in str(err.value)
    assert cli.main(["--output_dir", str(out), "--formats", fmt, "--no-verify"]) == 1
    msg = capsys.readouterr().err.strip().splitlines()[-1]
    assert msg.startswith("error: cannot write") and "no space left on device" in msg and "Traceback" not in msg
    assert list(out.iterdir()) == []  # no partial output and no temp folder


def test_killed_export_leftovers_are_removed(tmp_path):
    """A killed export leaves a full-size ``.hf.tmp-<pid>/`` and ``atomic_write`` temp files; the next run
    removes those of dead processes (with or without --overwrite) and leaves a live writer's alone."""
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "60"])
    out = tmp_path / "E"
    stale = [
        out / f".hf.tmp-{dead.pid}",
        out / f".hf.old-{dead.pid}",
        out / f".ggml-model.bin.{dead.pid}.k2j4h1x0.tmp",
        out / ".ggml-model-q8_0.bin.k2j4h1x0.tmp",  # an older writer's name, without a pid
        out / "hf" / f".model.safetensors.{dead.pid}.abcdefgh.tmp",
    ]
    kept = [out / f".original-model.bin.{live.pid}.abcdefgh.tmp", out / f".hf.tmp-{live.pid}"]
    try:
        for p in stale + kept:
            p.parent.mkdir(parents=True, exist_ok=True)
            if "hf.tmp" in p.name or "hf.old" in p.name:
                p.mkdir()
                (p / "model.safetensors").write_bytes(b"x" * 100)
            else:
                p.write_bytes(b"partial")
        assert ex.run(ex.ExportConfig(output_dir=str(out), formats="openai", verify=False, overwrite=True)) == 0
        assert not [p for p in stale if p.exists()]
        assert all(p.exists() for p in kept)
        assert (out / "original-model.bin").is_file()
    finally:
        live.kill()
        live.wait()
    assert sorted(ex.remove_stale_outputs(out)) == sorted(kept)  # now their writer is dead too


def test_ggml_check_tolerates_only_a_different_loop_length():
    """whisper.cpp's fp16 arithmetic may stop a repetition loop one repeat earlier or later than JAX: that
    passes (and is reported); any other difference in the text fails."""
    from distil_whisper_jax.stages.export.verify import _check, _judge, collapse_repeats

    assert collapse_repeats("the update the update the update fix it".split()) == "the update fix it".split()
    assert collapse_repeats("a b c".split()) == ["a", "b", "c"]
    ref = ["the new update. the new update. fixes problems.", "hello world"]
    refs = ["the new update fixes problems", "hello world"]
    looped = _check("ggml", "g.bin", [ref[0].replace("fixes", "the new update. fixes"), ref[1]], ref, refs, str)
    _judge([looped], 0.0)
    assert looped.passed and looped.loops == 1 and "loops" in looped.note
    wrong = _check("ggml", "g.bin", [ref[0].replace("fixes", "breaks"), ref[1]], ref, refs, str)
    _judge([wrong], 0.0)
    assert not wrong.passed and wrong.loops == 0
