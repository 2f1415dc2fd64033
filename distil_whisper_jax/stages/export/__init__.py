"""Export: transformers, openai-whisper, whisper.cpp and CTranslate2 files, each verified in its own runtime.

``export`` (the flags and the run) → ``card`` (model card) and ``verify`` → ``runtimes`` (the real runtimes, in
a subprocess)."""

from distil_whisper_jax.stages.export.export import ExportConfig, run

__all__ = ["ExportConfig", "run"]
