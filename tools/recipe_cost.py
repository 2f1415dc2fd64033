"""Estimated TPU cost of the distillation recipes in ``tpu_scripts/recipes/`` (an estimate, not a measurement).

For each recipe: the analytic model FLOPs of one training step (``flops.flops_per_step``: the teacher's
encoder and decoder forward, the 2-layer student decoder's forward + backward, the encoder shared and
frozen) × ``max_steps``, divided by the peak bf16 throughput of the TPU v4 chip at an assumed model FLOPs
utilisation. Labelling is not included (it scales with the hours of audio). Run
``python tools/recipe_cost.py`` to print the figures the recipe headers quote.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import yaml

from distil_whisper_jax.flops import flops_per_step
from distil_whisper_jax.model import preset

RECIPES = Path(__file__).resolve().parents[1] / "tpu_scripts" / "recipes"
V4_PEAK_FLOPS = 275e12  # bf16 per chip
ASSUMED_MFU = 0.35
V4_8_CHIPS = 4  # the recipes' per-device batch is for a v4-8


def estimate(recipe: Path) -> dict[str, float]:
    """Training FLOPs and v4 chip-hours of one recipe directory (``student.yaml`` + ``distill.yaml``)."""
    student_cfg = yaml.safe_load((recipe / "student.yaml").read_text())
    distill_cfg = yaml.safe_load((recipe / "distill.yaml").read_text())
    teacher = preset(student_cfg["teacher_model_name_or_path"].removeprefix("openai/whisper-"))
    student = dataclasses.replace(teacher, decoder_layers=student_cfg["decoder_layers"])
    batch = distill_cfg["per_device_train_batch_size"] * V4_8_CHIPS
    step = flops_per_step(
        student,
        teacher,
        batch,
        distill_cfg["max_label_length"] - 1,
        freeze_encoder=distill_cfg["freeze_encoder"],
        share_encoder=distill_cfg["freeze_encoder"],
    )["total"]
    total = step * distill_cfg["max_steps"]
    chip_hours = total / (V4_PEAK_FLOPS * ASSUMED_MFU) / 3600
    return {"global_batch": batch, "pflop_per_step": step / 1e15, "chip_hours": chip_hours}


def main() -> int:
    """Print each recipe's estimate."""
    for recipe in sorted(p for p in RECIPES.iterdir() if p.is_dir()):
        e = estimate(recipe)
        print(
            f"{recipe.name}: global batch {e['global_batch']:.0f}, {e['pflop_per_step']:.1f} PFLOP/step, "
            f"~{e['chip_hours']:.0f} v4 chip-hours (~{e['chip_hours'] / V4_8_CHIPS:.0f} h on a v4-8) "
            f"at {ASSUMED_MFU:.0%} MFU"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
