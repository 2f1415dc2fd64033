"""Default job: the bundled tiny.en teacher transcribes the bundled clips; prints transcripts and WER.

    python -m distil_whisper_jax [--model PATH_OR_HUB_ID] [--batch_size 8] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Sequence

from . import audio
from .assets import bundled_clips


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m distil_whisper_jax", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=None, help="model path or hub id; default: the bundled tiny.en")
    p.add_argument("--batch_size", type=int, default=8, help="clips per batch")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="compute dtype")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from .evaluate import wer
    from .transcribe import transcribe

    clips = bundled_clips()
    t0 = time.perf_counter()
    results = transcribe([c for c, _ in clips], args.model, args.batch_size, args.dtype)
    elapsed = time.perf_counter() - t0
    seconds = sum(len(audio.load_audio(c)) for c, _ in clips) / audio.SAMPLE_RATE
    refs, hyps = [t for _, t in clips], [r.get("text", "") for r in results]
    print(f"\n{'clip':<28} {'WER %':>6}  transcript")
    for (clip, ref), hyp in zip(clips, hyps):
        print(f"{clip.name:<28} {wer([ref], [hyp]):6.1f}  {hyp}")
    print(f"\n{len(clips)} clips, {seconds:.1f} s of audio, {elapsed:.1f} s wall (incl. compile): "
          f"WER {wer(refs, hyps):.2f} % (EnglishTextNormalizer)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
