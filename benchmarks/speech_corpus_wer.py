"""Measure: tiny.en greedy WER on the bundled speech corpus (``assets/speech``), per split and per speaker.

    python -m benchmarks.speech_corpus_wer [--batch_size 16]

Transcribes every clip of ``train.tsv`` and ``heldout.tsv`` with the bundled real tiny.en
(``transcribe.transcribe``, fp32, greedy, no timestamps) and scores it with ``evaluate.wer`` (English
normaliser, corpus-level). Prints a table and writes ``benchmarks/results/speech_corpus_wer.json`` (atomically),
including every hypothesis, so the test's held-out threshold can be checked against it.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
from pathlib import Path

from distil_whisper_jax.assets import SPEECH_SPLITS, speech_manifest
from distil_whisper_jax.decode.transcribe import transcribe
from distil_whisper_jax.infra import delimited
from distil_whisper_jax.infra.files import atomic_write
from distil_whisper_jax.speech.wer import wer
from distil_whisper_jax.weights.loading import load_pretrained

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "speech_corpus_wer.json"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model = load_pretrained()
    report: dict = {"model": model.source, "splits": {}}
    for split in SPEECH_SPLITS:
        tsv = speech_manifest(split)
        rows = list(delimited.read_rows(tsv))
        out = transcribe([tsv.parent / r["audio"] for r in rows], model, batch_size=args.batch_size)
        hyps = [o["text"] for o in out]
        refs = [r["text"] for r in rows]
        by_speaker = collections.defaultdict(list)
        for i, r in enumerate(rows):
            by_speaker[r["speaker_id"]].append(i)
        report["splits"][split] = {
            "clips": len(rows),
            "seconds": round(sum(float(r["duration"]) for r in rows), 2),
            "wer": wer(refs, hyps),
            "speakers": {s: wer([refs[i] for i in ix], [hyps[i] for i in ix]) for s, ix in by_speaker.items()},
            "hypotheses": [
                {"audio": r["audio"], "ref": r["text"], "hyp": h, "wer": wer([r["text"]], [h])}
                for r, h in zip(rows, hyps)
            ],
        }
    print(f"{'split':8s} {'speaker':28s} {'WER %':>6s}")
    for split, d in report["splits"].items():
        for s, w in d["speakers"].items():
            print(f"{split:8s} {s:28s} {w:6.2f}")
        print(f"{split:8s} {'ALL (' + str(d['clips']) + ' clips, ' + str(d['seconds']) + ' s)':28s} {d['wer']:6.2f}")
    with atomic_write(args.output, "w") as f:
        json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
