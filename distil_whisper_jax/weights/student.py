"""Student initialisation: a teacher with fewer layers, each copied from a maximally spaced teacher layer.

Distil-Whisper keeps the teacher's encoder whole (and frozen during training) and only a few decoder
layers: 2 layers → the teacher's first and last. Because our layers are stored stacked (leading layer
axis), a student is literally a slice of the teacher's parameter tree.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distil_whisper_jax.core.model import WhisperConfig
from distil_whisper_jax.infra import storage
from distil_whisper_jax.infra.files import atomic_write, is_hub_id
from distil_whisper_jax.weights.convert.hf import hf_generation_config
from distil_whisper_jax.weights.loading import DEFAULT_MODEL, Pretrained, default_model_dir

# A student's provenance file, next to its weights: written by create_student, updated by distillation,
# read by distillation (which teacher) and by the exporter's model card.
DISTIL_INFO = "distil_info.json"
# The token ids of a student's training labels, most frequent first (with their counts): written by distillation,
# read for a speculative-decoding draft shortlist (``--assistant_vocab_size``).
DRAFT_VOCAB = "draft_vocab.json"


def write_draft_vocab(directory: str | os.PathLike, counts: Mapping[int, int]) -> Path:
    """``directory/draft_vocab.json``: ``{"ids": [...], "counts": [...]}``, most frequent first (ties by id)."""
    ranked = sorted(counts, key=lambda t: (-counts[t], t))
    path = Path(directory) / DRAFT_VOCAB
    with atomic_write(path, "w") as f:
        json.dump({"ids": [int(t) for t in ranked], "counts": [int(counts[t]) for t in ranked]}, f)
    return path


def read_draft_vocab(directory: str | os.PathLike | None, size: int, flag: str = "--assistant_vocab_size") -> list[int]:
    """The ``size`` most frequent label token ids of the student in ``directory``; ``ValueError`` naming
    ``flag`` when it has no ``draft_vocab.json`` (a student distilled before it was written, or not by us)."""
    path = Path(directory) / DRAFT_VOCAB if directory is not None else None
    if path is None or not path.is_file():
        raise ValueError(
            f"{flag} {size}: the assistant has no {DRAFT_VOCAB} (distillation writes it next to the student's "
            f"weights); looked in {directory}"
        )
    return json.loads(path.read_text())["ids"][:size]


def layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layer index for each student layer: ``floor(linspace(0, T-1, S))`` with the last forced
    to ``T-1`` (the original's maps: 32→2 gives 0,31; 32→4 gives 0,10,20,31; one layer keeps the last)."""
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(f"student layers must be between 1 and the teacher's {teacher_layers}, got {student_layers}")
    idx = np.floor(np.linspace(0, teacher_layers - 1, student_layers)).astype(int).tolist()
    idx[-1] = teacher_layers - 1
    return idx


def _take_layers(tree: Mapping, index: Sequence[int]) -> dict:
    """Every leaf of a stacked-layer subtree, indexed along its leading (layer) axis."""
    return {
        k: _take_layers(v, index) if isinstance(v, Mapping) else np.asarray(v)[np.asarray(index)]
        for k, v in tree.items()
    }


def _copy_tree(tree: Mapping) -> dict:
    """A deep numpy copy, so the student never aliases the teacher's arrays."""
    return {k: _copy_tree(v) if isinstance(v, Mapping) else np.array(v, copy=True) for k, v in tree.items()}


