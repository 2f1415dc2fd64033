"""The labeller's output directory: Parquet shards, their Arrow schema, ``schema.json`` and the bookkeeping.

Layout of ``OUT``: ``shard-<b>.parquet`` (block ``b``'s rows, written atomically), ``schema.json`` (which
column holds the audio, the ground truth, the transcript, ...: training and evaluation read it instead of
column flags), ``report.json`` / ``report.md``, and ``.plabel/``: ``config.json`` (the run's whole config;
a restart must agree on every field that determines the output), ``block-<b>.json`` (a block's counts:
its existence marks the block done), ``tail-<b>.json`` (the block's last labelled unit, which prompts the
next block's first row) and ``end-<p>.json`` (process ``p`` read the data to its end).

A restart trusts a block's marker only when its shard checks out (``finished_block``), and a write that fails
(a full disk) raises ``OutputWriteError`` naming the file (``naming_write_errors``): nothing partial is left
under a final name, and the blocks already written stay done.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from distil_whisper_jax.data.sources import SCHEMA_FILE, SCHEMA_FORMAT, DataConfigError, Source
from distil_whisper_jax.infra import config
from distil_whisper_jax.infra.files import OutputWriteError, atomic_write, write_error
from distil_whisper_jax.infra.storage import OutPath, remove_tree
from distil_whisper_jax.speech import audio as audio_lib
from distil_whisper_jax.stages.label.config import PseudoLabelConfig, output_differences
from distil_whisper_jax.stages.label.units import Unit

log = logging.getLogger(__name__)
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


@contextlib.contextmanager
def naming_write_errors(path: OutPath) -> Iterator[None]:
    """An ``OSError`` raised inside (a full disk, a read-only mount, ...) as ``OutputWriteError`` naming
    ``path``, the output being written, and the cause."""
    try:
        yield
    except OutputWriteError:
        raise
    except OSError as e:
        raise write_error(path, e) from e


def write_json(path: OutPath, obj: Any, **kw: Any) -> None:
    """``obj`` as JSON at ``path``, atomically; a failed write raises ``OutputWriteError`` naming ``path``."""
    with naming_write_errors(path), atomic_write(path, "w") as f:
        json.dump(obj, f, **kw)


def _shard_problem(out: OutPath, b: int) -> str | None:
    """What is wrong with finished block ``b``'s shard (None: it holds the rows its marker counts)."""
    marker, path = block_state_path(out, b), shard_path(out, b)
    try:
        written = json.loads(marker.read_text())["written"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"its done-marker {marker.name} is unreadable ({type(e).__name__}: {e})"
    if not path.exists():
        return None if written == 0 else f"missing, though block {b} is marked done with {written} rows"
    try:
        with path.open("rb") as f:
            rows = pq.ParquetFile(f).metadata.num_rows
    except (OSError, pa.ArrowException) as e:
        return f"unreadable ({type(e).__name__}: {e})"
    return None if rows == written else f"holds {rows} rows, but block {b} is marked done with {written}"


def finished_block(out: OutPath, b: int) -> bool:
    """Whether block ``b`` is done: its marker exists and its shard has a readable Parquet footer with the row
    count the marker records. A damaged block (a truncated shard, say) is never trusted: a warning names the
    file, its marker and shard are removed, and it is labelled again."""
    if not block_state_path(out, b).exists():
        return False
    problem = _shard_problem(out, b)
    if problem is None:
        return True
    log.warning("%s: %s; block %d is labelled again", shard_path(out, b), problem, b)
    shard_path(out, b).unlink(missing_ok=True)
    block_state_path(out, b).unlink(missing_ok=True)
    return False


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
    write_json(tail_path(out, b), {"tail": tail}, default=str)


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
        write_json(cfg_path, config.to_dict(cfg), indent=1)
    write_json(out / SCHEMA_FILE, {"format": SCHEMA_FORMAT, "version": 1, "columns": column_roles(cfg)}, indent=1)
    (state / f"end-{process_index}.json").unlink(missing_ok=True)
    for p in out.glob(".shard-*.parquet.*.tmp"):  # temp files of a killed run (this process's blocks only)
        if int(p.name.split("-")[1].split(".")[0]) % process_count == process_index:
            p.unlink(missing_ok=True)


def write_end(out: OutPath, process_index: int, total_rows: int) -> None:
    """Mark that this process read the data to its end (``total_rows`` rows in all)."""
    write_json(out / STATE_DIR / f"end-{process_index}.json", {"total_rows": total_rows})


def stale_shard(out: OutPath, b: int) -> None:
    """Remove block ``b``'s shard of an earlier, different run (this run kept no rows in the block)."""
    shard_path(out, b).unlink(missing_ok=True)
