"""``PseudoLabelConfig``: every setting of a pseudo-labelling run (the fields are ``run_pseudo_label.py``'s flags)."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from distil_whisper_jax.data import wer_filter
from distil_whisper_jax.data.sources import DataConfigError
from distil_whisper_jax.infra import compile_cache, config, multihost
from distil_whisper_jax.infra.compile_cache import CompileCacheFlags
from distil_whisper_jax.infra.flag_groups import GenerationDeviceFlags, HubDatasetFlags
from distil_whisper_jax.infra.multihost import MultiHostConfig
from distil_whisper_jax.speech import vad

# Fields that do not change what is written: a restarted run may change them (batch size, devices,
# processes, where the 🤗 cache lives, whether bad input fails the job).
RUN_ONLY_FIELDS = (
    "output_dir",
    "overwrite_output_dir",
    "dataset_cache_dir",
    "streaming",
    "per_device_eval_batch_size",
    "num_local_devices",
    "strict",
    *multihost.FIELDS,
    *compile_cache.FIELDS,
)

DATA, OUTPUT, TEACHER, FILTER = (
    "data",
    "output",
    "teacher and generation",
    "filtering, concatenation, bad input",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PseudoLabelConfig(MultiHostConfig, HubDatasetFlags, GenerationDeviceFlags, CompileCacheFlags):
    """A pseudo-labelling run: which data, which teacher, how to generate, what to keep, where to write."""

    # data
    dataset_name: str = config.flag(
        help="'+'-joined: manifest (.tsv/.csv/.jsonl), Parquet dir/file/glob, save_to_disk dir, audiofolder:DIR, "
        "or 🤗 hub id",
        group=DATA,
    )
    audio_column_name: str = config.flag("audio", "column of the audio (path or 🤗 Audio)", group=DATA)
    text_column_name: str = config.flag("text", "ground truth; '' for audio-only data (no WER)", group=DATA)
    speaker_id_column_name: str | None = config.flag(
        None, "rows are only joined / conditioned on rows of the same speaker", group=DATA
    )
    max_samples: int | None = config.flag(None, "label only the first N input rows", group=DATA)
    # output
    output_dir: str = config.flag(help="where the labelled Parquet shards, schema.json and report go", group=OUTPUT)
    overwrite_output_dir: bool = config.flag(False, "delete a previous run's output first", group=OUTPUT)
    rows_per_shard: int = config.flag(1000, "input rows per output shard (resume unit)", group=OUTPUT)
    # teacher and generation
    model_name_or_path: str | None = config.flag(
        None, "teacher; default: the bundled tiny.en", group=TEACHER, aliases=("model",)
    )
    dtype: Literal["float32", "bfloat16"] = config.flag("float32", "compute dtype of generation", group=TEACHER)
    return_timestamps: bool = config.flag(False, "generate timestamp tokens", group=TEACHER)
    language: str | None = config.flag(
        None,
        "language of the data (a Whisper code; '+'-joined: one per dataset): the multilingual teacher's prompt and "
        "the WER normaliser",
        group=TEACHER,
    )
    language_column_name: str | None = config.flag(
        None, "column of each row's language (Whisper codes such as 'fr'); empty cells take --language", group=DATA
    )
    task: Literal["transcribe", "translate"] = config.flag("transcribe", "decoder task token", group=TEACHER)
    generation_num_beams: int = config.flag(1, "beam width (1: greedy)", group=TEACHER)
    max_label_length: int = config.flag(256, "max generated tokens per row", group=TEACHER)
    # filtering, concatenation, bad input
    wer_threshold: float | None = config.flag(None, wer_filter.HELP, group=FILTER)
    wer_filter_mode: Literal["drop", "mark"] = config.flag(
        "drop", "drop filtered rows, or keep them with wer_above_threshold=True", group=FILTER
    )
    keep_rows_without_ground_truth: bool = config.flag(False, wer_filter.KEEP_HELP, group=FILTER)
    concatenate_audio: bool = config.flag(
        False, "join consecutive (same-speaker) clips up to --max_duration_in_seconds", group=FILTER
    )
    max_duration_in_seconds: float = config.flag(30.0, "longest clip (or pack) labelled in one piece", group=FILTER)
    long_audio: Literal["skip", "chunk", "vad"] = config.flag(
        "skip",
        "clips longer than --max_duration_in_seconds: skip (counted), cut into pieces at quiet points (chunk), or "
        "at the pauses a voice-activity model finds (vad)",
        group=FILTER,
    )
    strict: bool = config.flag(False, "fail on the first bad input instead of skipping it", group=FILTER)

    def validate(self) -> None:
        """``DataConfigError`` naming the flag for a value that cannot work (before any work starts)."""
        checks = [
            (self.per_device_eval_batch_size >= 1, "--per_device_eval_batch_size must be ≥ 1"),
            (self.rows_per_shard >= 1, "--rows_per_shard must be ≥ 1"),
            (self.generation_num_beams >= 1, "--generation_num_beams must be ≥ 1"),
            (self.max_label_length >= 1, "--max_label_length must be ≥ 1"),
            (0 < self.max_duration_in_seconds <= 30, "--max_duration_in_seconds must be in (0, 30] (Whisper's window)"),
            (self.max_samples is None or self.max_samples >= 1, "--max_samples must be ≥ 1"),
            (self.wer_threshold is None or self.wer_threshold >= 0, "--wer_threshold must be ≥ 0"),
            (self.num_local_devices is None or self.num_local_devices >= 1, "--num_local_devices must be ≥ 1"),
            (
                self.wer_threshold is None or bool(self.text_column_name) or self.keep_rows_without_ground_truth,
                "--wer_threshold without ground truth (--text_column_name '') would drop every row; "
                "add --keep_rows_without_ground_truth or drop --wer_threshold",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise DataConfigError(msg)
        if self.long_audio == "vad":
            vad.check_available()

    @property
    def text_column(self) -> str | None:
        """The ground-truth column, None for audio-only data."""
        return self.text_column_name or None

    @property
    def marks(self) -> bool:
        """Does the output carry a ``wer_above_threshold`` column (filter in mark mode)?"""
        return self.wer_threshold is not None and self.wer_filter_mode == "mark"


def output_differences(saved: dict[str, Any], cfg: PseudoLabelConfig) -> list[str]:
    """``field: saved → now`` for each field that determines the output and differs from a saved run's."""
    return config.differences(saved, config.to_dict(cfg), ignore=RUN_ONLY_FIELDS)


def output_config(cfg: PseudoLabelConfig) -> dict[str, Any]:
    """The fields that determine the output (what the report describes: the same for any process layout)."""
    return {k: v for k, v in config.to_dict(cfg).items() if k not in RUN_ONLY_FIELDS}
