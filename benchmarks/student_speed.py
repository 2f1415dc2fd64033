"""Which cut buys speed: students of tiny.en and whisper-base at batch 1, end to end from the audio files, every
model generating the same number of tokens, measured in one run.

    python -m benchmarks.student_speed [--teachers tiny.en,base] [--rounds 5] [--quick]

A student's speed depends on its architecture and on how many tokens it emits; this benchmark takes the second
out so the first can be read alone. Each teacher first transcribes the clips as usual, and the mean number of
tokens it emits per clip (``tokens``) becomes every model's budget: the cuts below are made from the teacher's
weights (``weights.student.make_student``, untrained: their text is not the point) and decode with the
end-of-text token suppressed, so each generates exactly that many tokens. Cuts: decoder layers (the teacher's,
2 and 1) × encoder window (30 s, 15 s, and 10 s when every clip fits), the levers of a distilled student that
cost no accuracy before training.

Clips: the real recordings of ``benchmarks/distill_quality.py`` (JFK, "go forward" and five LibriVox sentences,
38.5 s, each ≤ 11 s: short-form). A clip is read from its file and turned into log-mel features inside the timed
call, as ``run_eval.py`` does; one device, greedy, fp32. Each round times every model on every clip, models
interleaved so load drift touches all alike; a model's time is its median round. Reported: milliseconds per clip
and × the teacher's speed; each model is also timed generating one token, which splits its time into a fixed part
(reading, log-mel, encoder, prompt) and a cost per token. Writes ``benchmarks/results/student_speed.json``.

``--quick`` (CI): tiny.en, its 2-layer cuts at 30 s and 15 s, two rounds on three clips, written into a
temporary directory unless ``--output`` is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import jax
import soundfile as sf

from benchmarks.common import RESULTS_DIR, run_record
from benchmarks.distill_quality import real_recordings
from distil_whisper_jax.decode import decoding
from distil_whisper_jax.infra.files import atomic_write, setup_logging
from distil_whisper_jax.speech import audio
from distil_whisper_jax.weights.loading import Pretrained, load_pretrained, multilingual_base_dir
from distil_whisper_jax.weights.student import make_student

log = logging.getLogger("benchmarks.student_speed")


def clips(quick: bool) -> list[Path]:
    """The real recordings of ``benchmarks/distill_quality.py`` (three of them with ``quick``)."""
    paths = [p for p, _ in real_recordings()]
    return paths[:3] if quick else paths


def teacher_model(name: str) -> tuple[Pretrained, str | None]:
    """(weights, language) of a teacher: the bundled tiny.en, or the multilingual base decoding English."""
    if name == "tiny.en":
        return load_pretrained(None), None
    if name == "base":
        return load_pretrained(str(multilingual_base_dir())), "en"
    raise SystemExit(f"--teachers: unknown teacher {name!r}; expected tiny.en or base")


def cuts(teacher: Pretrained, longest_s: float, quick: bool) -> list[tuple[int, int]]:
    """(decoder layers, encoder positions) to time: the teacher itself first."""
    layers = teacher.config.decoder_layers
    if quick:
        return [(layers, 1500), (2, 1500), (2, 750)]
    windows = [p for p in (1500, 750, 500) if p / 50 >= longest_s]
    return [(d, p) for p in windows for d in sorted({layers, 2, 1}, reverse=True)]


def cut_model(teacher: Pretrained, layers: int, positions: int) -> Pretrained:
    if (layers, positions) == (teacher.config.decoder_layers, teacher.config.max_source_positions):
        return teacher
    cfg, params, _ = make_student(teacher.config, teacher.params, layers, None, positions)
    return dataclasses.replace(teacher, config=cfg, params=params)


def teacher_tokens(teacher: Pretrained, language: str | None, paths: list[Path]) -> int:
    """The teacher's mean number of generated tokens per clip (its end-of-text included), rounded."""
    dec = decoding.decoder(teacher, batch_size=1, devices=jax.local_devices()[:1], language=language)
    counts = [len(dec([audio.load_audio(str(p))])[0]) + 1 for p in paths]
    return max(1, round(sum(counts) / len(counts)))


def fixed_length_decoder(pre: Pretrained, language: str | None, tokens: int) -> decoding.Decoder:
    """A batch-1 decoder that generates exactly ``tokens`` tokens (end-of-text suppressed)."""
    dec = decoding.decoder(pre, batch_size=1, devices=jax.local_devices()[:1], language=language, max_new_tokens=tokens)
    dec.opts = dataclasses.replace(dec.opts, suppress_tokens=(*dec.opts.suppress_tokens, dec.opts.eot))
    return dec


