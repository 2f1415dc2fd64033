"""Child process of ``tests/test_per_host_reading.py``: one ``jax.distributed`` process that reads its own blocks
of a Parquet dataset the way the labelling and evaluation stages do (``sources.open_sources`` or
``parquet.open_hub_stream``, then ``blocks.owned_blocks`` with ``jax.process_index()``/``process_count()``),
while counting every byte it reads from any file.

Both ways the data layer reads a file are wrapped: fsspec's local file system (``local://`` URLs and hub
datasets stored as Parquet go through it, as ``gs://`` would) and ``pyarrow.parquet.ParquetFile`` given a
local path (pyarrow would otherwise read it natively). Each opened file is a ``CountingFile`` that logs
``(offset, length)`` of every read and offers no other way to read (no ``fileno``, ``readall``, ...).

Usage: ``python -m tests.per_host_reader COORDINATOR PROCESS_ID DATA_DIR HUB_DIR BLOCK_ROWS OUT.json``;
writes ``{"process", "count", "kinds": {kind: {"rows": [[index, text]], "total_rows", "reads": {path: [[off,
n]]}, "opens": {path: n}, "os_read_bytes"}}}`` for the kinds ``local``, ``url`` and ``hub`` (``os_read_bytes``:
what the kernel counted as read by system calls meanwhile, from any file, to catch reads around the wrappers).
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from typing import Any

# Every read of a file: LOG["reads"][path] = [(offset, length), ...]; LOG["opens"][path] = count.
LOG: dict[str, dict] = {"reads": defaultdict(list), "opens": defaultdict(int)}

# What pyarrow and fsspec may ask of an open file besides reading (all of it passes through unchanged).
PASS_THROUGH = {"mode", "name", "closed", "readable", "seekable", "writable", "seek", "tell", "close", "flush", "size"}


class CountingFile:
    """A binary file whose every ``read``/``readinto`` is logged as ``(offset, length)`` under ``path``."""

    def __init__(self, f: Any, path: str):
        self._f, self._path = f, os.path.realpath(path)
        LOG["opens"][self._path] += 1

    def read(self, n: int = -1) -> bytes:
        pos = self._f.tell()
        out = self._f.read(n)
        LOG["reads"][self._path].append((pos, len(out)))
        return out

    def readinto(self, buf: Any) -> int:
        pos = self._f.tell()
        n = self._f.readinto(buf)
        LOG["reads"][self._path].append((pos, n))
        return n

    def __getattr__(self, name: str) -> Any:
        if name not in PASS_THROUGH:  # another way to read (fileno, readall, read_buffer...) would go uncounted
            raise AttributeError(f"CountingFile does not offer {name}")
        return getattr(self._f, name)

    def __enter__(self) -> CountingFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._f.close()


def install_counting() -> None:
    """Route every file the data layer opens through ``CountingFile`` (before anything opens one)."""
    import fsspec
    import pyarrow.parquet as pq
    from fsspec.implementations.local import LocalFileSystem

    class CountingLocalFS(LocalFileSystem):
        def _open(self, path, mode="rb", **kwargs):
            f = super()._open(path, mode, **kwargs)
            return CountingFile(f, self._strip_protocol(path)) if "r" in mode else f

    for protocol in ("file", "local"):
        fsspec.register_implementation(protocol, CountingLocalFS, clobber=True)

    class CountingParquetFile(pq.ParquetFile):
        def __init__(self, source, *args, **kwargs):
            self._counted = None
            if isinstance(source, str | os.PathLike):
                source = self._counted = CountingFile(open(source, "rb"), os.fspath(source))
            super().__init__(source, *args, **kwargs)

        def close(self, force: bool = False) -> None:
            super().close(force=force)
            if self._counted is not None:
                self._counted.close()

    pq.ParquetFile = CountingParquetFile


def read_own_blocks(src: Any, block_rows: int) -> dict:
    """``{"rows": [(global index, text)], "total_rows"}`` of this process's blocks, read as the stages read
    them (``total_rows``: the dataset's row count as the process learnt it)."""
    from distil_whisper_jax.data import blocks

    index, count = blocks.process_info()
    info: dict = {}
    owned = blocks.owned_blocks([src], block_rows, index, count, info=info)
    rows = [(i, row["text"]) for _, rows in owned for i, _, row in rows]
    return {"rows": rows, "total_rows": info["total_rows"]}


def os_read_bytes() -> int:
    """Bytes this process has read through read system calls so far, from any file (Linux ``rchar``)."""
    with open("/proc/self/io", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def take_log() -> dict:
    """This kind's reads and opens, and a fresh log for the next kind."""
    out = {"reads": dict(LOG["reads"]), "opens": dict(LOG["opens"])}
    LOG["reads"].clear()
    LOG["opens"].clear()
    return out


def main(argv: list[str]) -> None:
    coordinator, process_id, data_dir, hub_dir, block_rows, out = argv
    install_counting()
    import jax

    from distil_whisper_jax.data import parquet, sources
    from distil_whisper_jax.infra.multihost import MultiHostConfig

    MultiHostConfig(coordinator_address=coordinator, num_processes=2, process_id=int(process_id)).init_distributed()
    opens = {
        "local": lambda: sources.open_sources(sources.parse_sources(data_dir))[0],
        "url": lambda: sources.open_sources(sources.parse_sources(f"local://{data_dir}"))[0],
        "hub": lambda: parquet.open_hub_stream(sources.SourceSpec(hub_dir, None, "train")),
    }
    # The hub path's first builder lookup imports and reads 🤗 datasets' own modules: do it once beforehand, so
    # that the system-call count below is about the data (any Parquet read it makes is still logged).
    parquet.hub_parquet_files(sources.SourceSpec(hub_dir, None, "train"))
    kinds = {}
    for kind, open_source in opens.items():
        before = os_read_bytes()
        read = read_own_blocks(open_source(), int(block_rows))
        kinds[kind] = {**read, **take_log(), "os_read_bytes": os_read_bytes() - before}
    result = {"process": jax.process_index(), "count": jax.process_count(), "kinds": kinds}
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1:])
