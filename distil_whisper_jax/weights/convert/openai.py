"""openai-whisper checkpoints (``tiny.en.pt``, distil-whisper's ``original-model.bin``) ⇄ HF names.

A checkpoint is ``{"dims": {...10 ints...}, "model_state_dict": {...}}`` saved with ``torch.save``;
we load it with ``weights_only=True`` (no arbitrary code from untrusted pickles). Names differ from
HF's only by renaming (no transposes).
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from distil_whisper_jax.core.model import WhisperConfig
from distil_whisper_jax.infra.files import atomic_write

# openai prefix/suffix → HF, applied in order (first match wins per name component).
_TOP = {
    "encoder.positional_embedding": "model.encoder.embed_positions.weight",
    "decoder.positional_embedding": "model.decoder.embed_positions.weight",
    "decoder.token_embedding.weight": "model.decoder.embed_tokens.weight",
    "encoder.ln_post.weight": "model.encoder.layer_norm.weight",
    "encoder.ln_post.bias": "model.encoder.layer_norm.bias",
    "decoder.ln.weight": "model.decoder.layer_norm.weight",
    "decoder.ln.bias": "model.decoder.layer_norm.bias",
    **{f"encoder.{c}.{p}": f"model.encoder.{c}.{p}" for c in ("conv1", "conv2") for p in ("weight", "bias")},
}
_LAYER = {
    "attn.query": "self_attn.q_proj",
    "attn.key": "self_attn.k_proj",
    "attn.value": "self_attn.v_proj",
    "attn.out": "self_attn.out_proj",
    "attn_ln": "self_attn_layer_norm",
    "cross_attn.query": "encoder_attn.q_proj",
    "cross_attn.key": "encoder_attn.k_proj",
    "cross_attn.value": "encoder_attn.v_proj",
    "cross_attn.out": "encoder_attn.out_proj",
    "cross_attn_ln": "encoder_attn_layer_norm",
    "mlp.0": "fc1",
    "mlp.2": "fc2",
    "mlp_ln": "final_layer_norm",
}
_LAYER_RE = re.compile(r"^(encoder|decoder)\.blocks\.(\d+)\.(.+)\.(weight|bias)$")
_HF_LAYER_RE = re.compile(r"^model\.(encoder|decoder)\.layers\.(\d+)\.(.+)\.(weight|bias)$")
DIMS = (
    "n_mels",
    "n_vocab",
    "n_audio_ctx",
    "n_audio_state",
    "n_audio_head",
    "n_audio_layer",
    "n_text_ctx",
    "n_text_state",
    "n_text_head",
    "n_text_layer",
)


def openai_to_hf_name(name: str) -> str | None:
    if name in _TOP:
        return _TOP[name]
    m = _LAYER_RE.match(name)
    if m and m.group(3) in _LAYER:
        return f"model.{m.group(1)}.layers.{m.group(2)}.{_LAYER[m.group(3)]}.{m.group(4)}"
    return None


def hf_to_openai_name(name: str) -> str:
    inverse_top = {v: k for k, v in _TOP.items()}
    if name in inverse_top:
        return inverse_top[name]
    m = _HF_LAYER_RE.match(name)
    inverse_layer = {v: k for k, v in _LAYER.items()}
    if not m or m.group(3) not in inverse_layer:
        raise ValueError(f"no openai-whisper name for {name}")
    return f"{m.group(1)}.blocks.{m.group(2)}.{inverse_layer[m.group(3)]}.{m.group(4)}"


def config_from_dims(dims: Mapping[str, int], source: str = "dims") -> WhisperConfig:
    missing = [k for k in DIMS if k not in dims]
    if missing:
        raise ValueError(f"{source}: openai-whisper dims lack {missing}")
    if dims["n_audio_state"] != dims["n_text_state"]:
        raise ValueError(f"{source}: n_audio_state {dims['n_audio_state']} != n_text_state {dims['n_text_state']}")
    d = int(dims["n_audio_state"])
    return WhisperConfig(
        vocab_size=int(dims["n_vocab"]),
        num_mel_bins=int(dims["n_mels"]),
        d_model=d,
        encoder_layers=int(dims["n_audio_layer"]),
        decoder_layers=int(dims["n_text_layer"]),
        encoder_attention_heads=int(dims["n_audio_head"]),
        decoder_attention_heads=int(dims["n_text_head"]),
        encoder_ffn_dim=4 * d,
        decoder_ffn_dim=4 * d,
        max_source_positions=int(dims["n_audio_ctx"]),
        max_target_positions=int(dims["n_text_ctx"]),
    )


def dims_from_config(config: WhisperConfig) -> dict[str, int]:
    """openai-whisper ``dims``; raises if the architecture can't be expressed there."""
    if config.encoder_ffn_dim != 4 * config.d_model or config.decoder_ffn_dim != 4 * config.d_model:
        raise ValueError(
            f"openai-whisper requires ffn_dim == 4·d_model ({4 * config.d_model}), got "
            f"encoder {config.encoder_ffn_dim} / decoder {config.decoder_ffn_dim}"
        )
    c = config
    return dict(
        n_mels=c.num_mel_bins,
        n_vocab=c.vocab_size,
        n_audio_ctx=c.max_source_positions,
        n_audio_state=c.d_model,
        n_audio_head=c.encoder_attention_heads,
        n_audio_layer=c.encoder_layers,
        n_text_ctx=c.max_target_positions,
        n_text_state=c.d_model,
        n_text_head=c.decoder_attention_heads,
        n_text_layer=c.decoder_layers,
    )


