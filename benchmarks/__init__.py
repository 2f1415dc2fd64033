"""Benchmarks of distil-whisper-jax; run each as ``python -m benchmarks.<name>`` from the repository root."""
