"""Speech datasets for labelling, training and evaluation: one way to open every kind of source.

A ``--dataset_name`` (or ``--train_dataset_name``, ``--eval_dataset_name``) entry is one of
- a ``.tsv`` / ``.csv`` / ``.jsonl`` manifest whose audio column holds paths relative to the manifest,
- a directory of ``*.parquet`` files (e.g. the labeller's output), a ``.parquet`` file, or a glob of them,
- a directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (``load_from_disk``),
- ``audiofolder:DIR`` or any other directory (🤗 ``audiofolder`` layout: audio files + ``metadata.csv``),
- a 🤗 hub id (from the local cache, or streamed with ``streaming=True``: by row group from its Parquet files
  when it has them, see ``data_parquet``),
- a URL (``gs://``, ``s3://``, ``hf://``, ... through fsspec) of Parquet files: a directory such as the labeller's
  output, one file, or a glob,
and several are joined with ``+`` (rows concatenated in order; configs and splits are ``+``-joined too, or
given once for all).

Labelling reads a source as a forward stream of plain dict rows (``Source.rows_from``), without
materialising it, so memory does not grow with the dataset. Training needs random access in a shuffled
order: ``Source.row_groups()`` gives the source as groups of rows (a Parquet row group, a slice of an
Arrow dataset, a whole manifest) read one at a time. Audio is never decoded by 🤗 (no torchcodec): columns
are cast to ``Audio(decode=False)`` and ``row_audio.row_audio`` decodes the bytes or the path with
``audio.decode_audio_bytes`` / ``audio.load_audio`` (soundfile, PyAV fallback), downmixed to mono and
resampled to 16 kHz.

A labelled output directory records which column plays which part (audio, ground truth, transcript, ...)
in ``schema.json``; ``Source.roles`` holds it, so that training and evaluation read a labelled directory
without restating its column names.
"""

from __future__ import annotations

import collections
import glob
import hashlib
import itertools
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets

from distil_whisper_jax.data.parquet import nested_parquet, open_hub_stream, open_url, parquet_source
from distil_whisper_jax.data.spec import (
    SCHEMA_FILE,
    SCHEMA_FORMAT,
    DataConfigError,
    RowGroups,
    Source,
    SourceSpec,
    require_columns,
)
from distil_whisper_jax.infra import delimited
from distil_whisper_jax.infra.storage import is_url
from distil_whisper_jax.speech.audio import AUDIO_EXTENSIONS

__all__ = [  # the data layer's vocabulary, defined in data_source and used as data.<name>
    "SCHEMA_FILE",
    "SCHEMA_FORMAT",
    "DataConfigError",
    "RowGroups",
    "Source",
    "SourceSpec",
    "require_columns",
]
log = logging.getLogger(__name__)
MANIFEST_SUFFIXES = (".tsv", ".csv", ".jsonl")
HF_GROUP_ROWS = 1000  # rows per random-access group of an Arrow (🤗) dataset


def parse_sources(names: str, configs: str | None = None, splits: str | None = None) -> list[SourceSpec]:
    """Split the ``+``-joined ``--dataset_name/--dataset_config_name/--dataset_split_name`` flags.

    Configs and splits may be given once (used for every dataset) or once per dataset; one dataset with
    several splits (``--dataset_split_name train+validation``) reads each in turn."""
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


# ----------------------------------------------------------------------------------------------------------------
# manifests and audio folders


