"""Create a student from a teacher: keep the encoder, copy maximally spaced decoder layers.

    python -m distil_whisper_jax.create_student [--teacher_model_name_or_path T] --decoder_layers 2 --output_dir S

Writes a transformers directory (weights, config, generation config, tokenizer) plus ``distil_info.json``
(teacher and layer maps, read by the exporter's model card), reloads it to check it is exactly the slice
that was intended, and prints the parameter counts.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .convert import tree_equal
from .model import count_params
from .models import Pretrained, load_pretrained
from .student import make_student
from .utils import atomic_write, setup_logging

log = logging.getLogger(__name__)


def student_generation_config(teacher: Pretrained, student_config, decoder_layer_map: Sequence[int]) -> dict[str, Any]:
    """The teacher's generation defaults, with alignment heads renumbered to the student's layers
    (heads on teacher layers the student does not keep are dropped)."""
    from .convert.hf import hf_generation_config

    gen = teacher.generation_defaults
    new_index = {t: s for s, t in enumerate(decoder_layer_map)}
    heads = [(new_index[layer], head) for layer, head in gen.alignment_heads if layer in new_index]
    return hf_generation_config(student_config, gen.suppress_tokens, gen.begin_suppress_tokens, heads)


def create_student(
    teacher: str | Pretrained | None,
    output_dir: str | Path,
    decoder_layers: int,
    encoder_layers: int | None = None,
    max_source_positions: int | None = None,
) -> Path:
    """Slice ``teacher`` (any loadable checkpoint; None = bundled tiny.en) into a student saved at ``output_dir``."""
    from .convert.hf import write_hf_dir

    pre = teacher if isinstance(teacher, Pretrained) else load_pretrained(teacher)
    config, params, maps = make_student(pre.config, pre.params, decoder_layers, encoder_layers, max_source_positions)
    out = Path(output_dir)
    write_hf_dir(
        out,
        config,
        params,
        generation_config=student_generation_config(pre, config, maps["decoder_layer_map"]),
        tokenizer=pre.tokenizer,
    )
    info = {
        "teacher": pre.source,
        "teacher_decoder_layers": pre.config.decoder_layers,
        "teacher_encoder_layers": pre.config.encoder_layers,
        **maps,
        "train_steps": 0,
    }
    with atomic_write(out / "distil_info.json", "w") as f:
        json.dump(info, f, indent=2)

    back = load_pretrained(out)  # what every later stage will load: must be exactly the slice
    if back.config != config or not tree_equal(back.params, params):
        raise RuntimeError(f"{out}: the saved student does not reload identically")
    n_t, n_s = count_params(pre.params), count_params(params)
    log.info(
        "student: %d decoder layers (teacher layers %s), %s encoder; %.1fM params = %.0f%% of the teacher's "
        "%.1fM; saved to %s",
        decoder_layers,
        maps["decoder_layer_map"],
        "whole" if maps["encoder_layer_map"] is None else f"layers {maps['encoder_layer_map']} of the",
        n_s / 1e6,
        100 * n_s / n_t,
        n_t / 1e6,
        out,
    )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m distil_whisper_jax.create_student",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--teacher_model_name_or_path",
        default=None,
        help="teacher checkpoint (transformers dir, CTranslate2 dir, openai .pt, hub id); default: the bundled tiny.en",
    )
    p.add_argument(
        "--decoder_layers", type=int, default=2, help="student decoder layers (2 → teacher's first and last)"
    )
    p.add_argument("--encoder_layers", type=int, default=None, help="student encoder layers (default: all)")
    p.add_argument(
        "--max_source_positions",
        type=int,
        default=None,
        help="shorter encoder context (e.g. 750 = 15 s); default: the teacher's",
    )
    p.add_argument("--output_dir", required=True, help="where to write the student (transformers format)")
    args = p.parse_args(argv)
    setup_logging()
    try:
        create_student(
            args.teacher_model_name_or_path,
            args.output_dir,
            args.decoder_layers,
            args.encoder_layers,
            args.max_source_positions,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
