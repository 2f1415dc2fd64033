"""🤗 transformers ⇄ Flax: the name map every other format is routed through.

Readers of other formats (CTranslate2, openai-whisper) produce a flat ``{hf_name: np.ndarray}`` dict
in PyTorch layout; ``hf_to_flax`` turns it into our stacked Flax tree, ``flax_to_hf`` goes back.
Only renames and transposes: Dense kernels are ``W.T``, Conv kernels ``W.transpose(2, 1, 0)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file
from safetensors.numpy import save as safetensors_bytes

from distil_whisper_jax.core.model import WhisperConfig
from distil_whisper_jax.infra.files import atomic_write
from distil_whisper_jax.speech.token_layout import SpecialTokens
from distil_whisper_jax.speech.tokenizer import save_tokenizer
from distil_whisper_jax.weights.generation_defaults import suppress_tokens

# (hf suffix, flax path inside one layer, kind). kind: dense | conv | vector | embed.
_ATTN = [
    ("q_proj.weight", ("q_proj", "kernel"), "dense"),
    ("q_proj.bias", ("q_proj", "bias"), "vector"),
    ("k_proj.weight", ("k_proj", "kernel"), "dense"),
    ("v_proj.weight", ("v_proj", "kernel"), "dense"),
    ("v_proj.bias", ("v_proj", "bias"), "vector"),
    ("out_proj.weight", ("out_proj", "kernel"), "dense"),
    ("out_proj.bias", ("out_proj", "bias"), "vector"),
]


def _ln(hf: str, flax: str) -> list:
    return [(f"{hf}.weight", (flax, "scale"), "vector"), (f"{hf}.bias", (flax, "bias"), "vector")]


_MLP = [
    ("fc1.weight", ("mlp", "fc1", "kernel"), "dense"),
    ("fc1.bias", ("mlp", "fc1", "bias"), "vector"),
    ("fc2.weight", ("mlp", "fc2", "kernel"), "dense"),
    ("fc2.bias", ("mlp", "fc2", "bias"), "vector"),
]

ENCODER_LAYER = (
    [(f"self_attn.{s}", ("self_attn",) + p, k) for s, p, k in _ATTN]
    + _ln("self_attn_layer_norm", "self_attn_layer_norm")
    + _MLP
    + _ln("final_layer_norm", "final_layer_norm")
)
DECODER_LAYER = (
    ENCODER_LAYER
    + [(f"encoder_attn.{s}", ("encoder_attn",) + p, k) for s, p, k in _ATTN]
    + _ln("encoder_attn_layer_norm", "encoder_attn_layer_norm")
)
TOP_LEVEL = [
    ("model.encoder.conv1.weight", ("encoder", "conv1", "kernel"), "conv"),
    ("model.encoder.conv1.bias", ("encoder", "conv1", "bias"), "vector"),
    ("model.encoder.conv2.weight", ("encoder", "conv2", "kernel"), "conv"),
    ("model.encoder.conv2.bias", ("encoder", "conv2", "bias"), "vector"),
    ("model.encoder.embed_positions.weight", ("encoder", "embed_positions", "embedding"), "embed"),
    ("model.encoder.layer_norm.weight", ("encoder", "layer_norm", "scale"), "vector"),
    ("model.encoder.layer_norm.bias", ("encoder", "layer_norm", "bias"), "vector"),
    ("model.decoder.embed_tokens.weight", ("decoder", "embed_tokens", "embedding"), "embed"),
    ("model.decoder.embed_positions.weight", ("decoder", "embed_positions", "embedding"), "embed"),
    ("model.decoder.layer_norm.weight", ("decoder", "layer_norm", "scale"), "vector"),
    ("model.decoder.layer_norm.bias", ("decoder", "layer_norm", "bias"), "vector"),
]
TIED = "proj_out.weight"


def _to_flax(w: np.ndarray, kind: str) -> np.ndarray:
    if kind == "dense":
        return w.T
    if kind == "conv":
        return w.transpose(2, 1, 0)
    return w


_from_flax = _to_flax  # both transposes are their own inverse


def expected_names(config: WhisperConfig) -> list[str]:
    """Every tensor name of an HF Whisper state dict for ``config`` (tied ``proj_out`` excluded)."""
    names = [n for n, _, _ in TOP_LEVEL]
    for side, table, n in (
        ("encoder", ENCODER_LAYER, config.encoder_layers),
        ("decoder", DECODER_LAYER, config.decoder_layers),
    ):
        names += [f"model.{side}.layers.{i}.{s}" for i in range(n) for s, _, _ in table]
    return names


def expected_shapes(config: WhisperConfig) -> dict[str, tuple[int, ...]]:
    """HF name → PyTorch-layout shape for ``config`` (pure arithmetic: safe on untrusted configs)."""
    c, d = config, config.d_model
    top = {
        "model.encoder.conv1.weight": (d, c.num_mel_bins, 3),
        "model.encoder.conv2.weight": (d, d, 3),
        "model.encoder.embed_positions.weight": (c.max_source_positions, d),
        "model.decoder.embed_tokens.weight": (c.vocab_size, d),
        "model.decoder.embed_positions.weight": (c.max_target_positions, d),
    }
    shapes = {name: top.get(name, (d,)) for name, _, _ in TOP_LEVEL}
    for side, table, n, ffn in (
        ("encoder", ENCODER_LAYER, c.encoder_layers, c.encoder_ffn_dim),
        ("decoder", DECODER_LAYER, c.decoder_layers, c.decoder_ffn_dim),
    ):
        for suffix, _, kind in table:
            shape = {"fc1.weight": (ffn, d), "fc1.bias": (ffn,), "fc2.weight": (d, ffn)}.get(
                suffix, (d, d) if kind == "dense" else (d,)
            )
            shapes.update({f"model.{side}.layers.{i}.{suffix}": shape for i in range(n)})
    return shapes


def _set(tree: dict, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: Mapping, path: tuple) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def hf_to_flax(state: Mapping[str, np.ndarray], config: WhisperConfig, source: str = "state dict") -> dict:
    """HF-named PyTorch-layout arrays → Flax params (fp32 numpy, layers stacked).

    Raises ``ValueError`` naming ``source`` on missing/unexpected tensors or wrong shapes.
    """
    state = {k[len("model.") :] if k.startswith("model.model.") else k: v for k, v in state.items()}
    names = set(expected_names(config))
    missing = sorted(names - set(state))
    unexpected = sorted(set(state) - names - {TIED})
    if missing or unexpected:
        raise ValueError(
            f"{source}: does not match a Whisper of config {config}: "
            f"missing {missing[:5]}{'…' if len(missing) > 5 else ''} ({len(missing)}), "
            f"unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''} ({len(unexpected)})"
        )
    _check_shapes(state, config, source)
    f32 = lambda name: np.asarray(state[name], dtype=np.float32)
    params: dict = {}
    for name, path, kind in TOP_LEVEL:
        _set(params, path, _to_flax(f32(name), kind))
    for side, table, n in (
        ("encoder", ENCODER_LAYER, config.encoder_layers),
        ("decoder", DECODER_LAYER, config.decoder_layers),
    ):
        for suffix, path, kind in table:
            stacked = np.stack([_to_flax(f32(f"model.{side}.layers.{i}.{suffix}"), kind) for i in range(n)])
            _set(params, (side, "layers") + path, stacked)
    if TIED in state and not np.array_equal(f32(TIED), f32("model.decoder.embed_tokens.weight")):
        raise ValueError(f"{source}: proj_out.weight differs from the token embedding; Whisper ties them")
    # Every input shape was checked above, so the tree's shapes follow from the tables; that the tables build the
    # model's own tree is a test (test_model's round trip), not a trace of the model at every load (~0.3 s).
    return params


def _check_shapes(state: Mapping[str, np.ndarray], config: WhisperConfig, source: str) -> None:
    """``ValueError`` naming ``source`` and the first tensor whose shape is not the one ``config`` needs (before
    the layers are stacked, where a mismatch would only say that the arrays differ)."""
    for name, want in expected_shapes(config).items():
        if tuple(np.shape(state[name])) != want:
            raise ValueError(
                f"{source}: tensor {name} has shape {tuple(np.shape(state[name]))}, expected {want} for config {config}"
            )


def flax_to_hf(params: Mapping, config: WhisperConfig, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """Flax params → HF-named PyTorch-layout numpy arrays (tied ``proj_out`` omitted, as HF saves)."""
    cast = lambda a: np.ascontiguousarray(np.asarray(a, dtype=np.float32).astype(dtype))
    out = {name: cast(_from_flax(np.asarray(_get(params, path)), kind)) for name, path, kind in TOP_LEVEL}
    for side, table, n in (
        ("encoder", ENCODER_LAYER, config.encoder_layers),
        ("decoder", DECODER_LAYER, config.decoder_layers),
    ):
        for suffix, path, kind in table:
            stacked = np.asarray(_get(params, (side, "layers") + path))
            for i in range(n):
                out[f"model.{side}.layers.{i}.{suffix}"] = cast(_from_flax(stacked[i], kind))
    return out


# ----------------------------------------------------------------------------------------------
# Directories


def hf_config_dict(config: WhisperConfig, specials: Any = None, **extra) -> dict:
    """A transformers ``config.json`` for ``config``."""
    sp = specials or SpecialTokens.from_vocab_size(config.vocab_size)
    d = {
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        **{k: v for k, v in config.to_dict().items()},
        "activation_function": "gelu",
        "scale_embedding": False,
        "tie_word_embeddings": True,
        "max_length": config.max_target_positions,  # whisper.cpp's h5 converter reads this as n_text_ctx
        "pad_token_id": sp.eot,
        "bos_token_id": sp.eot,
        "eos_token_id": sp.eot,
        "decoder_start_token_id": sp.sot,
        "use_cache": True,
        "torch_dtype": "float32",
    }
    d.update(extra)
    return d


def read_hf_dir(path: str | os.PathLike) -> tuple[WhisperConfig, dict[str, np.ndarray]]:
    """Config and HF-named state dict of a transformers directory (safetensors, sharded safetensors,
    or ``pytorch_model.bin`` loaded with ``weights_only=True``)."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ValueError(f"{path}: not a transformers model directory (no config.json)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_file}: invalid JSON ({e})") from None
    if cfg.get("model_type") not in (None, "whisper"):
        raise ValueError(f"{cfg_file}: model_type is {cfg.get('model_type')!r}, expected 'whisper'")
    config = WhisperConfig.from_dict(cfg)
    state: dict[str, np.ndarray] = {}
    index = path / "model.safetensors.index.json"
    if (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    elif index.is_file():
        files = sorted({path / f for f in json.loads(index.read_text())["weight_map"].values()})
    elif (path / "pytorch_model.bin").is_file():
        files = []
        state = _read_torch(path / "pytorch_model.bin")
    else:
        raise ValueError(f"{path}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")
    for f in files:
        state.update(_read_safetensors(f))
    return config, state


def _read_safetensors(file: Path) -> dict[str, np.ndarray]:
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        if "bfloat16" in str(e) or "BF16" in str(e):
            return _read_safetensors_torch(file)
        raise ValueError(f"{file}: unreadable safetensors file ({e})") from None


def _read_safetensors_torch(file: Path) -> dict[str, np.ndarray]:
    import torch
    from safetensors.torch import load_file

    return {k: v.to(torch.float32).numpy() for k, v in load_file(str(file)).items()}


def _read_torch(file: Path) -> dict[str, np.ndarray]:
    import torch

    try:
        state = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt/untrusted pickles
        raise ValueError(f"{file}: unreadable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    return {k: v.to(torch.float32).numpy() for k, v in state.items()}


def hf_generation_config(
    config: WhisperConfig, suppress_tokens: Any, begin_suppress_tokens: Any, alignment_heads: Any = ()
) -> dict:
    """A transformers ``generation_config.json`` for Whisper: token ids, suppress lists,
    timestamp settings, ``lang_to_id`` / ``task_to_id`` for multilingual models, and ``alignment_heads``
    when known (heads outside ``config`` are dropped)."""
    sp = SpecialTokens.from_vocab_size(config.vocab_size)
    heads = [
        [int(layer), int(head)]
        for layer, head in alignment_heads
        if 0 <= layer < config.decoder_layers and 0 <= head < config.decoder_attention_heads
    ]
    gen = {
        "decoder_start_token_id": sp.sot,
        "bos_token_id": sp.eot,
        "eos_token_id": sp.eot,
        "pad_token_id": sp.eot,
        "suppress_tokens": [int(t) for t in suppress_tokens],
        "begin_suppress_tokens": [int(t) for t in begin_suppress_tokens],
        "is_multilingual": sp.is_multilingual,
        "no_timestamps_token_id": sp.no_timestamps,
        "prev_sot_token_id": sp.startofprev,
        "max_initial_timestamp_index": 50,
        "max_length": config.max_target_positions,
        "return_timestamps": False,
    }
    if heads:
        gen["alignment_heads"] = heads
    if sp.is_multilingual:
        gen["lang_to_id"] = {f"<|{code}|>": i for code, i in sp.lang_to_id.items()}
        gen["task_to_id"] = sp.task_to_id
        # As openai/whisper-* ship it: without it, transformers 5 leaves <|transcribe|> out of the prompt when
        # it detects the language itself, and whisper-base then loops (seen by export verification).
        gen["forced_decoder_ids"] = [[1, None], [2, sp.transcribe]]
    return gen


def write_hf_dir(
    path: str | os.PathLike,
    config: WhisperConfig,
    params: Mapping,
    dtype: Any = np.float32,
    generation_config: Mapping | None = None,
    tokenizer: Any = None,
) -> Path:
    """Write a transformers directory: ``model.safetensors`` (in ``dtype``), ``config.json``, and with a
    tokenizer also ``generation_config.json`` (computed defaults unless given), the tokenizer files (plus the
    legacy ``vocab.json``/``merges.txt``/``added_tokens.json``/``special_tokens_map.json``) and the feature
    extractor (``preprocessor_config.json`` and transformers 5's ``processor_config.json``). Each file is
    written to a temp name and renamed into place."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = flax_to_hf(params, config, dtype)
    # Serialised in memory and written through our file object: safetensors' own file writer drops write
    # errors (a full disk leaves a truncated file and no error), and replaces the temp file's permissions.
    data = safetensors_bytes(state, metadata={"format": "pt"})
    with atomic_write(path / "model.safetensors", "wb") as f:
        f.write(data)
    del data
    if generation_config is None and tokenizer is not None:
        generation_config = hf_generation_config(config, *suppress_tokens(tokenizer))
    lists = {
        k: list(generation_config[k])
        for k in ("suppress_tokens", "begin_suppress_tokens")
        if generation_config and k in generation_config
    }
    torch_dtype = "float16" if np.dtype(dtype) == np.float16 else "float32"
    with atomic_write(path / "config.json", "w") as f:
        json.dump(hf_config_dict(config, torch_dtype=torch_dtype, **lists), f, indent=2)
    if generation_config is not None:
        with atomic_write(path / "generation_config.json", "w") as f:
            json.dump(dict(generation_config), f, indent=2)
    if tokenizer is not None:
        write_processor_files(path, config, tokenizer)
    return path


def write_processor_files(path: Path, config: WhisperConfig, tokenizer: Any) -> None:
    """The tokenizer files and the feature extractor's configs (also what a faster-whisper directory needs)."""
    save_tokenizer(tokenizer, path)  # also the legacy files other tools read
    seconds = config.input_seconds  # 15 for a 750-position student: transformers then pads to 15 s, not 30
    if seconds != int(seconds):
        raise ValueError(
            f"max_source_positions {config.max_source_positions}: transformers' feature extractor needs a whole "
            "number of seconds (a multiple of 50 positions)"
        )
    from transformers import WhisperFeatureExtractor  # here: it imports torch, ~1 s of every command's start

    extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins, chunk_length=int(seconds))
    files = {
        "preprocessor_config.json": extractor.to_dict(),  # what transformers 4.x and faster-whisper read
        "processor_config.json": {
            "feature_extractor": extractor.to_dict(),  # what v5's save_pretrained writes
            "processor_class": "WhisperProcessor",
        },
    }
    for name, content in files.items():
        with atomic_write(path / name, "w") as f:
            json.dump(content, f, indent=2, sort_keys=True)