def manifest_rows(path: Path) -> Iterator[dict]:
    """Rows of a CSV/TSV (header line; ``infra.delimited``'s rules, ``ManifestError`` for a malformed row) or
    JSONL manifest (a bad line becomes ``{"__error__": why}``)."""
    if path.suffix != ".jsonl":
        yield from delimited.read_rows(path)
        return
    with open(path, newline="", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    row = {"__error__": f"{path}:{n}: not valid JSON ({e.msg})"}
                if not isinstance(row, dict):
                    row = {"__error__": f"{path}:{n}: expected a JSON object per line"}
                yield row


def _in_memory_groups(rows_fn: Callable[[], list[dict]], where: str) -> Callable[[], RowGroups]:
    """Random access to a small source: all rows read once, as one group (rows must all be valid)."""
    cache: list[RowGroups] = []

    def groups() -> RowGroups:
        if not cache:
            rows = rows_fn()
            bad = next((r["__error__"] for r in rows if "__error__" in r), None)
            if bad is not None:
                raise DataConfigError(f"{where}: {bad}")
            if not rows:
                raise DataConfigError(f"{where}: dataset has no rows")
            cache.append(RowGroups([len(rows)], lambda g, columns: [{c: r.get(c) for c in columns} for r in rows]))
        return cache[0]

    return groups


def _open_manifest(spec: SourceSpec) -> Source:
    """A manifest file; a CSV/TSV one is read through once here, so that a malformed row is refused before any
    work starts (``DataConfigError`` naming the file and line)."""
    path = Path(spec.name)
    rows = manifest_rows(path)
    try:
        first = next(rows, None)
        if path.suffix != ".jsonl":
            collections.deque(rows, maxlen=0)  # the rest, only to find a malformed row
    except delimited.ManifestError as e:
        raise DataConfigError(f"--dataset_name {e}") from None
    if first is None:
        raise DataConfigError(f"--dataset_name {path}: manifest has no rows")
    if path.suffix == ".jsonl":
        if "__error__" in first:
            raise DataConfigError(f"--dataset_name {first['__error__']}")
        columns = list(first)
    else:
        columns = delimited.read_header(path)
    return Source(
        spec,
        columns,
        None,
        lambda start: itertools.islice(manifest_rows(path), start, None),
        base_dir=path.resolve().parent,
        groups_fn=_in_memory_groups(lambda: list(manifest_rows(path)), str(path)),
        identity={"files": {str(path): _file_identity(path)}},
    )


def _file_identity(path: Path) -> dict:
    """A manifest's size and sha256 (a manifest is small; its rows are only known by reading it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def _open_audiofolder(spec: SourceSpec, path: Path) -> Source | None:
    """🤗 ``audiofolder`` layout, read directly (🤗's builder needs torchcodec): ``metadata.csv`` or
    ``metadata.jsonl`` with a ``file_name`` column (relative paths) becomes the ``audio`` column; without
    metadata, every audio file under ``path`` (sorted) is a row with only ``audio``. None: no audio at all."""

    for meta in ("metadata.jsonl", "metadata.csv"):
        if (path / meta).exists():
            inner = _open_manifest(SourceSpec(str(path / meta)))
            if "file_name" not in inner.columns:
                raise DataConfigError(
                    f"--dataset_name {spec.name}: {meta} needs a 'file_name' column (has {', '.join(inner.columns)})"
                )

            def rows_from(start: int, inner: Source = inner) -> Iterator[dict]:
                for row in inner.rows_from(start):
                    row = dict(row)
                    row["audio"] = row.pop("file_name")
                    yield row

            columns = ["audio"] + [c for c in inner.columns if c not in ("file_name", "audio")]
            groups = _in_memory_groups(lambda: list(rows_from(0)), str(path / meta))
            return Source(spec, columns, None, rows_from, base_dir=path.resolve(), groups_fn=groups)
    files = sorted(
        str(f.relative_to(path)) for f in path.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS
    )
    if not files:
        return None
    return Source(
        spec,
        ["audio"],
        len(files),
        lambda start: ({"audio": f} for f in files[start:]),
        base_dir=path.resolve(),
        groups_fn=_in_memory_groups(lambda: [{"audio": f} for f in files], str(path)),
    )


# ----------------------------------------------------------------------------------------------------------------
# Parquet files and 🤗 datasets


def _hf_source(spec: SourceSpec, ds: Any, base_dir: Path | None = None) -> Source:
    """Wrap a 🤗 Dataset / IterableDataset: audio columns cast to ``Audio(decode=False)``."""
    features = ds.features
    if features is not None:
        for col, feat in features.items():
            if isinstance(feat, datasets.Audio) and feat.decode:
                ds = ds.cast_column(col, datasets.Audio(decode=False))
        features = ds.features
    columns = list(features) if features is not None else list(next(iter(ds)).keys())
    schema = features.arrow_schema if features is not None else None
    if not isinstance(ds, datasets.Dataset):
        return Source(spec, columns, None, lambda start: itertools.islice(iter(ds), start, None), base_dir, schema)

    def read(g: int, cols: Sequence[str]) -> list[dict]:
        batch = ds.select_columns(list(cols))[g * HF_GROUP_ROWS : (g + 1) * HF_GROUP_ROWS]
        n = len(next(iter(batch.values()))) if batch else 0
        return [{k: batch[k][j] for k in batch} for j in range(n)]

    def rows_from(start: int) -> Iterator[dict]:
        for i in range(start, len(ds), 256):
            batch = ds[i : i + 256]
            keys = list(batch)
            for j in range(len(batch[keys[0]])):
                yield {k: batch[k][j] for k in keys}

    n = len(ds)
    sizes = [min(HF_GROUP_ROWS, n - i) for i in range(0, n, HF_GROUP_ROWS)]
    row_groups = RowGroups(sizes, read)
    # 🤗's fingerprint of a loaded dataset follows its cache files (hence the revision that was downloaded)
    identity = {"rows": n, "fingerprint": getattr(ds, "_fingerprint", None)}
    return Source(spec, columns, n, rows_from, base_dir, schema, groups_fn=lambda: row_groups, identity=identity)


def _pick_split(spec: SourceSpec, dd: Any) -> Any:
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


# ----------------------------------------------------------------------------------------------------------------
# opening an entry


def _open_directory(spec: SourceSpec, path: Path) -> Source:
    if not spec.name.startswith("audiofolder:"):
        parquet = sorted(path.glob("*.parquet"))
        if parquet:
            return parquet_source(spec, parquet, path)
        if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
            return _hf_source(spec, _pick_split(spec, datasets.load_from_disk(str(path))), path.resolve())
        has_meta = (path / "metadata.csv").exists() or (path / "metadata.jsonl").exists()
        nested = [] if has_meta else nested_parquet(path, spec.split)
        if nested:
            return parquet_source(spec, nested, path)
    src = _open_audiofolder(spec, path)
    if src is None:
        raise DataConfigError(
            f"--dataset_name {spec.name}: directory holds no .parquet files, no save_to_disk dataset, "
            "no metadata.csv/.jsonl and no audio files"
        )
    return src


def open_source(spec: SourceSpec, streaming: bool = False, cache_dir: str | None = None) -> Source:
    """Open one dataset entry (see the module docstring for what ``spec.name`` may be)."""
    name = spec.name
    if is_url(name):
        return open_url(spec)
    path = Path(os.path.expanduser(name[len("audiofolder:") :] if name.startswith("audiofolder:") else name))
    if path.is_file():
        if path.suffix.lower() == ".parquet":
            return parquet_source(spec, [path], path.parent)
        if path.suffix.lower() not in MANIFEST_SUFFIXES:
            raise DataConfigError(
                f"--dataset_name {path}: a file must be a manifest ({', '.join(MANIFEST_SUFFIXES)}) or .parquet"
                f", got {path.suffix or 'no extension'}"
            )
        return _open_manifest(SourceSpec(str(path), spec.config, spec.split))
    if path.is_dir():
        return _open_directory(spec, path)
    if glob.has_magic(name):
        matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(name)) if m.endswith(".parquet"))
        if not matches:
            raise DataConfigError(f"--dataset_name {name}: the pattern matches no .parquet file")
        return parquet_source(spec, matches, matches[0].parent)
    if name.startswith(("/", ".", "~", "audiofolder:")) or Path(name).suffix in (*MANIFEST_SUFFIXES, ".parquet"):
        raise DataConfigError(f"--dataset_name {name}: no such file or directory")
    if streaming:
        src = open_hub_stream(spec, cache_dir)
        if src is not None:
            log.info("%s: streaming %d rows from its Parquet files, by row group", src.label, src.num_rows)
            return src
        log.warning("%s is not stored as Parquet: streamed row by row, every process reads it from its start", name)
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


def resolve_path(path: str | os.PathLike, base_dir: Path | None) -> Path:
    """``~`` expanded; a relative path is taken relative to ``base_dir`` (a manifest's folder) when given."""
    p = Path(os.path.expanduser(os.fspath(path)))
    return p if p.is_absolute() or base_dir is None else base_dir / p
