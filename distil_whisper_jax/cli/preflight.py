"""``python -m distil_whisper_jax.preflight``: check a TPU VM worker before hours are spent on it."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from distil_whisper_jax.infra import config
from distil_whisper_jax.stages.preflight import PreflightConfig, preflight, run


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 every check passed, 1 one failed (its row says the fix), 2 bad flags."""
    cfg = config.parse(
        PreflightConfig,
        argv,
        prog="python -m distil_whisper_jax.preflight",
        description=preflight.__doc__.split("\n")[0],
    )
    return run(cfg)


if __name__ == "__main__":
    sys.exit(main())
