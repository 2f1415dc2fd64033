"""The labeller's output directory: Parquet shards, their Arrow schema, ``schema.json`` and the bookkeeping.

Layout of ``OUT``: ``shard-<b>.parquet`` (block ``b``'s rows, written atomically), ``schema.json`` (which
column holds the audio, the ground truth, the transcript, ...: training and evaluation read it instead of
column flags), ``report.json`` / ``report.md``, and ``.plabel/``: ``config.json`` (the run's whole config;
a restart must agree on every field that determines the output), ``block-<b>.json`` (a block's counts:
its existence marks the block done), ``tail-<b>.json`` (the block's last labelled unit, which prompts the
next block's first row) and ``end-<p>.json`` (process ``p`` read the data to its end).
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pyarrow as pa
import soundfile as sf

from distil_whisper_jax.data.sources import SCHEMA_FILE, SCHEMA_FORMAT, DataConfigError, Source
from distil_whisper_jax.infra import config
from distil_whisper_jax.infra.files import atomic_write
from distil_whisper_jax.infra.storage import OutPath, remove_tree
from distil_whisper_jax.speech import audio as audio_lib
from distil_whisper_jax.stages.label.config import PseudoLabelConfig, output_differences
from distil_whisper_jax.stages.label.units import Unit

STATE_DIR = ".plabel"
SHARD_DIGITS = 8
NEW_COLUMNS = (
    "whisper_transcript",
    "whisper_token_ids",
    "wer",
    "condition_on_prev",
    "duration",
    "pseudo_label_rows",
    "pseudo_label_part",
    "language",
)


def shard_path(out: OutPath, b: int) -> OutPath:
    return out / f"shard-{b:0{SHARD_DIGITS}d}.parquet"


def block_state_path(out: OutPath, b: int) -> OutPath:
    return out / STATE_DIR / f"block-{b:0{SHARD_DIGITS}d}.json"


def tail_path(out: OutPath, b: int) -> OutPath:
    return out / STATE_DIR / f"tail-{b:0{SHARD_DIGITS}d}.json"


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def output_schema(cfg: PseudoLabelConfig, columns: list[str], first: Source) -> pa.Schema:
    """Arrow schema of the shards: the input columns (audio as ``{"bytes", "path"}``) and the labels."""
    fields = []
    for c in columns:
        if c in NEW_COLUMNS or c == "wer_above_threshold":
            continue
        if c == cfg.audio_column_name:
            fields.append(pa.field(c, pa.struct([("bytes", pa.binary()), ("path", pa.string())])))
        elif first.arrow_schema is not None and c in first.arrow_schema.names:
            fields.append(first.arrow_schema.field(c))
        else:
            fields.append(pa.field(c, pa.string()))
    fields += [
        pa.field("whisper_transcript", pa.string()),
        pa.field("whisper_token_ids", pa.list_(pa.int32())),
        pa.field("wer", pa.float64()),
        pa.field("condition_on_prev", pa.list_(pa.int32())),
        pa.field("duration", pa.float64()),
        pa.field("pseudo_label_rows", pa.list_(pa.int64())),
        pa.field("pseudo_label_part", pa.int32()),
        pa.field("language", pa.string()),
    ]
    if cfg.marks:
        fields.append(pa.field("wer_above_threshold", pa.bool_()))
    return pa.schema(fields)


def column_roles(cfg: PseudoLabelConfig) -> dict[str, str | None]:
    """Which output column plays which part (written to ``schema.json``)."""
    return {
        "audio": cfg.audio_column_name,
        "text": cfg.text_column,
        "transcript": "whisper_transcript",
        "token_ids": "whisper_token_ids",
        "previous": "condition_on_prev",
        "duration": "duration",
        "wer": "wer",
        "speaker": cfg.speaker_id_column_name,
        "language": "language",
    }


def flac(x: np.ndarray) -> bytes:
    """16-bit FLAC bytes of int16 16 kHz audio (lossless for what the teacher heard)."""
    buf = io.BytesIO()
    sf.write(buf, x, audio_lib.SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def unit_name(u: Unit) -> str:
    name = f"row-{u.rows[0]:09d}" if len(u.rows) == 1 else f"rows-{u.rows[0]:09d}-{u.rows[-1]:09d}"
    return name + (f"-part{u.part}" if u.part else "") + ".flac"


def write_tail(out: OutPath, b: int, unit: Unit | None, ids: list[int]) -> None:
    """Record block ``b``'s last labelled unit and its label (None: the block labelled nothing)."""
    tail = None if unit is None else {"rows": unit.rows, "part": unit.part, "speaker": unit.speaker, "ids": ids}
    with atomic_write(tail_path(out, b), "w") as f:
        json.dump({"tail": tail}, f, default=str)