def read_openai_checkpoint(path: str | os.PathLike) -> tuple[WhisperConfig, dict[str, np.ndarray]]:
    """Config and HF-named fp32 weights of an openai-whisper checkpoint (``weights_only=True``)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: openai-whisper checkpoint not found")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file, expected an openai-whisper checkpoint")
    _check_zip(path)
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt zips/pickles raise many exception types
        raise ValueError(f"{path}: not a readable openai-whisper checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        raise ValueError(f"{path}: expected a dict with 'dims' and 'model_state_dict' (an openai-whisper checkpoint)")
    dims = ckpt["dims"]
    if not isinstance(dims, dict) or not all(isinstance(v, int) and 0 < v <= 1 << 20 for v in dims.values()):
        raise ValueError(f"{path}: 'dims' must map names to positive ints, got {dims!r:.200}")
    config = config_from_dims(dims, str(path))
    state = {}
    for name, tensor in ckpt["model_state_dict"].items():
        hf = openai_to_hf_name(name)
        if hf is None:
            raise ValueError(f"{path}: unexpected tensor {name!r} in an openai-whisper checkpoint")
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{path}: {name} is not a tensor")
        state[hf] = tensor.to(torch.float32).numpy()
    return config, state


def _check_zip(path: Path) -> None:
    """torch.load does not check the zip CRCs, so a bit-flipped checkpoint would load silently wrong
    weights: verify every member's CRC first, and that nothing is compressed (torch stores members raw,
    so sizes are bounded by the file size: no decompression bombs)."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as zf:
            odd = next((i for i in zf.infolist() if i.compress_type != zipfile.ZIP_STORED or i.file_size > size), None)
            bad = zf.testzip() if odd is None else None
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        OSError,
        EOFError,
        RuntimeError,
        NotImplementedError,
        ValueError,
    ) as e:  # ValueError includes undecodable member names
        raise ValueError(
            f"{path}: not a readable openai-whisper checkpoint (not an intact zip-format PyTorch "
            f"file: {type(e).__name__}: {e})"
        ) from None
    if odd is not None:
        raise ValueError(
            f"{path}: corrupt openai-whisper checkpoint (member {odd.filename!r} is compressed or larger than the file)"
        )
    if bad is not None:
        raise ValueError(f"{path}: corrupt openai-whisper checkpoint (CRC mismatch in {bad!r})")


def write_openai_checkpoint(
    path: str | os.PathLike, config: WhisperConfig, hf_state: Mapping[str, np.ndarray], dtype=np.float16
) -> Path:
    """Write ``{"dims", "model_state_dict"}`` (fp16 by default, as openai ships) atomically."""
    import torch

    dims = dims_from_config(config)
    state = {
        hf_to_openai_name(k): torch.from_numpy(np.ascontiguousarray(np.asarray(v).astype(dtype)))
        for k, v in hf_state.items()
        if k != "proj_out.weight"
    }
    # Through a Python file object: writing to a path, torch reports a full disk as "unexpected pos".
    with atomic_write(path, "wb") as f:
        torch.save({"dims": dims, "model_state_dict": state}, f)
    return Path(path)


def is_openai_checkpoint(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_file() and p.suffix in (".pt", ".bin", ".pth")
