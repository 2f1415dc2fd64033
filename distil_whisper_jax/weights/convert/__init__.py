"""Whisper checkpoint formats: detect them and read their weights into our Flax tree.

Each submodule knows one format (``hf``: 🤗 transformers directories, ``ct2``: CTranslate2, ``openai``:
openai-whisper ``.pt``/``.bin``, ``ggml``: whisper.cpp). This package knows models and file formats only;
training checkpoints, the hub and the bundled default model are the business of ``models.load_pretrained``,
which sits above it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from distil_whisper_jax.core.model import WhisperConfig
from distil_whisper_jax.weights.convert import ct2, ggml, hf, openai

FILE_FORMATS = ("hf", "ct2", "openai", "ggml")


def detect_file_format(path: str | os.PathLike) -> str | None:
    """'hf', 'ct2', 'openai' or 'ggml' for an existing directory or file in one of these formats, else None."""
    p = Path(path)
    if p.is_dir():
        if ct2.is_ct2_dir(p):
            return "ct2"
        if (p / "config.json").is_file():
            return "hf"
        return None
    if p.is_file():
        if ggml.is_ggml_file(p):
            return "ggml"
        if openai.is_openai_checkpoint(p):
            return "openai"
    return None


def has_tokenizer_files(path: Path) -> bool:
    return any((path / f).is_file() for f in ("tokenizer.json", "vocab.json"))


def read_weights(path: str | os.PathLike, fmt: str) -> tuple[WhisperConfig, dict, Path | None]:
    """(config, fp32 numpy Flax params, tokenizer directory or None) of a checkpoint in ``fmt``.

    Every weight is checked to be finite: a NaN or inf in any tensor raises ``ValueError`` naming the file
    and the tensor (such a checkpoint would load and transcribe garbage)."""
    path = Path(path)
    if fmt == "ct2":
        config, state = ct2.read_ct2_model(path / "model.bin")
        tok_dir: Path | None = path
    elif fmt == "hf":
        config, state = hf.read_hf_dir(path)
        tok_dir = path if has_tokenizer_files(path) else None
    elif fmt == "ggml":
        config, state = ggml.read_ggml_model(path)
        tok_dir = None
    elif fmt == "openai":
        config, state = openai.read_openai_checkpoint(path)
        tok_dir = None
    else:
        raise ValueError(f"{path}: unknown checkpoint format {fmt!r}; expected one of {FILE_FORMATS}")
    check_finite(state, str(path))
    return config, hf.hf_to_flax(state, config, source=str(path)), tok_dir


def check_finite(state: Mapping[str, Any], source: str) -> None:
    """Raise ``ValueError`` naming ``source`` and the first tensor (by name) that holds a NaN or an
    infinity; ``state`` maps tensor names to arrays (an HF-named state dict or flattened Flax paths)."""
    for name, value in state.items():
        arr = np.asarray(value)
        if arr.dtype.kind != "f":
            arr = arr.astype(np.float32) if arr.dtype.name == "bfloat16" else arr
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            bad = int(arr.size - np.isfinite(arr).sum())
            raise ValueError(f"{source}: tensor {name} holds {bad} NaN/inf value(s); refusing a corrupt checkpoint")


def tree_equal(a: Any, b: Any, atol: float = 0.0) -> bool:
    """True when two param trees have the same structure and values (within ``atol``)."""
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    if [p for p, _ in la] != [p for p, _ in lb]:
        return False
    return all(np.shape(x) == np.shape(y) and np.allclose(x, y, rtol=0, atol=atol) for (_, x), (_, y) in zip(la, lb))
