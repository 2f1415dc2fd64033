"""``python -m distil_whisper_jax.transcribe``: the same command as ``distil-whisper-transcribe``."""

import sys

if __name__ == "__main__":
    from distil_whisper_jax.cli.transcribe import main

    sys.exit(main())
