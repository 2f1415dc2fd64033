"""``python -m distil_whisper_jax`` / ``distil-whisper-demo``: the whole pipeline on what ships with the package.

python -m distil_whisper_jax [--output_dir demo_output] [--max_steps 100]   # label → distil → eval → export
python -m distil_whisper_jax --stage transcribe [--model PATH_OR_HUB_ID]     # teacher WER on the bundled clips
python -m distil_whisper_jax --multilingual [--languages fr+de+es]           # whisper-base teacher, fr/de/es speech
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from distil_whisper_jax.infra import config
from distil_whisper_jax.infra.files import setup_logging
from distil_whisper_jax.stages.demo import demo


def main(argv: Sequence[str] | None = None) -> int:
    cfg = config.parse(
        demo.DemoConfig,
        argv,
        prog="python -m distil_whisper_jax",
        description="Label → distil → evaluate → export on the bundled teacher and speech, offline.",
    )
    setup_logging()
    try:
        return demo.run(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # a stage failed; it has logged why
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
