"""Benchmark: one distillation training step, tiny.en teacher → 2-layer student, on this machine's CPU.

    python benchmarks/train_step.py [--batch_size 8] [--label_length 64] [--repeats 5] [--quick]
    python benchmarks/train_step.py --recount   # redo the FLOP-derived figures of the saved run

Teacher = the bundled real tiny.en; student = ``student.make_student(teacher, 2)`` (decoder layers 0
and 3, encoder copied and frozen). Input: log-mel of the bundled clips (cycled to the batch size);
labels: their reference transcripts tokenised after the ``<|startoftranscript|><|notimestamps|>``
prompt, EOT appended, padded to ``--label_length`` with ignored positions. fp32, one device (a 1-device mesh),
KL weight 1, T = 2, AdamW, linear schedule. Three step variants, built with ``train.make_train_step``:

* **unshared**: teacher encoder and student encoder both run (student's under stop_gradient), as the
  original does whenever it cannot prove the encoders equal;
* **shared**: one encoder pass (the teacher's, under stop_gradient) feeds both decoders;
* **cached**: encoder outputs precomputed once (``train.encoder_outputs``, its time reported
  separately) and passed as ``batch["encoder_outputs"]``: only the decoders run in the step.

Each is compiled first (compile time reported), then the variants take turns within each repeat
(the machine may be shared) and the median step time is kept. MFU = analytic model FLOPs of the step
(``train.flops_per_step``: matmuls only; backward 2× forward where the input needs a gradient, 1× where
only the weight does, as behind a stop-gradient) / step time /
fp32 FLOP/s of a 2048² ``jnp.dot`` measured at the start of the same repeat (median over repeats);
"MFU cpu" is the same ratio per process-CPU second (immune to the machine being shared), and
``mfu_vs_best_peak`` uses the best matmul of ``benchmarks/transcribe.py``'s ``matmul_peak`` at the end. XLA's own
cost analysis of the same loss + gradient with the layers unrolled and the attention untiled is recorded
as a cross-check of the analytic count (it also counts elementwise ops; a scanned layer stack or a
tiled attention loop would be counted once).

Finally a FLOP-based projection of the original distil-whisper recipe (large-v2 → 2 decoder layers,
global batch 256, 128-token labels, bf16, TPU v4-8 = 4 chips × 275 TFLOP/s bf16), with the parameter +
optimiser memory per chip, as a sanity check of the design.

``--recount`` recomputes the FLOP counts, the XLA cross-check and every figure derived from them (MFU,
FLOP/s, the projection) for the run saved in ``--output``, from its stored step times and matmul
peaks: for a corrected count, without re-measuring.

Prints a table and writes ``benchmarks/results/train_step.json`` (atomically).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
from benchmarks.common import cpu_model, matmul_peak, timed, xla_flops  # noqa: E402  (shared benchmark helpers)

log = logging.getLogger("benchmarks.train_step")
DEFAULT_OUTPUT = ROOT / "results" / "train_step.json"
VARIANTS = ("unshared", "shared", "cached")


def make_batch(pre, batch_size: int, label_length: int) -> dict:
    """Real log-mel + tokenised reference transcripts of the bundled clips, cycled to ``batch_size``."""
    from distil_whisper_jax.assets import bundled_clips
    from distil_whisper_jax.core.losses import IGNORE_INDEX
    from distil_whisper_jax.speech.audio import load_audio, log_mel_spectrogram
    from distil_whisper_jax.speech.token_layout import prompt_ids, special_tokens

    clips = bundled_clips()
    rows = [clips[i % len(clips)] for i in range(batch_size)]
    mel = log_mel_spectrogram([load_audio(p) for p, _ in rows], pre.config.num_mel_bins)
    sp = special_tokens(pre.tokenizer)
    prompt = list(prompt_ids(sp, None, "transcribe", timestamps=False))
    tokens = np.full((batch_size, label_length), sp.eot, np.int32)
    labels = np.full((batch_size, label_length), IGNORE_INDEX, np.int32)
    for i, (_, text) in enumerate(rows):
        seq = prompt + pre.tokenizer.encode(" " + text.strip(), add_special_tokens=False) + [sp.eot]
        seq = seq[: label_length + 1]
        tokens[i, : len(seq) - 1] = seq[:-1]
        # Targets: the next token, ignored while still inside the prompt.
        labels[i, len(prompt) - 1 : len(seq) - 1] = seq[len(prompt) :]
    return {"input_features": mel, "decoder_input_ids": tokens, "labels": labels}


def matmul_now(n: int = 2048, reps: int = 3) -> dict:
    """fp32 FLOP/s of a jitted n×n ``jnp.dot`` right now: per wall second (best of ``reps``) and per
    process-CPU second of that best run (the machine may be shared: the per-repeat peak keeps the MFU
    a like-for-like ratio, and the CPU-time ratio is immune to being descheduled)."""
    import jax
    import jax.numpy as jnp

    dot = jax.jit(jnp.dot)
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    dot(a, a).block_until_ready()
    runs = [timed(lambda: dot(a, a).block_until_ready())[1:] for _ in range(reps)]
    wall, cpu = min(runs)
    return {"wall": 2.0 * n**3 / wall, "cpu": 2.0 * n**3 / max(cpu, 1e-9)}


def unrolled_xla_flops(student_config, teacher_config, share: bool, batch: dict) -> float | None:
    """XLA's FLOP count of the step's loss + gradient with the layers unrolled and the attention untiled
    (XLA counts a loop body once), from the lowered HLO (no compile). Includes elementwise ops; excludes
    the optimiser."""
    import jax

    from distil_whisper_jax.core import train
    from distil_whisper_jax.core.model import param_shapes

    fn = train.make_loss_fn(
        student_config,
        teacher_config,
        train.StepOptions(freeze_encoder=True, share_encoder=share, unroll=True),
        attention_query_chunk=None,
    )
    spec = {k: jax.ShapeDtypeStruct(np.shape(v), v.dtype) for k, v in batch.items()}
    lowered = jax.jit(jax.value_and_grad(fn, has_aux=True)).lower(
        param_shapes(student_config), param_shapes(teacher_config), spec, jax.random.PRNGKey(0), 1
    )
    return xla_flops(lowered)


def tpu_projection(label_length: int = 128, global_batch: int = 256, chips: int = 4) -> dict:
    """Analytic step FLOPs and ideal step time of the original recipe on a TPU v4-8."""
    from distil_whisper_jax.core import train
    from distil_whisper_jax.core.flops import known_peak_tflops
    from distil_whisper_jax.core.model import preset

    teacher = preset("large-v2")
    student = teacher.replace(decoder_layers=2)
    peak = chips * known_peak_tflops("TPU v4") * 1e12
    out = {
        "teacher": "large-v2",
        "student_decoder_layers": 2,
        "global_batch": global_batch,
        "label_length": label_length,
        "chips": chips,
        "peak_flops_per_s": peak,
    }
    for name, kw in (("unshared", {}), ("shared", {"share_encoder": True})):
        f = train.flops_per_step(student, teacher, global_batch, label_length, freeze_encoder=True, **kw)
        out[name] = {
            "flops": f,
            "ideal_step_s": f["total"] / peak,
            "step_s_at_40pct_mfu": f["total"] / (0.4 * peak),
            "hours_80k_steps_at_40pct_mfu": 80_000 * f["total"] / (0.4 * peak) / 3600,
        }
    out["shared_speedup_flops"] = out["unshared"]["flops"]["total"] / out["shared"]["flops"]["total"]

    # Parameter + optimiser memory per chip (replicated, fp32 master weights): ours keeps Adam moments
    # for the trainable decoder only; the original kept them for the frozen encoder too.
    from distil_whisper_jax.core.model import count_params, param_shapes

    shapes = param_shapes(student)
    n_student, n_teacher = count_params(shapes), count_params(param_shapes(teacher))
    n_encoder = count_params(shapes["encoder"])
    gib = 2.0**30
    out["memory_per_chip_gib"] = {
        "teacher_params_fp32": 4 * n_teacher / gib,
        "student_params_fp32": 4 * n_student / gib,
        "adam_moments_ours": 8 * (n_student - n_encoder) / gib,
        "adam_moments_original": 8 * n_student / gib,
    }
    out["params"] = {"teacher": n_teacher, "student": n_student, "student_encoder": n_encoder}
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--label_length", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="rounds of the three variants (median kept)")
    p.add_argument("--steps_per_repeat", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="batch 2, 2 repeats (smoke test)")
    p.add_argument("--recount", action="store_true", help="recompute the FLOP-derived figures of --output")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    return p


def variant_flops(s_config, t_config, name: str, batch_size: int, label_length: int) -> dict:
    from distil_whisper_jax.core import train

    share = name != "unshared"
    return train.flops_per_step(
        s_config,
        t_config,
        batch_size,
        label_length,
        freeze_encoder=True,
        share_encoder=share,
        cached_encoder=name == "cached",
    )


def build_runs(pre, s_config, s_params, batches: dict, teacher, mesh, args) -> dict:
    """Each variant's step, compiled and run once (the first call's time includes the compile)."""
    import jax

    from distil_whisper_jax.core import train

    schedule = train.make_schedule("linear", 1e-4, 10, 1000)
    runs = {}
    for name in VARIANTS:
        share = name != "unshared"
        tx = train.make_optimizer(s_params, schedule=schedule, freeze_encoder=True)
        options = train.StepOptions(freeze_encoder=True, share_encoder=share, kd_temperature=2.0)
        step = train.make_train_step(s_config, pre.config, options, tx, mesh=mesh)
        state = train.create_train_state(s_params, tx, seed=0)
        t0 = time.perf_counter()
        state, m = step(state, teacher, batches[name])
        jax.block_until_ready(m)
        first = time.perf_counter() - t0
        runs[name] = {
            "step": step,
            "state": state,
            "batch": batches[name],
            "times": [],
            "first_call_s": first,
            "flops": variant_flops(s_config, pre.config, name, args.batch_size, args.label_length),
            "xla_flops": unrolled_xla_flops(s_config, pre.config, share, batches[name]),
            "loss": float(m["loss"]),
            "mfu_wall": [],
            "mfu_cpu": [],
        }
        log.info("%s: first call (compile + step) %.1f s, loss %.4f", name, first, float(m["loss"]))
    return runs


def measure(runs: dict, teacher, args) -> list[dict]:
    """The variants in turns, ``args.repeats`` times, each round after a fresh matmul measurement; returns
    those matmul measurements."""
    import jax

    peaks = []
    for r in range(args.repeats):
        peaks.append(matmul_now())
        for name in VARIANTS:
            run = runs[name]
            for _ in range(args.steps_per_repeat):
                (run["state"], _), wall, cpu = timed(
                    lambda run=run: jax.block_until_ready(run["step"](run["state"], teacher, run["batch"]))
                )
                run["times"].append(wall)
                run["mfu_wall"].append(run["flops"]["total"] / wall / peaks[-1]["wall"])
                run["mfu_cpu"].append(run["flops"]["total"] / cpu / peaks[-1]["cpu"])
        times = ", ".join(f"{n} {runs[n]['times'][-1]:.2f} s" for n in VARIANTS)
        log.info("repeat %d/%d: matmul %.0f GFLOP/s; %s", r + 1, args.repeats, peaks[-1]["wall"] / 1e9, times)
    return peaks


def summarise(run: dict, batch_size: int, n_tokens: int, peak: float) -> dict:
    t = statistics.median(run["times"])
    return {
        "step_s_median": t,
        "step_s_all": run["times"],
        "steps_per_s": 1 / t,
        "samples_per_s": batch_size / t,
        "tokens_per_s": n_tokens / t,
        "first_call_s": run["first_call_s"],
        "model_flops": run["flops"],
        "xla_cost_analysis_flops": run["xla_flops"],
        "model_flops_per_s": run["flops"]["total"] / t,
        "mfu": statistics.median(run["mfu_wall"]),  # vs the matmul measured in the same repeat
        "mfu_cpu_time": statistics.median(run["mfu_cpu"]),
        "mfu_vs_best_peak": run["flops"]["total"] / t / peak,
        "loss_first_step": run["loss"],
    }


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.loadavg_at_start = list(os.getloadavg())  # before any work: says whether the machine was idle
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.recount:
        return recount(args.output)
    if args.quick:
        args.batch_size, args.repeats = 2, 2
    import jax

    from distil_whisper_jax.core import parallel, train
    from distil_whisper_jax.weights.loading import load_pretrained
    from distil_whisper_jax.weights.student import make_student

    pre = load_pretrained()
    s_config, s_params, _ = make_student(pre.config, pre.params, 2)
    batch = make_batch(pre, args.batch_size, args.label_length)
    n_tokens = int((batch["labels"] >= 0).sum())
    mesh = parallel.data_mesh(jax.devices()[:1])
    teacher = parallel.replicate(pre.params, mesh)
    log.info("tiny.en → 2-layer, batch %d × %d (%d real tokens)", args.batch_size, args.label_length, n_tokens)

    encoder_s = []
    for _ in range(2):  # first call (compile) and steady
        t0 = time.perf_counter()
        enc = train.encoder_outputs(pre.config, teacher, batch["input_features"], mesh=mesh).block_until_ready()
        encoder_s.append(time.perf_counter() - t0)
    cached_batch = {k: v for k, v in batch.items() if k != "input_features"} | {"encoder_outputs": enc}
    batches = {"unshared": batch, "shared": batch, "cached": cached_batch}
    runs = build_runs(pre, s_config, s_params, batches, teacher, mesh, args)
    peaks = measure(runs, teacher, args)
    peak = matmul_peak(quick=args.quick)
    results = {name: summarise(runs[name], args.batch_size, n_tokens, peak["peak"]) for name in VARIANTS}
    report = make_report(args, n_tokens, peak, peaks, {"first_call": encoder_s[0], "steady": encoder_s[1]}, results)
    print_report(report)
    write_report(report, args.output)
    return 0


def make_report(args, n_tokens: int, peak: dict, peaks: list, encoder_s: dict, results: dict) -> dict:
    import jax

    ratios = {
        "shared_vs_unshared_speed": results["unshared"]["step_s_median"] / results["shared"]["step_s_median"],
        "cached_vs_unshared_speed": results["unshared"]["step_s_median"] / results["cached"]["step_s_median"],
    }
    return {
        "benchmark": "distillation train step, tiny.en -> 2-layer student, fp32, CPU, 1 device",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_at_start": args.loadavg_at_start,
            "loadavg_at_end": list(os.getloadavg()),
            "jax": jax.__version__,
            "XLA_FLAGS": os.environ.get("XLA_FLAGS"),
        },
        "settings": {
            "batch_size": args.batch_size,
            "label_length": args.label_length,
            "label_tokens": n_tokens,
            "repeats": args.repeats,
            "steps_per_repeat": args.steps_per_repeat,
            "dtype": "float32",
            "freeze_encoder": True,
            "kl_weight": 1.0,
            "temperature": 2.0,
        },
        "matmul_peak_flops_per_s": peak,
        "matmul_2048_per_repeat": peaks,
        "encoder_outputs_s": encoder_s,
        "results": results,
        "ratios": ratios,
        "targets": targets(results, ratios),
        "tpu_v4_8_projection": tpu_projection(),
    }


def targets(results: dict, ratios: dict) -> dict:
    return {
        "mfu_ge_0.40": {v: results[v]["mfu"] >= 0.40 for v in VARIANTS},
        "shared_ge_1.5x_unshared": ratios["shared_vs_unshared_speed"] >= 1.5,
    }


def write_report(report: dict, path: Path) -> None:
    from distil_whisper_jax.infra.files import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as f:
        json.dump(report, f, indent=2)
    log.info("wrote %s", path)


def recount(path: Path) -> int:
    """Recompute the FLOP counts of the run saved at ``path`` and every figure derived from them, from its
    stored step times and matmul peaks (each MFU is a median of FLOPs / time / peak over repeats, so it
    scales exactly with the count); the XLA cross-check and the TPU projection are recomputed too."""
    from distil_whisper_jax.weights.loading import load_pretrained
    from distil_whisper_jax.weights.student import make_student

    report = json.loads(path.read_text())
    settings = report["settings"]
    b, length = settings["batch_size"], settings["label_length"]
    pre = load_pretrained()
    s_config, _, _ = make_student(pre.config, pre.params, 2)
    batch = make_batch(pre, b, length)
    enc = np.zeros((b, pre.config.max_source_positions, pre.config.d_model), np.float32)
    cached_batch = {k: v for k, v in batch.items() if k != "input_features"} | {"encoder_outputs": enc}
    for name, r in report["results"].items():
        flops = variant_flops(s_config, pre.config, name, b, length)
        scale = flops["total"] / r["model_flops"]["total"]
        for key in ("model_flops_per_s", "mfu", "mfu_cpu_time", "mfu_vs_best_peak"):
            r[key] *= scale
        r["model_flops"] = flops
        r["xla_cost_analysis_flops"] = unrolled_xla_flops(
            s_config, pre.config, name != "unshared", cached_batch if name == "cached" else batch
        )
    report["targets"] = targets(report["results"], report["ratios"])
    report["tpu_v4_8_projection"] = tpu_projection()
    report["recounted"] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "what": "model_flops, xla_cost_analysis_flops, model_flops_per_s, mfu*, targets and the TPU projection "
        "recomputed by --recount with the current FLOP count; times and matmul peaks are the run's",
    }
    print_report(report)
    write_report(report, path)
    return 0


def print_report(rep: dict) -> None:
    s = rep["settings"]
    print(
        f"\ntiny.en → 2-layer, batch {s['batch_size']} × {s['label_length']} ({s['label_tokens']} label tokens), "
        f"fp32, {rep['machine']['cpu']}, load {rep['machine']['loadavg_at_end'][0]:.1f}"
    )
    print(
        f"fp32 matmul peak {rep['matmul_peak_flops_per_s']['peak'] / 1e9:.0f} GFLOP/s; encoder outputs "
        f"(batch) {rep['encoder_outputs_s']['steady']:.2f} s"
    )
    print(
        f"{'variant':<9} {'step s':>7} {'steps/s':>8} {'samples/s':>9} {'GFLOP/step':>10} {'XLA GFLOP':>9} "
        f"{'GFLOP/s':>8} {'MFU':>6} {'MFU cpu':>7} {'compile+1 s':>11}"
    )
    for name, r in rep["results"].items():
        xla = r["xla_cost_analysis_flops"]
        print(
            f"{name:<9} {r['step_s_median']:7.2f} {r['steps_per_s']:8.3f} {r['samples_per_s']:9.2f} "
            f"{r['model_flops']['total'] / 1e9:10.1f} {(xla or float('nan')) / 1e9:9.1f} "
            f"{r['model_flops_per_s'] / 1e9:8.1f} {100 * r['mfu']:5.1f}% {100 * r['mfu_cpu_time']:6.1f}% "
            f"{r['first_call_s']:11.1f}"
        )
    ratios = rep["ratios"]
    print(
        f"shared/unshared speed: {ratios['shared_vs_unshared_speed']:.2f}×, "
        f"cached/unshared: {ratios['cached_vs_unshared_speed']:.2f}×"
    )
    t = rep["tpu_v4_8_projection"]
    print(f"\nTPU v4-8 projection, large-v2 → 2-layer, batch {t['global_batch']} × {t['label_length']}:")
    for name in ("unshared", "shared"):
        v = t[name]
        print(
            f"  {name:<8} {v['flops']['total'] / 1e15:6.1f} PFLOP/step, ideal {v['ideal_step_s']:.2f} s, "
            f"at 40% MFU {v['step_s_at_40pct_mfu']:.2f} s → 80k steps {v['hours_80k_steps_at_40pct_mfu']:.0f} h"
        )
    m = t["memory_per_chip_gib"]
    print(
        "  per chip: teacher {teacher_params_fp32:.1f} GiB + student {student_params_fp32:.1f} GiB + Adam "
        "{adam_moments_ours:.2f} GiB (original: {adam_moments_original:.1f} GiB)".format(**m)
    )


if __name__ == "__main__":
    sys.exit(main())
