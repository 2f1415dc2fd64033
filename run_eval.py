#!/usr/bin/env python
"""Evaluate a Whisper model on speech datasets: WER per dataset and overall (``distil_whisper_jax.stages.evaluate``)."""

import sys

from distil_whisper_jax.cli.eval import main

if __name__ == "__main__":
    sys.exit(main())
