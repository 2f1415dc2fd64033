"""Remote (fsspec URL) Parquet datasets: a URL names a directory, a file or a glob of files; a hub dataset
stored as Parquet is found from its builder's data files and reads like the same files on local disk; bad
URLs fail before any work. (That each host reads only its own row groups is tests/test_per_host_reading.py.)"""

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distil_whisper_jax.assets import speech_manifest
from distil_whisper_jax.data import parquet, sources
from distil_whisper_jax.infra import storage

from . import fake_gcs
from .helpers import read_tsv

ROWS = 12  # rows of real speech, in 2 files of 3 row groups of 2 rows


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
