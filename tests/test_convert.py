"""Loaders: CTranslate2 (vs CTranslate2's own encoder, every storage type), openai-whisper (vs
openai-whisper's own logits), format detection, and clean errors for bad files."""

import random
import re
import struct

import ctranslate2
import ctranslate2.converters
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import whisper

from distil_whisper_jax.core.model import Whisper
from distil_whisper_jax.decode.generate import generate, generation_options, strip
from distil_whisper_jax.speech import audio
from distil_whisper_jax.speech.token_layout import prompt_ids, special_tokens
from distil_whisper_jax.weights.convert import ct2
from distil_whisper_jax.weights.convert.hf import flax_to_hf, write_hf_dir
from distil_whisper_jax.weights.convert.openai import read_openai_checkpoint, write_openai_checkpoint
from distil_whisper_jax.weights.loading import default_model_dir, detect_format, load_pretrained


@pytest.fixture(scope="module")
def mel(clip_audio):
    return audio.log_mel_spectrogram(clip_audio[:3], n_mels=80)


def encode(pre, mel):
    return np.asarray(Whisper(pre.config).apply({"params": pre.params}, jnp.asarray(mel), method=Whisper.encode))


def test_ct2_loader_matches_ctranslate2_encoder(tiny, mel):
    model = ctranslate2.models.Whisper(str(default_model_dir()), device="cpu", compute_type="float32")
    theirs = np.array(model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel)), to_cpu=True))
    ours = encode(tiny, mel)
    # CTranslate2 uses its own fp32 kernels; the shared spec measured 1.75e-4 against PyTorch.
    assert np.abs(ours - theirs).max() < 3e-4


