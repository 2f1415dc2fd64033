"""How much data a student needs: its WER gap to the teacher and its held-out cross-entropy against hours of
training speech, with the same recipe and the same number of steps at every size.

    python -m benchmarks.data_scaling [--hours 0.25,0.5,1,2] [--max_steps 600] [--max_source_positions 750]
        [--decoder_layers 2] [--wide_hours H] [--points N] [--work DIR] [--quick]

The corpus is ``benchmarks/distill_quality.py``'s, generated once for the largest size; the point of H hours
trains on each training speaker's first H / largest share of its clips, so every smaller set lies inside the
larger ones and only the amount changes. A point is that benchmark's recipe end to end: the teacher labels the
subset, the student is cut and distilled for ``--max_steps``, and ``run_eval.py`` scores it on the real
recordings and both held-out sets (batch 8: speed is not measured here). Its teacher-forced cross-entropy on
the held-out new voices' reference text comes from the run's last evaluation (every held-out row).

Resumable across sessions: each finished point is appended to the JSON at once (``--output``, committed), so an
interrupted run loses only the point it was on, and a re-run does the missing sizes, smallest first
(``--points`` caps how many per invocation: at 600 steps one point is about an hour on 2 cores). The teacher is
evaluated once and kept in the JSON; a JSON made with another recipe is refused, not mixed in.

Fit: per set, the gap as a straight line in log2(hours) (least squares) and the hours where that line reaches
the goal (distill_quality's ``GOALS``: 3 points on new voices, 5 on real recordings); the cross-entropy as a
power law in hours. Both are drawn in ``data_scaling.png``. With two points the fit is a line through them:
read it as a direction, not a forecast.

Wider, not longer: ``--wide_hours H`` adds H hours by other kinds of voice (``tts_corpus.widen_corpus``: flite's
English voices, Piper sped up and slowed down; the same held-out speech) and writes ``data_scaling_wide.json``; a
size is then each speaker's share of the base + wide corpus, so a point compares with the base curve's point of
the same hours: equal amount, wider voices.

``--quick`` (CI): the bundled sentences' small corpus, its smallest point (about a minute of speech, 10 steps),
written into the work directory.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import distill_quality as dq
from benchmarks.common import RESULTS_DIR, run_record, save_panels, two_panels
from benchmarks.tts_corpus import AUSTEN_RDB, build_corpus, widen_corpus
from distil_whisper_jax.assets import SPEECH_DIR
from distil_whisper_jax.infra import delimited
from distil_whisper_jax.infra.files import atomic_write, setup_logging
from distil_whisper_jax.weights.loading import default_cache_dir
from tools.generate_speech import write_manifest

log = logging.getLogger("benchmarks.data_scaling")
CE_SET = "heldout_new_voices"  # the held-out cross-entropy of the curve: voices no training speaker has
RECIPE_KEYS = (
    "max_steps",
    "batch_size",
    "learning_rate",
    "decoder_layers",
    "max_source_positions",
    "max_label_length",
    "wer_threshold",
)


def subset(corpus: Path, hours: float, largest: float, out: Path) -> tuple[Path, float]:
    """``out/train.tsv``: each training speaker's first ``hours / largest`` of its clips (in the corpus's order,
    audio paths absolute). Returns it and its seconds of speech."""
    rows = list(delimited.read_rows(corpus / "train.tsv"))
    total: dict[str, float] = {}
    for r in rows:
        total[r["speaker_id"]] = total.get(r["speaker_id"], 0.0) + float(r["duration"])
    taken: dict[str, float] = dict.fromkeys(total, 0.0)
    keep = []
    for r in rows:
        sp = r["speaker_id"]
        if taken[sp] < total[sp] * hours / largest:
            taken[sp] += float(r["duration"])
            keep.append([str((corpus / r["audio"]).resolve()), r["text"], sp, r["duration"]])
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out / "train.tsv", ["audio", "text", "speaker_id", "duration"], keep)
    return out / "train.tsv", sum(taken.values())


def point_args(a: argparse.Namespace, work: Path) -> argparse.Namespace:
    """distill_quality's settings for one point: its recipe with this run's overrides, its own work directory."""
    p = dq.parse_args(["--output_dir", str(work)] + (["--quick"] if a.quick else []))
    for k in ("max_steps", "decoder_layers", "max_source_positions", "learning_rate", "batch_size", "max_label_length"):
        setattr(p, k, getattr(a, k))
    p.eval_batch_size, p.curve_points, p.curve_eval_rows = 8, 1, a.heldout_per_set
    return p


def held_out_ce(work: Path) -> float:
    """The last evaluation's teacher-forced cross-entropy on the new voices' reference text (nats per token)."""
    points = dq.curve(work)
    return points[-1]["ce"][CE_SET]


def run_point(hours: float, corpus: Path, a: argparse.Namespace, teacher: dict) -> dict:
    """One size end to end: subset, labels, cut, distillation, evaluation; what the JSON keeps of it."""
    work = a.work / (f"wide{a.wide_hours:g}_h{hours:g}" if a.wide_hours else f"h{hours:g}")
    t0, times = time.perf_counter(), {}
    train_tsv, seconds = subset(corpus, hours, a.corpus_hours, work)
    p = point_args(a, work)
    real, held = a.work / "real.tsv", [corpus / f"{k}.tsv" for k in dq.HELDOUT_SETS]
    labelled = dq.label(train_tsv, work, p, times)
    dq.make_students(work, p)
    dq.train(work, [real, held[0]], p, times)
    student = dq.evaluate(str(work / dq.TRAINED / "hf"), "eval_trained", [real, *held], work, p)
    gaps = {k: dq.gap_interval(teacher["rows"][k], student["rows"][k]) for k in student["wer"]}
    return {
        "hours": hours,
        "train_hours": seconds / 3600,
        "labelled": {k: labelled[k] for k in ("rows_written", "audio_hours_written")},
        "wer": student["wer"],
        "gap": {k: {"value": g, "interval_95": [lo, hi]} for k, (g, lo, hi) in gaps.items()},
        "ce": held_out_ce(work),
        "times_s": {**times, "total": time.perf_counter() - t0},
    }


def fit(points: list[dict]) -> dict:
    """Per set, gap ≈ a + b·log2(hours) and the hours where it meets the goal; CE ≈ c·hours^k. Needs two sizes
    (empty before). From four sizes the slope has a standard error, and a slope less than two of them below zero
    is no trend: no hours are predicted from it (``hours_to_goal`` None, as for a gap that does not fall)."""
    hours = np.array([p["hours"] for p in points])
    if len(set(hours.tolist())) < 2:
        return {}
    x = np.log2(hours)
    out: dict = {"gap": {}}
    for k, goal in (("heldout_new_voices", dq.GOALS["heldout_new_voices"]), ("real", dq.GOALS["real"])):
        y = [p["gap"][k]["value"] for p in points]
        (slope, icpt), se = np.polyfit(x, y, 1), None
        if len(x) >= 4:
            se = float(np.sqrt(np.polyfit(x, y, 1, cov=True)[1][0, 0]))
        falls = slope < 0 and (se is None or slope + 2 * se < 0)
        reach = 2 ** ((goal - icpt) / slope) if falls else None
        out["gap"][k] = {
            "intercept_at_1h": icpt,
            "per_doubling": slope,
            "per_doubling_se": se,
            "goal": goal,
            "hours_to_goal": reach,
        }
    k_ce, log_c = np.polyfit(np.log(hours), np.log([p["ce"] for p in points]), 1)
    out["ce"] = {"at_1h": math.exp(log_c), "exponent": k_ce}
    return out


def plot(result: dict, path: Path) -> None:
    pts, f = result["points"], result["fit"]
    hours = [p["hours"] for p in pts]
    fig, (ax, ax_ce) = two_panels()
    for k, color in (("heldout_new_voices", "tab:orange"), ("real", "tab:blue")):
        g = [p["gap"][k] for p in pts]
        err = [[x["value"] - x["interval_95"][0] for x in g], [x["interval_95"][1] - x["value"] for x in g]]
        ax.errorbar(hours, [x["value"] for x in g], yerr=err, fmt="o", color=color, capsize=3, label=k)
        ax.axhline(dq.GOALS[k], color=color, ls=":", lw=1)
        if f:
            xs = np.geomspace(min(hours), max(hours) * 8, 50)
            line = f["gap"][k]["intercept_at_1h"] + f["gap"][k]["per_doubling"] * np.log2(xs)
            flat = f["gap"][k]["hours_to_goal"] is None  # no falling trend (or within 2 s.e. of flat)
            ax.plot(xs, line, "--", color=color, lw=1, label=f"{k}: fit" + (", no trend" if flat else ""))
    ax.set(xscale="log", xlabel="hours of training speech", ylabel="student WER − teacher WER (points)")
    ax.set_title("WER gap to the teacher (95 % intervals; dotted: goals)", fontsize=10)
    ax_ce.plot(hours, [p["ce"] for p in pts], "o", color="tab:orange", label=CE_SET)
    if f:
        xs = np.geomspace(min(hours), max(hours) * 8, 50)
        ax_ce.plot(xs, f["ce"]["at_1h"] * xs ** f["ce"]["exponent"], "--", color="tab:orange", lw=1, label="fit")
    ax_ce.set(xscale="log", xlabel="hours of training speech", ylabel="nats per token")
    ax_ce.set_title("teacher-forced CE on held-out voices' reference text", fontsize=10)
    ticks = sorted(set(hours) | {max(hours) * k for k in (2, 4, 8)} if f else set(hours))
    for x in (ax, ax_ce):  # the sizes themselves as ticks, in hours (log axes label powers of ten otherwise)
        x.set_xticks(ticks, labels=[f"{t:g}" for t in ticks])
        x.minorticks_off()
    save_panels(fig, (ax, ax_ce), path)


def load_result(a: argparse.Namespace, recipe: dict) -> dict:
    """The JSON so far (or a new one); ``SystemExit`` naming ``--output`` when it was made with another recipe."""
    if not a.output.is_file():
        return {"recipe": recipe, "teacher": None, "points": []}
    result = json.loads(a.output.read_text())
    if result.get("recipe") != recipe:
        raise SystemExit(
            f"--output {a.output} holds points of another recipe ({result.get('recipe')}, this run: {recipe}); "
            "give another --output, or the same settings"
        )
    return result


def save(result: dict, a: argparse.Namespace, load0: float) -> None:
    result.update(run_record(load0))
    result["points"].sort(key=lambda p: p["hours"])
    result["fit"] = fit(result["points"])
    with atomic_write(a.output, "w") as f:
        json.dump(result, f, indent=2)
    if result["points"]:
        plot(result, a.output.with_suffix(".png"))


def print_table(result: dict) -> None:
    print(f"\n{'hours':>6} {'labelled h':>11} {'new voices gap':>24} {'real gap':>24} {'CE':>7}")
    for p in result["points"]:
        cells = [
            "{:6.2f} [{:5.1f}, {:5.1f}]".format(p["gap"][k]["value"], *p["gap"][k]["interval_95"])
            for k in ("heldout_new_voices", "real")
        ]
        labelled = p["labelled"]["audio_hours_written"]
        print(f"{p['hours']:6g} {labelled:11.2f} {cells[0]:>24} {cells[1]:>24} {p['ce']:7.3f}")
    for k, v in result["fit"].get("gap", {}).items():
        reach = f"reached at {v['hours_to_goal']:.1f} h" if v["hours_to_goal"] is not None else "no hours predicted"
        se = "" if v.get("per_doubling_se") is None else f" ± {v['per_doubling_se']:.2f}"
        print(f"fit {k}: {v['per_doubling']:+.2f}{se} points per doubling; goal {v['goal']} {reach}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hours", default="0.25,0.5,1,2", help="comma-separated sizes, hours of training speech")
    p.add_argument("--max_steps", type=int, default=600, help="steps at every size")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--learning_rate", type=float, default=3e-4)
    p.add_argument("--decoder_layers", type=int, default=2)
    p.add_argument("--max_source_positions", type=int, default=None, help="750: a 15 s student")
    p.add_argument("--max_label_length", type=int, default=160, help="decoder positions (96 holds a 15 s label)")
    p.add_argument("--wer_threshold", type=float, default=20.0, help="labelling filter, WER %% of a row")
    p.add_argument("--heldout_per_set", type=int, default=60)
    p.add_argument(
        "--wide_hours",
        type=float,
        default=0.0,
        help="add this many hours by flite's voices and sped-up Piper (tts_corpus.widen_corpus; Debian flite): "
        "the sizes are then shares of the base + wide corpus",
    )
    p.add_argument("--points", type=int, default=None, help="at most this many new sizes in this invocation")
    p.add_argument("--cache", type=Path, default=default_cache_dir() / "distill_quality", help="corpus cache")
    p.add_argument("--work", type=Path, default=default_cache_dir() / "data_scaling", help="runs of the points")
    p.add_argument("--output", type=Path, default=None, help="default: results/data_scaling[_wide].json")
    p.add_argument("--quick", action="store_true", help="CI: the smallest point of a small corpus, 10 steps")
    a = p.parse_args(argv)
    try:
        a.hours = sorted({float(h) for h in a.hours.split(",")})
    except ValueError:
        p.error(f"--hours {a.hours!r}: expected comma-separated numbers of hours, e.g. 0.25,0.5,1,2")
    if not a.hours or a.hours[0] <= 0:
        p.error(f"--hours {a.hours}: every size must be above 0")
    if a.wide_hours < 0:
        p.error(f"--wide_hours {a.wide_hours}: expected hours ≥ 0")
    a.output = a.output or RESULTS_DIR / ("data_scaling_wide.json" if a.wide_hours else "data_scaling.json")
    if a.quick:
        a.hours, a.max_steps, a.heldout_per_set, a.batch_size, a.points = [0.025, 0.05], 10, 8, 4, 1
        a.max_label_length = 128
        if a.work == default_cache_dir() / "data_scaling":
            a.work = Path(tempfile.mkdtemp(prefix="data_scaling_"))
        if a.output.parent == RESULTS_DIR:
            a.output = a.work / "data_scaling.json"
    a.work = a.work.resolve()
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    setup_logging()
    load0 = os.getloadavg()[0]
    text, base_hours = (SPEECH_DIR / "sentences.txt", 0.05) if a.quick else (AUSTEN_RDB, max(a.hours))
    corpus = build_corpus(text, base_hours, a.heldout_per_set, a.cache)
    if a.wide_hours:
        corpus = widen_corpus(corpus, a.wide_hours, text, a.heldout_per_set)
    a.corpus_hours = base_hours + a.wide_hours  # the nominal size the shares are of
    recipe = {k: getattr(a, k) for k in RECIPE_KEYS} | {"corpus": corpus.name, "heldout_per_set": a.heldout_per_set}
    result = load_result(a, recipe)
    a.work.mkdir(parents=True, exist_ok=True)
    dq.real_manifest(a.work)
    if result["teacher"] is None:
        sets = [a.work / "real.tsv", *(corpus / f"{k}.tsv" for k in dq.HELDOUT_SETS)]
        result["teacher"] = dq.evaluate(None, "eval_teacher", sets, a.work, point_args(a, a.work))
        save(result, a, load0)
    done = {p["hours"] for p in result["points"]}
    todo = [h for h in a.hours if h not in done][: a.points]
    log.info("sizes done: %s; this run: %s", sorted(done) or "none", todo or "none")
    for h in todo:
        result["points"].append(run_point(h, corpus, a, result["teacher"]))
        save(result, a, load0)  # at once: a stopped session keeps every finished point
        log.info("point %g h done (%d of %d sizes); wrote %s", h, len(result["points"]), len(a.hours), a.output)
    if not todo:
        save(result, a, load0)
    print_table(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