def time_round(dec: decoding.Decoder, paths: list[Path], tokens: int) -> float:
    """Seconds per clip over ``paths``, from reading the file to the ids."""
    t0 = time.perf_counter()
    for p in paths:
        ids = dec([audio.load_audio(str(p))])
        if len(ids[0]) != tokens:
            raise RuntimeError(f"{len(ids[0])} tokens generated, {tokens} expected: the budget did not hold")
    return (time.perf_counter() - t0) / len(paths)


def measure_teacher(name: str, paths: list[Path], rounds: int, quick: bool) -> list[dict]:
    """Every cut of teacher ``name`` timed at the teacher's token budget and at one token (the fixed part: reading,
    log-mel, encoder, prompt); the difference over the extra tokens is the per-token cost."""
    teacher, language = teacher_model(name)
    tokens = teacher_tokens(teacher, language, paths)
    longest = max(sf.info(str(p)).duration for p in paths)
    models = {}
    for c in cuts(teacher, longest, quick):
        pre = cut_model(teacher, *c)
        models[c] = (fixed_length_decoder(pre, language, tokens), fixed_length_decoder(pre, language, 1))
    for full, one in models.values():  # compile, outside the timing
        time_round(full, paths[:1], tokens)
        time_round(one, paths[:1], 1)
    times: dict[tuple[int, int], list[float]] = {c: [] for c in models}
    fixed: dict[tuple[int, int], list[float]] = {c: [] for c in models}
    for r in range(rounds):
        for c, (full, one) in models.items():
            times[c].append(time_round(full, paths, tokens))
            fixed[c].append(time_round(one, paths, 1))
        log.info("%s: round %d of %d done", name, r + 1, rounds)
    base = statistics.median(times[next(iter(models))])
    rows = []
    for d, p in models:
        t, f = statistics.median(times[(d, p)]), statistics.median(fixed[(d, p)])
        rows.append(
            {
                "teacher": name,
                "decoder_layers": d,
                "window_s": p / 50,
                "tokens": tokens,
                "ms_per_clip": 1000 * t,
                "speedup": base / t,
                "fixed_ms": 1000 * f,
                "per_token_ms": 1000 * (t - f) / max(tokens - 1, 1),
                "rounds_ms": [round(1000 * x, 1) for x in times[(d, p)]],
            }
        )
    return rows


def print_table(rows: list[dict]) -> None:
    head = f"{'teacher':<9}{'decoder layers':>15}{'window':>8}{'tokens':>8}{'ms/clip':>9}{'× teacher':>11}"
    print(f"\n{head}{'fixed ms':>10}{'ms/token':>10}")
    for r in rows:
        print(
            f"{r['teacher']:<9}{r['decoder_layers']:>15}{r['window_s']:>7g}s{r['tokens']:>8}"
            f"{r['ms_per_clip']:>9.0f}{r['speedup']:>10.2f}×{r['fixed_ms']:>10.0f}{r['per_token_ms']:>10.1f}"
        )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teachers", default="tiny.en,base", help="comma-separated: tiny.en, base")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--output", type=Path, default=None, help=f"default {RESULTS_DIR / 'student_speed.json'}")
    p.add_argument("--quick", action="store_true", help="CI: tiny.en, three cuts, two rounds on three clips")
    a = p.parse_args(argv)
    if a.quick:
        a.teachers, a.rounds = "tiny.en", 2
        a.output = a.output or Path(tempfile.mkdtemp(prefix="student_speed_")) / "student_speed.json"
    a.output = a.output or RESULTS_DIR / "student_speed.json"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    setup_logging()
    load0, paths = os.getloadavg()[0], clips(a.quick)
    rows = [r for name in a.teachers.split(",") for r in measure_teacher(name.strip(), paths, a.rounds, a.quick)]
    print_table(rows)
    result = {
        **run_record(load0),
        "clips": [p.name for p in paths],
        "audio_seconds": sum(sf.info(str(p)).duration for p in paths),
        "rounds": a.rounds,
        "rows": rows,
    }
    with atomic_write(a.output, "w") as f:
        json.dump(result, f, indent=2)
    log.info("wrote %s", a.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
