"""Estimated TPU cost of the distillation recipes in ``tpu_scripts/recipes/`` (estimates, not measurements).

Two figures per recipe, both from the analytic model FLOPs of one training step (``flops.flops_per_step``:
the teacher's encoder and decoder forward, the 2-layer student decoder's forward + backward, the encoder
shared and frozen):

* **FLOP-based** (optimistic): FLOPs × ``max_steps`` at an assumed 35 % model FLOPs utilisation (MFU) of the
  TPU v4 chip's bf16 peak.
* **calibrated** (what the recipes quote and ``tpu_scripts/run.sh`` reads): at the MFU implied by upstream
  distil-whisper's one published timing (distil-large-v2, 20 000 steps in about 20 hours on a v4-8, below),
  i.e. distil-large-v2's step takes upstream's 3.6 s and every other recipe's step scales with its FLOPs.
  That timing is wall-clock, so it includes what upstream's run spent on evaluation, checkpoints and input.

Labelling is in neither (it scales with the hours of audio). Nothing here was measured on a TPU. Run
``python tools/recipe_cost.py`` to print the figures the recipe headers and ``docs/recipes.md`` quote.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import yaml

from distil_whisper_jax.core.flops import flops_per_step, known_peak_tflops
from distil_whisper_jax.core.model import preset

RECIPES = Path(__file__).resolve().parents[1] / "tpu_scripts" / "recipes"
V4_PEAK_FLOPS = known_peak_tflops("TPU v4") * 1e12  # bf16 per chip
ASSUMED_MFU = 0.35  # the FLOP-based figure's assumption (optimistic: upstream's timing implies about half)
V4_8_CHIPS = 4  # a v4-8 has 4 chips; the recipes' per-device batch is for a v4-8

# Upstream distil-whisper's measurement, from the Training section of its Flax README (training/flax/README.md
# in huggingface/distil-whisper): the example run_distillation.py command (student large-32-2 = large-v2's
# encoder + 2 decoder layers, teacher openai/whisper-large-v2, --max_steps 20000, --per_device_train_batch_size 64,
# --freeze_encoder, bf16, gradient checkpointing, eval and save every 5000 steps) "will take approximately 20
# hours to complete on a TPU v4-8". Our distil-large-v2 recipe is that configuration (its global batch is
# checked to match; the FLOPs are our recipe's, labels of up to 128 tokens).
UPSTREAM_RECIPE = "distil-large-v2"
UPSTREAM_STEPS = 20_000
UPSTREAM_HOURS = 20.0
UPSTREAM_SLICE = "v4-8"
UPSTREAM_CHIPS = 4  # chips of a v4-8
UPSTREAM_PER_DEVICE_BATCH = 64  # global batch 256
UPSTREAM_STEP_S = UPSTREAM_HOURS * 3600 / UPSTREAM_STEPS  # 3.6 s

CHECKPOINT_BUDGET_S = 3600.0  # a preemption should lose at most about an hour of training:
CHECKPOINT_SLACK = 1.01  # "about": 1 % over (large-v3's step is 0.04 % slower than large-v2's: 1000 steps stay)
ROUND_STEPS = (1, 2, 5)  # save_steps is rounded down to 1, 2 or 5 × a power of ten


def _configs(recipe: Path) -> tuple[dict, dict]:
    return (
        yaml.safe_load((recipe / "student.yaml").read_text()),
        yaml.safe_load((recipe / "distill.yaml").read_text()),
    )


def step_flops(recipe: Path) -> float:
    """Model FLOPs of one training step of a recipe directory at its global batch on a v4-8."""
    student_cfg, distill_cfg = _configs(recipe)
    teacher = preset(student_cfg["teacher_model_name_or_path"].removeprefix("openai/whisper-"))
    student = dataclasses.replace(teacher, decoder_layers=student_cfg["decoder_layers"])
    return flops_per_step(
        student,
        teacher,
        distill_cfg["per_device_train_batch_size"] * V4_8_CHIPS,
        distill_cfg["max_label_length"] - 1,
        freeze_encoder=distill_cfg["freeze_encoder"],
        share_encoder=distill_cfg["freeze_encoder"],
    )["total"]


def calibrated_mfu() -> float:
    """The MFU implied by upstream's timing: distil-large-v2's FLOPs/step ÷ (3.6 s × 4 chips × v4 peak)."""
    recipe = RECIPES / UPSTREAM_RECIPE
    batch = yaml.safe_load((recipe / "distill.yaml").read_text())["per_device_train_batch_size"] * V4_8_CHIPS
    if batch != UPSTREAM_PER_DEVICE_BATCH * UPSTREAM_CHIPS:
        upstream = UPSTREAM_PER_DEVICE_BATCH * UPSTREAM_CHIPS
        raise ValueError(f"{recipe}: global batch {batch} is not upstream's {upstream}: the calibration is for that")
    return step_flops(recipe) / (UPSTREAM_STEP_S * UPSTREAM_CHIPS * V4_PEAK_FLOPS)


def round_down(n: float) -> int:
    """The largest 1, 2 or 5 × 10^k not above ``n`` (≥ 1)."""
    exp = 10 ** math.floor(math.log10(n))
    return max(m * exp for m in ROUND_STEPS if m * exp <= n)


def estimate(recipe: Path) -> dict[str, float]:
    """Cost of one recipe directory (``student.yaml`` + ``distill.yaml``) on a v4-8, both ways.

    Keys: ``global_batch``, ``max_steps``, ``pflop_per_step``; the FLOP-based figure at ``ASSUMED_MFU``:
    ``flop_chip_hours``, ``flop_v4_8_hours``; the calibrated one (the figure the recipe uses): ``mfu``,
    ``step_s`` (seconds per step on a v4-8), ``v4_8_hours``, ``chip_hours``; and ``save_steps_max``, the
    round number of steps that take at most about ``CHECKPOINT_BUDGET_S`` at ``step_s``."""
    _, distill_cfg = _configs(recipe)
    step = step_flops(recipe)
    steps = distill_cfg["max_steps"]
    chip_s_per_step = step / V4_PEAK_FLOPS  # chip-seconds at 100 % MFU
    mfu = calibrated_mfu()
    step_s = chip_s_per_step / mfu / V4_8_CHIPS
    flop_chip_hours = chip_s_per_step / ASSUMED_MFU * steps / 3600
    return {
        "global_batch": distill_cfg["per_device_train_batch_size"] * V4_8_CHIPS,
        "max_steps": steps,
        "pflop_per_step": step / 1e15,
        "flop_chip_hours": flop_chip_hours,
        "flop_v4_8_hours": flop_chip_hours / V4_8_CHIPS,
        "mfu": mfu,
        "step_s": step_s,
        "v4_8_hours": step_s * steps / 3600,
        "chip_hours": step_s * steps * V4_8_CHIPS / 3600,
        "save_steps_max": round_down(CHECKPOINT_BUDGET_S * CHECKPOINT_SLACK / step_s),
    }


def estimates() -> dict[str, dict[str, float]]:
    """``estimate`` of every recipe, by directory name."""
    return {p.name: estimate(p) for p in sorted(RECIPES.iterdir()) if p.is_dir()}


def main() -> int:
    """Print each recipe's figures as a table."""
    rows = estimates()
    mfu = next(iter(rows.values()))["mfu"]
    print(
        f"Calibrated MFU {mfu:.1%}: upstream's {UPSTREAM_RECIPE} took ~{UPSTREAM_HOURS:.0f} h for {UPSTREAM_STEPS} "
        f"steps on a {UPSTREAM_SLICE} (batch {UPSTREAM_PER_DEVICE_BATCH}/chip), {UPSTREAM_STEP_S:.1f} s/step. "
        f"FLOP-based: an assumed {ASSUMED_MFU:.0%} MFU. Estimates, not measurements; labelling not included."
    )
    header = (
        f"{'recipe':<18}{'PFLOP/step':>11}{'FLOP-based h':>14}{'FLOP chip-h':>13}"
        f"{'s/step':>8}{'v4-8 h':>8}{'chip-hours':>12}{'save_steps ≤':>14}"
    )
    print(header)
    for name, e in rows.items():
        print(
            f"{name:<18}{e['pflop_per_step']:>11.2f}{e['flop_v4_8_hours']:>14.0f}{e['flop_chip_hours']:>13.0f}"
            f"{e['step_s']:>8.2f}{e['v4_8_hours']:>8.0f}{e['chip_hours']:>12.0f}{e['save_steps_max']:>14d}"
        )
    print("(h and s/step on a v4-8 = 4 chips; chip-hours = v4 chip-hours; the calibrated figures are the recipes')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
