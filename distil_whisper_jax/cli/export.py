"""``distil-whisper-export``: parse flags into ``ExportConfig`` and run the export."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from distil_whisper_jax.infra import config
from distil_whisper_jax.infra.files import OutputWriteError, setup_logging
from distil_whisper_jax.stages.export import export


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 exported (and verified), 1 a verification failed or a write failed, 2 bad input."""
    cfg = config.parse(
        export.ExportConfig,
        argv,
        prog="python -m distil_whisper_jax.export",
        description=export.__doc__.split("\n\n")[0],
    )
    setup_logging()
    try:
        return export.run(cfg)
    except OutputWriteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
