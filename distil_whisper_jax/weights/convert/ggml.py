"""whisper.cpp legacy ggml model files (``ggml-*.bin``) ⇄ HF-named weights.

Layout (little-endian, packed): ``int32 magic 'ggml'`` | 10 int32 dims in whisper.cpp's
order (``n_vocab … n_text_layer, n_mels``) | ``int32 ftype`` | mel filters (``int32 n_mel, n_fft=201``,
float32 [n_mel, 201]) | vocab (``int32 n``, n × ``uint32 len + raw bytes`` of the regular BPE tokens;
whisper.cpp synthesises the specials from ``n_vocab``) | tensor records until EOF (``int32 n_dims, name_len,
ttype``, ``int32 ne[n_dims]`` = numpy shape reversed, name, data). Names are openai-whisper's.

File types written: ``f16`` (ftype 1; 2-D+ weights F16, the rest F32; never all-F32, which aborts
whisper.cpp's conv) and the quantized ``q4_0``, ``q4_1``, ``q5_0``, ``q5_1``, ``q8_0`` (ftype
``GGML_QNT_VERSION(2)·1000 + GGML_FTYPE_MOSTLY_*``: 2002, 2003, 2008, 2009, 2007), laid out as
whisper.cpp's ``quantize`` tool lays out its output from our f16 file (after its source; the tool is not run
here): every 2-D tensor except the conv biases and
positional tables becomes blocks of 32 values (``ggml_quant``; the tensor record's ggml_type is 2, 3, 6, 7, 8),
computed from the f16-rounded weights (the tool reads the f16 file), byte for byte what ggml's
``ggml_quantize_chunk`` makes of them (tested); the 3-D conv weights stay F16.

The reader checks every length and shape against the header before touching data, so truncated or
bit-flipped files raise ``ValueError`` naming the file (no crash, no allocation beyond the file size).
"""

from __future__ import annotations

import functools
import json
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distil_whisper_jax.core.model import WhisperConfig
from distil_whisper_jax.infra.files import atomic_write
from distil_whisper_jax.speech.audio import mel_filters
from distil_whisper_jax.speech.token_layout import SpecialTokens, special_tokens
from distil_whisper_jax.weights.convert.ggml_quant import (
    BLOCKS,
    GGML_FTYPES,
    GGML_TYPES,
    QK,
    QUANTS,
    dequantize,
    quantize,
)
from distil_whisper_jax.weights.convert.hf import expected_shapes, flax_to_hf
from distil_whisper_jax.weights.convert.openai import (
    DIMS,
    config_from_dims,
    dims_from_config,
    hf_to_openai_name,
    openai_to_hf_name,
)

MAGIC = 0x67676D6C  # "ggml", stored little-endian as b"lmgg"
F32, F16 = 0, 1  # ggml_type of a tensor record (quantized: ggml_quant.GGML_TYPES)
GGML_QNT_VERSION = 2  # a quantized file's header ftype is GGML_QNT_VERSION·1000 + GGML_FTYPE_MOSTLY_*
FTYPES = {"f32": 0, "f16": 1} | {q: GGML_QNT_VERSION * 1000 + GGML_FTYPES[q] for q in QUANTS}
_QUANT_OF_FTYPE = {FTYPES[q]: q for q in QUANTS}
_QUANT_OF_TYPE = {GGML_TYPES[q]: q for q in QUANTS}
N_FFT_BINS = 201  # whisper.cpp asserts n_fft == 1 + 400/2
HEADER = (*DIMS[1:], DIMS[0])  # openai-whisper's dimensions with n_mels moved last: the ggml header order
_CONV_BIASES = ("encoder.conv1.bias", "encoder.conv2.bias")  # stored as [D, 1]
_KEEP_F32 = _CONV_BIASES + ("encoder.positional_embedding", "decoder.positional_embedding")
_MAX_DIM = 1 << 20  # sanity bound on header ints (large-v3: n_vocab 51866, d 1280)
_MAX_TOKEN_BYTES = 1024


