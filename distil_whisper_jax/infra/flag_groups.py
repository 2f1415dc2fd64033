"""Flag groups shared by several run configs, each flag declared once (one default, one help text).

A stage config inherits the groups it takes (``class EvalConfig(MultiHostConfig, HubDatasetFlags, ...)``), so
``--streaming`` or ``--num_beams`` mean the same thing, with the same default, in every command that has them.
The multi-host group is ``multihost.MultiHostConfig``.

Flags that share a name but not a meaning stay in their stage (``--text_column_name``: labelling's default
``text`` with ``''`` for audio-only data, evaluation's default "the recorded ground truth"; ``--output_dir``:
required by most stages, optional for transcription, ``demo_output`` for the demo; ``--dtype``: export's
choices are float16/float32, the others' bfloat16/float32). Giving them one default would change what a
documented command does.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from distil_whisper_jax.infra.config import flag

DATA, DEVICES, DECODING = "data", "devices", "decoding"


@dataclasses.dataclass(frozen=True, kw_only=True)
class HubDatasetFlags:
    """How a ``+``-joined ``--dataset_name`` of 🤗 hub datasets is opened (labelling, evaluation)."""

    dataset_config_name: str | None = flag(None, "'+'-joined, or one for all", group=DATA)
    dataset_split_name: str | None = flag(None, "'+'-joined, or one for all ('a,b' reads both)", group=DATA)
    dataset_cache_dir: str | None = flag(None, "🤗 datasets cache directory", group=DATA)
    streaming: bool = flag(False, "stream 🤗 datasets instead of preparing them", group=DATA)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GenerationDeviceFlags:
    """How a generation batch is spread over the local devices (labelling, evaluation)."""

    per_device_eval_batch_size: int = flag(8, "rows per device per generation batch", group=DEVICES)
    num_local_devices: int | None = flag(None, "use only the first N local devices", group=DEVICES)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecodingFlags:
    """How a model decodes: beams, length cap, long-form mode, speculative drafting (transcription, evaluation)."""

    num_beams: int = flag(1, "beam width (1: greedy)", group=DECODING, aliases=("generation_num_beams",))
    max_new_tokens: int | None = flag(None, "cap on generated tokens per input (≥ 1)", group=DECODING)
    long_form: Literal["none", "chunked", "sequential", "vad"] = flag(
        "none",
        "none: input longer than the model's window (30 s) is refused (transcription) or counted, not scored "
        "(evaluation); chunked: any length, overlapping windows decoded in batches and merged, with timestamps; "
        "sequential: any length, openai-whisper's algorithm (each window starts at the last segment end, "
        "conditioned on the previous text, with temperature fallback); vad: any length, cut at the pauses a "
        "voice-activity model (Silero VAD) finds into pieces of at most one window, decoded in batches, with "
        "timestamps (no speech found: no text)",
        group=DECODING,
    )
    chunk_length_s: float | None = flag(
        None, "window length for --long_form chunked (default and maximum: the model's input length)", group=DECODING
    )
    num_assistant_tokens: int = flag(5, "tokens the assistant drafts per verification pass", group=DECODING)
    assistant_vocab_size: int = flag(
        0,
        "the assistant drafts from only N text tokens, its most frequent training-label tokens first (its "
        "draft_vocab.json, written by distillation), then the lowest ids, and the special tokens: cheaper drafts at "
        "small batches on CPU, the same output; 0: every token",
        group=DECODING,
    )
