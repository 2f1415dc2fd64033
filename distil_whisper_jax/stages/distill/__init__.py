"""Distillation: train a student on the teacher's pseudo-labels (KL + CE), with exact resume.

``config`` (the flags) → ``setup`` (output dir, teacher, student, state) → ``distill`` (the train loop, read top
to bottom) with ``batch`` (training batches), ``heldout`` (evaluation during training) and ``log`` (metrics)."""

from distil_whisper_jax.stages.distill.config import DistillConfig
from distil_whisper_jax.stages.distill.distill import run

__all__ = ["DistillConfig", "run"]