def tensor_type(name: str, ndim: int, ftype: int) -> int:
    """The ggml type whisper.cpp expects for tensor ``name`` (``ndim`` as stored) in a file of ``ftype``."""
    if ftype == FTYPES["f32"] or ndim < 2 or name in _KEEP_F32:
        return F32
    if ftype in _QUANT_OF_FTYPE and ndim == 2:  # whisper.cpp's quantize tool: 2-D tensors only
        return GGML_TYPES[_QUANT_OF_FTYPE[ftype]]
    return F16


def check_ggml_config(config: WhisperConfig, quant: str = "f16") -> None:
    """Raise ``ValueError`` naming the constraint if whisper.cpp cannot run ``config`` as ``quant`` (for a
    quantized type: the first tensor it would quantize whose rows are not whole blocks of 32 values)."""
    if quant not in FTYPES or quant == "f32":
        raise ValueError(f"ggml type must be one of {', '.join(t for t in FTYPES if t != 'f32')}, got {quant!r}")
    dims_from_config(config)  # ffn_dim == 4·d_model (whisper.cpp hard-codes it too)
    try:
        SpecialTokens.from_vocab_size(config.vocab_size)
    except ValueError as e:
        raise ValueError(f"whisper.cpp derives its special tokens from n_vocab: {e}") from None
    # whisper.cpp sizes the encoder by n_audio_ctx (a 750-position student runs on 15 s windows)
    if not 0 < config.max_source_positions <= 1500:
        raise ValueError(
            f"whisper.cpp needs max_source_positions in 1..1500 (at most 30 s of audio), "
            f"got {config.max_source_positions}"
        )
    if quant in QUANTS:
        for name, shape in _expected_shapes(config).items():
            if tensor_type(name, len(shape), FTYPES[quant]) not in (F32, F16) and shape[-1] % QK:
                raise ValueError(
                    f"{quant} needs rows that are a multiple of {QK} values: tensor {name!r} of shape {shape} "
                    f"has rows of {shape[-1]} (d_model {config.d_model})"
                )


# ----------------------------------------------------------------------------------------------
# Writing


@functools.lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's ``bytes_to_unicode``: printable bytes map to themselves, the rest to U+0100…"""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def token_bytes(tokenizer: Any) -> list[bytes]:
    """Raw bytes of the regular BPE tokens ``0 .. eot-1`` in id order (the ggml vocab block)."""
    eot = special_tokens(tokenizer).eot
    vocab = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["vocab"]
    by_id = {i: s for s, i in vocab.items() if i < eot}
    if sorted(by_id) != list(range(eot)):
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r}: BPE vocabulary lacks ids below {eot}")
    table = _unicode_to_byte()
    try:
        return [bytes(table[c] for c in by_id[i]) for i in range(eot)]
    except KeyError as e:
        raise ValueError(f"tokenizer has a token with non byte-level character {e.args[0]!r}") from None


def openai_state(config: WhisperConfig, params: Mapping) -> dict[str, np.ndarray]:
    """openai-whisper-named float32 arrays of Flax ``params`` (the names ggml uses too)."""
    return {hf_to_openai_name(k): v for k, v in flax_to_hf(params, config, np.float32).items()}


def _records(state: Mapping[str, np.ndarray], ftype: int) -> Iterator[bytes]:
    for name, value in state.items():
        data = np.asarray(value, np.float32).squeeze()
        if name in _CONV_BIASES:
            data = data.reshape(-1, 1)
        ttype = tensor_type(name, data.ndim, ftype)
        if ttype == F32:
            raw = data.astype("<f4").tobytes()
        elif ttype == F16:
            raw = data.astype("<f2").tobytes()
        else:  # quantize what whisper.cpp's quantize tool would read: the f16 file's values
            raw = quantize(data.astype(np.float16).astype(np.float32), _QUANT_OF_TYPE[ttype]).tobytes()
        encoded = name.encode("utf-8")
        yield struct.pack(f"<3i{data.ndim}i", data.ndim, len(encoded), ttype, *reversed(data.shape)) + encoded
        yield raw


