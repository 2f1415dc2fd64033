"""``run_eval.py`` / ``distil-whisper-eval``: parse flags into an ``EvalConfig`` and evaluate.

Exit status: 0 results written, 1 results could not be written (printed instead), 2 configuration error
(nothing evaluated).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from distil_whisper_jax.infra import config
from distil_whisper_jax.infra.files import setup_logging
from distil_whisper_jax.stages.evaluate import evaluation


def main(argv: Sequence[str] | None = None) -> int:
    cfg = config.parse(
        evaluation.EvalConfig,
        argv,
        prog="run_eval.py",
        description=(evaluation.__doc__ or "").split("\n\n")[0],
    )
    setup_logging(timestamps=True)
    try:
        return evaluation.run(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