def read_tail(out: OutPath, b: int) -> tuple[Unit | None, list[int]] | None:
    """Block ``b``'s recorded tail as ``(unit, ids)`` (unit None: nothing labelled); None: not recorded yet."""
    path = tail_path(out, b)
    if not path.exists():
        return None
    tail = json.loads(path.read_text())["tail"]
    if tail is None:
        return None, []
    unit = Unit(np.zeros(0, np.int16), {}, None, tail["speaker"], list(tail["rows"]), tail["part"])
    return unit, list(tail["ids"])


def _clear(out: OutPath) -> None:
    for p in out.glob("shard-*.parquet"):
        p.unlink()
    for name in ("report.json", "report.md", SCHEMA_FILE):
        (out / name).unlink(missing_ok=True)
    remove_tree(out / STATE_DIR)


def prepare_output(out: OutPath, cfg: PseudoLabelConfig, process_index: int, process_count: int) -> None:
    """Check (or claim) the output directory: a restart must agree on every field that determines the output
    (``DataConfigError`` naming each difference); record the config and the column roles."""
    state = out / STATE_DIR
    if cfg.overwrite_output_dir and out.exists():
        if process_count > 1:
            raise DataConfigError("--overwrite_output_dir is single-process only; delete the directory first")
        _clear(out)
    cfg_path = state / "config.json"
    if cfg_path.exists():
        diff = output_differences(json.loads(cfg_path.read_text()), cfg)
        if diff:
            raise DataConfigError(
                f"--output_dir {out} holds a run with different settings ({'; '.join(diff)}); "
                "rerun with the same flags to resume, or use --overwrite_output_dir"
            )
    elif out.exists() and any(out.glob("*.parquet")):
        raise DataConfigError(
            f"--output_dir {out} already holds Parquet files from something else; "
            "use an empty directory or --overwrite_output_dir"
        )
    else:
        with atomic_write(cfg_path, "w") as f:
            json.dump(config.to_dict(cfg), f, indent=1)
    with atomic_write(out / SCHEMA_FILE, "w") as f:
        json.dump({"format": SCHEMA_FORMAT, "version": 1, "columns": column_roles(cfg)}, f, indent=1)
    (state / f"end-{process_index}.json").unlink(missing_ok=True)
    for p in out.glob(".shard-*.parquet.*.tmp"):  # temp files of a killed run (this process's blocks only)
        if int(p.name.split("-")[1].split(".")[0]) % process_count == process_index:
            p.unlink(missing_ok=True)


def write_end(out: OutPath, process_index: int, total_rows: int) -> None:
    """Mark that this process read the data to its end (``total_rows`` rows in all)."""
    with atomic_write(out / STATE_DIR / f"end-{process_index}.json", "w") as f:
        json.dump({"total_rows": total_rows}, f)


def stale_shard(out: OutPath, b: int) -> None:
    """Remove block ``b``'s shard of an earlier, different run (this run kept no rows in the block)."""
    shard_path(out, b).unlink(missing_ok=True)
