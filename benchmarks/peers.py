"""Benchmark: the same audio through this project and the tools a user would otherwise pick, in one run.

    python -m benchmarks.peers [--student DIR] [--long_minutes 5] [--quick]

Every engine goes from the waveform to text (its own feature extraction included), on the CPU, with the
same real tiny.en weights (the bundled CTranslate2 model, exported by this project to each peer's format):

* **short-form**: the bundled clips of ≤ 30 s and the held-out sentences of the bundled speech corpus, one
  model input each. This project (``transcribe.transcribe``: fp32 and bf16; batch 1 and 8; the teacher and,
  with ``--student``, a distilled 2-layer student); transformers ``generate`` (PyTorch fp32, batch 1 and 8);
  openai-whisper ``transcribe`` per clip; faster-whisper (CTranslate2 fp32 and int8) per clip; whisper.cpp
  (pywhispercpp) on our ggml export, per clip.
* **long-form**: one recording of at least ``--long_minutes`` of real speech (the bundled clips and the
  bundled LibriVox sentences joined with short silences, repeated). This project chunked
  (batch 8) and sequential; the transformers chunked pipeline (batch 8); openai-whisper sequential;
  faster-whisper sequential and its batched pipeline (batch 8, fp32 and int8); whisper.cpp sequential.
* **speculative** (with ``--student``): the teacher
  alone vs the teacher verifying the student's drafts, batch 1, short-form; texts must be identical.

Decoding is greedy everywhere (temperature 0, beam 1, no fallback) except where an engine's long-form
algorithm is the point (openai-whisper's and faster-whisper's sequential decoding keep their temperature
fallback and previous-text conditioning, as users run them). Each engine is warmed up on one input first
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
from distil_whisper_jax.assets import bundled_clips, librivox_recordings, speech_manifest
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


def long_recording(minutes: float, work: Path) -> tuple[Path, str, float]:
    """A recording of ≥ ``minutes`` of real speech: the pieces joined with 0.7 s silences, forwards then
    backwards, repeated. Returns (path, reference, seconds)."""
    pieces = bundled_clips(None) + librivox_recordings()
    gap = np.zeros(int(0.7 * audio.SAMPLE_RATE), np.float32)
    waves = {p: audio.load_audio(p) for p, _ in pieces}
    order, total = [], 0.0
    while total < minutes * 60:
        for p, t in pieces if len(order) // len(pieces) % 2 == 0 else pieces[::-1]:
            order.append((p, t))
            total += len(waves[p]) / audio.SAMPLE_RATE + 0.7
    wav = np.concatenate([x for p, _ in order for x in (waves[p], gap)])
    path = work / "long.wav"
    sf.write(path, wav, audio.SAMPLE_RATE)
    return path, " ".join(t for _, t in order), len(wav) / audio.SAMPLE_RATE


# ----------------------------------------------------------------------------------------------
# Engines: each is (setup() -> transcribe(list of waveforms) -> list of texts)


def ours(model, batch: int, dtype: str = "float32", long_form: str = "none", **kw) -> Callable:
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
                    long_form=long_form,
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


def transformers_pipeline(hf_dir: Path, batch: int) -> Callable:
    def setup():
        import torch
        from transformers import pipeline

        torch.set_num_threads(THREADS)
        pipe = pipeline("automatic-speech-recognition", model=str(hf_dir), dtype=torch.float32, device="cpu")
        kwargs = {"num_beams": 1, "do_sample": False}

        def run(waves):
            out = [
                pipe({"raw": w, "sampling_rate": 16000}, chunk_length_s=30, batch_size=batch, generate_kwargs=kwargs)
                for w in waves
            ]
            return [o["text"].strip() for o in out]

        yield run

    return setup


def openai_whisper(pt: Path, long_form: bool) -> Callable:
    def setup():
        import torch
        import whisper

        torch.set_num_threads(THREADS)
        net = whisper.load_model(str(pt), device="cpu")
        # short-form: greedy, no fallback; long-form: openai's own defaults (fallback + previous text)
        kw = {} if long_form else {"temperature": 0.0, "condition_on_previous_text": False}

        def run(waves):
            return [net.transcribe(w, language="en", fp16=False, **kw)["text"].strip() for w in waves]

        yield run

    return setup


def faster_whisper(compute_type: str, batched: bool = False, long_form: bool = False) -> Callable:
    def setup():
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        model = WhisperModel(str(default_model_dir()), device="cpu", compute_type=compute_type, cpu_threads=THREADS)
        if batched:
            pipe = BatchedInferencePipeline(model)

            def run(waves):
                out = []
                for w in waves:
                    segments, _ = pipe.transcribe(w, language="en", beam_size=1, batch_size=8, temperature=0.0)
                    out.append(" ".join(s.text.strip() for s in segments))
                return out
        else:
            kw = {} if long_form else {"temperature": 0.0, "condition_on_previous_text": False}

            def run(waves):
                out = []
                for w in waves:
                    segments, _ = model.transcribe(w, language="en", beam_size=1, vad_filter=False, **kw)
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
        ("openai-whisper", openai_whisper(files["openai"], False), {"model": "tiny.en"}),
        ("faster-whisper fp32", faster_whisper("float32"), {"model": "tiny.en"}),
        ("faster-whisper int8", faster_whisper("int8"), {"model": "tiny.en"}),
        ("whisper.cpp f16", whisper_cpp(files["ggml"]), {"model": "tiny.en"}),
    ]
    rows = [measure(n, s, waves, refs, **i) for n, s, i in engines]
    relative(rows, "transformers generate, batch 8")
    return rows


def long_rows(args, pre, files: dict, student, work: Path) -> tuple[list[dict], float]:
    path, ref, seconds = long_recording(args.long_minutes, work)
    waves, refs = [audio.load_audio(path)], [ref]
    engines = [
        ("this project chunked fp32, batch 8", ours(pre, 8, long_form="chunked"), {"model": "tiny.en"}),
        ("this project sequential fp32", ours(pre, 8, long_form="sequential"), {"model": "tiny.en"}),
    ]
    if student is not None:
        engines.append(
            ("this project student chunked fp32, batch 8", ours(student, 8, long_form="chunked"), {"model": "student"})
        )
    engines += [
        ("transformers chunked pipeline, batch 8", transformers_pipeline(files["hf"], 8), {"model": "tiny.en"}),
        ("openai-whisper sequential", openai_whisper(files["openai"], True), {"model": "tiny.en"}),
        ("faster-whisper sequential fp32", faster_whisper("float32", long_form=True), {"model": "tiny.en"}),
        ("faster-whisper batched fp32, batch 8", faster_whisper("float32", batched=True), {"model": "tiny.en"}),
        ("faster-whisper batched int8, batch 8", faster_whisper("int8", batched=True), {"model": "tiny.en"}),
        ("whisper.cpp f16 sequential", whisper_cpp(files["ggml"]), {"model": "tiny.en"}),
    ]
    rows = [measure(n, s, waves, refs, **i) for n, s, i in engines]
    relative(rows, "transformers chunked pipeline, batch 8")
    return rows, seconds


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


def summary(short: list[dict], long: list[dict], spec: list[dict]) -> dict:
    by = {r["engine"]: r for r in short + long}
    out = {}
    for b in (1, 8):
        t, s = by.get(f"this project fp32, batch {b}"), by.get(f"this project student fp32, batch {b}")
        if t and s:
            out[f"student_vs_teacher_batch{b}"] = round(s["speed"] / t["speed"], 2)
    c, q = by.get("this project chunked fp32, batch 8"), by.get("this project sequential fp32")
    if c and q:
        out["chunked_vs_sequential"] = round(c["speed"] / q["speed"], 2)
    for peer in ("transformers chunked pipeline, batch 8", "faster-whisper batched fp32, batch 8"):
        if c and peer in by:
            out[f"chunked_vs_{peer.split(' ')[0]}_batched"] = round(c["speed"] / by[peer]["speed"], 2)
    if c and "openai-whisper sequential" in by:
        out["chunked_wer_minus_openai_sequential"] = round(c["wer"] - by["openai-whisper sequential"]["wer"], 2)
    if spec:
        out["speculative_speedup_batch1"] = spec[1]["speedup"]
        out["speculative_identical"] = spec[1]["identical_texts"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", help="a distilled student of tiny.en (e.g. demo_output/run/hf)")
    ap.add_argument("--long_minutes", type=float, default=5.0)
    ap.add_argument("--quick", action="store_true", help="4 short clips and a 1-minute recording (a smoke run)")
    ap.add_argument("--output", default=str(RESULTS_DIR / "peers.json"))
    args = ap.parse_args(argv)
    load_start = os.getloadavg()[0]  # before any work: the figure that says whether the machine was idle
    if args.quick:
        args.long_minutes = min(args.long_minutes, 1.0)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("jax", "absl", "distil_whisper_jax", "faster_whisper", "transformers"):
        logging.getLogger(name).setLevel(logging.WARNING)
    pre = load_pretrained()
    student = load_pretrained(args.student) if args.student else None
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        files = exports(pre, work)
        short = short_rows(args, pre, files, student)
        long, long_s = long_rows(args, pre, files, student, work)
    spec = speculative_rows(args, pre, student)
    report = {
        "benchmark": "peers",
        **run_record(load_start),
        "student": args.student,
        "quick": args.quick,
        "short_form": {"items": len(short_set(args.quick)), "rows": short},
        "long_form": {"seconds": round(long_s, 1), "rows": long},
        "speculative": spec,
        "summary": summary(short, long, spec),
    }
    print_table("short-form (one model input per clip)", short)
    print_table(f"long-form ({long_s / 60:.1f} min recording)", long)
    if spec:
        print_table("speculative decoding (short-form)", spec)
    print("\n" + json.dumps(report["summary"], indent=2))
    with atomic_write(args.output, "w") as f:
        json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
