"""``run_pseudo_label.py`` / ``distil-whisper-pseudo-label``: parse flags into a ``PseudoLabelConfig`` and label.

Exit status: 0 done, 1 failed (a bad input under ``--strict``, or an output that could not be written: the blocks
already written stay done and a rerun continues), 2 configuration error (nothing labelled).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from distil_whisper_jax.data.sources import DataConfigError
from distil_whisper_jax.infra import config
from distil_whisper_jax.infra.files import OutputWriteError, setup_logging
from distil_whisper_jax.stages.label import pseudo_label


def main(argv: Sequence[str] | None = None) -> int:
    cfg = config.parse(
        pseudo_label.PseudoLabelConfig,
        argv,
        prog="run_pseudo_label.py",
        description=(pseudo_label.__doc__ or "").split("\n\n")[0],
    )
    setup_logging(timestamps=True)
    try:
        return pseudo_label.run(cfg)
    except (DataConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (pseudo_label.PseudoLabelError, OutputWriteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
