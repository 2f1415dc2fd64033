"""Evaluation: WER of a model (optionally with a speculative assistant) on speech datasets.

``evaluation`` (the flags and the run) → ``report`` (scores, per-process parts, files)."""

from distil_whisper_jax.stages.evaluate.evaluation import EvalConfig, run

__all__ = ["EvalConfig", "run"]