def make_student(
    teacher_config: WhisperConfig,
    teacher_params: Mapping,
    decoder_layers: int,
    encoder_layers: int | None = None,
    max_source_positions: int | None = None,
) -> tuple[WhisperConfig, dict, dict]:
    """Slice a teacher into a student.

    Returns ``(config, params, info)``; ``info`` holds the layer maps (``decoder_layer_map``,
    ``encoder_layer_map`` or None when the encoder is kept whole). Every non-layer parameter (conv
    stem, embeddings, final layer norms; the output projection is tied to the token embedding) is
    copied. ``max_source_positions`` < the teacher's keeps the first rows of the encoder position
    table, for students trained on shorter windows (750 → 15 s).
    """
    dec_map = layer_map(teacher_config.decoder_layers, decoder_layers)
    enc_map = None
    if encoder_layers is not None and encoder_layers != teacher_config.encoder_layers:
        enc_map = layer_map(teacher_config.encoder_layers, encoder_layers)
    changes: dict[str, Any] = {"decoder_layers": decoder_layers}
    if enc_map is not None:
        changes["encoder_layers"] = encoder_layers
    if max_source_positions is not None and max_source_positions != teacher_config.max_source_positions:
        if not 0 < max_source_positions <= teacher_config.max_source_positions or max_source_positions % 50:
            raise ValueError(
                f"max_source_positions must be a multiple of 50 (whole seconds of audio: 750 = 15 s) in "
                f"50..{teacher_config.max_source_positions}, got {max_source_positions}"
            )
        changes["max_source_positions"] = max_source_positions
    config = teacher_config.replace(**changes)

    params = {"encoder": dict(teacher_params["encoder"]), "decoder": dict(teacher_params["decoder"])}
    params["decoder"]["layers"] = _take_layers(teacher_params["decoder"]["layers"], dec_map)
    if enc_map is not None:
        params["encoder"]["layers"] = _take_layers(teacher_params["encoder"]["layers"], enc_map)
    if "max_source_positions" in changes:
        pos = dict(params["encoder"]["embed_positions"])
        pos["embedding"] = np.asarray(pos["embedding"])[:max_source_positions]
        params["encoder"]["embed_positions"] = pos
    return config, _copy_tree(params), {"decoder_layer_map": dec_map, "encoder_layer_map": enc_map}


def student_generation_config(
    teacher: Pretrained, student_config: WhisperConfig, decoder_layer_map: Sequence[int]
) -> dict[str, Any]:
    """The teacher's generation defaults, with alignment heads renumbered to the student's layers
    (heads on teacher layers the student does not keep are dropped)."""
    gen = teacher.generation_defaults
    new_index = {t: s for s, t in enumerate(decoder_layer_map)}
    heads = [(new_index[layer], head) for layer, head in gen.alignment_heads if layer in new_index]
    return hf_generation_config(student_config, gen.suppress_tokens, gen.begin_suppress_tokens, heads)


def params_digest(params: Mapping) -> str:
    """SHA-256 of a parameter tree as fp32 values: the same weights give the same digest whichever format
    they were loaded from (every loader yields the same fp32 tree), so it identifies a teacher portably.

    Each leaf contributes its path, shape and little-endian fp32 bytes, in sorted path order."""
    h = hashlib.sha256()

    def walk(tree: Mapping, prefix: str) -> None:
        for key in sorted(tree):
            value, path = tree[key], f"{prefix}/{key}"
            if isinstance(value, Mapping):
                walk(value, path)
                continue
            a = np.ascontiguousarray(np.asarray(value, dtype="<f4"))
            h.update(f"{path}:{a.shape};".encode())
            h.update(a.tobytes())

    walk(params, "")
    return h.hexdigest()


def teacher_reference(requested: str | os.PathLike | None, source: str) -> str:
    """How to find this teacher again on another machine: the bundled name for the bundled tiny.en, the
    hub id or URL it was loaded from (not the local copy of a fetched URL), else the absolute path."""
    if requested is None or not storage.is_url(source) and Path(source).absolute() == _bundled_dir():
        return DEFAULT_MODEL
    if is_hub_id(requested) or storage.is_url(requested):
        return str(requested)
    return str(Path(source).absolute())


def _bundled_dir() -> Path | None:
    try:
        return default_model_dir().absolute()
    except ValueError:  # the bundled-model package is not installed
        return None


def resolve_teacher_reference(reference: str) -> str | None:
    """The ``load_pretrained`` argument for a recorded teacher reference (None: the bundled tiny.en)."""
    return None if reference == DEFAULT_MODEL else reference
