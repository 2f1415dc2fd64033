"""The model card (README.md) of an exported transformers directory, and the provenance it reports.

Provenance comes from ``distil_info.json``, which ``create_student`` writes next to a student and training
updates: the teacher, the layer maps, the training steps and data, and held-out WERs. A model without one
(e.g. a teacher exported as is) gets "unknown" in those rows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from distil_whisper_jax.core.model import count_params
from distil_whisper_jax.infra import storage
from distil_whisper_jax.weights.loading import Pretrained
from distil_whisper_jax.weights.student import DISTIL_INFO

USAGE = (
    {
        "hf": (
            "`hf/` (this directory): `model.safetensors` ({dtype}), configs, tokenizer, feature extractor",
            [
                "```python",
                "from transformers import pipeline",
                'asr = pipeline("automatic-speech-recognition", model="path/to/hf")',
                'print(asr("audio.wav")["text"])',
                "```",
            ],
        ),
        "openai": (
            "`original-model.bin`: openai-whisper checkpoint (fp16)",
            [
                "```python",
                "import whisper",
                'model = whisper.load_model("path/to/original-model.bin")',
                'print(model.transcribe("audio.wav")["text"])',
                "```",
            ],
        ),
        "ggml": (
            "`ggml-model.bin`: whisper.cpp model (f16)",
            ["```sh", "whisper-cli -m ggml-model.bin -f audio.wav", "```"],
        ),
    }
    | {
        f"ggml-{q}": (
            f"`ggml-model-{q}.bin`: whisper.cpp model, {bits} ({q}) weights",
            ["```sh", f"whisper-cli -m ggml-model-{q}.bin -f audio.wav", "```"],
        )
        for q, bits in (("q8_0", "8-bit"), ("q5_1", "5-bit"), ("q5_0", "5-bit"), ("q4_1", "4-bit"), ("q4_0", "4-bit"))
    }
    | {
        fmt: (
            f"`{fmt}/`: faster-whisper (CTranslate2) model directory, {q} weights",
            [
                "```python",
                "from faster_whisper import WhisperModel",
                f'model = WhisperModel("path/to/{fmt}")',
                'segments, _ = model.transcribe("audio.wav")',
                'print("".join(s.text for s in segments))',
                "```",
            ],
        )
        for fmt, q in (("ct2", "float32"), ("ct2-float16", "float16"), ("ct2-int8", "int8"))
    }
)


def find_distil_info(source: str | os.PathLike) -> storage.OutPath | None:
    """``distil_info.json`` next to the model: in its directory (or a file's directory), or for an Orbax
    ``O/checkpoints[/<step>]`` in the run directory ``O`` (a local path, or a bucket URL for an Orbax run
    restored from one)."""
    p = storage.location(source, "--model")
    base = p if p.is_dir() else p.parent
    candidates = [base]
    if base.name == "checkpoints":
        candidates.append(base.parent)
    elif base.parent.name == "checkpoints":
        candidates.append(base.parent.parent)
    return next((c / DISTIL_INFO for c in candidates if (c / DISTIL_INFO).is_file()), None)


def read_distil_info(path: storage.OutPath | None) -> dict | None:
    """The provenance dict, or None; ``ValueError`` naming the file if it is malformed."""
    if path is None:
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable provenance file ({e})") from None
    if not isinstance(info, dict) or not isinstance(info.get("teacher"), str):
        raise ValueError(f"{path}: expected a JSON object with a string 'teacher' (a student's distil_info.json)")
    return info


def _md_value(value: Any) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) if value else "none"
    return str(value)


def _table(rows: Sequence[tuple[str, Any]]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {k} | {_md_value(v)} |" for k, v in rows)]


def _front_matter(pre: Pretrained, info: Mapping) -> list[str]:
    provenance = (
        "Provenance from `distil_info.json`."
        if info
        else "No `distil_info.json` was found next to the source, so provenance is unknown."
    )
    return [
        "---",
        *([] if pre.config.is_multilingual else ["language: en"]),
        "library_name: transformers",
        "pipeline_tag: automatic-speech-recognition",
        "tags: [whisper, distil-whisper, audio, jax]",
        "---",
        "",
        f"# Whisper {'student' if info else 'model'} exported from `{Path(pre.source).name}`",
        "",
        f"Exported by distil-whisper-jax from `{pre.source}` (format: {pre.fmt}). {provenance}",
        "",
    ]


def _provenance(info: Mapping) -> list[str]:
    enc_map = info.get("encoder_layer_map", 0)
    return [
        "## Provenance",
        "",
        *_table(
            [
                ("distilled from (teacher)", info.get("teacher")),
                ("teacher decoder layers", info.get("teacher_decoder_layers")),
                ("decoder layer map (student ← teacher layer)", info.get("decoder_layer_map")),
                (
                    "encoder layer map",
                    "none (encoder kept whole)" if enc_map is None else info.get("encoder_layer_map"),
                ),
                ("training steps", info.get("train_steps")),
                ("training data", info.get("train_datasets")),
            ]
        ),
        "",
    ]


def _architecture(pre: Pretrained) -> list[str]:
    c = pre.config
    heads = f"{c.d_model} / {c.encoder_attention_heads} enc, {c.decoder_attention_heads} dec"
    lang = "multilingual" if c.is_multilingual else "en"
    rows = [
        ("parameters", f"{count_params(pre.params) / 1e6:.1f} M"),
        ("d_model / heads", heads),
        ("encoder layers", c.encoder_layers),
        ("decoder layers", c.decoder_layers),
        ("vocabulary", f"{c.vocab_size} ({lang})"),
        ("mel bins", c.num_mel_bins),
    ]
    return ["## Architecture", "", *_table(rows), ""]


def _evaluation(info: Mapping) -> list[str]:
    lines = ["## Evaluation (WER %)", ""]
    evals = info.get("eval_wer") or {}
    if not evals:
        return [*lines, "unknown (no evaluation recorded in `distil_info.json`)"]
    lines += ["| split | student | teacher |", "|---|---:|---:|"]
    return lines + [
        f"| {split} | {_md_value(v.get('student'))} | {_md_value(v.get('teacher'))} |" for split, v in evals.items()
    ]


def _usage(formats: Sequence[str], dtype: str) -> list[str]:
    lines = ["", "## Files and how to use them", ""]
    for fmt in formats:
        title, snippet = USAGE[fmt]
        lines += [f"- {title.format(dtype=dtype)}", "", *snippet, ""]
    lines += ["With this project: `python -m distil_whisper_jax.transcribe audio.wav --model path/to/hf`.", ""]
    return lines


def model_card(
    pre: Pretrained,
    info: Mapping | None,
    formats: Sequence[str],
    dtype: str,
    verification: str | None = None,
    verified_on: str = "the bundled clips",
) -> str:
    """README.md for the HF directory: provenance (or "unknown"), architecture, eval WER, how to use each
    exported file, and the verification table when there is one."""
    info = dict(info or {})
    lines = _front_matter(pre, info) + _provenance(info) + _architecture(pre) + _evaluation(info)
    lines += _usage(formats, dtype)
    if verification:
        lines += [
            "## Export verification",
            "",
            "Each file was loaded in its own runtime (in a subprocess) and "
            f"transcribed {verified_on} greedily, compared with this project's JAX output:",
            "",
            verification,
            "",
        ]
    return "\n".join(lines)