def write_ggml(
    path: str | os.PathLike,
    config: WhisperConfig,
    params: Mapping,
    tokenizer: Any = None,
    quant: str = "f16",
    vocab: Sequence[bytes] | None = None,
) -> Path:
    """Write a whisper.cpp model atomically: ``quant`` 'f16', 'q4_0', 'q4_1', 'q5_0', 'q5_1' or 'q8_0'. The
    vocab block comes from ``tokenizer`` (or pass its ``token_bytes`` as ``vocab``)."""
    check_ggml_config(config, quant)
    if vocab is None:
        if tokenizer is None:
            raise ValueError("write_ggml needs a tokenizer (or vocab bytes) for the vocab block")
        vocab = token_bytes(tokenizer)
    ftype = FTYPES[quant]
    dims = dims_from_config(config)
    filters = mel_filters(config.num_mel_bins).astype("<f4")
    with atomic_write(path, "wb") as f:
        f.write(struct.pack("<12i", MAGIC, *(dims[k] for k in HEADER), ftype))
        f.write(struct.pack("<2i", *filters.shape) + filters.tobytes())
        f.write(struct.pack("<i", len(vocab)))
        for tok in vocab:
            f.write(struct.pack("<I", len(tok)) + tok)
        for chunk in _records(openai_state(config, params), ftype):
            f.write(chunk)
    return Path(path)


# ----------------------------------------------------------------------------------------------
# Reading


class _Reader:
    def __init__(self, buf, source: str):
        self.buf, self.pos, self.source = memoryview(buf), 0, source

    def error(self, what: str) -> ValueError:
        return ValueError(f"{self.source}: truncated or corrupt ggml model ({what} at byte {self.pos})")

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise self.error(f"reading {what}: need {n} bytes, {len(self.buf) - self.pos} left")
        view = self.buf[self.pos : self.pos + n]
        self.pos += n
        return view

    def ints(self, n: int, what: str, fmt: str = "i") -> tuple[int, ...]:
        return struct.unpack(f"<{n}{fmt}", self.take(4 * n, what))


def _skip_vocab(r: _Reader, n_tokens: int) -> None:
    """Step over the vocab block (``uint32 len + bytes`` per token), checking every length; a tight loop,
    as it runs 50k times."""
    pos, end, buf = r.pos, len(r.buf), r.buf
    for i in range(n_tokens):
        if pos + 4 > end:
            break
        (n,) = struct.unpack_from("<I", buf, pos)
        if n > _MAX_TOKEN_BYTES:
            r.pos = pos
            raise r.error(f"token {i} claims {n} bytes")
        pos += 4 + n
    else:
        if pos <= end:
            r.pos = pos
            return
    r.pos = min(pos, end)
    raise r.error(f"vocab block ends early (token {i} of {n_tokens})")


def _expected_shapes(config: WhisperConfig) -> dict[str, tuple[int, ...]]:
    """openai name → shape as stored in ggml (conv biases [D, 1])."""
    shapes = {hf_to_openai_name(k): v for k, v in expected_shapes(config).items()}
    shapes.update({n: (config.d_model, 1) for n in _CONV_BIASES})
    return shapes


