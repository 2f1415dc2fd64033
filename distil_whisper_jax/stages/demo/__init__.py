"""The demo: label → distil → evaluate → export on what ships with the package, offline.

``demo`` (English, the default job) and ``multilingual`` (``--multilingual``) share ``common``."""

from distil_whisper_jax.stages.demo.demo import DemoConfig, run

__all__ = ["DemoConfig", "run"]
