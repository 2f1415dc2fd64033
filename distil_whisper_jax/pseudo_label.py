"""Pseudo-labelling: transcribe a speech dataset with a teacher Whisper and store the labels for distillation.

    python run_pseudo_label.py --dataset_name DATA[+DATA...] --audio_column_name audio --text_column_name text \\
        --output_dir OUT [--model_name_or_path M] [--wer_threshold 10] [--concatenate_audio]

The data is cut into blocks of ``--rows_per_shard`` input rows; block ``b`` is labelled by process
``b % process_count`` and written to ``OUT/shard-<b>.parquet`` atomically (temp file + rename), with its
bookkeeping in ``OUT/.plabel/block-<b>.json``. A block counts as done when that file exists, so a job
killed at any moment and started again with the same command labels only the missing blocks, and the
shard files sort in input order whatever the number of processes. Within a process the global batch
(``--per_device_eval_batch_size`` × local devices) is split over all local devices. The last process to
finish writes ``report.json`` and ``report.md`` from the bookkeeping files.

Output columns (contract B): the input columns, with the audio column replaced by ``{"bytes", "path"}``
(16-bit FLAC of the exact 16 kHz audio the teacher heard); ``whisper_transcript``, ``whisper_token_ids``,
``wer`` (null without ground truth), ``condition_on_prev``, ``duration``; extras ``pseudo_label_rows``
(the input rows a row is made of) and ``pseudo_label_part`` (index of a >30 s clip's piece, else 0), and
``wer_above_threshold`` with ``--wer_filter_mode mark``.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import audio as audio_lib
from . import data

log = logging.getLogger(__name__)

STATE_DIR = ".plabel"
SHARD_DIGITS = 8
MAX_BAD_EXAMPLES = 20  # per block, in the bookkeeping (all are counted)
NEW_COLUMNS = (
    "whisper_transcript",
    "whisper_token_ids",
    "wer",
    "condition_on_prev",
    "duration",
    "pseudo_label_rows",
    "pseudo_label_part",
)


class PseudoLabelError(RuntimeError):
    """A bad input under ``--strict``, or an output directory that belongs to a different run."""


# ----------------------------------------------------------------------------------------------------------------
# flags


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_pseudo_label.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = p.add_argument_group("data")
    d.add_argument(
        "--dataset_name",
        required=True,
        help="'+'-joined: manifest (.tsv/.csv/.jsonl), Parquet dir, save_to_disk dir, audiofolder:DIR, or 🤗 hub id",
    )
    d.add_argument("--dataset_config_name", default=None, help="'+'-joined, or one for all")
    d.add_argument("--dataset_split_name", default=None, help="'+'-joined, or one for all ('a,b' reads both)")
    d.add_argument("--dataset_cache_dir", default=None, help="🤗 datasets cache directory")
    d.add_argument("--streaming", action="store_true", help="stream 🤗 datasets instead of preparing them")
    d.add_argument("--audio_column_name", default="audio")
    d.add_argument("--text_column_name", default="text", help="ground truth; '' for audio-only data (no WER)")
    d.add_argument(
        "--speaker_id_column_name", default=None, help="rows are only joined / conditioned on rows of the same speaker"
    )
    d.add_argument("--max_samples", type=int, default=None, help="label only the first N input rows")
    o = p.add_argument_group("output")
    o.add_argument("--output_dir", required=True)
    o.add_argument("--overwrite_output_dir", action="store_true", help="delete a previous run's output first")
    o.add_argument("--rows_per_shard", type=int, default=1000, help="input rows per output shard (resume unit)")
    m = p.add_argument_group("teacher and generation")
    m.add_argument("--model_name_or_path", default=None, help="teacher; default: the bundled tiny.en")
    m.add_argument("--per_device_eval_batch_size", type=int, default=8)
    m.add_argument("--num_local_devices", type=int, default=None, help="use only the first N local devices")
    m.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    m.add_argument("--return_timestamps", action="store_true")
    m.add_argument("--language", default=None, help="multilingual teachers; also picks the WER normaliser")
    m.add_argument("--task", choices=["transcribe", "translate"], default="transcribe")
    m.add_argument("--generation_num_beams", type=int, default=1)
    m.add_argument("--max_label_length", type=int, default=256, help="max generated tokens per row")
    f = p.add_argument_group("filtering, concatenation, bad input")
    f.add_argument("--wer_threshold", type=float, default=None, help="rows with WER above this are filtered")
    f.add_argument(
        "--wer_filter_mode",
        choices=["drop", "mark"],
        default="drop",
        help="drop filtered rows, or keep them with wer_above_threshold=True",
    )
    f.add_argument(
        "--concatenate_audio",
        action="store_true",
        help="join consecutive (same-speaker) clips up to --max_duration_in_seconds",
    )
    f.add_argument("--max_duration_in_seconds", type=float, default=30.0)
    f.add_argument(
        "--long_audio",
        choices=["skip", "chunk"],
        default="skip",
        help="clips longer than --max_duration_in_seconds: skip (counted) or cut into pieces",
    )
    f.add_argument("--strict", action="store_true", help="fail on the first bad input instead of skipping it")
    j = p.add_argument_group("multi-host (jax.distributed)")
    j.add_argument("--coordinator_address", default=None, help="host:port of process 0")
    j.add_argument("--num_processes", type=int, default=None)
    j.add_argument("--process_id", type=int, default=None)
    j.add_argument(
        "--jax_distributed",
        action="store_true",
        help="call jax.distributed.initialize() with no arguments (TPU pods, SLURM)",
    )
    return p


def fingerprint(args: argparse.Namespace) -> dict:
    """The flags that determine the output; a restart must match them (batch size and process count may change)."""
    keys = (
        "dataset_name",
        "dataset_config_name",
        "dataset_split_name",
        "audio_column_name",
        "text_column_name",
        "speaker_id_column_name",
        "max_samples",
        "rows_per_shard",
        "model_name_or_path",
        "dtype",
        "return_timestamps",
        "language",
        "task",
        "generation_num_beams",
        "max_label_length",
        "wer_threshold",
        "wer_filter_mode",
        "concatenate_audio",
        "max_duration_in_seconds",
        "long_audio",
    )
    return {k: getattr(args, k) for k in keys}


# ----------------------------------------------------------------------------------------------------------------
# units: what the teacher labels (one clip, a pack of clips, or a piece of a long clip)


@dataclasses.dataclass
class Unit:
    audio: np.ndarray  # int16 16 kHz mono
    row: dict  # input columns (of the first row), audio column excluded
    text: str | None  # ground truth, None when unknown
    speaker: Any
    rows: list[int]  # global input row indices
    part: int = 0  # piece index of a long clip
    pieces: int = 1  # number of pieces the clip was cut into (1: not cut)

    @property
    def duration(self) -> float:
        return len(self.audio) / audio_lib.SAMPLE_RATE


@dataclasses.dataclass
class Bad:
    row: int
    source: str
    reason: str


def quantize(x: np.ndarray) -> np.ndarray:
    """float audio → int16 as 16-bit PCM stores it (soundfile reads it back as ``q / 32768``)."""
    return np.clip(np.round(np.asarray(x, np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def split_long(
    x: np.ndarray, max_len: int, search: int = 5 * audio_lib.SAMPLE_RATE, frame: int = 1600
) -> list[np.ndarray]:
    """Cut ``x`` into pieces of at most ``max_len`` samples, each cut at the quietest 0.1 s frame of the
    last ``search`` samples before the limit (so words are rarely split)."""
    pieces, start = [], 0
    while len(x) - start > max_len:
        lo = start + max(max_len - search, frame)
        window = np.abs(x[lo : start + max_len].astype(np.float32))
        n = len(window) // frame
        energy = window[: n * frame].reshape(n, frame).mean(axis=1)
        cut = lo + int(np.argmin(energy)) * frame + frame // 2
        pieces.append(x[start:cut])
        start = cut
    pieces.append(x[start:])
    return pieces


def pack(units: Iterable[Unit | Bad], max_len: int, by_speaker: bool) -> Iterator[Unit | Bad]:
    """Greedily join consecutive units while the total stays ≤ ``max_len`` samples; a new pack starts at
    a speaker change (``by_speaker``), a gap in the input rows (a bad row), or a piece of a long clip.
    Texts are joined with a space (None if any member lacks ground truth). ``Bad`` items pass through."""
    cur: list[Unit] = []

    def flush() -> Iterator[Unit]:
        if cur:
            if len(cur) == 1:
                yield cur[0]
            else:
                texts = [u.text for u in cur]
                text = None if any(t is None for t in texts) else " ".join(t.strip() for t in texts)
                yield Unit(
                    np.concatenate([u.audio for u in cur]),
                    cur[0].row,
                    text,
                    cur[0].speaker,
                    [r for u in cur for r in u.rows],
                )
            cur.clear()

    for u in units:
        if isinstance(u, Bad):
            yield from flush()
            yield u
            continue
        joinable = (
            cur
            and u.pieces == 1
            and cur[-1].pieces == 1
            and u.rows[0] == cur[-1].rows[-1] + 1
            and (not by_speaker or u.speaker == cur[0].speaker)
            and sum(len(c.audio) for c in cur) + len(u.audio) <= max_len
        )
        if not joinable:
            yield from flush()
        if u.pieces > 1:  # pieces of long clips stand alone
            yield u
        else:
            cur.append(u)
    yield from flush()


def continues(prev: Unit | None, u: Unit, by_speaker: bool, contiguous_rows: bool) -> bool:
    """Does ``u`` directly continue ``prev`` (so ``prev``'s labels can prompt it)? Pieces of one clip always
    do; consecutive rows do when the speaker matches (``by_speaker``) or rows are contiguous by design
    (``contiguous_rows``: concatenation without a speaker column)."""
    if prev is None:
        return False
    if u.part > 0:
        return prev.rows == u.rows and prev.part == u.part - 1
    if u.rows[0] != prev.rows[-1] + 1:
        return False
    return (u.speaker == prev.speaker) if by_speaker else contiguous_rows


# ----------------------------------------------------------------------------------------------------------------
# the run


@dataclasses.dataclass
class Settings:
    """Everything the block loop needs, resolved from the flags once."""

    args: argparse.Namespace
    sources: list
    columns: list[str]  # input columns written (common to all sources), audio column included
    pre: Any  # convert.Pretrained
    prompt: list[int]
    options: Any  # generate.GenerationOptions
    dtype: Any
    devices: list
    params: Any
    batch_size: int
    out: Path
    process_index: int
    process_count: int


def _decoded_units(rows: Iterator[tuple[int, int, dict]], s: Settings) -> Iterator[Unit | Bad]:
    a = s.args
    text_col, spk_col = a.text_column_name or None, a.speaker_id_column_name
    max_len = int(round(a.max_duration_in_seconds * audio_lib.SAMPLE_RATE))
    for gi, k, row in rows:
        src = s.sources[k]
        try:
            if "__error__" in row:
                raise audio_lib.AudioError(row["__error__"])
            wav = quantize(data.row_audio(row.get(a.audio_column_name), src.base_dir))
            if len(wav) > max_len and a.long_audio == "skip":
                raise audio_lib.AudioError(
                    f"{_audio_name(row.get(a.audio_column_name))}: {len(wav) / 16000:.1f} s "
                    f"is longer than {a.max_duration_in_seconds:g} s (--long_audio chunk "
                    "labels it in pieces)"
                )
        except audio_lib.AudioError as e:
            if a.strict:
                raise PseudoLabelError(f"row {gi} of {src.label}: {e} (--strict)") from e
            yield Bad(gi, src.label, str(e))
            continue
        text = row.get(text_col) if text_col else None
        text = text if isinstance(text, str) and text.strip() else None
        kept = {c: row.get(c) for c in s.columns if c != a.audio_column_name}
        speaker = row.get(spk_col) if spk_col else None
        if len(wav) > max_len:
            pieces = split_long(wav, max_len)
            for j, piece in enumerate(pieces):
                yield Unit(piece, kept, None, speaker, [gi], j, len(pieces))
        else:
            yield Unit(wav, kept, text, speaker, [gi])


def _audio_name(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("path") or "<audio bytes>")
    return str(value)


def _block_batches(blocks: Iterator, s: Settings) -> Iterator[tuple]:
    """Producer: per block, ``("batch", b, units, mel)`` items then ``("end", b, rows_read, bads)``."""
    a = s.args
    max_len = int(round(a.max_duration_in_seconds * audio_lib.SAMPLE_RATE))
    for b, rows in blocks:
        counter = {"rows": 0}

        def counted(rows=rows):
            for item in rows:
                counter["rows"] += 1
                yield item

        units = _decoded_units(counted(), s)
        if a.concatenate_audio:
            units = pack(units, max_len, by_speaker=a.speaker_id_column_name is not None)
        bads, batch = [], []
        for u in units:
            if isinstance(u, Bad):
                bads.append(u)
                continue
            batch.append(u)
            if len(batch) == s.batch_size:
                yield "batch", b, batch, _features(batch, s)
                batch = []
        if batch:
            yield "batch", b, batch, _features(batch, s)
        yield "end", b, counter["rows"], bads


def _features(units: list[Unit], s: Settings) -> np.ndarray:
    """Log-mel of a batch, filled up to the static batch size with copies of its last row: a filler row
    then stops decoding when a real one does (silence may never emit EOT and would run to the cap)."""
    mel = audio_lib.log_mel_spectrogram(
        [u.audio.astype(np.float32) / 32768.0 for u in units], n_mels=s.pre.config.num_mel_bins
    )
    return np.concatenate([mel, np.repeat(mel[-1:], s.batch_size - len(units), axis=0)])


def _background(gen: Iterator, size: int = 2) -> Iterator:
    """Run ``gen`` in a thread, ``size`` items ahead (decoding and features overlap generation)."""
    q: queue.Queue = queue.Queue(maxsize=size)
    done = object()
    stop = threading.Event()

    def work():
        try:
            for item in gen:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            q.put(e)

    t = threading.Thread(target=work, daemon=True, name="pseudo-label-data")
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def _output_schema(s: Settings) -> Any:
    import pyarrow as pa

    a = s.args
    first = s.sources[0]
    fields = []
    for c in s.columns:
        if c in NEW_COLUMNS or c == "wer_above_threshold":
            continue
        if c == a.audio_column_name:
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
    ]
    if a.wer_threshold is not None and a.wer_filter_mode == "mark":
        fields.append(pa.field("wer_above_threshold", pa.bool_()))
    return pa.schema(fields)


def _flac(x: np.ndarray) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, x, audio_lib.SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _unit_name(u: Unit) -> str:
    name = f"row-{u.rows[0]:09d}" if len(u.rows) == 1 else f"rows-{u.rows[0]:09d}-{u.rows[-1]:09d}"
    return name + (f"-part{u.part}" if u.part else "") + ".flac"


def _row_wer(ref: str | None, hyp: str, language: str | None) -> tuple[float | None, int, int]:
    """(100·WER or None without ground truth, errors, reference words) after Whisper normalisation."""
    from .evaluate import wer_details

    if ref is None:
        return None, 0, 0
    try:
        d = wer_details([ref], [hyp], language=language)
    except ValueError:  # the reference normalises to nothing
        return None, 0, 0
    return d.wer, d.substitutions + d.deletions + d.insertions, d.reference_words


def _empty_stats(b: int, s: Settings) -> dict:
    return {
        "block": b,
        "process": s.process_index,
        "rows_read": 0,
        "bad": 0,
        "bad_by_kind": {},
        "bad_examples": [],
        "labelled": 0,
        "packs": 0,
        "pieces": 0,
        "written": 0,
        "dropped_wer": 0,
        "marked_wer": 0,
        "no_ground_truth": 0,
        "truncated": 0,
        "audio_seconds": 0.0,
        "audio_seconds_written": 0.0,
        "wer_errors": 0,
        "wer_words": 0,
        "wer_errors_written": 0,
        "wer_words_written": 0,
        "seconds": 0.0,
    }


def bad_kind(reason: str) -> str:
    """A short category for a bad-input message (for the report's counts)."""
    r = reason.lower()
    for key, kind in (
        ("longer than", "too_long"),
        ("no such", "missing_file"),
        ("cell is empty", "missing_audio"),
        ("neither a path", "missing_audio"),
        ("0 bytes", "empty_file"),
        ("zero-length", "zero_length"),
        ("non-finite", "non_finite"),
        ("json", "bad_manifest_line"),
        ("decodable", "undecodable"),
        ("cannot read", "undecodable"),
        ("can read", "undecodable"),
        ("directory", "missing_file"),
    ):
        if key in r:
            return kind
    return "other"


def _label_batch(
    units: list[Unit],
    mel: np.ndarray,
    s: Settings,
    prev: Unit | None,
    prev_ids: list[int],
    st: dict,
    writer_rows: list[dict],
) -> tuple[Unit | None, list[int]]:
    from .generate import generate, strip

    a = s.args
    tok = s.pre.tokenizer
    raw = generate(s.params, mel, s.prompt, s.pre.config, s.options, s.dtype, s.devices)[: len(units)]
    eot = s.options.eot
    by_speaker = a.speaker_id_column_name is not None
    for u, ids, full in zip(units, strip(raw, eot), raw):
        plain = tok.decode(ids, skip_special_tokens=True).strip()
        text = tok.decode(ids, decode_with_timestamps=True).strip() if a.return_timestamps else plain
        w, errs, words = _row_wer(u.text, plain, a.language)  # WER never counts timestamp tokens
        cond = list(prev_ids) if continues(prev, u, by_speaker, a.concatenate_audio) else []
        prev, prev_ids = u, ids
        st["labelled"] += 1
        st["packs"] += len(u.rows) > 1
        st["pieces"] += u.part > 0
        st["truncated"] += not np.any(full == eot)
        st["audio_seconds"] += u.duration
        st["no_ground_truth"] += w is None
        st["wer_errors"] += errs
        st["wer_words"] += words
        above = a.wer_threshold is not None and w is not None and w > a.wer_threshold
        if above and a.wer_filter_mode == "drop":
            st["dropped_wer"] += 1
            continue
        st["marked_wer"] += above
        st["written"] += 1
        st["audio_seconds_written"] += u.duration
        st["wer_errors_written"] += errs
        st["wer_words_written"] += words
        row = dict(u.row)
        if a.text_column_name and (len(u.rows) > 1 or u.pieces > 1):  # a pack's joined text; none for a piece
            row[a.text_column_name] = u.text
        row[a.audio_column_name] = {"bytes": _flac(u.audio), "path": _unit_name(u)}
        row.update(
            whisper_transcript=text,
            whisper_token_ids=ids,
            wer=w,
            condition_on_prev=cond,
            duration=u.duration,
            pseudo_label_rows=list(u.rows),
            pseudo_label_part=u.part,
        )
        if a.wer_threshold is not None and a.wer_filter_mode == "mark":
            row["wer_above_threshold"] = bool(above)
        writer_rows.append(row)
    return prev, prev_ids


def shard_path(out: Path, b: int) -> Path:
    return out / f"shard-{b:0{SHARD_DIGITS}d}.parquet"


def block_state_path(out: Path, b: int) -> Path:
    return out / STATE_DIR / f"block-{b:0{SHARD_DIGITS}d}.json"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _NoRows(Exception):
    """A block that kept no rows: its (empty) shard file is not written."""


def run_blocks(s: Settings, info: dict) -> dict:
    """Label this process's unfinished blocks; returns this run's totals (for the log). Sets
    ``info["total_rows"]`` once the data has been read to its end."""
    import itertools

    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    from .utils import atomic_write

    a, out = s.args, s.out
    schema = _output_schema(s)
    blocks = data.owned_blocks(
        s.sources,
        a.rows_per_shard,
        s.process_index,
        s.process_count,
        skip=lambda b: block_state_path(out, b).exists(),
        limit=a.max_samples,
        info=info,
    )
    total = data.total_rows(s.sources)
    total = a.max_samples if total is None else min(total, a.max_samples or total)
    bar = tqdm(
        total=None if total is None else math.ceil(total / s.process_count),
        unit="row",
        desc=f"pseudo-label p{s.process_index}",
        dynamic_ncols=True,
        mininterval=1.0,
    )
    run = {"blocks": 0, "rows": 0, "audio_seconds": 0.0}
    hours = 0.0
    # A block's seconds run from the end of the previous one (or the start), so they include waiting for
    # its first batch to be read and decoded: summed, they are the labelling wall time.
    t0 = time.perf_counter()
    try:
        for b, items in itertools.groupby(_background(_block_batches(blocks, s)), key=lambda item: item[1]):
            st = _empty_stats(b, s)
            prev, prev_ids, writer = None, [], None
            try:
                with atomic_write(shard_path(out, b)) as tmp:
                    for kind, _, *rest in items:
                        if kind == "end":
                            rows_read, bads = rest
                            break
                        units, mel = rest
                        rows: list[dict] = []
                        prev, prev_ids = _label_batch(units, mel, s, prev, prev_ids, st, rows)
                        if rows:
                            writer = writer or pq.ParquetWriter(tmp, schema)
                            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                        hours += sum(u.duration for u in units) / 3600
                        bar.update(len({r for u in units for r in u.rows}))
                        bar.set_postfix_str(f"{hours:.4f} h audio", refresh=False)
                    if writer is None:
                        raise _NoRows
                    writer.close()
                    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 → what a plain open() would give
            except _NoRows:
                shard_path(out, b).unlink(missing_ok=True)  # a stale shard of an earlier, different run
            finally:
                if writer is not None:
                    writer.close()
            st["rows_read"], st["bad"] = rows_read, len(bads)
            for bd in bads:
                k = bad_kind(bd.reason)
                st["bad_by_kind"][k] = st["bad_by_kind"].get(k, 0) + 1
            st["bad_examples"] = [
                {"row": bd.row, "source": bd.source, "kind": bad_kind(bd.reason), "reason": bd.reason}
                for bd in bads[:MAX_BAD_EXAMPLES]
            ]
            bar.update(len(bads))
            st["seconds"] = time.perf_counter() - t0
            t0 += st["seconds"]
            with atomic_write(block_state_path(out, b), "w") as f:  # the block's "done" marker, written last
                json.dump(st, f, indent=1)
            _log_block(st)
            run["blocks"] += 1
            run["rows"] += st["rows_read"]
            run["audio_seconds"] += st["audio_seconds"]
    finally:
        bar.close()
    return run


def _log_block(st: dict) -> None:
    wer = 100.0 * st["wer_errors"] / st["wer_words"] if st["wer_words"] else float("nan")
    log.info(
        "block %d: %d rows read, %d labelled (%.4f h audio), %d bad, %d dropped by WER, %d written; "
        "WER %.2f %%, %.1f audio-s/s",
        st["block"],
        st["rows_read"],
        st["labelled"],
        st["audio_seconds"] / 3600,
        st["bad"],
        st["dropped_wer"],
        st["written"],
        wer,
        st["audio_seconds"] / max(st["seconds"], 1e-9),
    )


# ----------------------------------------------------------------------------------------------------------------
# report


def build_report(out: Path, config: dict, num_blocks: int) -> dict:
    """Totals over all blocks' bookkeeping files (all processes)."""
    blocks = [json.loads(block_state_path(out, b).read_text()) for b in range(num_blocks)]
    tot = {
        k: sum(bl[k] for bl in blocks)
        for k in (
            "rows_read",
            "bad",
            "labelled",
            "packs",
            "pieces",
            "written",
            "dropped_wer",
            "marked_wer",
            "no_ground_truth",
            "truncated",
            "audio_seconds",
            "audio_seconds_written",
            "wer_errors",
            "wer_words",
            "wer_errors_written",
            "wer_words_written",
            "seconds",
        )
    }
    by_kind: dict[str, int] = {}
    for bl in blocks:
        for k, v in bl["bad_by_kind"].items():
            by_kind[k] = by_kind.get(k, 0) + v
    pct = lambda e, w: round(100.0 * e / w, 4) if w else None  # noqa: E731
    processes = sorted({bl["process"] for bl in blocks})
    return {
        "config": config,
        "shards": sorted(p.name for p in out.glob("shard-*.parquet")),
        "blocks": num_blocks,
        "rows_read": tot["rows_read"],
        "rows_labelled": tot["labelled"],
        "rows_written": tot["written"],
        "rows_dropped_by_wer": tot["dropped_wer"],
        "rows_marked_by_wer": tot["marked_wer"],
        "rows_without_ground_truth": tot["no_ground_truth"],
        "rows_truncated_at_max_label_length": tot["truncated"],
        "packs_of_several_rows": tot["packs"],
        "long_clip_pieces_after_first": tot["pieces"],
        "bad_inputs": {
            "count": tot["bad"],
            "by_kind": dict(sorted(by_kind.items())),
            "examples": [e for bl in blocks for e in bl["bad_examples"]][:200],
        },
        "audio_hours_labelled": tot["audio_seconds"] / 3600,
        "audio_hours_written": tot["audio_seconds_written"] / 3600,
        "wer_all_labelled": pct(tot["wer_errors"], tot["wer_words"]),
        "wer_written": pct(tot["wer_errors_written"], tot["wer_words_written"]),
        "reference_words": tot["wer_words"],
        "throughput": {
            "labelling_seconds_all_processes": tot["seconds"],
            "processes": len(processes),
            "audio_seconds_per_process_second": tot["audio_seconds"] / max(tot["seconds"], 1e-9),
            "audio_hours_per_hour": len(processes) * tot["audio_seconds"] / max(tot["seconds"], 1e-9),
        },
    }


def report_markdown(r: dict) -> str:
    fmt = lambda v: "n/a" if v is None else f"{v:.2f} %"  # noqa: E731
    lines = [
        "# Pseudo-labelling report",
        "",
        f"Teacher: `{r['config']['model_name_or_path'] or 'bundled tiny.en'}`; data: `{r['config']['dataset_name']}`.",
        "",
        "| | |",
        "|---|---:|",
        f"| input rows read | {r['rows_read']} |",
        f"| bad inputs skipped | {r['bad_inputs']['count']} |",
        f"| rows labelled | {r['rows_labelled']} |",
        f"| rows written | {r['rows_written']} |",
        f"| rows dropped by WER filter | {r['rows_dropped_by_wer']} |",
        f"| rows marked by WER filter | {r['rows_marked_by_wer']} |",
        f"| rows without ground truth | {r['rows_without_ground_truth']} |",
        f"| rows cut at max_label_length | {r['rows_truncated_at_max_label_length']} |",
        f"| audio hours labelled | {r['audio_hours_labelled']:.4f} |",
        f"| audio hours written | {r['audio_hours_written']:.4f} |",
        f"| pseudo-label WER vs ground truth (all labelled) | {fmt(r['wer_all_labelled'])} |",
        f"| pseudo-label WER vs ground truth (written) | {fmt(r['wer_written'])} |",
        f"| throughput (audio-s per process-s) | {r['throughput']['audio_seconds_per_process_second']:.2f} |",
        "",
    ]
    if r["bad_inputs"]["count"]:
        lines += ["## Bad inputs", "", "| kind | count |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in r["bad_inputs"]["by_kind"].items()]
        lines += ["", "Examples:", ""]
        lines += [f"- row {e['row']} ({e['source']}): {e['reason']}" for e in r["bad_inputs"]["examples"]]
        lines.append("")
    return "\n".join(lines)


def _maybe_write_report(out: Path, config: dict, rows_per_shard: int) -> dict | None:
    """Write the report if every block is done (known once any process has read to the end of the data)."""
    from .utils import atomic_write

    totals = [json.loads(p.read_text())["total_rows"] for p in (out / STATE_DIR).glob("end-*.json")]
    if not totals:
        return None
    num_blocks = math.ceil(max(totals) / rows_per_shard)
    if not all(block_state_path(out, b).exists() for b in range(num_blocks)):
        return None
    report = build_report(out, config, num_blocks)
    with atomic_write(out / "report.json", "w") as f:
        json.dump(report, f, indent=2)
    with atomic_write(out / "report.md", "w") as f:
        f.write(report_markdown(report))
    return report


# ----------------------------------------------------------------------------------------------------------------
# setup


def _init_distributed(a: argparse.Namespace) -> None:
    import jax

    if a.coordinator_address or a.jax_distributed:
        kw = {}
        if a.coordinator_address:
            kw = dict(coordinator_address=a.coordinator_address, num_processes=a.num_processes, process_id=a.process_id)
        jax.distributed.initialize(**kw)


def _check_flags(a: argparse.Namespace) -> None:
    checks = [
        (a.per_device_eval_batch_size >= 1, "--per_device_eval_batch_size must be ≥ 1"),
        (a.rows_per_shard >= 1, "--rows_per_shard must be ≥ 1"),
        (a.generation_num_beams >= 1, "--generation_num_beams must be ≥ 1"),
        (a.max_label_length >= 1, "--max_label_length must be ≥ 1"),
        (0 < a.max_duration_in_seconds <= 30, "--max_duration_in_seconds must be in (0, 30] (Whisper's window)"),
        (a.max_samples is None or a.max_samples >= 1, "--max_samples must be ≥ 1"),
        (a.wer_threshold is None or a.wer_threshold >= 0, "--wer_threshold must be ≥ 0"),
        (a.num_local_devices is None or a.num_local_devices >= 1, "--num_local_devices must be ≥ 1"),
    ]
    for ok, msg in checks:
        if not ok:
            raise data.DataConfigError(msg)


def _prepare_output(out: Path, config: dict, overwrite: bool, process_index: int, process_count: int) -> None:
    """Check (or claim) the output directory: a restart must use the same settings."""
    import shutil

    from .utils import atomic_write

    state = out / STATE_DIR
    if overwrite and out.exists():
        if process_count > 1:
            raise data.DataConfigError("--overwrite_output_dir is single-process only; delete the directory first")
        for p in out.glob("shard-*.parquet"):
            p.unlink()
        for name in ("report.json", "report.md"):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(state, ignore_errors=True)
    cfg_path = state / "config.json"
    if cfg_path.exists():
        old = json.loads(cfg_path.read_text())
        diff = [k for k in sorted(set(old) | set(config)) if old.get(k) != config.get(k)]
        if diff:
            raise data.DataConfigError(
                f"--output_dir {out} holds a run with different settings ({', '.join(diff)}: "
                f"{[old.get(k) for k in diff]} there, {[config.get(k) for k in diff]} now); "
                "rerun with the same flags to resume, or use --overwrite_output_dir"
            )
    elif out.exists() and any(out.glob("*.parquet")):
        raise data.DataConfigError(
            f"--output_dir {out} already holds Parquet files from something else; "
            "use an empty directory or --overwrite_output_dir"
        )
    else:
        with atomic_write(cfg_path, "w") as f:
            json.dump(config, f, indent=1)
    (state / f"end-{process_index}.json").unlink(missing_ok=True)
    for p in out.glob(".shard-*.parquet.*.tmp"):  # temp files of a killed run (this process's blocks only)
        if int(p.name.split("-")[1].split(".")[0]) % process_count == process_index:
            p.unlink(missing_ok=True)


def setup(a: argparse.Namespace) -> Settings:
    """Resolve flags into ``Settings``; every configuration error is raised here, before any labelling."""
    import jax

    from . import parallel
    from .convert import load_pretrained
    from .model import DTYPES
    from .tokenizer import prompt_ids, special_tokens
    from .transcribe import generation_options

    _check_flags(a)
    specs = data.parse_sources(a.dataset_name, a.dataset_config_name, a.dataset_split_name)
    sources = data.open_sources(specs, a.streaming, a.dataset_cache_dir)
    data.require_columns(
        sources,
        audio_column_name=a.audio_column_name,
        text_column_name=a.text_column_name or None,
        speaker_id_column_name=a.speaker_id_column_name,
    )
    columns = [c for c in sources[0].columns if all(c in s.columns for s in sources[1:])]
    pre = load_pretrained(a.model_name_or_path)
    specials = special_tokens(pre.tokenizer)
    try:
        prompt = prompt_ids(specials, language=a.language, task=a.task, timestamps=a.return_timestamps)
    except ValueError as e:
        raise data.DataConfigError(f"--language/--task: {e}") from e
    room = pre.config.max_target_positions - len(prompt)
    if a.max_label_length > room:
        raise data.DataConfigError(
            f"--max_label_length {a.max_label_length}: the teacher's decoder has room for "
            f"{room} tokens after the prompt"
        )
    options = generation_options(
        pre,
        specials,
        num_beams=a.generation_num_beams,
        return_timestamps=a.return_timestamps,
        max_new_tokens=a.max_label_length,
        prompt_len=len(prompt),
    )
    devices = jax.local_devices()
    if a.num_local_devices is not None:
        if a.num_local_devices > len(devices):
            raise data.DataConfigError(f"--num_local_devices {a.num_local_devices}: only {len(devices)} available")
        devices = devices[: a.num_local_devices]
    params = (
        parallel.replicate(pre.params, parallel.data_mesh(devices))
        if len(devices) > 1
        else jax.device_put(pre.params, devices[0])
    )
    pi, pc = data.process_info()
    return Settings(
        a,
        sources,
        columns,
        pre,
        prompt,
        options,
        DTYPES[a.dtype],
        devices,
        params,
        a.per_device_eval_batch_size * len(devices),
        Path(a.output_dir),
        pi,
        pc,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (``run_pseudo_label.py``). Exit status: 0 done, 1 failed (``--strict`` bad input,
    runtime error), 2 configuration error (nothing labelled)."""
    from .utils import atomic_write, setup_logging

    a = build_parser().parse_args(argv)
    setup_logging(timestamps=True)
    _init_distributed(a)
    try:
        s = setup(a)
        config = fingerprint(a)
        _prepare_output(s.out, config, a.overwrite_output_dir, s.process_index, s.process_count)
    except (data.DataConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log.info(
        "process %d of %d: labelling with %d local device(s), global batch %d, blocks of %d rows",
        s.process_index,
        s.process_count,
        len(s.devices),
        s.batch_size,
        a.rows_per_shard,
    )
    t0 = time.perf_counter()
    info: dict = {}
    try:
        run = run_blocks(s, info)
    except PseudoLabelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    with atomic_write(s.out / STATE_DIR / f"end-{s.process_index}.json", "w") as f:
        json.dump({"total_rows": info["total_rows"]}, f)
    elapsed = time.perf_counter() - t0
    log.info(
        "process %d: %d blocks, %d rows, %.4f h of audio in %.1f s (%.1f audio-s/s)",
        s.process_index,
        run["blocks"],
        run["rows"],
        run["audio_seconds"] / 3600,
        elapsed,
        run["audio_seconds"] / max(elapsed, 1e-9),
    )
    report = _maybe_write_report(s.out, config, a.rows_per_shard)
    if report is None:
        log.info("other processes still labelling; the last one to finish writes %s", s.out / "report.json")
    else:
        log.info(
            "report: %d rows written of %d read (%d bad, %d dropped by WER), WER %s %%, %.4f h labelled -> %s",
            report["rows_written"],
            report["rows_read"],
            report["bad_inputs"]["count"],
            report["rows_dropped_by_wer"],
            report["wer_all_labelled"],
            report["audio_hours_labelled"],
            s.out / "report.json",
        )
    return 0
