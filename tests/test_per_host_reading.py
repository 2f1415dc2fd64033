"""Each host reads only its own rows of a Parquet dataset: two real ``jax.distributed`` processes read their
blocks of the same data (a local directory, a ``local://`` URL through fsspec, a hub dataset stored as
Parquet), each counting every byte it reads from any file (``tests/per_host_reader.py``). Every byte a
process reads lies in a row group of its own blocks or in a file's footer, and it reads well under the
whole dataset."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distil_whisper_jax.assets import speech_manifest

from .helpers import REPO, free_port, read_tsv, run_together, subprocess_env

FILES, GROUPS, GROUP_ROWS = 2, 3, 8  # real speech: 2 files of 3 row groups of 8 rows (~340 KB a group)
ROWS = FILES * GROUPS * GROUP_ROWS
BLOCK = GROUP_ROWS  # a block is one row group: process p owns the row groups g (in file order) with g % 2 == p
FOOTER_READ = 64 * 1024  # pyarrow reads a file's last 64 KiB to find its footer (the metadata) in one request
KINDS = ("local", "url", "hub")
# Bytes a process may read by system calls besides the counted ones while it reads a dataset (small files, its
# own /proc entry, the coordinator's heartbeats; about 20 KB here): far under a row group (~340 KB).
UNCOUNTED_SLACK = 128 * 1024


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """``(directory of Parquet files, a hub-style repository holding the same files in data/, texts)``: real
    speech with the audio bytes inside, as a hub dataset stores it."""
    rows = read_tsv(speech_manifest("train"))[:ROWS]
    base = speech_manifest("train").parent
    root = tmp_path_factory.mktemp("per_host")
    data = root / "data"
    data.mkdir()
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    per_file = GROUPS * GROUP_ROWS
    for i in range(FILES):
        part = rows[i * per_file : (i + 1) * per_file]
        audio = [{"bytes": (base / r["audio"]).read_bytes(), "path": r["audio"]} for r in part]
        table = pa.table({"audio": pa.array(audio, struct), "text": [r["text"] for r in part]})
        pq.write_table(table, data / f"train-{i:05d}-of-{FILES:05d}.parquet", row_group_size=GROUP_ROWS)
    shutil.copytree(data, root / "repo" / "data")
    return data, root / "repo", [r["text"] for r in rows]


def _row_group_spans(path: Path) -> list[tuple[int, int]]:
    """``[start, end)`` byte span of each row group's column chunks."""
    meta = pq.ParquetFile(path).metadata
    spans = []
    for g in range(meta.num_row_groups):
        cols = [meta.row_group(g).column(c) for c in range(meta.num_columns)]
        starts = [c.dictionary_page_offset or c.data_page_offset for c in cols]
        spans.append((min(starts), max(s + c.total_compressed_size for s, c in zip(starts, cols))))
    return spans


def _run_two_processes(data: Path, repo: Path, tmp_path: Path) -> list[dict]:
    """Both processes' reports (``tests/per_host_reader.py``), after both exited cleanly."""
    coordinator = f"localhost:{free_port()}"
    outs = [tmp_path / f"process_{i}.json" for i in range(2)]
    reader = [sys.executable, "-m", "tests.per_host_reader", coordinator]
    run_together([[*reader, str(i), str(data), str(repo), str(BLOCK), str(outs[i])] for i in range(2)],
                 subprocess_env(1), REPO)  # fmt: skip
    return [json.loads(o.read_text()) for o in outs]


def _split_reads(path: Path, reads: list[list[int]]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """``(footer reads, data reads)`` of one file: a footer read lies within the file's last ``FOOTER_READ``
    bytes; every other read is a data read, whatever its length."""
    tail = max(0, path.stat().st_size - FOOTER_READ)
    footer = [(o, n) for o, n in reads if o >= tail]
    return footer, [(o, n) for o, n in reads if o < tail]


def _check_file(f: Path, owned: list[int], reads: list[list[int]], opens: int) -> int:
    """Assert that the reads of file ``f`` are its row groups ``owned`` (each read whole) and footer reads (at
    most one per opening of the file); the bytes read."""
    footer, data = _split_reads(f, reads)
    spans = _row_group_spans(f)
    own = [spans[g] for g in owned]
    stray = [(o, n) for o, n in data if not any(a <= o and o + n <= b for a, b in own)]
    assert not stray, f"{f.name}: read outside its own row groups {own}: {stray}"
    assert sum(n for _, n in data) == sum(b - a for a, b in own), f"{f.name}: {data} do not cover {own}"
    assert len(footer) <= opens, f"{f.name}: {len(footer)} footer reads for {opens} openings"
    return sum(n for _, n in data + footer)


def _check_process(p: int, got: dict, files: list[Path], texts: list[str]) -> None:
    """Process ``p`` read the rows of its own blocks, and of the files nothing but their row groups and
    footers; in all well under the whole dataset; and nothing around the counting wrappers."""
    rows = [tuple(r) for r in got["rows"]]
    assert got["total_rows"] == ROWS
    assert [i // BLOCK % 2 for i, _ in rows] == [p] * (ROWS // 2)
    assert all(texts[i] == t for i, t in rows)
    assert set(got["reads"]) <= {str(f) for f in files}, sorted(got["reads"])
    total = 0
    for k, f in enumerate(files):
        owned = [g for g in range(GROUPS) if (k * GROUPS + g) % 2 == p]  # block k * GROUPS + g is row group g
        total += _check_file(f, owned, got["reads"].get(str(f), []), got["opens"].get(str(f), 0))
    whole = sum(f.stat().st_size for f in files)
    assert total < 0.75 * whole, f"read {total} bytes of {whole}"
    # The kernel's count of every byte read (any file, any way) agrees: no file was read around the wrappers.
    uncounted = got["os_read_bytes"] - total
    assert uncounted < UNCOUNTED_SLACK, f"{uncounted} bytes read by system calls but not through the wrappers"


def test_each_process_reads_only_its_own_row_groups_and_the_footers(dataset, tmp_path):
    data, repo, texts = dataset
    results = _run_two_processes(data, repo, tmp_path)
    assert [(r["process"], r["count"]) for r in results] == [(0, 2), (1, 2)]
    for kind in KINDS:
        files = sorted((data if kind != "hub" else repo / "data").resolve().glob("*.parquet"))
        for p, result in enumerate(results):
            try:
                _check_process(p, result["kinds"][kind], files, texts)
            except AssertionError as e:
                raise AssertionError(f"{kind} dataset, process {p}: {e}") from None
        seen = sorted(tuple(r) for result in results for r in result["kinds"][kind]["rows"])
        assert seen == list(enumerate(texts)), kind
