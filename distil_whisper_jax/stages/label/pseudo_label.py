"""Pseudo-labelling: transcribe a speech dataset with a teacher Whisper and store the labels for distillation.

    run_pseudo_label.py --dataset_name DATA[+DATA...] --audio_column_name audio --text_column_name text \\
        --output_dir OUT [--model_name_or_path M] [--wer_threshold 10] [--concatenate_audio]

``run(cfg)`` labels the data in blocks of ``--rows_per_shard`` input rows; block ``b`` is labelled by process
``b % process_count`` and written to ``OUT/shard-<b>.parquet`` atomically, with its counts in
``OUT/.plabel/block-<b>.json`` (``output`` describes the directory). A block counts as done when that
file exists, so a job killed at any moment and started again with the same config labels only the missing
blocks, and the shards sort in input order whatever the number of processes. Within a process the global
batch (``--per_device_eval_batch_size`` × local devices) is split over all local devices. When every process
is done, process 0 writes ``report.json`` and ``report.md``.

Output columns: the input columns, with the audio column replaced by ``{"bytes", "path"}`` (16-bit FLAC of
the exact 16 kHz audio the teacher heard); ``whisper_transcript``, ``whisper_token_ids``, ``wer`` (null
without usable ground truth), ``condition_on_prev`` (the previous unit's label when this one directly
continues it: same speaker, or consecutive rows of a concatenated stream; also across blocks and restarts),
``duration``; ``pseudo_label_rows`` (the input rows a row is made of), ``pseudo_label_part`` (index of a
long clip's piece, else 0), and ``wer_above_threshold`` with ``--wer_filter_mode mark``. The WER filter is
``wer_filter``'s rule, the one training applies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from distil_whisper_jax.core import parallel
from distil_whisper_jax.core.model import DTYPES
from distil_whisper_jax.data import blocks as data_blocks
from distil_whisper_jax.data import row_language, wer_filter
from distil_whisper_jax.data import sources as data
from distil_whisper_jax.decode.generate import generate, generation_options, strip
from distil_whisper_jax.infra import compile_cache, storage
from distil_whisper_jax.infra.files import OutputWriteError, atomic_write, check_writable, write_error
from distil_whisper_jax.infra.prefetch import background
from distil_whisper_jax.speech.token_layout import prompt_ids, special_tokens
from distil_whisper_jax.stages.label import output
from distil_whisper_jax.stages.label import report as label_report
from distil_whisper_jax.stages.label.config import PseudoLabelConfig, output_config
from distil_whisper_jax.stages.label.units import Bad, Batcher, PseudoLabelError, Unit, continues, pack, split_long
from distil_whisper_jax.weights.loading import load_pretrained

__all__ = ["PseudoLabelConfig", "PseudoLabelError", "run", "Unit", "Bad", "pack", "split_long"]
log = logging.getLogger(__name__)
TAIL_POLL_SECONDS = 0.5


@dataclasses.dataclass
class Settings:
    """Everything the block loop needs, resolved from the config once."""

    cfg: PseudoLabelConfig
    batcher: Batcher
    pre: Any  # models.Pretrained
    prompt: list[int]
    options: Any  # generate.GenerationOptions
    dtype: Any
    devices: list
    params: Any
    out: storage.OutPath
    process_index: int
    process_count: int

    @property
    def sources(self) -> list[data.Source]:
        return list(self.batcher.sources)

    def prompts(self, units: list[Unit], rows: int) -> np.ndarray:
        """The decoder prompt of each unit (its language's), [rows, P]; filler rows repeat the last."""
        cfg, specials = self.cfg, self.batcher.specials
        ts = cfg.return_timestamps
        each = [prompt_ids(specials, language=u.language, task=cfg.task, timestamps=ts) for u in units]
        return np.asarray(each + each[-1:] * (rows - len(each)), np.int32)


# ----------------------------------------------------------------------------------------------------------------
# setup


def _open_data(cfg: PseudoLabelConfig) -> tuple[list[data.Source], list[str]]:
    specs = data.parse_sources(cfg.dataset_name, cfg.dataset_config_name, cfg.dataset_split_name)
    sources = data.open_sources(specs, cfg.streaming, cfg.dataset_cache_dir)
    for src in sources:
        data.require_columns(
            src,
            {
                "audio_column_name": cfg.audio_column_name,
                "text_column_name": cfg.text_column,
                "speaker_id_column_name": cfg.speaker_id_column_name,
                "language_column_name": cfg.language_column_name,
            },
        )
    columns = [c for c in sources[0].columns if all(c in s.columns for s in sources[1:])]
    return sources, columns


def _devices(cfg: PseudoLabelConfig) -> list:
    devices = jax.local_devices()
    if cfg.num_local_devices is not None:
        if cfg.num_local_devices > len(devices):
            raise data.DataConfigError(f"--num_local_devices {cfg.num_local_devices}: only {len(devices)} available")
        devices = devices[: cfg.num_local_devices]
    return devices


def setup(cfg: PseudoLabelConfig) -> Settings:
    """Resolve the config into ``Settings``; every configuration error is raised here, before any labelling."""
    cfg.validate()
    out = storage.location(cfg.output_dir)
    check_writable(out, "--output_dir")
    sources, columns = _open_data(cfg)
    started = time.perf_counter()
    pre = load_pretrained(cfg.model_name_or_path, "--model_name_or_path")
    log.info("loaded the teacher %s in %.1f s", pre.source, time.perf_counter() - started)
    window = pre.config.input_seconds
    if cfg.max_duration_in_seconds > window:
        raise data.DataConfigError(
            f"--max_duration_in_seconds {cfg.max_duration_in_seconds:g}: the teacher's encoder takes {window:g} s "
            f"of audio ({pre.config.max_source_positions} positions); pass --max_duration_in_seconds {window:g}"
        )
    specials = special_tokens(pre.tokenizer)
    languages = row_language.per_source(cfg.language, len(sources))
    row_language.check_model(specials, languages, cfg.language_column_name, f"the teacher {pre.source}")
    try:
        prompt = prompt_ids(specials, language=languages[0], task=cfg.task, timestamps=cfg.return_timestamps)
    except ValueError as e:
        raise data.DataConfigError(f"--language/--task: {e}") from e
    room = pre.config.max_target_positions - len(prompt)
    if cfg.max_label_length > room:
        raise data.DataConfigError(
            f"--max_label_length {cfg.max_label_length}: the teacher's decoder has room for "
            f"{room} tokens after the prompt"
        )
    options = generation_options(
        pre,
        specials,
        num_beams=cfg.generation_num_beams,
        return_timestamps=cfg.return_timestamps,
        max_new_tokens=cfg.max_label_length,
        prompt_len=len(prompt),
    )
    devices = _devices(cfg)
    params = (
        parallel.replicate(pre.params, parallel.data_mesh(devices))
        if len(devices) > 1
        else jax.device_put(pre.params, devices[0])
    )
    batcher = Batcher(
        cfg,
        sources,
        columns,
        cfg.per_device_eval_batch_size * len(devices),
        pre.config.num_mel_bins,
        pre.config.n_frames,
        languages,
        specials,
    )
    dtype = DTYPES[cfg.dtype]
    pi, pc = data_blocks.process_info()
    return Settings(cfg, batcher, pre, prompt, options, dtype, devices, params, out, pi, pc)


# ----------------------------------------------------------------------------------------------------------------
# one batch


def _stats_add(st: dict, u: Unit, full: np.ndarray, eot: int, w: float | None, errs: int, words: int) -> None:
    st["labelled"] += 1
    st["packs"] += len(u.rows) > 1
    st["pieces"] += u.part > 0
    st["truncated"] += not np.any(full == eot)
    st["audio_seconds"] += u.duration
    st["no_ground_truth"] += not wer_filter.has_ground_truth(u.text)
    st["wer_errors"] += errs
    st["wer_words"] += words


def _output_row(s: Settings, u: Unit, text: str, ids: list[int], w: float | None, cond: list[int]) -> dict:
    cfg = s.cfg
    row = dict(u.row)
    if cfg.text_column and (len(u.rows) > 1 or u.pieces > 1):  # a pack's joined text; none for a piece
        row[cfg.text_column] = u.text
    row[cfg.audio_column_name] = {"bytes": output.flac(u.audio), "path": output.unit_name(u)}
    row.update(
        whisper_transcript=text,
        whisper_token_ids=ids,
        wer=w,
        condition_on_prev=cond,
        duration=u.duration,
        pseudo_label_rows=list(u.rows),
        pseudo_label_part=u.part,
        language=u.language,
    )
    return row


def _label_batch(
    units: list[Unit], mel: np.ndarray, s: Settings, prev: Unit | None, prev_ids: list[int], st: dict
) -> tuple[Unit | None, list[int], list[tuple[Unit, dict]]]:
    """Generate a batch's labels; returns the last unit and its ids, and the ``(unit, row)`` pairs kept."""
    cfg, tok, eot = s.cfg, s.pre.tokenizer, s.options.eot
    prompts = s.prompts(units, len(mel))
    raw = generate(s.params, mel, prompts, s.pre.config, s.options, s.dtype, s.devices)[: len(units)]
    by_speaker = cfg.speaker_id_column_name is not None
    kept = []
    for u, ids, full in zip(units, strip(raw, eot), raw):
        ids = [int(t) for t in ids]
        plain = tok.decode(ids, skip_special_tokens=True).strip()
        text = tok.decode(ids, decode_with_timestamps=True).strip() if cfg.return_timestamps else plain
        w, errs, words = wer_filter.row_wer(u.text, plain, u.language)  # WER never counts timestamp tokens
        cond = list(prev_ids) if continues(prev, u, by_speaker, cfg.concatenate_audio) else []
        prev, prev_ids = u, ids
        _stats_add(st, u, full, eot, w, errs, words)
        reason = wer_filter.drop_reason(
            wer_filter.has_ground_truth(u.text), True, w, cfg.wer_threshold, cfg.keep_rows_without_ground_truth
        )
        if reason is not None and cfg.wer_filter_mode == "drop":
            st["dropped_wer"] += 1
            continue
        st["marked_wer"] += reason is not None
        st["written"] += 1
        st["audio_seconds_written"] += u.duration
        st["wer_errors_written"] += errs
        st["wer_words_written"] += words
        row = _output_row(s, u, text, ids, w, cond)
        if cfg.marks:
            row["wer_above_threshold"] = reason is not None
        kept.append((u, row))
    return prev, prev_ids, kept


# ----------------------------------------------------------------------------------------------------------------
# one block


class _Shard:
    """A block's Parquet file, written batch by batch. Rows are held back while the block's first row waits
    for the previous block's label (its ``condition_on_prev``), which another process may still be making."""

    def __init__(self, s: Settings, b: int, tmp: Path, schema: Any):
        self.s, self.b, self.tmp, self.schema, self.writer = s, b, tmp, schema, None
        self.held: list[dict] = []
        self.first: tuple[Unit, dict | None] | None = None  # the block's first unit and its row (if kept)
        cfg = s.cfg
        self.prompts = cfg.speaker_id_column_name is not None or cfg.concatenate_audio  # rows may continue others
        self.tail = output.read_tail(s.out, b - 1) if b > 0 and self.prompts else (None, [])

    def add(self, units: list[Unit], kept: list[tuple[Unit, dict]]) -> None:
        if self.first is None and units:
            self.first = (units[0], kept[0][1] if kept and kept[0][0] is units[0] else None)
        self.held += [row for _, row in kept]
        if self.tail is None:
            self.tail = output.read_tail(self.s.out, self.b - 1)
        if self.tail is not None:
            self._flush()

    def _flush(self) -> None:
        if self.first is not None:  # the first row continues the previous block's last unit: prompt it
            (unit, row), (prev, prev_ids) = self.first, self.tail
            cfg = self.s.cfg
            if row is not None and continues(prev, unit, cfg.speaker_id_column_name is not None, cfg.concatenate_audio):
                row["condition_on_prev"] = list(prev_ids)
            self.first = (unit, None)
        if self.held:
            with self._writing():
                self.writer = self.writer or pq.ParquetWriter(self.tmp, self.schema)
                self.writer.write_table(pa.Table.from_pylist(self.held, schema=self.schema))
            self.held = []

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """A failed write (a full disk) as ``OutputWriteError`` naming the shard; the temp file is dropped."""
        try:
            with output.naming_write_errors(output.shard_path(self.s.out, self.b)):
                yield
        except OSError:
            if self.writer is not None:
                with contextlib.suppress(Exception):
                    self.writer.close()
            raise

    def finish(self) -> bool:
        """Write what is held (waiting for the previous block's tail if need be); False: no rows at all."""
        waited = 0.0
        while self.tail is None:
            if waited % 60 < TAIL_POLL_SECONDS:
                log.info("block %d: waiting for block %d's labels (another process)", self.b, self.b - 1)
            time.sleep(TAIL_POLL_SECONDS)
            waited += TAIL_POLL_SECONDS
            self.tail = output.read_tail(self.s.out, self.b - 1)
        self._flush()
        if self.writer is None:
            return False
        with self._writing():
            self.writer.close()
        return True


class _NoRows(Exception):
    """A block that kept no rows: its (empty) shard file is not written; args: ``(rows_read, bads)``."""


def _label_into(s: Settings, b: int, items: Any, schema: Any, bar: Any, st: dict, tmp: Path) -> tuple[int, list]:
    """Label one block's batches into ``tmp``; returns ``(rows read, bad inputs)``."""
    shard = _Shard(s, b, tmp, schema)
    prev, prev_ids = shard.tail if shard.tail is not None else (None, [])
    labelled_any, rows_read, bads = False, 0, []
    for kind, _, *rest in items:
        if kind == "end":
            rows_read, bads = rest
            break
        units, mel = rest
        prev, prev_ids, kept = _label_batch(units, mel, s, prev, prev_ids, st)
        labelled_any = True
        shard.add(units, kept)
        bar.update(len({r for u in units for r in u.rows}))
    output.write_tail(s.out, b, prev if labelled_any else None, prev_ids)
    if not shard.finish():
        raise _NoRows(rows_read, bads)
    return rows_read, bads


def _label_block(s: Settings, b: int, items: Any, schema: Any, bar: Any) -> dict:
    """Label one block and commit its shard; returns its counts (the block is marked done by the caller)."""
    st = label_report.empty_stats(b, s.process_index)
    path, labelling = output.shard_path(s.out, b), False
    try:
        with atomic_write(path) as tmp:
            labelling = True  # an error while reading data passes as it is; the shard's own writes name it
            rows_read, bads = _label_into(s, b, items, schema, bar, st, tmp)
            labelling = False
    except _NoRows as e:
        rows_read, bads = e.args
        output.stale_shard(s.out, b)  # a shard of an earlier, different run
    except OSError as e:  # creating or renaming the temp file
        if labelling or isinstance(e, OutputWriteError):
            raise
        raise write_error(path, e) from e
    st["rows_read"] = rows_read
    label_report.count_bads(st, bads)
    bar.update(len(bads))
    return st


# ----------------------------------------------------------------------------------------------------------------
# the run


def run_blocks(s: Settings, info: dict) -> dict:
    """Label this process's unfinished blocks; returns this run's totals (for the log). Sets
    ``info["total_rows"]`` once the data has been read to its end."""
    cfg, out = s.cfg, s.out
    schema = output.output_schema(cfg, list(s.batcher.columns), s.sources[0])
    blocks = data_blocks.owned_blocks(
        s.sources,
        cfg.rows_per_shard,
        s.process_index,
        s.process_count,
        skip=lambda b: output.finished_block(out, b),
        limit=cfg.max_samples,
        info=info,
    )
    total = data_blocks.total_rows(s.sources)
    total = cfg.max_samples if total is None else min(total, cfg.max_samples or total)
    bar = tqdm(
        total=None if total is None else math.ceil(total / s.process_count),
        unit="row",
        desc=f"pseudo-label p{s.process_index}",
        dynamic_ncols=True,
        mininterval=1.0,
    )
    run = {"blocks": 0, "rows": 0, "audio_seconds": 0.0}
    # A block's seconds run from the end of the previous one (or the start), so they include waiting for
    # its first batch to be read and decoded: summed, they are the labelling wall time.
    t0 = time.perf_counter()
    try:
        batches = background(s.batcher.items(blocks), name="pseudo-label-data")
        for b, items in itertools.groupby(batches, key=lambda item: item[1]):
            st = _label_block(s, b, items, schema, bar)
            st["seconds"] = time.perf_counter() - t0
            t0 += st["seconds"]
            output.write_json(output.block_state_path(out, b), st, indent=1)  # the "done" marker, written last
            label_report.log_block(st)
            run["blocks"] += 1
            run["rows"] += st["rows_read"]
            run["audio_seconds"] += st["audio_seconds"]
    finally:
        bar.close()
    return run


def run(cfg: PseudoLabelConfig) -> int:
    """Label the data of ``cfg`` (resuming a run in ``cfg.output_dir``); returns 0. Raises
    ``data.DataConfigError`` for a configuration that cannot work (before any labelling) and
    ``PseudoLabelError`` for a bad input under ``--strict``."""
    cfg.init_distributed()
    compile_cache.enable(cfg)
    s = setup(cfg)
    output.prepare_output(s.out, cfg, s.process_index, s.process_count)
    log.info(
        "process %d of %d: labelling with %d local device(s), global batch %d, blocks of %d rows",
        s.process_index,
        s.process_count,
        len(s.devices),
        s.batcher.batch_size,
        cfg.rows_per_shard,
    )
    t0 = time.perf_counter()
    info: dict = {}
    with compile_cache.CompileClock() as clock:
        totals = run_blocks(s, info)
    log.info("process %d: %s", s.process_index, clock.summary())
    output.write_end(s.out, s.process_index, info["total_rows"])
    elapsed = time.perf_counter() - t0
    log.info(
        "process %d: %d blocks, %d rows, %.4f h of audio in %.1f s (%.1f audio-s/s)",
        s.process_index,
        totals["blocks"],
        totals["rows"],
        totals["audio_seconds"] / 3600,
        elapsed,
        totals["audio_seconds"] / max(elapsed, 1e-9),
    )
    if s.process_count > 1:  # every process has marked its end: process 0 alone writes the report
        multihost_utils.sync_global_devices("pseudo-label: every block labelled")
    report = None
    if s.process_index == 0:
        report = label_report.maybe_write_report(s.out, output_config(cfg), cfg.rows_per_shard)
    if report is None:
        log.info("process 0 writes the report: %s", s.out / "report.json")
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
