"""Tab- and comma-separated manifests (``.tsv`` / ``.csv`` with a header line): the one reader and writer.

Rules (``docs/quickstart.md`` states them for users):

- One row per line. A row whose field count differs from the header's, or a CSV record that spans several
  lines (an unclosed quote), raises ``ManifestError`` naming the file and line: rows are never merged with their
  neighbours. Blank lines are skipped.
- TSV: fields are split at every tab and a quote is text, so a transcript that opens a quotation
  (``"Hello,`` …) is read as written and cannot swallow the rows after it. One exception, so that a TSV
  written with quoting (pandas ``to_csv(sep="\\t")``, Python's ``csv`` module) reads right: a field that starts
  and ends with ``"`` and whose quotes in between all come in doubled pairs (``""``, at least one pair) is that
  writer's quoting and is unquoted (``"a ""b"" c"`` → ``a "b" c``). Such a writer quotes a field only for a
  quote, tab or line break in it; a tab or line break cannot be read one row per line, so those rows are
  refused (wrong field count). A field quoted without a quote inside (``"Stop."``) is text, quotes included.
- CSV: standard quoting (a field with a comma or a quote is quoted, inner quotes doubled), read strictly.

``write_tsv_rows`` writes what ``read_rows`` reads back unchanged: a field is quoted only where it would
otherwise be unquoted on reading.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from distil_whisper_jax.infra.files import atomic_write

_QUOTED = re.compile(r'"((?:[^"]|"")*)"', re.DOTALL)


class ManifestError(ValueError):
    """A manifest that cannot be read one row per line; the message names the file and line."""


def is_tsv(path: str | os.PathLike) -> bool:
    """A ``.tsv`` file (tab-separated, quotes are text); anything else is read as CSV."""
    return Path(path).suffix.lower() == ".tsv"


def unquote_tsv_field(field: str) -> str:
    """``field`` as written, unless it is a quoting writer's quoted form (see the module docstring)."""
    m = _QUOTED.fullmatch(field)
    return m.group(1).replace('""', '"') if m and '""' in m.group(1) else field


def quote_tsv_field(value: str) -> str:
    """``value`` as a TSV field that ``unquote_tsv_field`` gives back; ``ValueError`` for a tab or line break."""
    if any(c in value for c in "\t\r\n"):
        raise ValueError(f"a TSV field cannot hold a tab or line break: {value!r}")
    return '"' + value.replace('"', '""') + '"' if unquote_tsv_field(value) != value else value


def _records(f: Iterable[str], tsv: bool) -> Iterator[tuple[int, int, list[str]]]:
    """``(first line, last line, fields)`` of each non-blank record of an open file."""
    if tsv:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(f, strict=True)
    last = 0
    for fields in reader:
        first, last = last + 1, reader.line_num
        if fields:
            yield first, last, [unquote_tsv_field(x) for x in fields] if tsv else fields


def read_header(path: str | os.PathLike) -> list[str]:
    """The column names of a manifest's header line (empty for an empty file)."""
    with open(path, newline="", encoding="utf-8") as f:
        return next((fields for _, _, fields in _records(f, is_tsv(path))), [])


def read_rows(path: str | os.PathLike) -> Iterator[dict[str, str]]:
    """The rows of a manifest as ``{column: value}`` after its header line, read lazily; ``ManifestError`` at
    the first malformed row."""
    tsv = is_tsv(path)
    with open(path, newline="", encoding="utf-8") as f:
        records, line = _records(f, tsv), 0
        try:
            _, line, header = next(records, (0, 0, []))
            for first, line, fields in records:
                if line > first:
                    raise ManifestError(
                        f"{path}:{first}-{line}: one row spans {line - first + 1} lines: a quote opened in line "
                        f"{first} closes only in line {line} (manifests hold one row per line)"
                    )
                if len(fields) != len(header):
                    raise ManifestError(
                        f"{path}:{first}: {len(fields)} {'tab' if tsv else 'comma'}-separated fields, the header "
                        f"has {len(header)}"
                    )
                yield dict(zip(header, fields))
        except csv.Error as e:
            raise ManifestError(
                f"{path}:{line + 1}: {e} (a quote opened in this row is not closed on its line)"
            ) from None


def write_tsv_rows(path: str | os.PathLike, header: Sequence[str], rows: Iterable[dict[str, str]]) -> None:
    """A TSV manifest of ``rows`` (atomically), each field quoted only where ``read_rows`` needs it."""
    with atomic_write(path, "w") as f:
        for fields in [header, *([str(r[c]) for c in header] for r in rows)]:
            f.write("\t".join(quote_tsv_field(x) for x in fields) + "\n")
