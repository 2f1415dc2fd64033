"""``python -m distil_whisper_jax``: the demo (``cli/demo.py``), label → distil → eval → export, offline."""

import sys

if __name__ == "__main__":
    from distil_whisper_jax.cli.demo import main

    sys.exit(main())
