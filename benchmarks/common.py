"""Helpers the benchmarks share: machine description, timing, XLA's FLOP count, the measured matmul peak and the
🤗 transformers reference engine (the analytic FLOP formulas are ``distil_whisper_jax.core.flops``). Run a
benchmark as a module from the repository root (``python -m benchmarks.transcribe``), so that ``benchmarks``
is importable without path edits."""

from __future__ import annotations

import datetime
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_record(load_start: float) -> dict[str, Any]:
    """The date (UTC) and the machine of a finished run: CPU, cores, Python, 1-minute load average at its start
    (``load_start``, from ``os.getloadavg()``) and now."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_1m_start": load_start,
            "load_avg_1m_end": os.getloadavg()[0],
        },
    }


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, wall seconds, process CPU seconds — all threads) of one call."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def strip_ids(row, prompt: list[int], eot: int) -> list[int]:
    """Generated ids up to (not including) the first EOT, without a leading copy of the prompt."""
    row = [int(t) for t in row]
    if row[: len(prompt)] == prompt:
        row = row[len(prompt) :]
    return row[: row.index(eot)] if eot in row else row


def xla_flops(compiled_or_lowered) -> float | None:
    """XLA's own FLOP count of a lowered or compiled program (cost analysis), or None where it has none."""
    try:
        ca = compiled_or_lowered.cost_analysis()
    except Exception:  # not every backend/version has it
        return None
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else None
    return float(ca["flops"]) if ca and "flops" in ca else None


class TransformersEngine:
    name = "transformers"

    def __init__(self, pre, specials, prompt, opts, threads: int):
        import torch
        import transformers
        from transformers import GenerationConfig, WhisperForConditionalGeneration
        from transformers import WhisperConfig as HFConfig

        from distil_whisper_jax.weights.convert.hf import flax_to_hf, hf_config_dict

        transformers.logging.set_verbosity_error()
        torch.set_num_threads(threads)
        self.torch = torch
        model = WhisperForConditionalGeneration(HFConfig(**hf_config_dict(pre.config))).eval()
        state = flax_to_hf(pre.params, pre.config)
        res = model.load_state_dict(
            {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, strict=False
        )
        if set(res.missing_keys) - {"proj_out.weight"} or res.unexpected_keys:
            raise RuntimeError(f"transformers model does not take the converted weights: {res}")
        model.tie_weights()
        model.generation_config = GenerationConfig(
            decoder_start_token_id=specials.sot,
            eos_token_id=specials.eot,
            pad_token_id=specials.eot,
            bos_token_id=specials.eot,
            suppress_tokens=list(opts.suppress_tokens),
            begin_suppress_tokens=list(opts.begin_suppress_tokens),
            no_timestamps_token_id=specials.no_timestamps,
            max_initial_timestamp_index=50,
            max_length=pre.config.max_target_positions,
            is_multilingual=False,
        )
        self.model, self.prompt, self.opts = model, prompt, opts

    def __call__(self, mel: np.ndarray, batch_size: int) -> list[list[int]]:
        with self.torch.inference_mode():
            out = self.model.generate(
                input_features=self.torch.from_numpy(mel),
                return_timestamps=False,
                max_new_tokens=self.opts.max_new_tokens,
                num_beams=1,
                do_sample=False,
            )
        return [strip_ids(r, self.prompt, self.opts.eot) for r in out.tolist()]

    def encode(self, mel: np.ndarray):
        with self.torch.inference_mode():
            return self.model.model.encoder(self.torch.from_numpy(mel)).last_hidden_state


def matmul_peak(sizes=(1024, 2048, 4096), quick: bool = False) -> dict:
    """Best achieved fp32 FLOP/s of a jitted square jnp.dot (XLA:CPU, all cores), per size and overall."""
    import jax
    import jax.numpy as jnp

    dot = jax.jit(jnp.dot)
    out = {}
    for n in sizes:
        a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
        dot(a, b).block_until_ready()
        reps = max(2, int(3e10 / (2 * n**3)))  # ~30 GFLOP per size
        reps = min(reps, 4 if quick else 10)
        best = min(timed(lambda a=a, b=b: dot(a, b).block_until_ready())[1] for _ in range(reps))
        out[str(n)] = 2.0 * n**3 / best
    out["peak"] = max(out.values())
    return out


def two_panels(figsize: tuple[float, float] = (11, 4.2)):
    """A figure with two side-by-side axes, drawn off-screen (matplotlib's Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, 2, figsize=figsize)


def save_panels(fig, axes, path: Path) -> None:
    """Grid and legend on each of ``axes``, then ``fig`` written to ``path`` as PNG, atomically, and closed."""
    import matplotlib.pyplot as plt

    from distil_whisper_jax.infra.files import atomic_write

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(str(tmp), dpi=110, format="png")
    plt.close(fig)
