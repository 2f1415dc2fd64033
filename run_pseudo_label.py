#!/usr/bin/env python
"""Pseudo-label a speech dataset with a teacher Whisper (see distil_whisper_jax/stages/label/pseudo_label.py)."""

import sys

from distil_whisper_jax.cli.pseudo_label import main

if __name__ == "__main__":
    sys.exit(main())
