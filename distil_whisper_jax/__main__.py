"""Default job on the embedded default (bundled tiny.en teacher, bundled speech), offline.

python -m distil_whisper_jax [--output_dir demo_output] [--max_steps 100]   # label → distil → eval → export
python -m distil_whisper_jax --stage transcribe [--model PATH_OR_HUB_ID]     # teacher WER on the bundled clips
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import audio
from .assets import bundled_clips
from .utils import setup_logging


def transcribe_clips(model: str | None, batch_size: int, dtype: str) -> int:
    """The teacher transcribes the bundled clips; prints each transcript and the WER."""
    from .evaluate import wer
    from .transcribe import transcribe

    clips = bundled_clips()
    t0 = time.perf_counter()
    results = transcribe([c for c, _ in clips], model, batch_size, dtype)
    elapsed = time.perf_counter() - t0
    seconds = sum(len(audio.load_audio(c)) for c, _ in clips) / audio.SAMPLE_RATE
    refs, hyps = [t for _, t in clips], [r.get("text", "") for r in results]
    print(f"\n{'clip':<28} {'WER %':>6}  transcript")
    for (clip, ref), hyp in zip(clips, hyps):
        print(f"{clip.name:<28} {wer([ref], [hyp]):6.1f}  {hyp}")
    print(
        f"\n{len(clips)} clips, {seconds:.1f} s of audio, {elapsed:.1f} s wall (incl. compile): "
        f"WER {wer(refs, hyps):.2f} % (EnglishTextNormalizer)"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m distil_whisper_jax",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--stage",
        choices=["all", "transcribe"],
        default="all",
        help="all: label → distil → eval → export; transcribe: only the teacher on the bundled clips",
    )
    p.add_argument("--output_dir", default="demo_output", help="where the labelled data, run and exports go")
    p.add_argument("--max_steps", type=int, default=100, help="distillation steps")
    p.add_argument("--eval_rows", type=int, default=24, help="held-out clips evaluated (0 = all 48)")
    p.add_argument("--no_export", action="store_true", help="skip the export + verification stage")
    p.add_argument("--model", default=None, help="(transcribe) model path or hub id; default: the bundled tiny.en")
    p.add_argument("--batch_size", type=int, default=8, help="(transcribe) clips per batch")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="(transcribe) compute dtype")
    args = p.parse_args(argv)
    setup_logging()
    if args.stage == "transcribe":
        return transcribe_clips(args.model, args.batch_size, args.dtype)

    from .demo import run

    out = Path(args.output_dir)
    if (out / "run").exists() or (out / "labelled").exists():
        print(f"note: {out} holds an earlier demo; finished stages are resumed, not redone", file=sys.stderr)
    r = run(out, max_steps=args.max_steps, eval_rows=args.eval_rows or None, export=not args.no_export)
    lab, w = r["labelled"], r["heldout_wer"]
    print("\nstage            wall s")
    for name, s in r["times_s"].items():
        print(f"{name:<16} {s:7.1f}")
    print(
        f"\npseudo-labels: {lab['rows_read']} clips ({lab['audio_hours_labelled'] * 60:.1f} min) → "
        f"{lab['rows_written']} rows of ≤ 30 s, teacher WER vs ground truth {lab['wer_all_labelled']:.2f} %"
    )
    print(
        f"held-out WER (EnglishTextNormalizer): teacher {w['teacher']:.1f} %, 2-layer student before training "
        f"{w['student_untrained']:.1f} %, after {args.max_steps} steps {w['student_trained']:.1f} %"
    )
    if "export_status" in r:
        print(f"exports in {out / 'export'}: verification {'passed' if r['export_status'] == 0 else 'FAILED'}")
        return r["export_status"]
    return 0


if __name__ == "__main__":
    sys.exit(main())
