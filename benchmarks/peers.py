"""Benchmark: the same audio through this project and the tools a user would otherwise pick, in one run.

    python -m benchmarks.peers [--student DIR] [--quick]

Every engine goes from the waveform to text (its own feature extraction included), on the CPU, with the
same real tiny.en weights (the bundled CTranslate2 model, exported by this project to each peer's format):

* **short-form**: the bundled clips of ≤ 30 s and the held-out sentences of the bundled speech corpus, one
  model input each. This project (``transcribe.transcribe``: fp32 and bf16; batch 1 and 8; the teacher and,
  with ``--student``, a distilled 2-layer student); transformers ``generate`` (PyTorch fp32, batch 1 and 8);
  openai-whisper ``transcribe`` per clip; faster-whisper (CTranslate2 fp32 and int8) per clip; whisper.cpp
  (pywhispercpp) on our ggml export, per clip.
* **speculative** (with ``--student``): the teacher
  alone vs the teacher verifying the student's drafts, batch 1, short-form; texts must be identical.

Long-form is measured by ``benchmarks/longform.py``, on natural long recordings, with each peer configured as
its documentation recommends for long audio. Decoding is greedy everywhere (temperature 0, beam 1, no
fallback). Each engine is warmed up on one input first
(compilation and loading are reported apart), then timed once over the whole set; WER is corpus-level
after the English normaliser. Speed is audio seconds per wall second; ``vs transformers`` divides it by
the transformers row of the same table. Prints the tables and writes ``benchmarks/results/peers.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

from benchmarks.common import RESULTS_DIR, run_record
from distil_whisper_jax.assets import bundled_clips, speech_manifest
from distil_whisper_jax.data.sources import manifest_rows
from distil_whisper_jax.decode.transcribe import transcribe
from distil_whisper_jax.infra.files import atomic_write
from distil_whisper_jax.speech import audio
from distil_whisper_jax.speech.wer import wer
from distil_whisper_jax.stages.export.export import export
from distil_whisper_jax.weights.loading import default_model_dir, load_pretrained

log = logging.getLogger("benchmarks.peers")
THREADS = os.cpu_count() or 1


# ----------------------------------------------------------------------------------------------
# Audio


def short_set(quick: bool) -> list[tuple[Path, str]]:
    """(path, reference) of the short-form set: bundled clips ≤ 30 s and the held-out speech corpus."""
    manifest = speech_manifest("heldout")
    heldout = [(manifest.parent / r["audio"], r["text"]) for r in manifest_rows(manifest)]
    items = bundled_clips(30.0) + heldout
    return items[:4] if quick else items


# ----------------------------------------------------------------------------------------------
# Engines: each is (setup() -> transcribe(list of waveforms) -> list of texts)


def ours(model, batch: int, dtype: str = "float32", **kw) -> Callable:
    import jax

    def setup():
        pre = load_pretrained(model) if isinstance(model, (str, Path)) else model
        with tempfile.TemporaryDirectory() as d:

            def run(waves):
                paths = []
                for i, w in enumerate(waves):
                    paths.append(Path(d) / f"{i:05d}.wav")
                    sf.write(paths[-1], w, audio.SAMPLE_RATE)
                out = transcribe(
                    paths,
                    pre,
                    batch_size=batch,
                    dtype=dtype,
                    progress=False,
                    devices=jax.local_devices()[:1],
                    **kw,
                )
                return [r.get("text", "") for r in out]

            yield run

    return setup


def transformers_generate(hf_dir: Path, batch: int) -> Callable:
    def setup():
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        torch.set_num_threads(THREADS)
        proc = WhisperProcessor.from_pretrained(hf_dir)
        model = WhisperForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).eval()

        def run(waves):
            texts = []
            for i in range(0, len(waves), batch):
                feats = proc.feature_extractor(waves[i : i + batch], sampling_rate=16000, return_tensors="pt")
                with torch.inference_mode():
                    ids = model.generate(feats.input_features, num_beams=1, do_sample=False, max_new_tokens=224)
                texts += [t.strip() for t in proc.batch_decode(ids, skip_special_tokens=True)]
            return texts

        yield run

    return setup


def openai_whisper(pt: Path) -> Callable:
    def setup():
        import torch
        import whisper

        torch.set_num_threads(THREADS)
        net = whisper.load_model(str(pt), device="cpu")
        kw = {"temperature": 0.0, "condition_on_previous_text": False}  # greedy, no fallback

        def run(waves):
            return [net.transcribe(w, language="en", fp16=False, **kw)["text"].strip() for w in waves]

        yield run

    return setup


def faster_whisper(compute_type: str) -> Callable:
    def setup():
        from faster_whisper import WhisperModel

        model = WhisperModel(str(default_model_dir()), device="cpu", compute_type=compute_type, cpu_threads=THREADS)
        kw = {"temperature": 0.0, "condition_on_previous_text": False, "vad_filter": False}  # greedy, no fallback

        def run(waves):
            out = []
            for w in waves:
                segments, _ = model.transcribe(w, language="en", beam_size=1, **kw)
                out.append(" ".join(s.text.strip() for s in segments))
            return out

        yield run

    return setup


def whisper_cpp(ggml: Path) -> Callable:
    def setup():
        from pywhispercpp.model import Model

        net = Model(
            str(ggml), n_threads=THREADS, print_progress=False, print_realtime=False, language="en", temperature=0.0
        )

        def run(waves):
            return [" ".join(s.text.strip() for s in net.transcribe(w)) for w in waves]

        yield run

    return setup


# ----------------------------------------------------------------------------------------------
# Timing


def measure(name: str, setup: Callable, waves: list[np.ndarray], refs: list[str], **info) -> dict:
    """Load + warm up on the first input, then one timed pass over all inputs."""
    t0 = time.perf_counter()
    gen = setup()
    run = next(gen)
    run(waves[:1])
    warm = time.perf_counter() - t0
    t1 = time.perf_counter()
    texts = run(waves)
    seconds = time.perf_counter() - t1
    with contextlib.suppress(StopIteration):
        next(gen)
    audio_s = sum(len(w) for w in waves) / audio.SAMPLE_RATE
    row = {
        "engine": name,
        **info,
        "audio_seconds": round(audio_s, 2),
        "seconds": round(seconds, 3),
        "speed": round(audio_s / seconds, 2),
        "load_and_warmup_seconds": round(warm, 2),
        "wer": round(wer(refs, texts), 2),
    }
    log.info("%-44s %7.2f audio-s/s  WER %6.2f %%", name, row["speed"], row["wer"])
    row["texts"] = texts
    return row


def relative(rows: list[dict], reference: str) -> None:
    base = next((r["speed"] for r in rows if r["engine"] == reference), None)
    for r in rows:
        r["vs_transformers"] = round(r["speed"] / base, 2) if base else None


def exports(pre, work: Path) -> dict[str, Path]:
    return export(pre, ("hf", "openai", "ggml"), work / "teacher", "float32", overwrite=True)


def short_rows(args, pre, files: dict, student) -> list[dict]:
    items = short_set(args.quick)
    waves, refs = [audio.load_audio(p) for p, _ in items], [t for _, t in items]
    engines = [
        ("this project fp32, batch 1", ours(pre, 1), {"model": "tiny.en"}),
        ("this project fp32, batch 8", ours(pre, 8), {"model": "tiny.en"}),
        ("this project bf16, batch 8", ours(pre, 8, "bfloat16"), {"model": "tiny.en"}),
    ]
    if student is not None:
        engines += [
            ("this project student fp32, batch 1", ours(student, 1), {"model": "student"}),
            ("this project student fp32, batch 8", ours(student, 8), {"model": "student"}),
        ]
    engines += [
        ("transformers generate, batch 1", transformers_generate(files["hf"], 1), {"model": "tiny.en"}),
        ("transformers generate, batch 8", transformers_generate(files["hf"], 8), {"model": "tiny.en"}),
        ("openai-whisper", openai_whisper(files["openai"]), {"model": "tiny.en"}),
        ("faster-whisper fp32", faster_whisper("float32"), {"model": "tiny.en"}),
        ("faster-whisper int8", faster_whisper("int8"), {"model": "tiny.en"}),
        ("whisper.cpp f16", whisper_cpp(files["ggml"]), {"model": "tiny.en"}),
    ]
    rows = [measure(n, s, waves, refs, **i) for n, s, i in engines]
    relative(rows, "transformers generate, batch 8")
    return rows


def speculative_rows(args, pre, student) -> list[dict]:
    if student is None:
        return []
    items = short_set(args.quick)
    waves, refs = [audio.load_audio(p) for p, _ in items], [t for _, t in items]
    rows = [
        measure("teacher alone, batch 1", ours(pre, 1), waves, refs, model="tiny.en"),
        measure(
            "teacher + student drafts, batch 1", ours(pre, 1, assistant_model=student), waves, refs, model="tiny.en"
        ),
    ]
    rows[1]["identical_texts"] = rows[0]["texts"] == rows[1]["texts"]
    rows[1]["speedup"] = round(rows[1]["speed"] / rows[0]["speed"], 2)
    return rows


# ----------------------------------------------------------------------------------------------
# Report


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}\n")
    print("| engine | audio-s/s | vs transformers | WER % | load + warm-up s |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        vs = "–" if r.get("vs_transformers") is None else f"{r['vs_transformers']:.2f}×"
        print(f"| {r['engine']} | {r['speed']:.2f} | {vs} | {r['wer']:.2f} | {r['load_and_warmup_seconds']:.1f} |")


def summary(short: list[dict], spec: list[dict]) -> dict:
    by = {r["engine"]: r for r in short}
    out = {}
    for b in (1, 8):
        t, s = by.get(f"this project fp32, batch {b}"), by.get(f"this project student fp32, batch {b}")
        if t and s:
            out[f"student_vs_teacher_batch{b}"] = round(s["speed"] / t["speed"], 2)
    if spec:
        out["speculative_speedup_batch1"] = spec[1]["speedup"]
        out["speculative_identical"] = spec[1]["identical_texts"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", help="a distilled student of tiny.en (e.g. demo_output/run/hf)")
    ap.add_argument("--quick", action="store_true", help="4 short clips (a smoke run)")
    ap.add_argument("--output", default=str(RESULTS_DIR / "peers.json"))
    args = ap.parse_args(argv)
    load_start = os.getloadavg()[0]  # before any work: the figure that says whether the machine was idle
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("jax", "absl", "distil_whisper_jax", "faster_whisper", "transformers"):
        logging.getLogger(name).setLevel(logging.WARNING)
    pre = load_pretrained()
    student = load_pretrained(args.student) if args.student else None
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        files = exports(pre, work)
        short = short_rows(args, pre, files, student)
    spec = speculative_rows(args, pre, student)
    report = {
        "benchmark": "peers",
        **run_record(load_start),
        "student": args.student,
        "quick": args.quick,
        "short_form": {"items": len(short_set(args.quick)), "rows": short},
        "speculative": spec,
        "summary": summary(short, spec),
    }
    print_table("short-form (one model input per clip)", short)
    if spec:
        print_table("speculative decoding (short-form)", spec)
    print("\n" + json.dumps(report["summary"], indent=2))
    with atomic_write(args.output, "w") as f:
        json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
