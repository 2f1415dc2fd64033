"""Training batches of a distillation run: pseudo-label arrays plus log-mel features, or, with a frozen
encoder shared with the teacher, the encoder outputs (cached per example, so later epochs skip the 30 s
encoder pass and audio decoding)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from distil_whisper_jax.core.parallel import data_mesh, pad_batch
from distil_whisper_jax.core.train import encoder_outputs
from distil_whisper_jax.data import sources as data
from distil_whisper_jax.data import stream


class EncoderCache:
    """Frozen-encoder outputs per example key, first come first kept, up to ``max_bytes``."""

    def __init__(self, max_bytes: float):
        self.max_bytes, self.bytes, self.store = max_bytes, 0, {}
        self.hits = self.misses = 0

    def get(self, key) -> np.ndarray | None:
        out = self.store.get(key)
        self.hits += out is not None
        self.misses += out is None
        return out

    def put(self, key, value: np.ndarray) -> None:
        if key not in self.store and self.bytes + value.nbytes <= self.max_bytes:
            self.store[key] = value
            self.bytes += value.nbytes

    @property
    def hit_rate(self) -> float:
        return self.hits / max(self.hits + self.misses, 1)


@dataclasses.dataclass
class Batcher:
    """Builds the train step's batch (``labels``, ``decoder_input_ids``, and ``input_features`` or
    ``encoder_outputs``) for this process's share of a global batch."""

    sources: Sequence[data.Source]
    opts: stream.DataOptions
    specials: Any
    label_width: int  # decoder positions: --max_label_length - 1
    num_mel_bins: int
    n_frames: int  # the teacher's input length in log-mel frames
    cache: EncoderCache | None = None
    teacher_config: Any = None  # with a cache: the shared encoder's config, params and compute dtype
    teacher_params: Callable[[], Any] | None = None
    dtype: Any = None
    devices: list | None = None
    decoded: int = 0  # clips whose audio this process decoded (only its own share of each batch)

    def __call__(self, examples: Sequence[stream.Example]) -> dict:
        batch = stream.collate_labels(examples, self.label_width, self.specials)
        if self.cache is None:
            batch["input_features"] = stream.features(
                examples, self.sources, self.opts, self.num_mel_bins, self.n_frames
            )
            self.decoded += len(examples)
        else:
            batch["encoder_outputs"] = self._encoded(examples)
        return batch

    def _encoded(self, examples: Sequence[stream.Example]) -> np.ndarray:
        outs = [self.cache.get(e.key) for e in examples]
        missing = [i for i, o in enumerate(outs) if o is None]
        if missing:
            feats = stream.features(
                [examples[i] for i in missing], self.sources, self.opts, self.num_mel_bins, self.n_frames
            )
            self.decoded += len(missing)
            feats, n = pad_batch(feats, len(examples))  # one static shape → one compile
            mesh = data_mesh(self.devices)
            enc = encoder_outputs(self.teacher_config, self.teacher_params(), feats, self.dtype, mesh)
            enc = np.asarray(enc)[:n].astype(np.float32)
            for j, i in enumerate(missing):
                outs[i] = enc[j]
                self.cache.put(examples[i].key, enc[j])
        return np.stack(outs)
