"""Pseudo-labelling: transcribe a speech corpus with a teacher and keep the rows under a WER threshold.

``config`` (the flags) → ``units`` (what the teacher labels) → ``pseudo_label`` (the run) → ``output`` (Parquet
shards and bookkeeping) → ``report`` (counts)."""

from distil_whisper_jax.stages.label.config import PseudoLabelConfig
from distil_whisper_jax.stages.label.pseudo_label import run

__all__ = ["PseudoLabelConfig", "run"]
