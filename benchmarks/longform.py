"""Benchmark: long-form transcription of natural long recordings against correctly configured peers, in one run.

    python -m benchmarks.longform [--minutes_per_language 3] [--recordings fr,es,it,ru,en,narrative] [--quick]

Recordings (``benchmarks/longform_audio.py``; no clip is heard twice, each reported on its own): real French,
Spanish, Italian and Russian speech (Debian's asterisk prompts) decoded by the multilingual whisper-base with the
language set for every engine; English (the bundled LibriVox readings and held-out sentences) and a book chapter
read by a TTS voice, decoded by tiny.en.

Engines, each from its own documented long-form defaults, greedy (beam 1) where that is a setting, batch 8 where
batching applies, on the same weights (the model this project loads, exported by it to CTranslate2 float32 and
transformers): this project ``--long_form vad``, ``chunked`` and ``sequential`` (temperature fallback and the
previous-text prompt, its defaults); faster-whisper's ``BatchedInferencePipeline`` (fp32, its default
voice-activity segmentation, temperature 0), also with ``CT2_USE_MKL=1`` (CTranslate2 uses Intel MKL only on Intel
CPUs; the goal is judged against the faster of the two settings) and its sequential ``WhisperModel.transcribe``
(its defaults: temperature fallback, previous-text prompt, no VAD); the transformers ASR pipeline chunked with 30 s
windows and ``return_timestamps=True`` (as its documentation recommends for long audio).

Each engine runs in a fresh subprocess per recording that imports, loads the model and decodes the recording twice.
**Whole-process** speed: audio seconds over the time from starting the subprocess to the end of the first decode
(the compilation cache warm for ours: ours is run once before on the same recording with the same
``--compilation_cache_dir``, as a user's second run of a job; a batch shorter than ``--batch_size`` runs as fewer
rows, whose programs another recording may not have compiled. The JSON has each run's cache hits and misses).
**Decode-only**: the second decode, after the first warmed everything up. WER is corpus-level after
``normalizer_for(language)``. ``vs faster-whisper batched`` divides by that engine's speed on the same recording in
the same run. Prints a table per recording and writes ``benchmarks/results/longform.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import longform_audio as la
from benchmarks.common import RESULTS_DIR, run_record
from distil_whisper_jax.infra import storage
from distil_whisper_jax.infra.files import atomic_write
from distil_whisper_jax.speech.wer import basic_normalizer, wer_details

log = logging.getLogger("benchmarks.longform")
THREADS = os.cpu_count() or 1
BATCH = 8
REFERENCE = "fw-batched"
ENGINES = {  # key: (label, kind, mode)
    "ours-vad": ("this project `--long_form vad`, batch 8", "ours", "vad"),
    "ours-chunked": ("this project `--long_form chunked`, batch 8", "ours", "chunked"),
    "ours-sequential": ("this project `--long_form sequential`", "ours", "sequential"),
    "fw-batched": ("faster-whisper batched pipeline fp32, batch 8", "faster-whisper", "batched"),
    "fw-batched-mkl": ("faster-whisper batched pipeline fp32, batch 8, `CT2_USE_MKL=1`", "faster-whisper", "batched"),
    "fw-sequential": ("faster-whisper sequential fp32", "faster-whisper", "sequential"),
    "hf-pipeline": ("transformers chunked pipeline, timestamps, batch 8", "transformers", "chunked"),
}
# CTranslate2 multiplies matrices with Intel MKL on Intel CPUs and with oneDNN elsewhere unless told otherwise: on an
# AMD CPU the peer's default and its MKL setting are both measured, and the goal is judged against the faster one
ENGINE_ENV = {"fw-batched-mkl": {"CT2_USE_MKL": "1"}}
QUICK_ENGINES, QUICK_SECONDS = ("ours-vad", "fw-batched"), 60.0


# ----------------------------------------------------------------------------------------------
# Worker: one engine, one recording, in its own process


def _ours(spec: dict):
    import jax

    from distil_whisper_jax.decode.transcribe import transcribe
    from distil_whisper_jax.infra import compile_cache
    from distil_whisper_jax.weights.loading import load_pretrained

    compile_cache.enable(compile_cache.CompileCacheFlags(compilation_cache_dir=spec["cache_dir"]))
    pre = load_pretrained(spec["ct2"])
    language = None if spec["model"] == "tiny.en" else spec["language"]

    def run() -> tuple[str, dict]:
        with compile_cache.CompileClock() as clock:
            out = transcribe([spec["audio"]], pre, batch_size=BATCH, language=language, progress=False,
                             devices=jax.local_devices()[:1], long_form=spec["mode"])  # fmt: skip
        if "error" in out[0]:
            raise RuntimeError(out[0]["error"])
        return out[0]["text"], clock.as_dict()

    return run


def _faster_whisper(spec: dict):
    from faster_whisper import BatchedInferencePipeline, WhisperModel
    from faster_whisper.audio import decode_audio

    model = WhisperModel(spec["ct2"], device="cpu", compute_type="float32", cpu_threads=THREADS)
    wave = decode_audio(spec["audio"])
    language = "en" if spec["model"] == "tiny.en" else spec["language"]
    if spec["mode"] == "batched":
        pipe = BatchedInferencePipeline(model)
        kw = {"batch_size": BATCH, "temperature": 0.0}  # its own VAD segmentation (vad_filter=True by default)
        transcribe = pipe.transcribe
    else:
        kw, transcribe = {}, model.transcribe  # its defaults: fallback, previous text, no VAD

    def run() -> tuple[str, dict]:
        segments, _ = transcribe(wave, language=language, beam_size=1, **kw)
        return " ".join(s.text.strip() for s in segments), {}

    return run


def _transformers(spec: dict):
    import soundfile as sf
    import torch
    from transformers import pipeline

    torch.set_num_threads(THREADS)
    pipe = pipeline("automatic-speech-recognition", model=spec["hf"], dtype=torch.float32, device="cpu")
    wave, sr = sf.read(spec["audio"], dtype="float32")
    kw = {"num_beams": 1, "do_sample": False}
    if spec["model"] != "tiny.en":
        kw.update(language=spec["language"], task="transcribe")

    def run() -> tuple[str, dict]:
        out = pipe({"raw": wave, "sampling_rate": sr}, chunk_length_s=30, batch_size=BATCH, return_timestamps=True,
                   generate_kwargs=kw)  # fmt: skip
        return out["text"].strip(), {}

    return run


def worker(spec_path: str) -> int:
    """Load the engine, decode the recording ``passes`` times; write texts and times (epoch seconds) as JSON."""
    imported = time.time()
    spec = json.loads(Path(spec_path).read_text())
    kind = ENGINES[spec["engine"]][1]
    run = {"ours": _ours, "faster-whisper": _faster_whisper, "transformers": _transformers}[kind](spec)
    loaded = time.time()
    passes = []
    for _ in range(spec["passes"]):
        t0 = time.perf_counter()
        text, info = run()
        passes.append({"seconds": time.perf_counter() - t0, "end": time.time(), "text": text, **info})
    result = {"imported": imported, "loaded": loaded, "passes": passes}
    with atomic_write(spec["out"], "w") as f:
        json.dump(result, f)
    return 0


def launch(spec: dict, work: Path) -> dict:
    """Run one worker subprocess; adds ``started`` (epoch seconds, just before the process was started)."""
    n = len(list(work.glob("spec_*.json")))
    path, spec["out"] = work / f"spec_{n:03d}.json", str(work / f"out_{n:03d}.json")
    path.write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the CPU as a user has it (one device)
    env.update(ENGINE_ENV.get(spec["engine"], {}))
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.longform", "--worker", str(path)], env=env,
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['engine']} on {spec['audio']} failed:\n{proc.stderr[-4000:]}")
    return {**json.loads(Path(spec["out"]).read_text()), "started": started}


# ----------------------------------------------------------------------------------------------
# Measuring


def export_models(names: list[str], hf: bool, work: Path) -> dict[str, dict[str, Path]]:
    """Each model this project loads, exported by it to CTranslate2 float32 (and transformers): the one set of
    weights every engine reads."""
    from distil_whisper_jax.stages.export.export import export
    from distil_whisper_jax.weights.loading import load_pretrained, multilingual_base_dir

    out = {}
    for name in names:
        pre = load_pretrained(None if name == "tiny.en" else multilingual_base_dir())
        out[name] = export(pre, ("ct2", "hf") if hf else ("ct2",), work / name, "float32", overwrite=True)
        del pre
    return out


def _spec(engine: str, rec: la.Recording, models: dict, cache_dir: str, passes: int) -> dict:
    files = models[rec.model]
    return {
        "engine": engine,
        "mode": ENGINES[engine][2],
        "model": rec.model,
        "language": rec.language,
        "audio": str(rec.path),
        "ct2": str(files["ct2"]),
        "hf": str(files.get("hf")),
        "cache_dir": cache_dir,
        "passes": passes,
    }


def score(rec: la.Recording, text: str) -> dict:
    """Corpus WER (normalizer_for the recording's language) with its counts; for languages other than English
    also with diacritics removed (the Spanish prompts' texts are written without accents)."""
    d = wer_details([rec.reference], [text], language=rec.language)
    out = {"wer": round(d.wer, 2), "substitutions": d.substitutions, "deletions": d.deletions,
           "insertions": d.insertions, "reference_words": d.reference_words}  # fmt: skip
    if rec.language != "en":
        norm = basic_normalizer(remove_diacritics=True)
        out["wer_without_diacritics"] = round(wer_details([norm(rec.reference)], [norm(text)], False).wer, 2)
    return out


def measure(engine: str, rec: la.Recording, models: dict, cache_dir: str, work: Path) -> dict:
    """One engine on one recording: a fresh process that loads the model and decodes twice."""
    label, kind, _ = ENGINES[engine]
    res = launch(_spec(engine, rec, models, cache_dir, 2), work)
    first, second = res["passes"]
    whole = first["end"] - res["started"]
    row = {
        "engine": engine,
        "label": label,
        **score(rec, second["text"]),
        "decode_s": round(second["seconds"], 2),
        "decode_speed": round(rec.seconds / second["seconds"], 2),
        "whole_process_s": round(whole, 2),
        "whole_process_speed": round(rec.seconds / whole, 2),
        "start_and_load_s": round(res["loaded"] - res["started"], 2),
        "first_decode_s": round(first["seconds"], 2),
        "same_text_both_passes": first["text"] == second["text"],
    }
    if kind == "ours":
        row["compile_first_decode"] = {k: first[k] for k in first if k.startswith(("compile", "programs"))}
    log.info("%-52s WER %6.2f %%  decode %6.2f audio-s/s  whole %6.2f audio-s/s", label, row["wer"],
             row["decode_speed"], row["whole_process_speed"])  # fmt: skip
    row["text"] = second["text"]
    return row


def prime(engine: str, rec: la.Recording, models: dict, cache_dir: str, work: Path) -> dict:
    """Our engine's first run on ``rec`` (cold cache): fills ``cache_dir`` for the measured runs."""
    res = launch(_spec(engine, rec, models, cache_dir, 1), work)
    first = res["passes"][0]
    whole = first["end"] - res["started"]
    return {"engine": engine, "recording": rec.name, "whole_process_s": round(whole, 2),
            "whole_process_speed": round(rec.seconds / whole, 2),
            **{k: first[k] for k in first if k.startswith(("compile", "programs"))}}  # fmt: skip


def relative(rows: list[dict]) -> None:
    ref = next((r for r in rows if r["engine"] == REFERENCE), None)
    for r in rows:
        for k in ("decode", "whole_process"):
            r[f"{k}_vs_fw_batched"] = round(r[f"{k}_speed"] / ref[f"{k}_speed"], 2) if ref else None


def summary(recordings: dict[str, dict]) -> dict:
    """Per recording: vad against faster-whisper batched (WER difference, speed ratios, whether the goal — WER at
    or below it, speed ≥ 1.0× both ways — is met, against the faster of its default and its MKL setting where both
    ran); over all recordings: each engine's pooled speeds."""
    out: dict = {"recordings": {}, "pooled": {}}
    for name, r in recordings.items():
        by = {row["engine"]: row for row in r["rows"]}
        v, f = by.get("ours-vad"), by.get(REFERENCE)
        if v and f:
            peers = [by[e] for e in (REFERENCE, "fw-batched-mkl") if e in by]
            fastest = {k: max(p[f"{k}_speed"] for p in peers) for k in ("decode", "whole_process")}
            vs = {k: round(v[f"{k}_speed"] / fastest[k], 2) for k in fastest}
            out["recordings"][name] = {
                "vad_wer": v["wer"],
                "fw_batched_wer": f["wer"],
                "vad_wer_minus_fw_batched": round(v["wer"] - f["wer"], 2),
                "vad_vs_fw_batched_decode": v["decode_vs_fw_batched"],
                "vad_vs_fw_batched_whole_process": v["whole_process_vs_fw_batched"],
                "vad_vs_fastest_fw_batched_decode": vs["decode"],
                "vad_vs_fastest_fw_batched_whole_process": vs["whole_process"],
                "goal_met": v["wer"] <= f["wer"] and min(vs.values()) >= 1.0,
                "lowest_wer": min(r["rows"], key=lambda x: x["wer"])["engine"],
            }
    engines = {row["engine"] for r in recordings.values() for row in r["rows"]}
    for e in sorted(engines):
        rows = [(r["seconds"], row) for r in recordings.values() for row in r["rows"] if row["engine"] == e]
        if len(rows) == len(recordings):
            audio_s = sum(s for s, _ in rows)
            out["pooled"][e] = {k: round(audio_s / sum(row[f"{k}_s"] for _, row in rows), 2)
                                for k in ("decode", "whole_process")}  # fmt: skip
    ref = out["pooled"].get(REFERENCE)
    for p in out["pooled"].values():
        for k in ("decode", "whole_process"):
            p[f"{k}_vs_fw_batched"] = round(p[k] / ref[k], 2) if ref else None
    out["goal_met_on"] = sum(x["goal_met"] for x in out["recordings"].values())
    return out


# ----------------------------------------------------------------------------------------------
# Report


def print_table(name: str, rec: dict) -> None:
    head = f"{name}: {rec['seconds'] / 60:.1f} min, {rec['clips']} clips, {rec['model']}, language {rec['language']}"
    print(f"\n{head}\n")
    print("| engine | WER % | decode-only audio-s/s | vs fw batched | whole process audio-s/s | vs fw batched |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rec["rows"]:
        vd, vw = (_times(r[f"{k}_vs_fw_batched"]) for k in ("decode", "whole_process"))
        speeds = f"{r['decode_speed']:.1f} | {vd} | {r['whole_process_speed']:.1f} | {vw}"
        print(f"| {r['label']} | {r['wer']:.2f} | {speeds} |")


def _times(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


def build_recordings(args, work: Path) -> list[la.Recording]:
    names = ["en"] if args.quick else args.recordings.split(",")
    limit = QUICK_SECONDS if args.quick else args.max_seconds
    out = []
    for name in names:
        if name in la.ASTERISK_LANGUAGES:
            out.append(la.multilingual_recording(name, limit or args.minutes_per_language * 60, work / "audio"))
        elif name == "en":
            out.append(la.english_recording(limit, work / "audio"))
        elif name == "narrative":
            out.append(la.narrative_recording(limit, work / "audio", Path(args.cache)))
        else:
            raise SystemExit(f"--recordings: unknown recording {name!r} (fr, es, it, ru, en, narrative)")
        log.info("recording %s: %.1f s, %d clips", name, out[-1].seconds, len(out[-1].sources))
    return out


def run_all(args, work: Path, save) -> dict:
    """Every engine on every recording; ``save(results, complete)`` after each recording (a partial run keeps
    what it measured)."""
    engines = list(QUICK_ENGINES) if args.quick else args.engines.split(",")
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise SystemExit(f"--engines: unknown {', '.join(unknown)} (choose from {', '.join(ENGINES)})")
    recs = build_recordings(args, work)
    models = export_models(sorted({r.model for r in recs}), "hf-pipeline" in engines, work / "models")
    cache_dir = args.compilation_cache_dir or str(work / "xla")
    primed, out = [], {}
    for rec in recs:
        # the cold run decodes the same recording (--quick: only its first clip, which needs the same programs)
        warm_up = la.english_recording(1.0, work / "prime") if args.quick else rec
        for e in engines:
            if ENGINES[e][1] == "ours":
                primed.append({**prime(e, warm_up, models, cache_dir, work), "model": rec.model})
        rows = [measure(e, rec, models, cache_dir, work) for e in engines]
        relative(rows)
        out[rec.name] = {**rec.describe(), "reference": rec.reference, "rows": rows}
        save({"recordings": out, "cold_cache_runs": primed, "engines": engines}, complete=rec is recs[-1])
    return {"recordings": out, "cold_cache_runs": primed, "engines": engines}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--recordings", default="fr,es,it,ru,en,narrative")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--minutes_per_language", type=float, default=3.0)
    ap.add_argument("--max_seconds", type=float, help="cut each recording to about this long (a smoke run)")
    ap.add_argument("--quick", action="store_true", help="a 1-minute English recording, vad and fw batched")
    ap.add_argument("--compilation_cache_dir", help="ours' cache (default: a new one, so the first run is cold)")
    ap.add_argument("--cache", default=str(storage.user_cache_dir() / "benchmarks"),
                    help="where the narrative's generated speech is kept")  # fmt: skip
    ap.add_argument("--output", default=str(RESULTS_DIR / "longform.json"))
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    load_start = os.getloadavg()[0]  # before any work: says whether the machine was idle
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("jax", "absl", "distil_whisper_jax", "faster_whisper", "transformers"):
        logging.getLogger(name).setLevel(logging.WARNING)
    t0 = time.perf_counter()

    def save(res: dict, complete: bool) -> None:
        report = {
            "benchmark": "longform",
            **run_record(load_start),
            "quick": args.quick,
            "complete": complete,
            "settings": {
                "batch_size": BATCH,
                "threads": THREADS,
                "gap_s": la.GAP_S,
                "reference": REFERENCE,
                "minutes_per_language": args.minutes_per_language,
                "max_seconds": QUICK_SECONDS if args.quick else args.max_seconds,
                "compilation_cache_dir_given": args.compilation_cache_dir is not None,
            },
            **res,
            "summary": summary(res["recordings"]),
            "total_s": round(time.perf_counter() - t0, 1),
        }
        with atomic_write(args.output, "w") as f:
            json.dump(report, f, indent=2, ensure_ascii=False)

    with tempfile.TemporaryDirectory() as d:
        res = run_all(args, Path(d), save)
    for name, rec in res["recordings"].items():
        print_table(name, rec)
    print("\n" + json.dumps(summary(res["recordings"]), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
