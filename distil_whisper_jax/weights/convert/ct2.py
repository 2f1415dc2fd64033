"""CTranslate2 (faster-whisper) directories ⇄ HF-named numpy weights.

Reading is done here byte by byte (no ctranslate2 needed). Writing (``write_ct2_dir``) fills CTranslate2's
own ``ctranslate2.specs.WhisperSpec`` from numpy arrays and lets the library quantize and save it (the ``ct2``
extra; no torch): ``model.bin``, ``config.json`` (suppressed tokens, alignment heads, language ids) and
``vocabulary.json``, the same names and values ``ctranslate2.converters.TransformersConverter`` writes.

``model.bin`` layout (little-endian; strings are uint16 length incl. NUL + bytes):
``uint32 version | [str spec_name, uint32 revision] | uint32 n_vars | n_vars × (str name, uint8 rank,
uint32 dims[rank], uint8 dtype, uint32 nbytes, data) | [uint32 n_aliases | n × (str alias, str target)]``.
Every length is checked against the bytes that remain, so truncated or fuzzed files raise
``ValueError`` instead of crashing or allocating huge buffers. int8/int16 variables with a
``<name>_scale`` partner are dequantized; aliases resolve to their (dequantized) targets.
"""

from __future__ import annotations

import itertools
import os
import re
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distil_whisper_jax.core.model import WhisperConfig

# --formats name → CTranslate2 quantization of model.bin
QUANTIZATIONS = {"ct2": "float32", "ct2-float16": "float16", "ct2-int8": "int8"}
CT2_EXTRA = 'the ct2 extra: pip install "distil-whisper-jax[ct2]"'
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
MAX_VERSION = 6


