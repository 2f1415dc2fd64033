"""``distil-whisper-create-student``: slice a teacher into a student (flags: ``--help``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from distil_whisper_jax.infra import config
from distil_whisper_jax.infra.files import setup_logging
from distil_whisper_jax.stages.student.create_student import CreateStudentConfig, run


def main(argv: Sequence[str] | None = None) -> int:
    cfg = config.parse(
        CreateStudentConfig,
        argv,
        prog="distil-whisper-create-student",
        description="Create a student from a teacher: keep the encoder, copy maximally spaced decoder layers.",
    )
    setup_logging()
    try:
        run(cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
