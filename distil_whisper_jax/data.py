"""Speech dataset input for labelling and training: 🤗 datasets, local manifests, audio folders, Parquet dirs.

A ``--dataset_name`` entry is one of
- a ``.tsv`` / ``.csv`` / ``.jsonl`` manifest whose audio column holds paths relative to the manifest,
- a directory of ``*.parquet`` files (e.g. the output of ``run_pseudo_label.py``),
- a directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (``load_from_disk``),
- ``audiofolder:DIR`` or any other directory (🤗 ``audiofolder`` layout: audio files + ``metadata.csv``),
- a 🤗 hub id (from the local cache, or streamed with ``streaming=True``),
and several are joined with ``+`` (rows concatenated in order; configs and splits are ``+``-joined too, or
given once for all). Every source is read as a stream of plain dict rows, in a fixed order, without
materialising the dataset, so memory does not grow with its size. Audio is never decoded by 🤗 (no
torchcodec): columns are cast to ``Audio(decode=False)`` and ``row_audio`` decodes the bytes or the path
with ``audio.decode_audio_bytes`` / ``audio.load_audio`` (soundfile, ffmpeg fallback), downmixed to mono
and resampled to 16 kHz.

Work is split between processes by fixed-size blocks of the global row index (``owned_blocks``): block
``b`` belongs to process ``b % process_count``. Outputs named by block number therefore sort in input
order whatever the number of processes, and a restarted job can skip finished blocks. (``datasets``'
``split_dataset_by_node`` is not used: it hands whole files to nodes when it can, which loses the global
row index and with it the input order of the merged output and O(1) resume; the cost here is that, for a
hub *stream*, every process reads past the other processes' rows.)
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import audio as audio_lib

MANIFEST_SUFFIXES = (".tsv", ".csv", ".jsonl")


class DataConfigError(ValueError):
    """A dataset flag that cannot work (unknown dataset, split or column); raised before any labelling."""


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One ``+``-separated entry of the dataset flags."""

    name: str
    config: str | None = None
    split: str | None = None


def parse_sources(names: str, configs: str | None = None, splits: str | None = None) -> list[SourceSpec]:
    """Split the ``+``-joined ``--dataset_name/--dataset_config_name/--dataset_split_name`` flags.

    Configs and splits may be given once (used for every dataset) or once per dataset; one dataset with
    several splits (``--dataset_split_name train+validation``, the original labeller's style) reads each."""
    name_list = [n.strip() for n in names.split("+")]
    if not all(name_list):
        raise DataConfigError(f"--dataset_name {names!r}: empty entry between '+' separators")
    if len(name_list) == 1 and splits and "+" in splits:
        name_list *= len(splits.split("+"))

    def per_source(value: str | None, flag: str) -> list[str | None]:
        if value is None or value == "":
            return [None] * len(name_list)
        parts = [v.strip() or None for v in value.split("+")]
        if len(parts) == 1:
            return parts * len(name_list)
        if len(parts) != len(name_list):
            raise DataConfigError(
                f"{flag} {value!r} has {len(parts)} '+'-separated entries but --dataset_name "
                f"has {len(name_list)}; give one for all or one per dataset"
            )
        return parts

    return [
        SourceSpec(n, c, s)
        for n, c, s in zip(
            name_list, per_source(configs, "--dataset_config_name"), per_source(splits, "--dataset_split_name")
        )
    ]


@dataclasses.dataclass
class Source:
    """An opened dataset: its columns, its size when known, and a way to stream rows from a given row on.

    ``base_dir`` is where relative audio paths in this source are resolved."""

    spec: SourceSpec
    columns: list[str]
    num_rows: int | None
    rows_from: Callable[[int], Iterator[dict]]  # rows_from(i): rows i, i+1, ... (cheap skip when possible)
    base_dir: Path | None = None
    arrow_schema: Any = None  # pyarrow schema of the rows when known (🤗 / Parquet sources)

    @property
    def label(self) -> str:
        return (
            self.spec.name
            + (f":{self.spec.config}" if self.spec.config else "")
            + (f"[{self.spec.split}]" if self.spec.split else "")
        )


# ----------------------------------------------------------------------------------------------------------------
# opening sources


def manifest_rows(path: Path) -> Iterator[dict]:
    """Rows of a CSV/TSV (header line) or JSONL manifest; a bad JSONL line becomes ``{"__error__": why}``."""
    with open(path, newline="", encoding="utf-8") as f:
        if path.suffix == ".jsonl":
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        row = {"__error__": f"{path}:{n}: not valid JSON ({e.msg})"}
                    if not isinstance(row, dict):
                        row = {"__error__": f"{path}:{n}: expected a JSON object per line"}
                    yield row
        else:
            yield from csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ",")


