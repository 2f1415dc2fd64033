"""Preflight: the checks of one TPU VM worker (Python, packages, devices, disk, bucket, resume).

It imports no JAX: the checks that need JAX run it in child processes, so this process never holds the TPU."""

from distil_whisper_jax.stages.preflight.preflight import PreflightConfig, run

__all__ = ["PreflightConfig", "run"]