def read_ggml_model(model: str | os.PathLike | bytes) -> tuple[WhisperConfig, dict[str, np.ndarray]]:
    """Config and HF-named float32 weights of a whisper.cpp ggml file (a path, or its bytes).
    Supports ftype f32, f16, q4_0, q4_1, q5_0, q5_1 and q8_0 (dequantized)."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        return _from_buffer(model, "ggml model")
    path = Path(model)
    if not path.is_file():
        raise ValueError(f"{path}: ggml model file not found")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file, expected a whisper.cpp ggml model")
    return _from_buffer(path.read_bytes(), str(path))


def _from_buffer(buf, source: str) -> tuple[WhisperConfig, dict[str, np.ndarray]]:
    r = _Reader(buf, source)
    (magic,) = r.ints(1, "magic", "I")
    if magic != MAGIC:
        raise ValueError(f"{source}: not a whisper.cpp ggml model (magic {magic:#010x}, expected {MAGIC:#010x})")
    header = dict(zip(HEADER, r.ints(len(HEADER), "header")))
    (ftype,) = r.ints(1, "ftype")
    bad = [k for k, v in header.items() if not 0 < v <= _MAX_DIM]
    if bad:
        raise r.error(f"header field {bad[0]} = {header[bad[0]]}")
    if ftype not in FTYPES.values():
        raise ValueError(
            f"{source}: ggml ftype {ftype} is not supported (supported: "
            + ", ".join(f"{k} = {v}" for k, v in FTYPES.items())
            + ")"
        )
    try:
        config = config_from_dims({k: header[k] for k in DIMS}, source)
    except ValueError as e:  # unequal widths, heads not dividing d_model, ...
        raise ValueError(f"{source}: corrupt ggml header ({e})") from None
    n_mel, n_fft = r.ints(2, "mel filter shape")
    if n_mel != config.num_mel_bins or n_fft != N_FFT_BINS:
        raise r.error(f"mel filters are [{n_mel}, {n_fft}], expected [{config.num_mel_bins}, {N_FFT_BINS}]")
    r.take(4 * n_mel * n_fft, "mel filters")
    (n_tokens,) = r.ints(1, "vocab size")
    if not 0 <= n_tokens <= config.vocab_size:
        raise r.error(f"vocab block claims {n_tokens} tokens for n_vocab {config.vocab_size}")
    _skip_vocab(r, n_tokens)

    shapes = _expected_shapes(config)
    state: dict[str, np.ndarray] = {}
    while r.pos < len(r.buf):
        n_dims, name_len, ttype = r.ints(3, "tensor header")
        if not 1 <= n_dims <= 4 or not 1 <= name_len <= 256:
            raise r.error(f"tensor header n_dims={n_dims}, name length={name_len}")
        ne = r.ints(n_dims, "tensor shape")
        try:
            name = bytes(r.take(name_len, "tensor name")).decode("utf-8")
        except UnicodeDecodeError:
            raise r.error("tensor name is not UTF-8") from None
        if name not in shapes:
            raise r.error(f"unknown tensor {name!r}")
        if name in state:
            raise r.error(f"tensor {name!r} appears twice")
        shape = tuple(reversed(ne))
        if shape != shapes[name]:
            raise r.error(f"tensor {name!r} has shape {shape}, expected {shapes[name]}")
        want = tensor_type(name, n_dims, ftype)
        if ttype != want:
            raise r.error(f"tensor {name!r} has ggml type {ttype}, expected {want} in a file of ftype {ftype}")
        count = int(np.prod(shape))
        if ttype in _QUANT_OF_TYPE:
            quant = _QUANT_OF_TYPE[ttype]
            if shape[-1] % QK:
                raise r.error(f"{quant} tensor {name!r} has rows of {shape[-1]} values (not a multiple of {QK})")
            raw = r.take(count // QK * BLOCKS[quant].itemsize, f"data of {name}")
            values = dequantize(np.frombuffer(raw, BLOCKS[quant]), quant)
        else:
            dtype = np.dtype("<f4" if ttype == F32 else "<f2")
            values = np.frombuffer(r.take(count * dtype.itemsize, f"data of {name}"), dtype).astype(np.float32)
        if not np.isfinite(values).all():
            raise r.error(f"tensor {name!r} holds non-finite values")
        state[name] = values.reshape(shape)
    missing = sorted(set(shapes) - set(state))
    if missing:
        raise ValueError(
            f"{source}: truncated or corrupt ggml model (missing {len(missing)} tensors, e.g. {missing[0]!r})"
        )
    return config, {openai_to_hf_name(k): (v.reshape(-1) if k in _CONV_BIASES else v) for k, v in state.items()}


def is_ggml_file(path: str | os.PathLike) -> bool:
    p = Path(path)
    if not p.is_file():
        return False
    with open(p, "rb") as f:
        head = f.read(4)
    return len(head) == 4 and struct.unpack("<I", head)[0] == MAGIC