def _open_manifest(spec: SourceSpec) -> Source:
    path = Path(spec.name)
    first = next(iter(manifest_rows(path)), None)
    if first is None:
        raise DataConfigError(f"--dataset_name {path}: manifest has no rows")
    if path.suffix == ".jsonl":
        if "__error__" in first:
            raise DataConfigError(f"--dataset_name {first['__error__']}")
        columns = list(first)
    else:
        with open(path, newline="", encoding="utf-8") as f:
            columns = next(csv.reader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
    return Source(
        spec,
        columns,
        None,
        lambda start: itertools.islice(manifest_rows(path), start, None),
        base_dir=path.resolve().parent,
    )


def _open_audiofolder(spec: SourceSpec, path: Path) -> Source:
    """🤗 ``audiofolder`` layout, read directly (🤗's builder needs torchcodec): ``metadata.csv`` or
    ``metadata.jsonl`` with a ``file_name`` column (relative paths) becomes the ``audio`` column; without
    metadata, every audio file under ``path`` (sorted) is a row with only ``audio``."""
    from .audio import AUDIO_EXTENSIONS

    for meta in ("metadata.jsonl", "metadata.csv"):
        if (path / meta).exists():
            inner = _open_manifest(SourceSpec(str(path / meta)))
            if "file_name" not in inner.columns:
                raise DataConfigError(
                    f"--dataset_name {spec.name}: {meta} needs a 'file_name' column (has {', '.join(inner.columns)})"
                )

            def rows_from(start: int, inner=inner) -> Iterator[dict]:
                for row in inner.rows_from(start):
                    row = dict(row)
                    row["audio"] = row.pop("file_name")
                    yield row

            columns = ["audio"] + [c for c in inner.columns if c not in ("file_name", "audio")]
            return Source(spec, columns, None, rows_from, base_dir=path.resolve())
    files = sorted(
        str(f.relative_to(path)) for f in path.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS
    )
    if not files:
        raise DataConfigError(f"--dataset_name {spec.name}: folder has no metadata.csv/.jsonl and no audio files")
    return Source(
        spec, ["audio"], len(files), lambda start: ({"audio": f} for f in files[start:]), base_dir=path.resolve()
    )


def _open_parquet_dir(spec: SourceSpec, files: list[Path]) -> Source:
    import pyarrow.parquet as pq

    metas = [pq.ParquetFile(f) for f in files]
    counts = [m.metadata.num_rows for m in metas]
    schema = metas[0].schema_arrow

    def rows_from(start: int) -> Iterator[dict]:
        offset = 0
        for f, n in zip(files, counts):
            if start >= offset + n:  # skip whole files without reading them
                offset += n
                continue
            pf = pq.ParquetFile(f)
            for rg in range(pf.num_row_groups):
                m = pf.metadata.row_group(rg).num_rows
                if start < offset + m:  # small record batches: memory stays flat for huge row groups
                    skip = max(0, start - offset)
                    for batch in pf.iter_batches(batch_size=64, row_groups=[rg]):
                        rows = batch.to_pylist()
                        yield from rows[skip:]
                        skip = max(0, skip - len(rows))
                offset += m

    return Source(
        spec, list(schema.names), sum(counts), rows_from, base_dir=Path(spec.name).resolve(), arrow_schema=schema
    )


def _hf_source(spec: SourceSpec, ds: Any, base_dir: Path | None = None) -> Source:
    """Wrap a 🤗 Dataset / IterableDataset: audio columns cast to ``Audio(decode=False)``."""
    import datasets

    features = ds.features
    if features is not None:
        for col, feat in features.items():
            if isinstance(feat, datasets.Audio) and feat.decode:
                ds = ds.cast_column(col, datasets.Audio(decode=False))
        features = ds.features
    columns = list(features) if features is not None else list(next(iter(ds)).keys())
    schema = features.arrow_schema if features is not None else None
    if isinstance(ds, datasets.Dataset):

        def rows_from(start: int) -> Iterator[dict]:
            for i in range(start, len(ds), 256):
                batch = ds[i : i + 256]
                keys = list(batch)
                for j in range(len(batch[keys[0]])):
                    yield {k: batch[k][j] for k in keys}

        return Source(spec, columns, len(ds), rows_from, base_dir, schema)
    return Source(spec, columns, None, lambda start: itertools.islice(iter(ds), start, None), base_dir, schema)


def _pick_split(spec: SourceSpec, dd: Any) -> Any:
    import datasets

    if not isinstance(dd, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        return dd
    if spec.split is None:
        if len(dd) == 1:
            return next(iter(dd.values()))
        raise DataConfigError(f"--dataset_name {spec.name} has splits {sorted(dd)}; choose with --dataset_split_name")
    missing = [s for s in spec.split.split(",") if s not in dd]  # "train,validation" reads both in order
    if missing:
        raise DataConfigError(
            f"--dataset_split_name {spec.split!r}: {spec.name} has no split {missing[0]!r} (available: {sorted(dd)})"
        )
    parts = [dd[s] for s in spec.split.split(",")]
    if len(parts) == 1:
        return parts[0]
    return datasets.concatenate_datasets(parts)


def open_source(spec: SourceSpec, streaming: bool = False, cache_dir: str | None = None) -> Source:
    """Open one dataset entry (see the module docstring for what ``spec.name`` may be)."""
    import datasets

    name = spec.name
    path = Path(name[len("audiofolder:") :] if name.startswith("audiofolder:") else name)
    if path.is_file():
        if path.suffix.lower() not in MANIFEST_SUFFIXES:
            raise DataConfigError(
                f"--dataset_name {path}: a file must be a manifest ({', '.join(MANIFEST_SUFFIXES)})"
                f", got {path.suffix or 'no extension'}"
            )
        return _open_manifest(SourceSpec(str(path), spec.config, spec.split))
    if path.is_dir():
        if not name.startswith("audiofolder:"):
            parquet = sorted(path.glob("*.parquet"))
            if parquet:
                return _open_parquet_dir(spec, parquet)
            if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
                return _hf_source(spec, _pick_split(spec, datasets.load_from_disk(str(path))), path.resolve())
        return _open_audiofolder(spec, path)
    if name.startswith(("/", ".", "~")) or name.startswith("audiofolder:") or Path(name).suffix in MANIFEST_SUFFIXES:
        raise DataConfigError(f"--dataset_name {name}: no such file or directory")
    try:
        ds = datasets.load_dataset(name, spec.config, split=spec.split, streaming=streaming, cache_dir=cache_dir)
    except Exception as e:  # noqa: BLE001
        raise DataConfigError(
            f"--dataset_name {name} (config {spec.config!r}, split {spec.split!r}): cannot load "
            f"it from the 🤗 hub or the local cache ({type(e).__name__}: {e})"
        ) from e
    return _hf_source(spec, _pick_split(spec, ds))


def open_sources(specs: Sequence[SourceSpec], streaming: bool = False, cache_dir: str | None = None) -> list[Source]:
    return [open_source(s, streaming, cache_dir) for s in specs]


def require_columns(sources: Sequence[Source], **columns: str | None) -> None:
    """Raise ``DataConfigError`` naming the flag when a column is missing from a source."""
    for src in sources:
        for flag, col in columns.items():
            if col is not None and col not in src.columns:
                raise DataConfigError(
                    f"--{flag} {col!r}: dataset {src.label} has no such column (columns: {', '.join(src.columns)})"
                )


# ----------------------------------------------------------------------------------------------------------------
# rows, blocks and processes


def iter_rows(sources: Sequence[Source], start: int = 0) -> Iterator[tuple[int, int, dict]]:
    """``(global_index, source_index, row)`` over all sources in order, from global row ``start`` on.

    Sources of known size are skipped without reading them."""
    offset = 0
    for k, src in enumerate(sources):
        if src.num_rows is not None:
            if start < offset + src.num_rows:
                local = max(0, start - offset)
                for i, row in enumerate(src.rows_from(local), offset + local):
                    yield i, k, row
            offset += src.num_rows
        else:  # unknown size: count while reading past
            count = 0
            for row in src.rows_from(0):
                if offset + count >= start:
                    yield offset + count, k, row
                count += 1
            offset += count


def total_rows(sources: Sequence[Source]) -> int | None:
    """Total rows when every source knows its size (manifests and streams do not)."""
    sizes = [s.num_rows for s in sources]
    return None if any(n is None for n in sizes) else sum(sizes)


class _Cursor:
    """A forward reader over the joined sources that jumps (sources of known size) or reads past rows."""

    def __init__(self, sources: Sequence[Source], limit: int | None):
        self.sources, self.limit = sources, limit
        n = total_rows(sources)
        self.known = n if limit is None or n is None else min(n, limit)
        self.it: Iterator | None = None
        self.pos = 0  # global index of the next row ``it`` yields
        self.head: tuple | None = None  # a row read by ``seek`` and not yet taken

    def _next(self) -> tuple | None:
        if self.limit is not None and self.pos >= self.limit:
            return None
        item = next(self.it, None)
        if item is not None:
            self.pos += 1
        return item

    def seek(self, start: int) -> bool:
        """Position at row ``start``; False when the data ends before it."""
        if self.known is not None and start >= self.known:
            return False
        if self.head is not None and self.pos - 1 == start:
            return True
        if self.it is None or self.pos > start or (self.known is not None and start - self.pos > 1024):
            self.it, self.pos = iter_rows(self.sources, start), start
        self.head = None
        while self.pos < start:
            if self._next() is None:
                return False
        self.head = self._next()
        return self.head is not None

    def take(self, end: int) -> Iterator[tuple[int, int, dict]]:
        """Rows from the sought position up to (not including) ``end``."""
        item, self.head = self.head, None
        while item is not None:
            yield item
            if self.pos >= end:
                return
            item = self._next()


def owned_blocks(
    sources: Sequence[Source],
    block_rows: int,
    process_index: int,
    process_count: int,
    skip: Callable[[int], bool] = lambda b: False,
    limit: int | None = None,
    info: dict | None = None,
) -> Iterator[tuple[int, Iterator[tuple[int, int, dict]]]]:
    """This process's blocks: ``(block_number, rows)`` for every block ``b ≡ process_index (mod
    process_count)`` that is not ``skip(b)``; rows are ``(global_index, source_index, row)``, at most
    ``limit`` rows in all.

    One forward pass over the data; rows of other processes' blocks are read past (jumped over for
    sources of known size) but never decoded. Consume each block's rows before asking for the next.
    When the data ends, ``info["total_rows"]`` is set to the number of rows (known to every process).
    """
    if block_rows < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"bad block split: block_rows={block_rows}, process {process_index} of {process_count}")
    cur = _Cursor(sources, limit)
    b = process_index
    while True:
        start = b * block_rows
        if skip(b) and cur.known is not None:
            if start >= cur.known:
                break
            b += process_count
            continue
        if not cur.seek(start):
            break
        if not skip(b):
            yield b, cur.take(start + block_rows)
        b += process_count
    if info is not None:
        if cur.known is None:  # read to the end: the last block's rows may not all have been read
            while cur._next() is not None:
                pass
        info["total_rows"] = cur.known if cur.known is not None else cur.pos


# ----------------------------------------------------------------------------------------------------------------
# audio of a row


def row_audio(value: Any, base_dir: Path | None, sampling_rate: int = audio_lib.SAMPLE_RATE) -> np.ndarray:
    """Decode a row's audio cell to float32 mono at ``sampling_rate``.

    Accepts a path (relative to ``base_dir``), the 🤗 Audio storage ``{"bytes", "path"}``, or a decoded
    ``{"array", "sampling_rate"}``. Raises ``audio.AudioError`` naming the file for anything unusable."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise audio_lib.AudioError("audio cell is empty (no path or bytes)")
    if isinstance(value, (str, os.PathLike)):
        return audio_lib.load_audio(resolve_path(value, base_dir), sampling_rate)
    if isinstance(value, dict):
        if value.get("array") is not None:
            arr = np.asarray(value["array"], np.float32)
            sr = value.get("sampling_rate")
            if sr is None:
                raise audio_lib.AudioError("decoded audio has no sampling_rate")
            if arr.ndim == 2:  # [channels, time] as 🤗 returns for multichannel
                arr = arr.mean(axis=0 if arr.shape[0] < arr.shape[1] else 1)
            if arr.size == 0:
                raise audio_lib.AudioError("zero-length audio array")
            if not np.isfinite(arr).all():
                raise audio_lib.AudioError("audio array contains non-finite samples (NaN or inf)")
            return audio_lib.resample(arr, int(sr), sampling_rate)
        path = value.get("path")
        if value.get("bytes") is not None:
            return audio_lib.decode_audio_bytes(value["bytes"], path or "<audio bytes>", sampling_rate)
        if path:
            return audio_lib.load_audio(resolve_path(path, base_dir), sampling_rate)
    raise audio_lib.AudioError(f"audio cell holds neither a path nor bytes ({type(value).__name__})")


def resolve_path(path: str | os.PathLike, base_dir: Path | None) -> Path:
    """``~`` expanded; a relative path is taken relative to ``base_dir`` (a manifest's folder) when given."""
    p = Path(os.path.expanduser(os.fspath(path)))
    return p if p.is_absolute() or base_dir is None else base_dir / p


def process_info() -> tuple[int, int]:
    """``(jax.process_index(), jax.process_count())``."""
    import jax

    return jax.process_index(), jax.process_count()
