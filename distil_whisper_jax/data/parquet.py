"""Parquet datasets, on local disk or behind any fsspec URL (``gs://``, ``s3://``, ``hf://``, ...).

A Parquet file's footer holds its row count and the row count of every row group, so the global index of
every row is known from the footers alone. That is what lets several hosts share a remote dataset: each
opens only the row groups its rows lie in (``rows_from(start)`` skips whole files and row groups without
reading them), so no host downloads or decodes the audio of rows that another host labels or evaluates.
The unit of reading is the row group: a block of rows that starts or ends inside a row group reads the
whole group.

Hub datasets stored as Parquet (most audio datasets on the hub are, or have a Parquet conversion) are
streamed this way too (``hub_parquet_files``); other streamed hub datasets fall back to 🤗's
``IterableDataset``, which every host reads from its start.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
import pyarrow.parquet as pq

from distil_whisper_jax.data.spec import DataConfigError, RowGroups, Source, SourceSpec, read_roles
from distil_whisper_jax.infra import storage


def _file_system(url: str) -> tuple[Any, str]:
    """``(fsspec file system, path inside it)`` for ``url``; ``DataConfigError`` naming the package to
    install when the scheme needs one (``gs://`` → gcsfs)."""
    try:
        return storage.file_system(url)
    except ValueError as e:
        raise DataConfigError(str(e)) from None


def _opened_size(fs: Any, path: str, handle: Any) -> int:
    """The size of a file opened through fsspec: known from the open (no request) for remote files."""
    size = getattr(handle, "size", None)
    return int(size) if size is not None else int(fs.size(path))


def parquet_source(
    spec: SourceSpec, files: Sequence[str | Path], base_dir: Path | str | None, fs: Any = None
) -> Source:
    """A source over Parquet ``files`` (paths inside ``fs`` when given, else local paths); all must share
    one set of columns. Only the footers are read here."""
    opened, nbytes = [], []
    for f in files:
        try:
            handle = f if fs is None else fs.open(f, "rb")
            opened.append(pq.ParquetFile(handle))
            nbytes.append(os.path.getsize(f) if fs is None else _opened_size(fs, f, handle))
        except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid / OSError for truncated or foreign files
            raise DataConfigError(f"{f}: not a readable Parquet file ({type(e).__name__}: {e})") from None
    schema = opened[0].schema_arrow
    for f, m in zip(files[1:], opened[1:]):
        if set(m.schema_arrow.names) != set(schema.names):
            raise DataConfigError(f"{f}: columns {sorted(m.schema_arrow.names)} differ from {files[0]}'s")
    sizes = [[m.metadata.row_group(g).num_rows for g in range(m.num_row_groups)] for m in opened]
    for m in opened:
        m.close()
    groups = [(i, g, n) for i, per in enumerate(sizes) for g, n in enumerate(per) if n]

    def open_file(i: int) -> pq.ParquetFile:
        return pq.ParquetFile(files[i] if fs is None else fs.open(files[i], "rb"))

    def rows_from(start: int) -> Iterator[dict]:
        offset = 0
        for i, per in enumerate(sizes):
            if start >= offset + sum(per):  # skip whole files without opening them
                offset += sum(per)
                continue
            with open_file(i) as pf:
                for rg, m in enumerate(per):
                    if start < offset + m:  # small record batches: memory stays flat for huge row groups
                        skip = max(0, start - offset)
                        for batch in pf.iter_batches(batch_size=64, row_groups=[rg]):
                            rows = batch.to_pylist()
                            yield from rows[skip:]
                            skip = max(0, skip - len(rows))
                    offset += m

    def read(g: int, columns: Sequence[str]) -> list[dict]:
        fi, rg, _ = groups[g]
        try:
            with open_file(fi) as pf:
                return pf.read_row_group(rg, columns=list(columns)).to_pylist()
        except Exception as e:  # noqa: BLE001
            raise DataConfigError(f"{files[fi]}: cannot read row group {rg} ({type(e).__name__}: {e})") from None

    row_groups = RowGroups([n for _, _, n in groups], read)
    local_dir = None if fs is not None or base_dir is None else Path(base_dir).resolve()
    return Source(
        spec,
        list(schema.names),
        sum(map(sum, sizes)),
        rows_from,
        base_dir=local_dir,
        arrow_schema=schema,
        roles=read_roles(base_dir, fs) if base_dir is not None else {},
        groups_fn=lambda: row_groups,
        identity={"files": {str(f): {"bytes": b, "rows": sum(per)} for f, b, per in zip(files, nbytes, sizes)}},
    )


def nested_parquet(path: Path, split: str | None) -> list[Path]:
    """Parquet files below ``path`` (a hub dataset's layout), those whose path names ``split`` if any do."""
    files = sorted(path.rglob("*.parquet"))
    if split and len(files) > 1:
        files = [f for f in files if split in f.relative_to(path).as_posix()] or files
    return files


def open_url(spec: SourceSpec) -> Source:
    """A remote Parquet dataset: ``URL`` of a directory (the labeller's output, or a hub-style tree of
    shards, filtered by ``spec.split`` like a local one), of a ``.parquet`` file, or a glob of them."""
    fs, path = _file_system(spec.name)
    try:
        if any(c in path for c in "*?["):
            files, base = sorted(p for p in fs.glob(path) if p.endswith(".parquet")), None
        elif fs.isdir(path):
            found = sorted(p for p in fs.find(path) if p.endswith(".parquet"))
            top = [p for p in found if p.rsplit("/", 1)[0] == path.rstrip("/")]
            files, base = top or found, path
            if not top and spec.split and len(files) > 1:
                files = [p for p in files if spec.split in p[len(path) :]] or files
        elif fs.isfile(path) and path.endswith(".parquet"):
            files, base = [path], None
        else:
            files, base = [], None
    except OSError as e:  # a bucket we cannot reach or may not read: say so before any work starts
        raise DataConfigError(f"--dataset_name {spec.name}: cannot list it ({type(e).__name__}: {e})") from None
    if not files:
        raise DataConfigError(f"--dataset_name {spec.name}: no .parquet file there (remote datasets must be Parquet)")
    return parquet_source(spec, files, base, fs)


def hub_parquet_files(spec: SourceSpec, cache_dir: str | None = None) -> list[str] | None:
    """``hf://`` URLs of the Parquet files of a hub dataset's split, in order; None when the dataset is not
    stored as Parquet (then it can only be streamed row by row)."""
    try:
        builder = datasets.load_dataset_builder(spec.name, spec.config, cache_dir=cache_dir)
    except Exception:  # noqa: BLE001 - the caller's own load reports why a dataset cannot be opened
        return None
    data_files = getattr(builder.config, "data_files", None)
    if builder.name != "parquet" or not data_files:
        return None
    splits = spec.split.split(",") if spec.split else list(data_files)
    if len(splits) != 1 and not spec.split or any(s not in data_files for s in splits):
        return None  # ambiguous or unknown split: the caller's load gives the error with the choices
    return [os.fspath(f) for s in splits for f in data_files[s]]


def open_hub_stream(spec: SourceSpec, cache_dir: str | None = None) -> Source | None:
    """A streamed hub dataset as a remote Parquet source (row counts known, rows read by row group), or
    None when it is not stored as Parquet."""
    files = hub_parquet_files(spec, cache_dir)
    if not files:
        return None
    fs, _ = _file_system(files[0])
    return parquet_source(spec, [fs._strip_protocol(f) for f in files], None, fs)
