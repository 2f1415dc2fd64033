"""``distil-whisper-transcribe``: parse flags into ``TranscribeConfig`` and transcribe."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from distil_whisper_jax.decode import transcribe
from distil_whisper_jax.infra import config
from distil_whisper_jax.infra.files import setup_logging


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 all transcribed, 1 some input unreadable or the JSON not written, 2 bad input."""
    cfg = config.parse(
        transcribe.TranscribeConfig,
        argv,
        prog="python -m distil_whisper_jax.transcribe",
        description=transcribe.__doc__.split("\n\n")[0],
        positional=("inputs",),
    )
    setup_logging()
    try:
        return transcribe.run(cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
