"""Command-line layer: one module per command (``cli/<command>.py``), each with ``main(argv=None) -> int``.

A CLI module only parses flags into the command's run config (``config.parse``), sets up logging, calls the
library's ``run(cfg)`` and turns expected errors into an exit status with a one-line message. Nothing in the
library imports this package; only the thin entry points (``python -m distil_whisper_jax``, ``.transcribe``,
``.export``, ``.preflight``) call a ``main()`` of it.
"""
