"""Plain helpers shared by several test modules (the fixtures they share live in ``conftest.py``)."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path


def tsv_table(path: Path | str) -> tuple[list[str], list[dict]]:
    """``(header, rows)`` of a TSV manifest, read strictly: no quoting, every row exactly as long as the header."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        return header, [dict(zip(header, r, strict=True)) for r in reader]


def read_tsv(path: Path | str) -> list[dict]:
    """The rows of a TSV manifest as dicts (``tsv_table``'s rows)."""
    return tsv_table(path)[1]


def read_manifest(split: str, language: str | None = None) -> tuple[Path, list[str], list[dict]]:
    """``(path, header, rows)`` of a bundled speech manifest: the English one of ``split``, or ``language``'s."""
    from distil_whisper_jax.assets import multilingual_speech_manifest, speech_manifest

    path = speech_manifest(split) if language is None else multilingual_speech_manifest(language, split)
    return (path, *tsv_table(path))


def write_tsv(path: Path, rows: Iterable[dict], columns: Sequence[str] | None = None) -> Path:
    """A TSV manifest of ``rows`` (no quoting) with ``columns`` (default: the first row's keys, in order)."""
    rows = list(rows)
    cols = list(rows[0]) if columns is None else list(columns)
    lines = ["\t".join(cols)] + ["\t".join(str(r[c]) for c in cols) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def librivox_recordings() -> list[tuple[Path, str]]:
    """(wav, transcript) of the pocketsphinx test recordings (the benchmarks' reader)."""
    from benchmarks.common import librivox

    out = librivox()
    assert len(out) == 5, out
    return out
