"""Remote (fsspec URL) Parquet datasets and the per-host split: a process reads only the row groups of its
own blocks, the others' audio is never downloaded; a URL dataset labels like the same files on local disk;
a hub dataset stored as Parquet is found from its builder's data files; bad URLs fail before any work."""

import shutil
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

from distil_whisper_jax.assets import speech_manifest
from distil_whisper_jax.data import blocks as data_blocks
from distil_whisper_jax.data import parquet, sources
from distil_whisper_jax.infra import storage

from . import fake_gcs
from .helpers import read_tsv

ROWS = 12  # rows of real speech, in 2 files of 3 row groups of 2 rows
BLOCK = 2


class CountingFS(LocalFileSystem):
    """Local files behind a ``countfs://`` URL, recording every byte range read: ``reads[path]`` holds
    ``(offset, length)`` pairs."""

    protocol = ("countfs",)
    reads: dict[str, list[tuple[int, int]]] = {}

    def _open(self, path, mode="rb", **kwargs):
        f = super()._open(path, mode, **kwargs)
        log = CountingFS.reads.setdefault(self._strip_protocol(path), [])
        raw_read = f.read

        def read(n=-1):
            pos = f.tell()
            out = raw_read(n)
            log.append((pos, len(out)))
            return out

        f.read = read
        return f


fsspec.register_implementation("countfs", CountingFS, clobber=True)


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory):
    """Real speech as a Parquet dataset with the audio bytes inside (as a hub dataset stores them)."""
    rows = read_tsv(speech_manifest("train"))[:ROWS]
    base = speech_manifest("train").parent
    d = tmp_path_factory.mktemp("pq") / "data"
    d.mkdir()
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    half = ROWS // 2
    for i, part in enumerate((rows[:half], rows[half:])):
        table = pa.table(
            {
                "audio": pa.array(
                    [{"bytes": (base / r["audio"]).read_bytes(), "path": r["audio"]} for r in part], struct
                ),
                "text": [r["text"] for r in part],
            }
        )
        pq.write_table(table, d / f"train-{i:05d}-of-00002.parquet", row_group_size=2)
    return d


def _row_group_spans(path: Path) -> list[tuple[int, int]]:
    """Byte span of each row group's column chunks."""
    meta = pq.ParquetFile(path).metadata
    spans = []
    for g in range(meta.num_row_groups):
        cols = [meta.row_group(g).column(c) for c in range(meta.num_columns)]
        start = min(c.dictionary_page_offset or c.data_page_offset for c in cols)
        spans.append(
            (start, max((c.dictionary_page_offset or c.data_page_offset) + c.total_compressed_size for c in cols))
        )
    return spans


def _groups_read(files: list[Path]) -> set[tuple[str, int]]:
    """(file, row group) pairs whose bytes were read, the footer reads (the file's tail) left out."""
    hit = set()
    for f in files:
        size = f.stat().st_size
        for off, n in CountingFS.reads.get(str(f), []):
            if off + n >= size - 8:  # the footer: pyarrow reads the file's tail to find it
                continue
            hit |= {(f.name, g) for g, (a, b) in enumerate(_row_group_spans(f)) if off < b and off + n > a}
    return hit


def test_two_processes_read_disjoint_row_groups_of_a_remote_dataset(parquet_dir):
    files = sorted(parquet_dir.glob("*.parquet"))
    every = {(f.name, g) for f in files for g in range(3)}
    seen, groups = [], []
    for p in range(2):
        CountingFS.reads.clear()
        (src,) = sources.open_sources(sources.parse_sources(f"countfs://{parquet_dir}"))
        assert src.num_rows == ROWS and src.base_dir is None
        info = {}
        rows = [
            (i, r["text"]) for _, block in data_blocks.owned_blocks([src], BLOCK, p, 2, info=info) for i, _, r in block
        ]
        assert info["total_rows"] == ROWS
        assert [i // BLOCK % 2 for i, _ in rows] == [p] * (ROWS // 2)
        seen += rows
        groups.append(_groups_read(files))
    assert sorted(i for i, _ in seen) == list(range(ROWS))
    assert groups[0].isdisjoint(groups[1]) and groups[0] | groups[1] == every, groups
    local = sources.open_sources(sources.parse_sources(str(parquet_dir)))
    assert [r["text"] for r in local[0].rows_from(0)] == [t for _, t in sorted(seen)]


def test_url_datasets_glob_file_and_errors(parquet_dir, tmp_path):
    (src,) = sources.open_sources(sources.parse_sources(f"local://{parquet_dir}/*-00001-*.parquet"))
    assert src.num_rows == ROWS // 2
    one = next(iter(sorted(parquet_dir.glob("*.parquet"))))
    (src,) = sources.open_sources(sources.parse_sources(f"local://{one}"))
    groups = src.row_groups()
    assert groups.sizes == [2, 2, 2] and groups.read(1, ["text"])[0].keys() == {"text"}
    with pytest.raises(sources.DataConfigError, match="no .parquet file there"):
        sources.open_sources(sources.parse_sources(f"local://{tmp_path}/nothing"))
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(sources.DataConfigError, match="not a readable Parquet file"):
        sources.open_sources(sources.parse_sources(f"local://{tmp_path}/bad.parquet"))
    with pytest.raises(sources.DataConfigError, match="no-such-scheme"):
        sources.open_sources(sources.parse_sources("no-such-scheme://bucket/x"))


def test_hub_dataset_stored_as_parquet_is_read_by_row_group(parquet_dir, tmp_path):
    """The hub path (``--streaming``) asks the dataset's builder for its Parquet files; a local directory in
    the hub layout takes the same path offline."""
    repo = tmp_path / "repo"
    shutil.copytree(parquet_dir, repo / "data")
    files = parquet.hub_parquet_files(sources.SourceSpec(str(repo), None, "train"))
    assert [Path(f).name for f in files] == sorted(p.name for p in parquet_dir.glob("*.parquet"))
    src = parquet.open_hub_stream(sources.SourceSpec(str(repo), None, "train"))
    assert src.num_rows == ROWS
    local = sources.open_sources(sources.parse_sources(str(parquet_dir)))[0]
    assert list(src.rows_from(5)) == list(local.rows_from(5))
    assert parquet.hub_parquet_files(sources.SourceSpec(str(repo), None, "test")) is None


def test_a_training_log_uploads_only_the_files_that_grew(tmp_path):
    """On a bucket the distillation log re-uploads its event files after every line: only new or changed ones
    go (a long run's older event files are not sent again each time)."""
    gcs = fake_gcs.use(tmp_path / "gcs")
    local = tmp_path / "runs"
    (local / "a").mkdir(parents=True)
    (local / "a" / "events.1").write_bytes(b"one")
    (local / "events.2").write_bytes(b"two")
    dest, seen = storage.location("gs://bucket/run/runs"), {}
    assert storage.upload_tree(local, dest, seen) == 2
    assert storage.upload_tree(local, dest, seen) == 0
    (local / "events.2").write_bytes(b"two, grown")
    assert storage.upload_tree(local, dest, seen) == 1
    assert (tmp_path / "gcs" / "bucket" / "run" / "runs" / "events.2").read_bytes() == b"two, grown"
    assert sorted(gcs.written) == ["bucket/run/runs/a/events.1", "bucket/run/runs/events.2", "bucket/run/runs/events.2"]
    assert storage.upload_tree(local, dest) == 2  # without a record: everything
