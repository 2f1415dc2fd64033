"""``python -m distil_whisper_jax.export``: export a checkpoint (the same command as ``distil-whisper-export``)."""

import sys

if __name__ == "__main__":
    from distil_whisper_jax.cli.export import main

    sys.exit(main())
