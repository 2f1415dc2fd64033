"""Benchmark: pseudo-labelling throughput (audio-seconds labelled per second) vs the transformers ASR pipeline,
peak memory at 1× and 10× the data, and a FLOP-based projection to large-v3 on a TPU v4-8.

    python benchmarks/pseudo_label.py [--batch_sizes 1,8] [--rows 16] [--repeats 1] [--skip_rss]

* **ours**: ``pseudo_label.run`` on a TSV manifest of the bundled clips ≤ 30 s (cycled to ``--rows``
  rows): decoding, log-mel, generation (tiny.en, greedy, fp32, one CPU device), WER, FLAC + Parquet
  output. A warm-up run on one batch compiles first; each timed run writes a fresh dir. The compared time
  is the labelling wall time the run reports (``report.json`` throughput: every block from the moment the
  previous one ended); the rest of ``main`` (model loading, ~0.6-1 s, and the final report) is reported
  separately, as the pipeline's model is built outside its timed region too.
* **transformers**: ``pipeline("automatic-speech-recognition")`` (PyTorch, CPU, fp32) with the same
  tiny.en weights (``benchmarks/transcribe.py``'s ``TransformersEngine``, the model ``tests/conftest.py``
  builds), the same suppress lists and token cap, ``batch_size`` = ours; it gets the same files decoded
  with soundfile inside the timed region (it does no WER and writes nothing). Warm-up on one batch first.
  The two are timed alternately in each repeat; median over repeats. Transcripts are compared.
* **RSS**: ``run_pseudo_label.py`` in a fresh subprocess on N and 10·N rows (``--max_label_length 8`` to
  keep the 10× run short; memory is what is measured), peak RSS from ``wait4``.
* **Projection**: analytic FLOPs per audio-second (encoder per 30 s window + decoder per generated token,
  tokens/s measured here), our measured useful FLOP/s on this CPU as a fraction of its measured fp32
  matmul peak, and that fraction applied to a TPU v4-8's bf16 peak (4 chips × 275 TFLOP/s) for large-v3.

Prints a table and writes ``benchmarks/results/pseudo_label.json`` atomically.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_manifest(d: Path, rows: int) -> tuple[Path, float]:
    import soundfile as sf

    from distil_whisper_jax.assets import bundled_clips

    clips = bundled_clips()
    with open(d / f"m{rows}.tsv", "w", encoding="utf-8") as f:
        f.write("audio\ttext\n")
        for i in range(rows):
            p, t = clips[i % len(clips)]
            f.write(f"{p}\t{t}\n")
    seconds = sum(sf.info(str(clips[i % len(clips)][0])).duration for i in range(rows))
    return d / f"m{rows}.tsv", seconds


def run_ours(manifest: Path, out: Path, batch: int, extra=()) -> tuple[float, float, dict]:
    from distil_whisper_jax.infra import config
    from distil_whisper_jax.stages.label import pseudo_label

    c0, t0 = time.process_time(), time.perf_counter()
    cfg = config.parse(
        pseudo_label.PseudoLabelConfig,
        [
            "--dataset_name",
            str(manifest),
            "--output_dir",
            str(out),
            "--num_local_devices",
            "1",
            "--per_device_eval_batch_size",
            str(batch),
            "--rows_per_shard",
            "1000",
            *extra,
        ],
    )
    rc = pseudo_label.run(cfg)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if rc != 0:
        raise RuntimeError(f"pseudo_label.run exited {rc}")
    return wall, cpu, json.loads((out / "report.json").read_text())


def build_pipeline(pre, batch: int):
    import torch
    from transformers import WhisperFeatureExtractor, pipeline

    from benchmarks.common import TransformersEngine
    from distil_whisper_jax.decode.generate import generation_options
    from distil_whisper_jax.speech.token_layout import prompt_ids, special_tokens

    sp = special_tokens(pre.tokenizer)
    prompt = prompt_ids(sp)
    opts = generation_options(pre, sp, max_new_tokens=256, prompt_len=len(prompt))
    eng = TransformersEngine(pre, sp, prompt, opts, threads=os.cpu_count())
    fe = WhisperFeatureExtractor(feature_size=pre.config.num_mel_bins)
    pipe = pipeline(
        "automatic-speech-recognition",
        model=eng.model,
        tokenizer=pre.tokenizer,
        feature_extractor=fe,
        device="cpu",
        torch_dtype=torch.float32,
    )
    return pipe, opts


def run_pipeline(pipe, opts, paths: list[str], batch: int) -> tuple[float, float, list[str]]:
    import soundfile as sf
    import torch

    c0, t0 = time.process_time(), time.perf_counter()
    inputs = []
    for p in paths:
        x, sr = sf.read(p, dtype="float32")
        inputs.append({"raw": x if x.ndim == 1 else x.mean(1), "sampling_rate": sr})
    with torch.inference_mode():
        out = pipe(inputs, batch_size=batch, generate_kwargs={"max_new_tokens": opts.max_new_tokens, "num_beams": 1})
    return time.perf_counter() - t0, time.process_time() - c0, [o["text"].strip() for o in out]


def peak_rss(manifest: Path, out: Path, batch: int) -> float:
    """Peak RSS (MiB) of a fresh ``run_pseudo_label.py`` process on ``manifest``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    cmd = [
        sys.executable,
        str(ROOT / "run_pseudo_label.py"),
        "--dataset_name",
        str(manifest),
        "--output_dir",
        str(out),
        "--per_device_eval_batch_size",
        str(batch),
        "--rows_per_shard",
        "16",
        "--max_label_length",
        "8",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"RSS run failed: {proc.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024  # KiB on Linux


def projection(tiny_cfg, large_cfg, audio_s: float, tokens: int, rows_windows: int, wall: float, peak: float) -> dict:
    """Useful FLOPs of our CPU run (encoder per 30 s window + decoder per generated token) as a fraction of
    the CPU's matmul ``peak``, and large-v3's FLOPs per audio second and labelling rate on a TPU v4-8."""
    from distil_whisper_jax.core.flops import decoder_token_flops, encoder_flops, known_peak_tflops

    tok_per_s = tokens / audio_s
    useful = rows_windows * encoder_flops(tiny_cfg) + tokens * decoder_token_flops(tiny_cfg, 64)
    util = useful / wall / peak
    # large-v3: one 30 s window per ≤30 s row; rows here average audio_s / rows_windows seconds
    sec_per_window = audio_s / rows_windows
    per_audio_s = encoder_flops(large_cfg) / sec_per_window + tok_per_s * decoder_token_flops(large_cfg, 64)
    tpu_peak = 4 * known_peak_tflops("TPU v4") * 1e12  # 4 chips × the bf16 peak (Google Cloud TPU v4 documentation)
    return {
        "tokens_per_audio_second": tok_per_s,
        "useful_flops_ours_cpu": useful,
        "cpu_utilisation": util,
        "large_v3_flops_per_audio_second": per_audio_s,
        "tpu_v4_8_peak_flops": tpu_peak,
        "audio_hours_per_hour_at_measured_utilisation": tpu_peak * util / per_audio_s,
        "audio_hours_per_hour_at_40pct": tpu_peak * 0.4 / per_audio_s,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch_sizes", default="1,8")
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--skip_rss", action="store_true")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "pseudo_label.json"))
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import logging

    logging.disable(logging.INFO)
    import jax

    from benchmarks.common import cpu_model, matmul_peak
    from distil_whisper_jax.core.model import preset
    from distil_whisper_jax.infra.files import atomic_write
    from distil_whisper_jax.weights.loading import load_pretrained

    pre = load_pretrained()
    tmp = Path(tempfile.mkdtemp(prefix="bench-plabel-"))
    manifest, audio_s = make_manifest(tmp, a.rows)
    paths = [line.split("\t")[0] for line in manifest.read_text().splitlines()[1:]]
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "jax": jax.__version__,
        },
        "load_average_at_start": os.getloadavg(),
        "rows": a.rows,
        "audio_seconds": audio_s,
        "runs": [],
    }
    for batch in [int(b) for b in a.batch_sizes.split(",")]:
        warm, _ = make_manifest(tmp, batch)
        run_ours(warm, tmp / f"warm-{batch}", batch)
        pipe, opts = build_pipeline(pre, batch)
        run_pipeline(pipe, opts, paths[:batch], batch)
        ours, theirs, labelling = [], [], []
        for r in range(a.repeats):
            wall, cpu, report = run_ours(manifest, tmp / f"ours-{batch}-{r}", batch)
            ours.append((wall, cpu))
            labelling.append(report["throughput"]["labelling_seconds_all_processes"])
            t_wall, t_cpu, texts = run_pipeline(pipe, opts, paths, batch)
            theirs.append((t_wall, t_cpu))
        import pyarrow.parquet as pq

        rows = [x for f in sorted((tmp / f"ours-{batch}-0").glob("*.parquet")) for x in pq.read_table(f).to_pylist()]
        same = sum(x["whisper_transcript"] == t for x, t in zip(rows, texts))
        w_ours, w_theirs = statistics.median(x[0] for x in ours), statistics.median(x[0] for x in theirs)
        w_label = statistics.median(labelling)
        run = {
            "batch_size": batch,
            "ours_wall_s": w_ours,
            "ours_cpu_s": statistics.median(x[1] for x in ours),
            "ours_labelling_s": w_label,
            "ours_outside_labelling_s": w_ours - w_label,
            "transformers_pipeline_wall_s": w_theirs,
            "transformers_pipeline_cpu_s": statistics.median(x[1] for x in theirs),
            "ours_audio_s_per_s": audio_s / w_label,
            "transformers_audio_s_per_s": audio_s / w_theirs,
            "speedup": w_theirs / w_label,
            "speedup_incl_our_setup": w_theirs / w_ours,
            "speedup_paired": statistics.median(t[0] / x for t, x in zip(theirs, labelling)),
            "identical_transcripts": f"{same}/{len(rows)}",
            "tokens": sum(len(x["whisper_token_ids"]) for x in rows),
            "report_audio_hours": report["audio_hours_labelled"],
        }
        result["runs"].append(run)
        run["speedup_cpu_seconds"] = run["transformers_pipeline_cpu_s"] / run["ours_cpu_s"]
        print(
            f"batch {batch}: ours {run['ours_audio_s_per_s']:.2f} audio-s/s, transformers pipeline "
            f"{run['transformers_audio_s_per_s']:.2f} audio-s/s -> {run['speedup']:.2f}x wall "
            f"(paired per repeat {run['speedup_paired']:.2f}x; {run['speedup_incl_our_setup']:.2f}x counting our "
            f"{run['ours_outside_labelling_s']:.1f} s of model loading and report too), "
            f"{run['speedup_cpu_seconds']:.2f}x CPU-seconds (ours: all of main); "
            f"transcripts identical {run['identical_transcripts']}",
            flush=True,
        )
    best = max(result["runs"], key=lambda r: r["ours_audio_s_per_s"])
    peak = matmul_peak(quick=True)["peak"]
    result["matmul_peak_flops"] = peak
    result["projection"] = projection(
        pre.config, preset("large-v3"), audio_s, best["tokens"], a.rows, best["ours_labelling_s"], peak
    )
    result["projection"]["from_batch_size"] = best["batch_size"]
    print(
        f"projection: CPU utilisation {100 * result['projection']['cpu_utilisation']:.1f} % of fp32 matmul peak "
        f"({peak / 1e9:.0f} GFLOP/s); large-v3 on TPU v4-8: "
        f"{result['projection']['audio_hours_per_hour_at_measured_utilisation']:.0f} audio-h/h at that utilisation, "
        f"{result['projection']['audio_hours_per_hour_at_40pct']:.0f} at 40 %",
        flush=True,
    )
    if not a.skip_rss:
        small, _ = make_manifest(tmp, a.rows)
        big, _ = make_manifest(tmp, 10 * a.rows)
        rss1 = peak_rss(small, tmp / "rss1", 8)
        rss10 = peak_rss(big, tmp / "rss10", 8)
        result["rss_mib"] = {
            "rows_1x": a.rows,
            "peak_1x": rss1,
            "rows_10x": 10 * a.rows,
            "peak_10x": rss10,
            "ratio": rss10 / rss1,
        }
        print(
            f"peak RSS: {rss1:.0f} MiB at {a.rows} rows, {rss10:.0f} MiB at {10 * a.rows} rows ({rss10 / rss1:.2f}x)",
            flush=True,
        )
    result["load_average_at_end"] = os.getloadavg()
    out = Path(a.output)
    with atomic_write(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
