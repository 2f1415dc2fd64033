"""Create a student from a teacher: keep the encoder, copy maximally spaced decoder layers.

    distil-whisper-create-student [--teacher_model_name_or_path T] --decoder_layers 2 --output_dir S

Writes a transformers directory (weights, config, generation config, tokenizer) plus ``distil_info.json``
(the teacher, portably: the bundled name, hub id or path, with a digest of its weights; and the layer
maps, read by distillation and by the exporter's model card), reloads it to check it is exactly the
slice that was intended, and logs the parameter counts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from .config import flag
from .convert import tree_equal
from .convert.hf import write_hf_dir
from .model import count_params
from .models import Pretrained, load_pretrained
from .student import make_student, params_digest, student_generation_config, teacher_reference
from .utils import atomic_write

log = logging.getLogger(__name__)
DISTIL_INFO = "distil_info.json"


@dataclasses.dataclass(frozen=True)
class CreateStudentConfig:
    """Flags of ``distil-whisper-create-student``."""

    output_dir: str = flag(help="where to write the student (transformers format)")
    teacher_model_name_or_path: str | None = flag(
        None, "teacher checkpoint (transformers dir, CTranslate2 dir, openai .pt, hub id); default: the bundled tiny.en"
    )
    decoder_layers: int = flag(2, "student decoder layers (2 → teacher's first and last)")
    encoder_layers: int | None = flag(None, "student encoder layers (default: all)")
    max_source_positions: int | None = flag(None, "shorter encoder context (e.g. 750 = 15 s); default: the teacher's")


def run(cfg: CreateStudentConfig) -> Path:
    """Create the student ``cfg`` describes; returns its directory."""
    return create_student(
        cfg.teacher_model_name_or_path, cfg.output_dir, cfg.decoder_layers, cfg.encoder_layers, cfg.max_source_positions
    )


def create_student(
    teacher: str | Pretrained | None,
    output_dir: str | Path,
    decoder_layers: int,
    encoder_layers: int | None = None,
    max_source_positions: int | None = None,
) -> Path:
    """Slice ``teacher`` (any loadable checkpoint; None = bundled tiny.en) into a student saved at ``output_dir``."""
    pre = teacher if isinstance(teacher, Pretrained) else load_pretrained(teacher)
    requested = pre.source if isinstance(teacher, Pretrained) else teacher
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
        "teacher": teacher_reference(requested, pre.source),
        "teacher_sha256": params_digest(pre.params),
        "teacher_decoder_layers": pre.config.decoder_layers,
        "teacher_encoder_layers": pre.config.encoder_layers,
        **maps,
        "train_steps": 0,
    }
    with atomic_write(out / DISTIL_INFO, "w") as f:
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