@pytest.fixture(scope="module")
def tiny_hf_dir(tiny, tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-hf")
    write_hf_dir(d, tiny.config, tiny.params, tokenizer=tiny.tokenizer)
    return d


@pytest.fixture(scope="module")
def greedy_run(tiny, mel):
    """``run(pretrained) -> token ids`` on the test clip, and the reference ids of the bundled tiny.en."""
    sp = special_tokens(tiny.tokenizer)
    opts = generation_options(tiny, sp, max_new_tokens=100)
    run = lambda p: strip(generate(p.params, mel, prompt_ids(sp), p.config, opts), sp.eot)
    return run, run(tiny)


@pytest.mark.parametrize("quantization,tol", [("float32", 0), ("int8", 4e-3), ("int16", 2e-3), ("bfloat16", 4e-3)])
def test_ct2_storage_types_dequantize(tiny, tiny_hf_dir, tmp_path, greedy_run, quantization, tol):
    """Re-convert tiny.en with CTranslate2's own converter in each storage type; our reader must
    dequantize to the original weights within the type's rounding and transcribe identically."""
    out = tmp_path / quantization
    ctranslate2.converters.TransformersConverter(str(tiny_hf_dir)).convert(str(out), quantization=quantization)
    pre = load_pretrained(out)
    assert pre.fmt == "ct2" and pre.config == tiny.config
    a, b = flax_to_hf(pre.params, pre.config), flax_to_hf(tiny.params, tiny.config)
    for name in b:
        scale = np.abs(b[name]).max() or 1.0
        assert np.abs(a[name] - b[name]).max() <= tol * scale + 1e-7, name
    run, reference = greedy_run
    assert run(pre) == reference


def test_openai_loader_matches_openai_whisper_logits(tmp_path):
    dims = whisper.model.ModelDimensions(
        n_mels=80,
        n_audio_ctx=1500,
        n_audio_state=64,
        n_audio_head=4,
        n_audio_layer=2,
        n_vocab=51865,
        n_text_ctx=32,
        n_text_state=64,
        n_text_head=4,
        n_text_layer=3,
    )
    torch.manual_seed(0)
    ref = whisper.model.Whisper(dims).eval()
    for p in ref.parameters():  # openai initialises LayerNorms to 1/0 and some weights to 0: randomise all
        torch.nn.init.normal_(p, std=0.05)
    path = tmp_path / "model.pt"
    torch.save({"dims": dims.__dict__, "model_state_dict": ref.state_dict()}, path)
    pre = load_pretrained(path)
    assert pre.fmt == "openai" and pre.config.decoder_layers == 3
    rng = np.random.default_rng(0)
    mel = rng.standard_normal((2, 80, 3000)).astype(np.float32)
    tokens = rng.integers(0, 51865, (2, 6))
    with torch.no_grad():
        theirs = ref(torch.from_numpy(mel), torch.from_numpy(tokens)).numpy()
    ours = np.asarray(Whisper(pre.config).apply({"params": pre.params}, mel, tokens))
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_openai_export_of_real_tiny_loads_in_openai_whisper(tiny, tmp_path, mel):
    path = write_openai_checkpoint(
        tmp_path / "tiny.en.pt", tiny.config, flax_to_hf(tiny.params, tiny.config), dtype=np.float32
    )
    ref = whisper.load_model(str(path), device="cpu")
    tokens = np.array([[50257, 50362, 383, 2068]] * len(mel))
    with torch.no_grad():
        theirs = ref(torch.from_numpy(mel), torch.from_numpy(tokens)).numpy()
    ours = np.asarray(Whisper(tiny.config).apply({"params": tiny.params}, mel, tokens))
    assert np.abs(ours - theirs).max() <= 1e-4
    back = read_openai_checkpoint(path)
    assert back[0] == tiny.config


def test_format_detection(tiny_hf_dir, tmp_path):
    assert detect_format(default_model_dir()) == "ct2"
    assert detect_format(tiny_hf_dir) == "hf"
    assert detect_format("openai/whisper-tiny.en") == "hub"
    (tmp_path / "x.pt").write_bytes(b"")
    assert detect_format(tmp_path / "x.pt") == "openai"


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "empty_dir",
        "unsupported_file",
        "empty_pt",
        "text_as_pt",
        "truncated_ct2",
        "hf_missing_weights",
        "hf_bad_json",
    ],
)
def test_bad_model_inputs_raise_clear_errors(case, tmp_path, tiny_hf_dir):
    target = tmp_path / "model"
    if case == "missing":
        target = tmp_path / "does-not-exist"
        expect = "no such model"
    elif case == "empty_dir":
        target.mkdir()
        expect = "neither a transformers model"
    elif case == "unsupported_file":
        target = tmp_path / "weights.onnx"
        target.write_bytes(b"\x00" * 10)
        expect = "unsupported model file"
    elif case == "empty_pt":
        target = tmp_path / "model.pt"
        target.write_bytes(b"")
        expect = "empty file"
    elif case == "text_as_pt":
        target = tmp_path / "model.pt"
        target.write_text("hello, not a checkpoint")
        expect = "not a readable openai-whisper checkpoint"
    elif case == "truncated_ct2":
        target.mkdir()
        data = (default_model_dir() / "model.bin").read_bytes()
        (target / "model.bin").write_bytes(data[: len(data) // 3])
        (target / "vocabulary.txt").write_text("a\n")
        expect = "truncated or corrupt"
    elif case == "hf_missing_weights":
        target.mkdir()
        (target / "config.json").write_text((tiny_hf_dir / "config.json").read_text())
        expect = "no model.safetensors"
    else:
        target.mkdir()
        (target / "config.json").write_text("{not json")
        expect = "invalid JSON"
    with pytest.raises(ValueError, match=expect) as err:
        load_pretrained(target)
    assert str(target.name) in str(err.value)


def ct2_layout(data: bytes) -> tuple[dict[str, dict[str, int]], int]:
    """Where each variable's fields start in a CTranslate2 ``model.bin`` (``rank``, ``shape``, ``dtype``,
    ``nbytes``, ``data``; ``size``: its data bytes), and where the alias section starts: the offsets at which
    the damage below is done (the layout in ct2.py's docstring)."""
    (n_name,) = struct.unpack_from("<H", data, 4)
    pos = 4 + 2 + n_name + 4
    (n_vars,) = struct.unpack_from("<I", data, pos)
    pos += 4
    where = {}
    for _ in range(n_vars):
        (n,) = struct.unpack_from("<H", data, pos)
        name, rank = data[pos + 2 : pos + 1 + n].decode(), data[pos + 2 + n]
        dtype = pos + 3 + n + 4 * rank
        (size,) = struct.unpack_from("<I", data, dtype + 1)
        where[name] = dict(rank=dtype - 4 * rank - 1, shape=dtype - 4 * rank, dtype=dtype, nbytes=dtype + 1)
        where[name].update(data=dtype + 5, size=size)
        pos = dtype + 5 + size
    return where, pos


def put(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new) :]


def rename(data: bytes, name: str, new: str, start: int = 0) -> bytes:
    """The stored string ``name`` (a variable or alias) replaced by ``new`` of the same length, from byte
    ``start`` on."""
    stored = lambda s: struct.pack("<H", len(s) + 1) + s.encode() + b"\0"
    assert len(new) == len(name) and stored(name) in data[start:]
    return data[:start] + data[start:].replace(stored(name), stored(new))


EMB, QKV, FC1 = "decoder/embeddings/weight", "encoder/layer_0/self_attention", "encoder/layer_1/ffn/linear_0/weight"
CUT = "truncated or corrupt CTranslate2 model"
BAD = "corrupt CTranslate2 model"
GGML = int.from_bytes(b"lmgg", "little")  # whisper.cpp's magic 0x67676d6c, where CTranslate2 has its version


def ct2_damage(data: bytes, at: dict, aliases: int) -> dict[str, tuple]:
    """Each kind of damage to the bundled tiny.en ``model.bin`` (version 6, "WhisperSpec", 148 float16
    variables, the fifth ``decoder/embeddings/weight`` of 51864 x 384, then one alias
    ``decoder/projection/weight`` -> the embeddings): (damaged bytes, made on demand; the message that must
    follow "<model.bin path>: ")."""
    emb = at[EMB]
    k_bias = at[QKV + "/linear_0/bias"]["data"] + 2 * 384  # fused q, k, v biases of 384 float16 each
    return {
        "empty": (lambda: b"", "empty file, expected a CTranslate2 model"),
        "header cut": (lambda: data[:2], f"{CUT} (reading binary version at byte 0: need 4 bytes, 2 left)"),
        "ggml magic": (
            lambda: b"lmgg" + data[4:],
            f"CTranslate2 binary version {GGML} is not supported (expected 4..6)",
        ),
        "future version": (lambda: put(data, 0, struct.pack("<I", 7)), "CTranslate2 binary version 7 is not supported"),
        "other spec": (
            lambda: put(data, 6, b"Wav2VecSpec"),
            "CTranslate2 spec is 'Wav2VecSpec', expected 'WhisperSpec'",
        ),
        "spec name unterminated": (lambda: put(data, 17, b"!"), f"{BAD} (spec name is not NUL-terminated)"),
        "variable count": (lambda: put(data, 22, b"\xff" * 4), f"{BAD} (claims 4294967295 variables)"),
        "name not utf-8": (lambda: put(data, 28, b"\xff"), f"{BAD} (variable name is not UTF-8)"),
        "rank": (lambda: put(data, emb["rank"], b"\x09"), f"{BAD} ({EMB} has rank 9)"),
        "dtype": (lambda: put(data, emb["dtype"], b"\x09"), f"{BAD} ({EMB} has unknown dtype id 9)"),
        "size vs shape": (
            lambda: put(data, emb["nbytes"], struct.pack("<I", emb["size"] - 2)),
            f"{BAD} ({EMB}: {emb['size'] - 2} bytes for shape (51864, 384))",
        ),
        "tensor cut": (
            lambda: data[: emb["data"] + 1000],
            f"{CUT} (reading data of {EMB} at byte {emb['data']}: need {emb['size']} bytes, 1000 left)",
        ),
        "alias count cut": (
            lambda: data[: aliases + 3],
            f"{CUT} (reading alias count at byte {aliases}: need 4 bytes, 3 left)",
        ),
        "alias target": (
            lambda: rename(data, EMB, EMB[:-1] + "s", start=aliases),  # the alias's target only
            f"alias decoder/projection/weight points to missing variable {EMB[:-1]}s",
        ),
        "config variable missing": (
            lambda: rename(data, "encoder/num_heads", "encoder/num_headz"),
            "not a Whisper CTranslate2 model (missing encoder/num_heads)",
        ),
        "layer variable missing": (
            lambda: rename(data, "encoder/layer_1/ffn/layer_norm/beta", "encoder/layer_1/ffn/layer_norm/bet_"),
            "not a Whisper CTranslate2 model (missing variable encoder/layer_1/ffn/layer_norm/beta)",
        ),
        "fused rows": (  # the 1152 x 384 fused q/k/v weight declared 1024 x 432: the same size
            lambda: put(data, at[QKV + "/linear_0/weight"]["shape"], struct.pack("<2I", 1024, 432)),
            "fused qkv has 1024 rows, not divisible by 3",
        ),
        "key bias": (lambda: put(data, k_bias, np.float16(1).tobytes()), f"{QKV} k bias is non-zero"),
    }


# damage found after the file is read: the message names the model's directory
CT2_DAMAGE_IN_DIR = {
    "layer shape": (  # layer 1's fc1 declared transposed (the same size), layer 0's as it should be
        lambda data, at: put(data, at[FC1]["shape"], struct.pack("<2I", 384, 1536)),
        "tensor model.encoder.layers.1.fc1.weight has shape (384, 1536), expected (1536, 384)",
    ),
    "nan weight": (
        lambda data, at: put(data, at[FC1]["data"], np.float16(np.nan).tobytes()),
        "tensor model.encoder.layers.1.fc1.weight holds 1 NaN/inf value(s)",
    ),
}
CT2_DAMAGE = (
    "empty",
    "header cut",
    "ggml magic",
    "future version",
    "other spec",
    "spec name unterminated",
    "variable count",
    "name not utf-8",
    "rank",
    "dtype",
    "size vs shape",
    "tensor cut",
    "alias count cut",
    "alias target",
    "config variable missing",
    "layer variable missing",
    "fused rows",
    "key bias",
)


@pytest.fixture(scope="module")
def ct2_file():
    data = (default_model_dir() / "model.bin").read_bytes()
    return data, *ct2_layout(data)


@pytest.mark.parametrize("kind", [*CT2_DAMAGE, *CT2_DAMAGE_IN_DIR])
def test_damaged_ct2_model_is_refused_naming_the_file_and_the_damage(ct2_file, tmp_path, kind):
    data, at, aliases = ct2_file
    assert tuple(ct2_damage(data, at, aliases)) == CT2_DAMAGE
    if kind in CT2_DAMAGE_IN_DIR:
        make, expect = CT2_DAMAGE_IN_DIR[kind]
        damaged, named = make(data, at), tmp_path
    else:
        make, expect = ct2_damage(data, at, aliases)[kind]
        damaged, named = make(), tmp_path / "model.bin"
    (tmp_path / "vocabulary.txt").write_text("a\n")
    (tmp_path / "model.bin").write_bytes(damaged)
    try:
        with pytest.raises(ValueError) as err:
            load_pretrained(tmp_path)
    finally:
        (tmp_path / "model.bin").unlink()  # 75 MB each: not left behind
    assert str(err.value).startswith(f"{named}: {expect}"), str(err.value)


def test_ct2_reader_fuzzed_prefixes_give_one_of_the_damage_messages(ct2_file):
    """Prefixes of the file (up to 4 kB, or 200 kB: all end before the 40 MB embedding's data is complete)
    with a few bits flipped: every one is refused with a message naming the file and one of the kinds above."""
    data = ct2_file[0]
    known = re.compile(
        rf"model\.bin: ({re.escape(CUT)} \(reading .+ at byte \d+: need \d+ bytes, \d+ left\)$"
        rf"|{BAD} \(.+ (is not NUL-terminated|is not UTF-8|variables|has rank \d+|unknown dtype id \d+"
        r"|bytes for shape \(.*\))\)$"
        r"|CTranslate2 binary version \d+ is not supported|CTranslate2 spec is .+, expected)",
        re.S,
    )
    rng = random.Random(0)
    for i in range(60):
        buf = bytearray(data[: rng.randrange(0, 4096)] if i % 2 else data[:200_000])
        for _ in range(rng.randrange(1, 8)):
            if buf:
                pos = rng.randrange(len(buf))
                buf[pos] ^= 1 << rng.randrange(8)
        with pytest.raises(ValueError) as err:
            ct2.read_ct2_model(bytes(buf))
        assert known.match(str(err.value)), (i, str(err.value))


@pytest.mark.parametrize("fmt,bad", [("hf", np.nan), ("hf", np.inf), ("openai", np.nan), ("openai", -np.inf)])
def test_non_finite_weights_are_refused_naming_file_and_tensor(tiny, tmp_path, fmt, bad):
    """A checkpoint with a NaN/inf weight would load and transcribe garbage: every loader refuses it."""
    params = jax.tree_util.tree_map(np.array, tiny.params)  # a writable copy
    params["decoder"]["layer_norm"]["scale"][3] = bad
    if fmt == "hf":
        target = tmp_path / "hf"
        write_hf_dir(target, tiny.config, params, tokenizer=tiny.tokenizer)
        file = "model.safetensors"
    else:
        target = tmp_path / "model.pt"
        write_openai_checkpoint(target, tiny.config, flax_to_hf(params, tiny.config), dtype=np.float32)
        file = "model.pt"
    with pytest.raises(ValueError, match="NaN/inf") as err:
        load_pretrained(target)
    assert file in str(err.value) or str(target) in str(err.value)
    assert "layer_norm" in str(err.value)


def test_outputs_get_the_permissions_of_open(tiny, tmp_path):
    """model.safetensors was 0600 (its writer replaced the temp file after its mode was set) while every
    other output was 0644: all get 0666 minus the umask, as a plain open() would give."""
    import os

    from distil_whisper_jax.infra.files import atomic_write

    umask = os.umask(0o022)
    try:
        write_hf_dir(tmp_path / "hf", tiny.config, tiny.params, tokenizer=tiny.tokenizer)
        with atomic_write(tmp_path / "replaced.bin") as tmp:  # a writer that replaces the file it was given
            (tmp_path / "other").write_bytes(b"x")
            os.replace(tmp_path / "other", tmp)
            os.chmod(tmp, 0o600)
    finally:
        os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [*(tmp_path / "hf").iterdir(), tmp_path / "replaced.bin"]}
    assert "model.safetensors" in modes and set(modes.values()) == {0o644}, modes
