"""``distil-whisper-distill`` / ``run_distillation.py``: distil a teacher into a student (flags: ``--help``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from distil_whisper_jax.infra import config
from distil_whisper_jax.infra.files import setup_logging
from distil_whisper_jax.stages.distill.config import DistillConfig
from distil_whisper_jax.stages.distill.distill import run


def main(argv: Sequence[str] | None = None) -> int:
    cfg = config.parse(
        DistillConfig,
        argv,
        prog="run_distillation.py",
        description="Distil a Whisper teacher into a student: train it on pseudo-labels and the teacher's outputs.",
    )
    setup_logging(timestamps=True)
    try:
        return run(cfg)
    except ValueError as e:  # bad input: flags, datasets, models, checkpoints (CheckpointError is a ValueError)
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
