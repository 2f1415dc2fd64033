"""The distillation run config (``DistillConfig``): every flag of ``run_distillation.py``, its checks, and
which fields a resumed run may change.

Checks run before anything is loaded, so a nonsense value (a negative or NaN learning rate, a zero
batch size, a probability of 3) is refused with a message naming the flag instead of training a
ruined student.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from distil_whisper_jax.core.losses import default_ce_weight
from distil_whisper_jax.data import wer_filter
from distil_whisper_jax.infra import compile_cache, multihost
from distil_whisper_jax.infra.compile_cache import CompileCacheFlags
from distil_whisper_jax.infra.config import flag
from distil_whisper_jax.infra.multihost import MultiHostConfig

# Fields a resumed run may change: how often it logs, evaluates and saves, where it writes, how it is
# launched and how much memory it uses; none of them changes the trained weights. Everything else that
# defines the run (data, seed, optimizer, schedule, losses, labels) must match the checkpoint's, unless
# --allow_resume_changes. --max_steps may grow when the schedule does not depend on it (constant ones).
# The student is checked by its config, the teacher by its weights' digest, the batch by its global size, the
# training data by what its files are (names, sizes, row counts; a manifest's hash: ``corpus.identity``).
RESUME_MAY_CHANGE = (
    "model_name_or_path",
    "teacher_model_name_or_path",
    "output_dir",
    "overwrite_output_dir",
    "resume_from_checkpoint",
    "allow_resume_changes",
    "allow_teacher_mismatch",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "per_device_eval_batch_size",
    "gradient_checkpointing",
    "eval_dataset_name",
    "eval_split_name",
    "eval_text_column_name",
    "max_eval_samples",
    "generation_max_length",
    "logging_steps",
    "eval_steps",
    "save_steps",
    "save_total_limit",
    "disable_tqdm",
    "device_peak_tflops",
    "cache_encoder_outputs",
    "cache_encoder_outputs_max_gb",
    *compile_cache.FIELDS,
    "cache_dir",  # distillation's old cache flag (now refused), in run configs saved before the cache group
    *multihost.FIELDS,
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistillConfig(MultiHostConfig, CompileCacheFlags):
    """One distillation run (the flags of ``run_distillation.py``; the multi-host ones are shared)."""

    # models
    model_name_or_path: str = flag(
        help="the student to train (e.g. made by distil-whisper-create-student): transformers/CTranslate2 dir, "
        "openai .pt, Orbax run dir, or hub id",
        group="models",
        aliases=("model",),
    )
    teacher_model_name_or_path: str | None = flag(
        None,
        "the teacher (same formats); default: the teacher the student was created from (its distil_info.json), "
        "else the bundled tiny.en. Must be the model that pseudo-labelled the data for a meaningful KL term",
        group="models",
    )
    allow_teacher_mismatch: bool = flag(
        False, "train with a teacher whose weights differ from the one the student was created from", group="models"
    )
    dtype: Literal["float32", "bfloat16"] = flag(
        "float32", "compute dtype of the forward/backward passes (params and optimizer stay fp32)", group="models"
    )
    gradient_checkpointing: bool = flag(False, "rematerialise layers in the backward pass", group="models")
    # data
    train_dataset_name: str = flag(
        help="'+'-joined labelled datasets: run_pseudo_label.py output dirs, Parquet files/globs, TSV manifests, "
        "or hub dataset ids",
        group="data",
    )
    train_dataset_samples: str | None = flag(
        None,
        "'+'-joined weights (hours or sample counts): datasets are mixed in proportion; default equal",
        group="data",
    )
    train_split_name: str = flag(
        "train", "split of hub datasets / sharded dirs (Parquet files whose path contains it)", group="data"
    )
    eval_dataset_name: str | None = flag(
        None, "'+'-joined evaluation datasets (each evaluated and logged separately); none = no eval", group="data"
    )
    eval_split_name: str = flag("validation", "split of hub evaluation datasets", group="data")
    eval_text_column_name: str | None = flag(
        None,
        "reference transcript column of eval data (default: the one a labelled dir records, else 'text')",
        group="data",
    )
    train_text_column_name: str = flag("whisper_transcript", "training target column", group="data")
    audio_column_name: str | None = flag(
        None,
        "audio column (🤗 Audio struct or path); default: the one a labelled dir records, else 'audio'",
        group="data",
    )
    min_duration_in_seconds: float = flag(0.0, "drop shorter training audio", group="data")
    max_duration_in_seconds: float | None = flag(
        None, "drop longer training audio (default and maximum: the student's input, 30 s or 15 s)", group="data"
    )
    max_label_length: int = flag(
        128, "max decoder tokens per example (prompt + text + EOT); sets the static label width", group="data"
    )
    truncate_long_labels: bool = flag(
        False,
        "cut over-long labels to --max_label_length instead of dropping the row (the original drops)",
        group="data",
    )
    wer_threshold: float | None = flag(
        None, wer_filter.HELP.replace("%", "%%") + " (WER in %%: the 'wer' column, else computed)", group="data"
    )
    keep_rows_without_ground_truth: bool = flag(False, wer_filter.KEEP_HELP, group="data")
    drop_rows_without_ground_truth: bool = flag(
        False, "accepted for old command lines: dropping them is now the default", group="data"
    )
    timestamp_probability: float = flag(
        0.2, "keep the pseudo-label's timestamps with this probability (else strip them)", group="data"
    )
    condition_on_prev_probability: float = flag(
        0.2, "prepend <|startofprev|> + the previous segment's text with this probability", group="data"
    )
    language: str | None = flag(
        None,
        "language of the training data (a Whisper code; '+'-joined: one per train dataset): the multilingual "
        "prompt's language token and the WER normaliser (default English; a labelled dataset's language column wins)",
        group="data",
    )
    language_column_name: str | None = flag(
        None, "column of each row's language (default: the labelled dataset's 'language' column)", group="data"
    )
    task: Literal["transcribe", "translate"] = flag("transcribe", "decoder task token", group="data")
    max_eval_samples: int | None = flag(None, "cap on rows per evaluation set", group="data")
    generation_max_length: int | None = flag(
        None, "max new tokens of eval generation (default: --max_label_length)", group="data"
    )
    # training
    output_dir: str = flag(
        help="run directory: checkpoints/, hf/, tokenizer/, runs/ (TensorBoard), metrics.jsonl", group="training"
    )
    overwrite_output_dir: bool = flag(
        False,
        "delete existing checkpoints in --output_dir and start afresh (default: resume from them)",
        group="training",
    )
    resume_from_checkpoint: str | None = flag(
        None,
        "an Orbax checkpoint step dir (O/checkpoints/<step>) or run dir to resume from; default: the latest one "
        "in --output_dir",
        group="training",
    )
    allow_resume_changes: bool = flag(
        False,
        "resume although flags that define the run (data, seed, optimizer, schedule, losses, labels) differ "
        "from the checkpoint's, or the training data changed under the same name (a file added or removed, "
        "another size or row count, a manifest with other contents)",
        group="training",
    )
    max_steps: int = flag(help="optimizer steps to train for", group="training")
    per_device_train_batch_size: int = flag(8, "examples per device per micro-batch", group="training")
    per_device_eval_batch_size: int = flag(8, "examples per device in eval generation", group="training")
    gradient_accumulation_steps: int = flag(1, "micro-batches per optimizer step", group="training")
    learning_rate: float = flag(5e-5, "peak learning rate", group="training")
    lr_scheduler_type: Literal["linear", "constant_with_warmup", "constant", "cosine"] = flag(
        "linear", "decay after warmup", group="training"
    )
    warmup_steps: int = flag(0, "linear warmup from 0 (optimizer steps)", group="training")
    weight_decay: float = flag(0.0, "AdamW decay (never on biases / norms)", group="training")
    adam_beta1: float = flag(0.9, "Adam β1", group="training")
    adam_beta2: float = flag(0.999, "Adam β2", group="training")
    adam_epsilon: float = flag(1e-8, "Adam ε", group="training")
    max_grad_norm: float = flag(1.0, "global gradient-norm clip (0: no clipping)", group="training")
    device_peak_tflops: float | None = flag(
        None,
        "peak TFLOP/s of one device, for the logged MFU; default: known for TPU v3/v4/v5e/v5p/v6e (bf16), "
        "otherwise only model TFLOP/s is logged",
        group="training",
    )
    freeze_encoder: bool = flag(
        False,
        "do not train the encoder; when it equals the teacher's, one encoder pass feeds both decoders",
        group="training",
    )
    kl_weight: float = flag(1.0, "weight of T²·KL(teacher_T ‖ student_T)", group="training")
    ce_weight: float | None = flag(
        None,
        "weight of the cross-entropy on pseudo-labels; default 0.8 with KL, 1.0 without (original)",
        group="training",
    )
    mse_weight: float = flag(0.0, "weight of an optional hidden-state MSE", group="training")
    kd_temperature: float = flag(
        2.0,
        "softmax temperature T of the KL term (--temperature: upstream distil-whisper's name)",
        group="training",
        aliases=("temperature",),
    )
    cache_encoder_outputs: bool = flag(
        False,
        "with --freeze_encoder and a shared encoder, keep each example's encoder output in memory (valid: the "
        "encoder is frozen, inputs are not augmented) so repeated epochs skip the 30 s encoder pass and audio decoding",
        group="training",
    )
    cache_encoder_outputs_max_gb: float = flag(2.0, "memory bound of that cache", group="training")
    seed: int = flag(42, "seeds init RNG, data order and label randomness", group="training")
    logging_steps: int = flag(25, "log train metrics every N steps", group="training")
    eval_steps: int | None = flag(
        None,
        "evaluate every N steps, before training and at the end; each evaluation is also checkpointed so the "
        "best checkpoint by WER is kept",
        group="training",
    )
    save_steps: int = flag(500, "checkpoint every N steps (and at the end)", group="training")
    save_total_limit: int | None = flag(
        None, "keep the last N checkpoints (plus the best by eval WER); default: all", group="training"
    )
    disable_tqdm: bool = flag(False, "no progress bar", group="training")

    @property
    def effective_ce_weight(self) -> float:
        """``--ce_weight``, defaulting to 0.8 with a KL term and 1.0 without (the original's rule)."""
        if self.ce_weight is not None:
            return self.ce_weight
        return default_ce_weight(self.kl_weight)

    def validate(self) -> None:
        """``ValueError`` naming the first flag whose value makes no sense; called before anything loads."""
        _check_counts(self)
        _check_numbers(self)
        if self.warmup_steps > self.max_steps:
            raise ValueError(
                f"--warmup_steps ({self.warmup_steps}) exceeds --max_steps ({self.max_steps}): "
                "the learning rate would never reach its peak"
            )
        if self.max_duration_in_seconds is not None and self.max_duration_in_seconds <= self.min_duration_in_seconds:
            raise ValueError(
                f"--max_duration_in_seconds ({self.max_duration_in_seconds}) must exceed "
                f"--min_duration_in_seconds ({self.min_duration_in_seconds})"
            )
        if self.kl_weight == 0 and self.effective_ce_weight == 0 and self.mse_weight == 0:
            raise ValueError("--kl_weight, --ce_weight and --mse_weight are all 0: there is nothing to train")


def _check_counts(cfg: DistillConfig) -> None:
    at_least_one = [
        "max_steps",
        "per_device_train_batch_size",
        "per_device_eval_batch_size",
        "gradient_accumulation_steps",
        "logging_steps",
        "save_steps",
        "max_label_length",
        "eval_steps",
        "save_total_limit",
        "max_eval_samples",
        "generation_max_length",
    ]
    for name in at_least_one:
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be ≥ 1, got {value}")
    if cfg.warmup_steps < 0:
        raise ValueError(f"--warmup_steps must be ≥ 0, got {cfg.warmup_steps}")
    cfg.check_multi_host()


def _check_numbers(cfg: DistillConfig) -> None:
    """Finite, and in range: (lo, hi, lo_open, hi_open) per flag; None bounds are unbounded."""
    ranges = {
        "learning_rate": (0, None, True, False),
        "kd_temperature": (0, None, True, False),
        "adam_epsilon": (0, None, True, False),
        "device_peak_tflops": (0, None, True, False),
        "weight_decay": (0, None, False, False),
        "max_grad_norm": (0, None, False, False),
        "kl_weight": (0, None, False, False),
        "ce_weight": (0, None, False, False),
        "mse_weight": (0, None, False, False),
        "wer_threshold": (0, None, False, False),
        "min_duration_in_seconds": (0, None, False, False),
        "max_duration_in_seconds": (0, None, True, False),
        "cache_encoder_outputs_max_gb": (0, None, False, False),
        "adam_beta1": (0, 1, False, True),
        "adam_beta2": (0, 1, False, True),
        "timestamp_probability": (0, 1, False, False),
        "condition_on_prev_probability": (0, 1, False, False),
    }
    for name, (lo, hi, lo_open, hi_open) in ranges.items():
        value = getattr(cfg, name)
        if value is None:
            continue
        if not math.isfinite(value):
            raise ValueError(f"--{name} must be a finite number, got {value}")
        below = value <= lo if lo_open else value < lo
        above = hi is not None and (value >= hi if hi_open else value > hi)
        if below or above:
            left, right = "(" if lo_open else "[", ")" if hi_open or hi is None else "]"
            raise ValueError(f"--{name} must be in {left}{lo}, {'∞' if hi is None else hi}{right}, got {value}")
