"""``python -m distil_whisper_jax.preflight``: check a TPU VM worker (``tpu_scripts/preflight.sh`` runs it)."""

import sys

if __name__ == "__main__":
    from distil_whisper_jax.cli.preflight import main

    sys.exit(main())
