"""Benchmark: tiny.en greedy transcription (no timestamps) of the bundled clips, JAX vs 🤗 transformers vs CTranslate2.

    python -m benchmarks.transcribe [--repeats 5] [--batch_sizes 1,8] [--quick]

All three engines get the same input, log-mel features already computed (``audio.log_mel_spectrogram``),
and return token ids, for the whole clip set (the bundled clips ≤ 30 s) looped at each batch size:

* **jax**: this project, fp32, ``distil_whisper_jax.decode.generate.generate`` with ``generate.generation_options``
  on one device (``devices=jax.local_devices()[:1]``); a short last batch (``--no_fill``) is padded as
  ``transcribe``'s decoder pads it (``decoding.pad_rows``: to the next of 1, 2, 4, … rows, copies of its last
  row). Compile time (first call) is reported separately from the steady state.
* **transformers**: ``WhisperForConditionalGeneration.generate`` (PyTorch, CPU, fp32) holding the same weights
  (built from the Flax tree via ``convert.hf.flax_to_hf``, as ``tests/conftest.py`` builds its reference),
  the same suppress lists and the same ``max_new_tokens``; ``torch.set_num_threads(os.cpu_count())``.
* **ct2**: ``ctranslate2.models.Whisper(default_model_dir(), compute_type="float32",
  intra_threads=os.cpu_count())``, ``generate(..., beam_size=1)``. CTranslate2 caps generation at
  ``max_length // 2`` tokens, so ``max_length = 2 * max_new_tokens`` gives the same cap.

By default the clip list is cycled to fill the last batch (5 clips at batch 8 → 8 clips, 3 repeated), so
every engine decodes the same full batches; ``--no_fill`` uses each clip once. The frameworks are timed
round-robin within each repeat (the machine may be shared), steady state = median over ``--repeats``.
The transcripts of all engines are compared token for token.

Then the encoder alone: analytic forward FLOPs of the encoder (convs, q/k/v/out projections, QKᵀ, AV, MLP;
2·m·n·k per matmul), cross-checked with XLA's cost analysis, the jitted encoder timed at batch 8 (also
the transformers and CTranslate2 encoders, for the split encoder/decoder picture), and its FLOP/s as a
fraction of a measured fp32 matmul peak (best of several jitted ``jnp.dot`` of square fp32 matrices).

``--breakdown`` adds, per engine and batch size, the encoder time and the cost of one decoder step (the
longest clip repeated to the batch size, decoded for exactly 21 and for 61 tokens); ``--profile`` adds a
per-op breakdown (XLA thread time) of one JAX batch from the JAX profiler. ``--jax_impl PKG`` times a
patched copy of the package instead (its ``decode/generate``, ``core/model`` and ``core/parallel`` modules; put it
on ``PYTHONPATH``).

Prints a table and writes ``benchmarks/results/transcribe.json`` (atomically).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import functools
import importlib
import json
import logging
import os
import platform
import statistics
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.common import (
    RESULTS_DIR,
    TransformersEngine,
    cpu_model,
    matmul_peak,
    strip_ids,
    timed,
    xla_flops,
)

log = logging.getLogger("benchmarks.transcribe")
DEFAULT_OUTPUT = RESULTS_DIR / "transcribe.json"
FRAMEWORKS = ("jax", "transformers", "ct2")


# ------------------------------------------------------------------------------------------------
# Small helpers


def batches_of(n: int, batch_size: int, fill: bool) -> list[list[int]]:
    """Clip indices per batch; with ``fill`` the clip list is cycled so the last batch is full."""
    total = -(-n // batch_size) * batch_size if fill else n
    order = [i % n for i in range(total)]
    return [order[i : i + batch_size] for i in range(0, total, batch_size)]


# ------------------------------------------------------------------------------------------------
# The three engines: each is (name, run(mel_batch [b, 80, 3000], n_valid) -> list of id lists)


class JaxEngine:
    name = "jax"

    def __init__(self, pre, prompt, opts, impl: str = "distil_whisper_jax"):
        import jax

        self.gen_mod = importlib.import_module(impl + ".decode.generate")
        from distil_whisper_jax.decode import decoding

        self.pad_batch = decoding.pad_rows
        self.pre, self.prompt = pre, prompt
        # A patched copy (--jax_impl) has its own GenerationOptions class; same fields.
        self.opts = self.gen_mod.GenerationOptions(**dataclasses.asdict(opts))
        self.devices = jax.local_devices()[:1]
        self.params = jax.device_put(pre.params, self.devices[0])

    def __call__(self, mel: np.ndarray, batch_size: int) -> list[list[int]]:
        padded = self.pad_batch(mel, batch_size)  # as transcribe's decoder pads a batch
        out = self.gen_mod.generate(self.params, padded, self.prompt, self.pre.config, self.opts, devices=self.devices)
        return [strip_ids(r, self.prompt, self.opts.eot) for r in out[: len(mel)]]


class CT2Engine:
    name = "ct2"

    def __init__(self, prompt, opts, threads: int):
        import ctranslate2

        from distil_whisper_jax.weights.loading import default_model_dir

        self.ct2 = ctranslate2
        self.model = ctranslate2.models.Whisper(
            str(default_model_dir()), device="cpu", compute_type="float32", intra_threads=threads
        )
        self.prompt, self.opts = prompt, opts

    def __call__(self, mel: np.ndarray, batch_size: int) -> list[list[int]]:
        feats = self.ct2.StorageView.from_array(np.ascontiguousarray(mel, np.float32))
        res = self.model.generate(
            feats, [self.prompt] * len(mel), beam_size=1, max_length=2 * self.opts.max_new_tokens
        )  # CT2 generates ≤ max_length // 2
        return [strip_ids(r.sequences_ids[0], self.prompt, self.opts.eot) for r in res]

    def encode(self, mel: np.ndarray):
        return self.model.encode(self.ct2.StorageView.from_array(np.ascontiguousarray(mel, np.float32)), to_cpu=True)


# ------------------------------------------------------------------------------------------------
# Measurements


def run_clip_set(engine, mel: np.ndarray, batches: list[list[int]], batch_size: int):
    """Transcribe the clip set once; returns (ids per clip slot, wall s, cpu s)."""

    def go():
        ids = []
        for idx in batches:
            ids += engine(mel[idx], batch_size)
        return ids

    return timed(go)


def jax_encoder(cfg, impl: str = "distil_whisper_jax"):
    """The jitted scanned encoder, run as generate runs it (row by row on CPU)."""
    import jax

    Whisper = importlib.import_module(impl + ".core.model").Whisper
    par = importlib.import_module(impl + ".core.parallel")
    # CPU attention tiling is chosen by the caller (older --jax_impl copies chose it inside the model)
    tiling = {"attention_query_chunk": par.attention_query_chunk()} if hasattr(par, "attention_query_chunk") else {}
    model = Whisper(cfg, **tiling)
    encode = getattr(
        importlib.import_module(impl + ".decode.generate"),
        "encode",  # (older --jax_impl copies lack it)
        lambda m, p, x: m.apply({"params": p}, x, method=Whisper.encode),
    )
    return jax.jit(lambda p, x: encode(model, p, x))


def encoder_section(
    pre, engines: dict, batch: int, repeats: int, quick: bool, impl: str = "distil_whisper_jax"
) -> dict:
    import jax
    import jax.numpy as jnp

    from distil_whisper_jax.core.flops import encoder_flops_by_part

    Whisper = importlib.import_module(impl + ".core.model").Whisper

    cfg = pre.config
    mel = np.random.default_rng(0).standard_normal((batch, cfg.num_mel_bins, cfg.n_frames)).astype(np.float32)
    fn = jax_encoder(cfg, impl)
    params = jax.device_put(pre.params, jax.local_devices()[0])
    x = jax.device_put(jnp.asarray(mel), jax.local_devices()[0])
    analytic = encoder_flops_by_part(cfg, batch)
    # XLA counts a while-loop (scan) body once, so cross-check on the unrolled encoder.
    unrolled = Whisper(cfg, unroll=True)
    lowered = jax.jit(lambda p, x: unrolled.apply({"params": p}, x, method=Whisper.encode)).lower(params, x)
    xla = xla_flops(lowered)
    if xla is None:
        xla = xla_flops(lowered.compile())
    log.info(
        "encoder: analytic %.1f GFLOP at batch %d, XLA cost analysis %s GFLOP",
        analytic["total"] / 1e9,
        batch,
        f"{xla / 1e9:.1f}" if xla else "n/a",
    )
    _, first, _ = timed(lambda: fn(params, x).block_until_ready())
    runs = [timed(lambda: fn(params, x).block_until_ready()) for _ in range(repeats)]
    t_jax = statistics.median(r[1] for r in runs)
    cpu_jax = statistics.median(r[2] / r[1] for r in runs)
    peak = matmul_peak(quick=quick)
    res = {
        "batch": batch,
        "analytic_flops": analytic,
        "xla_cost_analysis_flops": xla,
        "jax_first_call_s": first,
        "jax_s": t_jax,
        "jax_cpu_util": cpu_jax,
        "jax_flops_per_s": analytic["total"] / t_jax,
        "matmul_peak_flops_per_s": peak,
        "pct_of_matmul_peak": 100.0 * analytic["total"] / t_jax / peak["peak"],
    }
    for name in ("transformers", "ct2"):
        eng = engines.get(name)
        if eng is None:
            continue
        eng.encode(mel)
        res[f"{name}_s"] = statistics.median(timed(lambda eng=eng: eng.encode(mel))[1] for _ in range(repeats))
    return res


def breakdown_section(
    pre,
    specials,
    prompt,
    opts,
    frameworks: list[str],
    clip_mel: np.ndarray,
    batch_sizes: list[int],
    repeats: int,
    threads: int,
    impl: str,
    steps: tuple[int, int] = (21, 61),
) -> dict:
    """Encoder time and time per decoder step, per engine and batch size: one clip repeated ``batch`` times,
    decoded for exactly ``steps[0]`` and ``steps[1]`` tokens (the clip must be longer than that), so
    per step = (t[1] - t[0]) / (steps[1] - steps[0]); the rest of t[0] is encoder + prompt + overhead."""
    out: dict[str, dict] = {}
    for bs in batch_sizes:
        mel = np.repeat(clip_mel[None], bs, axis=0)
        runs: dict[tuple, Callable] = {}
        for name in frameworks:
            if name == "jax":
                base = JaxEngine(pre, prompt, opts, impl)
            elif name == "transformers":
                base = TransformersEngine(pre, specials, prompt, opts, threads)
            else:
                base = CT2Engine(prompt, opts, threads)
            for n in steps:  # one model per engine; only the decode length differs
                eng = copy.copy(base)
                o = dataclasses.replace(opts, max_new_tokens=n)
                eng.opts = base.gen_mod.GenerationOptions(**dataclasses.asdict(o)) if name == "jax" else o
                got = eng(mel, bs)  # compile / warm up
                if any(len(r) != n for r in got):
                    raise RuntimeError(f"{name}: the breakdown clip ended before {n} tokens; use a longer clip")
                runs[(name, n)] = lambda eng=eng, mel=mel, bs=bs: eng(mel, bs)
            if name == "jax":
                import jax

                fn = jax_encoder(pre.config, impl)
                params, x = jax.device_put(pre.params), jax.device_put(mel)
                runs[(name, "enc")] = lambda fn=fn, params=params, x=x: fn(params, x).block_until_ready()
            else:
                runs[(name, "enc")] = lambda eng=eng, mel=mel: eng.encode(mel)
            runs[(name, "enc")]()
        times = {k: [] for k in runs}
        cpu = {k: [] for k in runs}
        for _ in range(repeats):
            for k, fn in runs.items():  # round-robin
                _, wall, c = timed(fn)
                times[k].append(wall)
                cpu[k].append(c / wall)
        for name in frameworks:
            t0, t1, te = (statistics.median(times[(name, k)]) for k in (steps[0], steps[1], "enc"))
            step = (t1 - t0) / (steps[1] - steps[0])
            out.setdefault(name, {})[str(bs)] = {
                "encoder_s": te,
                "per_step_s": step,
                "rest_s": t0 - te - steps[0] * step,
                "encoder_cpu_util": statistics.median(cpu[(name, "enc")]),
                "decode_cpu_util": statistics.median(cpu[(name, steps[1])]),
            }
            log.info("  breakdown %-12s batch %d: encoder %.0f ms, %.1f ms/step", name, bs, te * 1e3, step * 1e3)
    return out


def _hlo_op_names(hlo_text: str) -> dict[str, str]:
    """Instruction name -> the JAX op path it came from (metadata op_name), from optimized HLO text."""
    import re

    names = {}
    for m in re.finditer(r"%([\w.\-]+) = [^\n]*?op_name=\"([^\"]+)\"", hlo_text):
        path = m.group(2).replace("jit(run)/", "").replace("closed_call/", "").replace("while/body/", "")
        names.setdefault(m.group(1), path)
    return names


def profile_jax(engine: JaxEngine, mel: np.ndarray, batch_size: int, top: int = 30) -> list[dict]:
    """Per-op XLA thread time of one JAX ``generate`` call (ops summed by name), from the JAX profiler,
    each op labelled with the JAX source op it was lowered from."""
    import collections
    import glob
    import shutil
    import tempfile

    import jax

    padded = engine.pad_batch(mel, batch_size)
    fn = engine.gen_mod._compiled(engine.pre.config, jax.numpy.float32, engine.opts, ())
    try:
        labels = _hlo_op_names(fn.lower(engine.params, padded, np.asarray(engine.prompt, np.int32)).compile().as_text())
    except Exception:  # labels are a nicety
        labels = {}
    d = tempfile.mkdtemp(prefix="dwj-profile-")
    try:
        engine(mel, batch_size)
        jax.profiler.start_trace(d)
        engine(mel, batch_size)
        jax.profiler.stop_trace()
        files = sorted(glob.glob(f"{d}/**/*.xplane.pb", recursive=True))
        data = jax.profiler.ProfileData.from_file(files[-1])
        total, count = collections.Counter(), collections.Counter()
        for plane in data.planes:
            for line in plane.lines:
                if not line.name.startswith("tf_XLA"):
                    continue
                for ev in line.events:
                    if ev.name.startswith(("ThunkExecutor", "while", "Slinky")):
                        continue
                    total[ev.name] += ev.duration_ns
                    count[ev.name] += 1
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return [
        {"op": k, "source": labels.get(k, ""), "thread_ms": v / 1e6, "calls": count[k]}
        for k, v in total.most_common(top)
    ]


# ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--repeats", type=int, default=5, help="timed passes over the clip set per engine and batch size")
    p.add_argument("--batch_sizes", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--quick", action="store_true", help="2 repeats, smaller matmul-peak search (a smoke run)")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS), help=f"subset of {','.join(FRAMEWORKS)}")
    p.add_argument(
        "--no_fill",
        action="store_true",
        help="use each clip once (short last batch; JAX pads it with zeros as transcribe does)",
    )
    p.add_argument("--skip_encoder", action="store_true", help="skip the encoder FLOP-utilisation section")
    p.add_argument(
        "--breakdown",
        action="store_true",
        help="also time each engine's encoder and its cost per decoder step (forced 21 vs 61 tokens)",
    )
    p.add_argument("--profile", action="store_true", help="also print the per-op XLA breakdown of one JAX batch")
    p.add_argument(
        "--jax_impl",
        default="distil_whisper_jax",
        help="package whose .generate module to time (A/B a patched copy on sys.path)",
    )
    p.add_argument("--output", default=str(DEFAULT_OUTPUT), help="JSON results file (written atomically)")
    return p


def main(argv=None) -> int:
    load_start = os.getloadavg()  # before any work: the figure that says whether the machine was idle
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    repeats = 2 if args.quick else args.repeats
    if repeats < 1:
        raise SystemExit("--repeats must be ≥ 1")
    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        raise SystemExit(f"--batch_sizes must be comma-separated integers, got {args.batch_sizes!r}") from None
    if not batch_sizes or min(batch_sizes) < 1:
        raise SystemExit(f"--batch_sizes must be positive integers, got {args.batch_sizes!r}")
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    if not frameworks or set(frameworks) - set(FRAMEWORKS):
        raise SystemExit(f"--frameworks must be a subset of {','.join(FRAMEWORKS)}, got {args.frameworks!r}")
    threads = os.cpu_count() or 1

    import jax

    from distil_whisper_jax.assets import bundled_clips
    from distil_whisper_jax.decode.generate import generation_options
    from distil_whisper_jax.speech import audio
    from distil_whisper_jax.speech.token_layout import prompt_ids, special_tokens
    from distil_whisper_jax.weights.loading import load_pretrained

    log.info("loading tiny.en, clips and features")
    pre = load_pretrained()
    tok, specials = pre.tokenizer, special_tokens(pre.tokenizer)
    prompt = prompt_ids(specials)
    opts = generation_options(pre, specials, prompt_len=len(prompt))
    clips = bundled_clips()  # ≤ 30 s
    waves = [audio.load_audio(p) for p, _ in clips]
    mel = audio.log_mel_spectrogram(waves, n_mels=pre.config.num_mel_bins)
    durations = [len(w) / audio.SAMPLE_RATE for w in waves]
    names = [p.name for p, _ in clips]
    log.info(
        "%d clips, %.1f s of audio; max_new_tokens=%d, prompt=%s",
        len(clips),
        sum(durations),
        opts.max_new_tokens,
        prompt,
    )

    engines: dict[str, Any] = {}
    for name in frameworks:
        log.info("building %s", name)
        if name == "jax":
            engines[name] = JaxEngine(pre, prompt, opts, args.jax_impl)
        elif name == "transformers":
            engines[name] = TransformersEngine(pre, specials, prompt, opts, threads)
        else:
            engines[name] = CT2Engine(prompt, opts, threads)

    results: dict[str, dict] = {name: {} for name in engines}
    transcripts: dict[str, dict] = {}
    for bs in batch_sizes:
        batches = batches_of(len(clips), bs, fill=not args.no_fill)
        slots = [i for b in batches for i in b]
        audio_s = sum(durations[i] for i in slots)
        log.info("batch %d: %d batches, %d clip slots, %.1f s of audio per pass", bs, len(batches), len(slots), audio_s)
        ids: dict[str, list] = {}
        for name, eng in engines.items():
            if name == "jax":  # compile time = first call of this batch shape minus a warm call of it
                first = functools.partial(eng, mel[batches[0]], bs)
                _, cold, _ = timed(first)
                _, warm, _ = timed(first)
                results[name][str(bs)] = {"first_call_s": cold, "warm_call_s": warm, "compile_s": max(cold - warm, 0.0)}
                log.info("  jax compile ≈ %.2f s (first call %.2f s, warm %.2f s)", cold - warm, cold, warm)
            out, wall, _ = run_clip_set(eng, mel, batches, bs)  # warm-up pass; gives the transcripts
            ids[name] = out
            results[name].setdefault(str(bs), {})["first_pass_s"] = wall
            log.info("  %-12s warm-up pass %.2f s", name, wall)
        runs: dict[str, list] = {name: [] for name in engines}
        for r in range(repeats):
            for name, eng in engines.items():  # round-robin: noise from other tenants hits everyone alike
                _, wall, cpu = run_clip_set(eng, mel, batches, bs)
                runs[name].append((wall, cpu))
            log.info("  repeat %d/%d: %s", r + 1, repeats, ", ".join(f"{n} {runs[n][-1][0]:.2f}s" for n in engines))
        n_tokens = {name: sum(len(x) + 1 for x in ids[name]) for name in engines}  # + EOT
        for name in engines:
            walls = [w for w, _ in runs[name]]
            med = statistics.median(walls)
            results[name][str(bs)].update(
                seconds=med,
                seconds_min=min(walls),
                seconds_all=walls,
                cpu_util=statistics.median(c / w for w, c in runs[name]),
                audio_seconds=audio_s,
                audio_s_per_s=audio_s / med,
                tokens=n_tokens[name],
                tokens_per_s=n_tokens[name] / med,
                clips=len(slots),
                batches=len(batches),
            )
        # Same transcripts? (ids per distinct clip, from each engine's warm-up pass)
        per_clip = {name: {} for name in engines}
        for name in engines:
            for i, row in zip(slots, ids[name]):
                per_clip[name].setdefault(i, row)
        ref_name = next(iter(engines))
        diffs = []
        for i in range(len(clips)):
            rows = {name: per_clip[name][i] for name in engines}
            if any(rows[n] != rows[ref_name] for n in rows):
                diffs.append(
                    {"clip": names[i], **{n: tok.decode(rows[n], skip_special_tokens=True).strip() for n in rows}}
                )
        transcripts[str(bs)] = {
            "identical": not diffs,
            "differences": diffs,
            "text": {
                names[i]: tok.decode(per_clip[ref_name][i], skip_special_tokens=True).strip() for i in range(len(clips))
            },
        }

    ratios, paired = {}, {}
    for bs in batch_sizes:
        r = results.get("jax", {}).get(str(bs))
        if not r:
            continue
        for other in ("transformers", "ct2"):
            if other in results:
                ratios[f"jax/{other}@{bs}"] = r["audio_s_per_s"] / results[other][str(bs)]["audio_s_per_s"]
                # Per-repeat ratios of the round-robin runs: a burst of load from other tenants hits one
                # repeat of both engines, so the paired ratio is steadier than the ratio of medians.
                pairs = [o / j for o, j in zip(results[other][str(bs)]["seconds_all"], r["seconds_all"])]
                paired[f"jax/{other}@{bs}"] = {
                    "median": statistics.median(pairs),
                    "min": min(pairs),
                    "max": max(pairs),
                    "all": pairs,
                }

    encoder = None
    if not args.skip_encoder and "jax" in engines:
        log.info("encoder FLOP utilisation (batch 8) and fp32 matmul peak")
        encoder = encoder_section(pre, engines, 8, max(3, repeats), args.quick, args.jax_impl)

    breakdown = None
    if args.breakdown:
        longest = int(np.argmax(durations))
        log.info("breakdown: encoder vs per-step decoder cost (%s repeated to each batch size)", names[longest])
        breakdown = breakdown_section(
            pre,
            specials,
            prompt,
            opts,
            list(engines),
            mel[longest],
            batch_sizes,
            max(3, repeats),
            threads,
            args.jax_impl,
        )

    profile = None
    if args.profile and "jax" in engines:
        bs = max(batch_sizes)
        longest = int(np.argmax(durations))
        log.info("profiling one JAX batch: %s repeated %d times", names[longest], bs)
        profile = profile_jax(engines["jax"], np.repeat(mel[longest][None], bs, axis=0), bs)

    import importlib.metadata as md

    def version(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    report = {
        "benchmark": "tiny.en greedy transcription, no timestamps, log-mel -> token ids",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_at_start": list(load_start),
            "loadavg_at_end": list(os.getloadavg()),
            "jax_devices": [str(d) for d in jax.local_devices()],
            "XLA_FLAGS": os.environ.get("XLA_FLAGS"),
        },
        "versions": {
            p: version(p)
            for p in ("jax", "jaxlib", "flax", "torch", "transformers", "ctranslate2", "numpy", "distil-whisper-jax")
        },
        "settings": {
            "repeats": repeats,
            "batch_sizes": batch_sizes,
            "fill_last_batch": not args.no_fill,
            "threads": threads,
            "max_new_tokens": opts.max_new_tokens,
            "prompt": prompt,
            "jax_impl": args.jax_impl,
            "dtype": "float32",
        },
        "clips": [{"file": n, "seconds": d} for n, d in zip(names, durations)],
        "results": results,
        "ratios": ratios,
        "paired_ratios": paired,
        "transcripts": transcripts,
        "encoder": encoder,
        "breakdown": breakdown,
        "jax_profile": profile,
    }
    from distil_whisper_jax.infra.files import atomic_write

    with atomic_write(args.output, "w") as f:
        json.dump(report, f, indent=2)
    print_report(report)
    log.info("wrote %s", args.output)
    return 0


def print_report(rep: dict) -> None:
    m, v = rep["machine"], rep["versions"]
    print(
        f"\n{rep['benchmark']}\n{rep['date']} | {m['cpu']} ({m['cpu_count']} cores) | jax {v['jax']}, "
        f"torch {v['torch']}, transformers {v['transformers']}, ctranslate2 {v['ctranslate2']}"
    )
    print(f"repeats {rep['settings']['repeats']}, clips {', '.join(c['file'] for c in rep['clips'])}\n")
    print(
        "| engine | batch | audio s | steady s (median) | audio-s/s | tokens/s | CPU util | first call s | compile s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, per_bs in rep["results"].items():
        for bs, r in per_bs.items():
            comp = f"{r['compile_s']:.1f}" if "compile_s" in r else "–"
            first = f"{r['first_call_s']:.2f}" if "first_call_s" in r else "–"
            print(
                f"| {name} | {bs} | {r['audio_seconds']:.1f} | {r['seconds']:.2f} | {r['audio_s_per_s']:.1f} | "
                f"{r['tokens_per_s']:.0f} | {r['cpu_util']:.2f} | {first} | {comp} |"
            )
    if rep["ratios"]:
        print("\nspeed ratios (audio-s/s): " + ", ".join(f"{k} = {x:.2f}x" for k, x in rep["ratios"].items()))
    if rep.get("paired_ratios"):
        print(
            "per-repeat (paired) ratios, median [min–max]: "
            + ", ".join(
                f"{k} = {x['median']:.2f}x [{x['min']:.2f}–{x['max']:.2f}]" for k, x in rep["paired_ratios"].items()
            )
        )
    for bs, t in rep["transcripts"].items():
        if t["identical"]:
            print(f"batch {bs}: transcripts identical across engines (token ids)")
        else:
            print(f"batch {bs}: transcripts DIFFER on {len(t['differences'])} clip(s):")
            for d in t["differences"]:
                print("   ", json.dumps(d, ensure_ascii=False))
    e = rep.get("encoder")
    if e:
        a = e["analytic_flops"]
        xla = e["xla_cost_analysis_flops"]
        print(
            f"\nencoder, batch {e['batch']}: {a['total'] / 1e9:.1f} GFLOP analytic "
            f"(XLA cost analysis {xla / 1e9:.1f} GFLOP)"
            if xla
            else ""
        )
        print("  per part (GFLOP): " + ", ".join(f"{k} {x / 1e9:.1f}" for k, x in a.items() if k != "total"))
        pk = e["matmul_peak_flops_per_s"]
        print(
            f"  jitted encoder {e['jax_s'] * 1e3:.0f} ms -> {e['jax_flops_per_s'] / 1e9:.1f} GFLOP/s; fp32 matmul peak "
            f"{pk['peak'] / 1e9:.1f} GFLOP/s ("
            + ", ".join(f"{k}: {x / 1e9:.0f}" for k, x in pk.items() if k != "peak")
            + f") -> {e['pct_of_matmul_peak']:.0f}% of peak"
        )
        for other in ("transformers", "ct2"):
            if f"{other}_s" in e:
                print(
                    f"  {other} encoder {e[f'{other}_s'] * 1e3:.0f} ms (jax/{other} speed "
                    f"{e[f'{other}_s'] / e['jax_s']:.2f}x)"
                )
    if rep.get("breakdown"):
        print("\nwhere the time goes (one clip repeated to the batch size; forced decode lengths):")
        print("| engine | batch | encoder ms | decoder ms/step | encoder CPU util | decode CPU util |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, per_bs in rep["breakdown"].items():
            for bs, r in per_bs.items():
                print(
                    f"| {name} | {bs} | {r['encoder_s'] * 1e3:.0f} | {r['per_step_s'] * 1e3:.1f} | "
                    f"{r['encoder_cpu_util']:.2f} | {r['decode_cpu_util']:.2f} |"
                )
    if rep.get("jax_profile"):
        print("\nJAX per-op XLA thread time, one generate call (longest clip x largest batch size):")
        for row in rep["jax_profile"]:
            print(f"  {row['thread_ms']:9.1f} ms {row['calls']:6d} calls  {row['op']:32s} {row['source'][:110]}")


if __name__ == "__main__":
    sys.exit(main())
