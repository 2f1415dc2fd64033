"""The data layer's vocabulary: a dataset entry (``SourceSpec``), an opened dataset (``Source``) with its optional
random access (``RowGroups``), and the error every bad dataset flag raises (``DataConfigError``)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

SCHEMA_FILE = "schema.json"  # column roles of a labelled directory
SCHEMA_FORMAT = "distil-whisper-jax pseudo-labels"


class DataConfigError(ValueError):
    """A dataset flag that cannot work (unknown dataset, split or column); raised before any work starts."""


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """One ``+``-separated entry of the dataset flags."""

    name: str
    config: str | None = None
    split: str | None = None


@dataclasses.dataclass(frozen=True)
class RowGroups:
    """Random access to a source: ``sizes[g]`` rows in group ``g``; ``read(g, columns)`` returns them."""

    sizes: list[int]
    read: Callable[[int, Sequence[str]], list[dict]]


@dataclasses.dataclass
class Source:
    """An opened dataset: its columns, its size when known, a forward stream of its rows, and (for
    training) random access by groups of rows.

    ``base_dir`` is where relative audio paths in this source are resolved; ``roles`` maps a part
    (``audio``, ``text``, ``transcript``, ...) to its column when the source records it (labelled output)."""

    spec: SourceSpec
    columns: list[str]
    num_rows: int | None
    rows_from: Callable[[int], Iterator[dict]]  # rows_from(i): rows i, i+1, ... (cheap skip when possible)
    base_dir: Path | None = None
    arrow_schema: Any = None  # pyarrow schema of the rows when known (🤗 / Parquet sources)
    roles: Mapping[str, str | None] = dataclasses.field(default_factory=dict)
    groups_fn: Callable[[], RowGroups] | None = None  # None: a stream only (🤗 streaming)
    # What the source reads, in cheap facts (its files with their sizes and row counts, a manifest's hash, a 🤗
    # dataset's name and fingerprint; JSON): a training checkpoint records it so that a resume notices new data.
    identity: dict = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        """The dataset as the user named it."""
        return self.spec.name

    @property
    def label(self) -> str:
        return (
            self.spec.name
            + (f":{self.spec.config}" if self.spec.config else "")
            + (f"[{self.spec.split}]" if self.spec.split else "")
        )

    def column_for(self, role: str, given: str | None, default: str | None) -> str | None:
        """The column of ``role``: the one given by a flag, else the one the source records, else ``default``."""
        return given if given is not None else self.roles.get(role, default)

    def row_groups(self) -> RowGroups:
        """Random access to the rows (reads a manifest into memory); ``DataConfigError`` for a stream."""
        if self.groups_fn is None:
            raise DataConfigError(
                f"{self.label}: a streamed dataset has no random access; training needs a local copy "
                "(drop --streaming, or label it first: the labeller's output is a Parquet directory)"
            )
        return self.groups_fn()


def require_columns(src: Source, columns: Mapping[str, str | None], why: str = "") -> None:
    """``DataConfigError`` naming the flags and the missing columns when ``src`` lacks any of ``columns``
    (a mapping flag name → column; ``None`` columns are not needed)."""
    missing = {flag: col for flag, col in columns.items() if col is not None and col not in src.columns}
    if missing:
        flags = ", ".join(f"--{flag} {col!r}" for flag, col in missing.items())
        raise DataConfigError(
            f"{src.label}: missing column(s) {list(missing.values())} ({flags}){why}; it has {sorted(src.columns)}"
        )


def read_roles(directory: Path | str, fs: Any = None) -> dict[str, str | None]:
    """The column roles a labelled directory records in ``schema.json`` ({} when it has none); ``fs``: the
    fsspec file system of a remote ``directory``."""
    path = f"{str(directory).rstrip('/')}/{SCHEMA_FILE}"
    try:
        if fs is None and not Path(path).is_file() or fs is not None and not fs.isfile(path):
            return {}
        text = Path(path).read_text() if fs is None else fs.cat_file(path).decode()
        roles = json.loads(text)["columns"]
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise DataConfigError(f"{path}: not a valid column schema ({type(e).__name__}: {e})") from None
    if not isinstance(roles, dict):
        raise DataConfigError(f"{path}: 'columns' must map roles to column names")
    return roles
