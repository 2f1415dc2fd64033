#!/usr/bin/env python
"""Distil a Whisper teacher into a smaller student (flags: ``python run_distillation.py --help``).

Thin entry point, as in the original distil-whisper; the run lives in ``distil_whisper_jax.stages.distill.distill``.
"""

import sys

from distil_whisper_jax.cli.distill import main

if __name__ == "__main__":
    sys.exit(main())