class _Reader:
    def __init__(self, buf, source: str):
        self.buf, self.pos, self.source = buf, 0, source

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise ValueError(
                f"{self.source}: truncated or corrupt CTranslate2 model (reading {what} at byte "
                f"{self.pos}: need {n} bytes, {len(self.buf) - self.pos} left)"
            )
        view = memoryview(self.buf)[self.pos : self.pos + n]
        self.pos += n
        return view

    def unpack(self, fmt: str, what: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def string(self, what: str) -> str:
        (n,) = self.unpack("H", what)
        raw = bytes(self.take(n, what))
        if n == 0 or raw[-1] != 0:
            raise ValueError(f"{self.source}: corrupt CTranslate2 model ({what} is not NUL-terminated)")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{self.source}: corrupt CTranslate2 model ({what} is not UTF-8)") from None


def read_variables(buf, source: str = "model.bin") -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Raw variables and aliases of a CTranslate2 ``model.bin`` held in ``buf`` (bytes or mmap)."""
    r = _Reader(buf, source)
    (version,) = r.unpack("I", "binary version")
    if not 4 <= version <= MAX_VERSION:
        raise ValueError(
            f"{source}: CTranslate2 binary version {version} is not supported (expected 4..{MAX_VERSION}); "
            "not a CTranslate2 model, or re-convert it with a current ctranslate2"
        )
    spec = r.string("spec name")
    r.unpack("I", "spec revision")
    if spec != "WhisperSpec":
        raise ValueError(f"{source}: CTranslate2 spec is {spec!r}, expected 'WhisperSpec'")
    (n_vars,) = r.unpack("I", "variable count")
    if n_vars > len(buf) // 8:
        raise ValueError(f"{source}: corrupt CTranslate2 model (claims {n_vars} variables)")
    variables: dict[str, np.ndarray] = {}
    for _ in range(n_vars):
        name = r.string("variable name")
        (rank,) = r.unpack("B", f"rank of {name}")
        if rank > 8:
            raise ValueError(f"{source}: corrupt CTranslate2 model ({name} has rank {rank})")
        dims = r.unpack(f"{rank}I", f"shape of {name}")
        dtype_id, nbytes = r.unpack("BI", f"dtype of {name}")
        if dtype_id not in _DTYPES:
            raise ValueError(f"{source}: corrupt CTranslate2 model ({name} has unknown dtype id {dtype_id})")
        dtype = _DTYPES[dtype_id]
        itemsize = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
        if nbytes != int(np.prod(dims, dtype=np.int64)) * itemsize:
            raise ValueError(f"{source}: corrupt CTranslate2 model ({name}: {nbytes} bytes for shape {dims})")
        raw = r.take(nbytes, f"data of {name}")
        if dtype == "bfloat16":
            arr = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype)
        variables[name] = arr.reshape(dims)
    aliases: dict[str, str] = {}
    if r.pos < len(buf):
        (n_alias,) = r.unpack("I", "alias count")
        if n_alias > len(buf) // 4:
            raise ValueError(f"{source}: corrupt CTranslate2 model (claims {n_alias} aliases)")
        for _ in range(n_alias):
            alias = r.string("alias name")
            aliases[alias] = r.string(f"target of alias {alias}")
    return variables, aliases


def _resolve(variables: dict[str, np.ndarray], aliases: dict[str, str], source: str) -> dict[str, np.ndarray]:
    """Dequantize ``*_scale``-partnered weights to fp32, then point every alias at its target."""
    out: dict[str, np.ndarray] = {}
    for name, arr in variables.items():
        if name.endswith("_scale"):
            continue
        scale = variables.get(name + "_scale")
        if scale is not None:
            scale = np.asarray(scale, np.float32)
            if arr.dtype == np.int8:  # per output row / channel: w = q / scale
                arr = arr.astype(np.float32) / scale.reshape((-1,) + (1,) * (arr.ndim - 1))
            elif arr.dtype == np.int16:  # one scalar scale
                arr = arr.astype(np.float32) / scale.reshape(())
            else:
                raise ValueError(f"{source}: {name} has a scale but dtype {arr.dtype}")
        out[name] = arr
    for alias, target in aliases.items():
        seen = {alias}
        while target in aliases:  # aliases may chain
            if target in seen:
                raise ValueError(f"{source}: alias cycle at {target}")
            seen.add(target)
            target = aliases[target]
        if target not in out:
            raise ValueError(f"{source}: alias {alias} points to missing variable {target}")
        out[alias] = out[target]
    return out


def _config(v: dict[str, np.ndarray], source: str) -> WhisperConfig:
    try:
        conv1 = v["encoder/conv1/weight"]
        layers = lambda side: len({int(m.group(1)) for k in v for m in [re.match(rf"{side}/layer_(\d+)/", k)] if m})
        return WhisperConfig(
            vocab_size=v["decoder/embeddings/weight"].shape[0],
            num_mel_bins=conv1.shape[1],
            d_model=conv1.shape[0],
            encoder_layers=layers("encoder"),
            decoder_layers=layers("decoder"),
            encoder_attention_heads=int(v["encoder/num_heads"]),
            decoder_attention_heads=int(v["decoder/num_heads"]),
            encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
            decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
            max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
            max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
        )
    except KeyError as e:
        raise ValueError(f"{source}: not a Whisper CTranslate2 model (missing {e.args[0]})") from None


def _split_fused(w: np.ndarray, parts: int, name: str, source: str) -> list[np.ndarray]:
    if w.shape[0] % parts:
        raise ValueError(f"{source}: fused {name} has {w.shape[0]} rows, not divisible by {parts}")
    return np.split(w, parts, axis=0)


def ct2_to_hf(v: dict[str, np.ndarray], config: WhisperConfig, source: str) -> dict[str, np.ndarray]:
    """Rename CTranslate2 variables to HF names, splitting fused q/k/v projections."""
    hf: dict[str, np.ndarray] = {}
    ln = lambda dst, src: hf.update({f"{dst}.weight": v[f"{src}/gamma"], f"{dst}.bias": v[f"{src}/beta"]})
    lin = lambda dst, src: hf.update({f"{dst}.weight": v[f"{src}/weight"], f"{dst}.bias": v[f"{src}/bias"]})
    try:
        for conv in ("conv1", "conv2"):
            lin(f"model.encoder.{conv}", f"encoder/{conv}")
        hf["model.encoder.embed_positions.weight"] = v["encoder/position_encodings/encodings"]
        hf["model.decoder.embed_positions.weight"] = v["decoder/position_encodings/encodings"]
        hf["model.decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]
        ln("model.encoder.layer_norm", "encoder/layer_norm")
        ln("model.decoder.layer_norm", "decoder/layer_norm")
        for side, n in (("encoder", config.encoder_layers), ("decoder", config.decoder_layers)):
            for i in range(n):
                src, dst = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
                w, b = v[f"{src}/self_attention/linear_0/weight"], v[f"{src}/self_attention/linear_0/bias"]
                (qw, kw, vw), (qb, kb, vb) = (_split_fused(w, 3, "qkv", source), _split_fused(b, 3, "qkv", source))
                _check_zero(kb, f"{src}/self_attention k bias", source)
                hf.update(
                    {
                        f"{dst}.self_attn.q_proj.weight": qw,
                        f"{dst}.self_attn.q_proj.bias": qb,
                        f"{dst}.self_attn.k_proj.weight": kw,
                        f"{dst}.self_attn.v_proj.weight": vw,
                        f"{dst}.self_attn.v_proj.bias": vb,
                    }
                )
                lin(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
                ln(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
                lin(f"{dst}.fc1", f"{src}/ffn/linear_0")
                lin(f"{dst}.fc2", f"{src}/ffn/linear_1")
                ln(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
                if side == "decoder":
                    lin(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
                    w, b = v[f"{src}/attention/linear_1/weight"], v[f"{src}/attention/linear_1/bias"]
                    (kw, vw), (kb, vb) = _split_fused(w, 2, "kv", source), _split_fused(b, 2, "kv", source)
                    _check_zero(kb, f"{src}/attention k bias", source)
                    hf.update(
                        {
                            f"{dst}.encoder_attn.k_proj.weight": kw,
                            f"{dst}.encoder_attn.v_proj.weight": vw,
                            f"{dst}.encoder_attn.v_proj.bias": vb,
                        }
                    )
                    lin(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
                    ln(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
    except KeyError as e:
        raise ValueError(f"{source}: not a Whisper CTranslate2 model (missing variable {e.args[0]})") from None
    return {k: np.asarray(a, np.float32) for k, a in hf.items()}


def _check_zero(bias: np.ndarray, what: str, source: str) -> None:
    # Whisper has no key bias; CTranslate2 stores zeros in its place. Anything else is not Whisper.
    if np.any(bias != 0):
        raise ValueError(f"{source}: {what} is non-zero; Whisper has no key-projection bias")


def read_ct2_model(model_bin: str | os.PathLike | bytes) -> tuple[WhisperConfig, dict[str, np.ndarray]]:
    """Config and HF-named fp32 weights of a CTranslate2 Whisper ``model.bin`` (a path, or its bytes)."""
    if isinstance(model_bin, (bytes, bytearray, memoryview)):
        return _from_buffer(model_bin, "model.bin")
    path = Path(model_bin)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise ValueError(f"{path}: CTranslate2 model.bin not found")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file, expected a CTranslate2 model")
    # Read into memory (not mmap): arrays view the bytes, which stay alive as long as they do.
    return _from_buffer(path.read_bytes(), str(path))


def _from_buffer(buf, source: str) -> tuple[WhisperConfig, dict[str, np.ndarray]]:
    variables, aliases = read_variables(buf, source)
    resolved = _resolve(variables, aliases, source)
    config = _config(resolved, source)
    return config, ct2_to_hf(resolved, config, source)


def is_ct2_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (
        p.is_dir()
        and (p / "model.bin").is_file()
        and ((p / "vocabulary.txt").is_file() or (p / "vocabulary.json").is_file())
    )


# ----------------------------------------------------------------------------------------------
# Writing


def check_ct2_available(need_faster_whisper: bool = False) -> None:
    """``ValueError`` naming the ``ct2`` extra when ctranslate2 (or faster-whisper) cannot be imported."""
    names = ["ctranslate2"] + (["faster_whisper"] if need_faster_whisper else [])
    for name in names:
        try:
            __import__(name)
            if name == "ctranslate2":
                from ctranslate2.specs import whisper_spec  # noqa: F401 (the writer's entry point)
        except Exception as e:  # noqa: BLE001 - ImportError, or a ctranslate2 broken by another package
            raise ValueError(f"CTranslate2 export needs {CT2_EXTRA} ({name}: {type(e).__name__}: {e})") from None


def check_ct2_config(config: WhisperConfig) -> None:
    """``ValueError`` when faster-whisper could not run ``config``: it always feeds 30 s windows (3000 log-mel
    frames, ``faster_whisper.audio.pad_or_trim``), which a CTranslate2 encoder of another length refuses."""
    if config.max_source_positions != 1500:
        raise ValueError(
            f"max_source_positions {config.max_source_positions} ({config.input_seconds:g} s input): faster-whisper "
            "always feeds 30 s windows (3000 log-mel frames), which this encoder refuses; export hf, openai or "
            "ggml for a student with a shorter input"
        )


def ct2_vocabulary_tokens(tokenizer: Any, vocab_size: int) -> list[str]:
    """Token strings in id order, ``vocab_size`` of them; ids the tokenizer lacks are timestamps, named as
    CTranslate2's converter names them (``<|0.00|>`` …)."""
    tokens = [tokenizer.convert_ids_to_tokens(i) for i in range(vocab_size)]
    first_missing = next((i for i, t in enumerate(tokens) if t is None), vocab_size)
    if any(t is not None for t in tokens[first_missing:]):
        raise ValueError(f"tokenizer has a gap in its ids at {first_missing}; cannot write vocabulary.json")
    return tokens[:first_missing] + [f"<|{i * 0.02:.2f}|>" for i in range(vocab_size - first_missing)]


def _linear(spec: Any, state: Mapping[str, np.ndarray], name: str) -> None:
    spec.weight = state[f"{name}.weight"]
    if f"{name}.bias" in state:
        spec.bias = state[f"{name}.bias"]


def _layer_norm(spec: Any, state: Mapping[str, np.ndarray], name: str) -> None:
    spec.gamma, spec.beta = state[f"{name}.weight"], state[f"{name}.bias"]


def _attention(spec: Any, state: Mapping[str, np.ndarray], name: str, self_attention: bool) -> None:
    """q/k/v fused as CTranslate2 stores them (Whisper's k projection has no bias: zeros in its place)."""
    w = {p: state[f"{name}.{p}_proj.weight"] for p in "qkv"}
    b = {p: state.get(f"{name}.{p}_proj.bias", np.zeros(w[p].shape[0], w[p].dtype)) for p in "qkv"}
    groups = ["qkv"] if self_attention else ["q", "kv"]
    for linear, group in zip(spec.linear, groups):
        linear.weight = np.concatenate([w[p] for p in group])
        linear.bias = np.concatenate([b[p] for p in group])
    _linear(spec.linear[-1], state, f"{name}.out_proj")


def _layers(spec: Any, state: Mapping[str, np.ndarray], side: str) -> None:
    for i, layer in enumerate(spec.layer):
        src = f"model.{side}.layers.{i}"
        _attention(layer.self_attention, state, f"{src}.self_attn", self_attention=True)
        _layer_norm(layer.self_attention.layer_norm, state, f"{src}.self_attn_layer_norm")
        if side == "decoder":
            _attention(layer.attention, state, f"{src}.encoder_attn", self_attention=False)
            _layer_norm(layer.attention.layer_norm, state, f"{src}.encoder_attn_layer_norm")
        _linear(layer.ffn.linear_0, state, f"{src}.fc1")
        _linear(layer.ffn.linear_1, state, f"{src}.fc2")
        _layer_norm(layer.ffn.layer_norm, state, f"{src}.final_layer_norm")


def whisper_spec(config: WhisperConfig, state: Mapping[str, np.ndarray]) -> Any:
    """A ``ctranslate2.specs.WhisperSpec`` holding the HF-named fp32 ``state`` (``hf.flax_to_hf``)."""
    from ctranslate2.specs import whisper_spec as ws

    spec = ws.WhisperSpec(
        config.encoder_layers, config.encoder_attention_heads, config.decoder_layers, config.decoder_attention_heads
    )
    enc, dec = spec.encoder, spec.decoder
    _linear(enc.conv1, state, "model.encoder.conv1")
    _linear(enc.conv2, state, "model.encoder.conv2")
    for side, sub in (("encoder", enc), ("decoder", dec)):
        sub.position_encodings.encodings = state[f"model.{side}.embed_positions.weight"]
        _layer_norm(sub.layer_norm, state, f"model.{side}.layer_norm")
        _layers(sub, state, side)
    dec.embeddings.weight = state["model.decoder.embed_tokens.weight"]
    dec.projection.weight = state["model.decoder.embed_tokens.weight"]  # tied; saved once, as an alias
    return spec


def ct2_config(config: WhisperConfig, defaults: Any) -> dict:
    """``config.json`` values: suppress lists, language ids and alignment heads of ``defaults``
    (``GenerationDefaults``); without alignment heads the converter's default, every head of the last half
    of the decoder layers."""
    heads = [list(h) for h in defaults.alignment_heads] or [
        list(h)
        for h in itertools.product(
            range(config.decoder_layers // 2, config.decoder_layers), range(config.decoder_attention_heads)
        )
    ]
    return {
        "suppress_ids": list(defaults.suppress_tokens),
        "suppress_ids_begin": list(defaults.begin_suppress_tokens),
        "lang_ids": list(defaults.lang_ids),
        "alignment_heads": heads,
    }


def write_ct2_dir(
    path: str | os.PathLike,
    config: WhisperConfig,
    state: Mapping[str, np.ndarray],
    quantization: str,
    defaults: Any,
    vocabulary: Sequence[str],
) -> Path:
    """Write CTranslate2's ``model.bin``, ``config.json`` and ``vocabulary.json`` into the new directory ``path``
    with ctranslate2's own spec, validation, quantization (``float32``, ``float16``, ``int8``) and writer."""
    check_ct2_config(config)
    spec = whisper_spec(config, state)
    for key, value in ct2_config(config, defaults).items():
        setattr(spec.config, key, value)
    spec.register_vocabulary(list(vocabulary))
    spec.validate()
    spec.optimize(quantization=quantization)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)  # may be created empty by the caller (export's atomic_dir)
    spec.save(str(path))
    return path
