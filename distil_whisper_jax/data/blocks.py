"""Work split between processes: fixed-size blocks of the global row index over ``+``-joined sources.

Block ``b`` belongs to process ``b % process_count``. Outputs named by block number therefore sort in input
order whatever the number of processes, and a restarted job can skip finished blocks. (``datasets``'
``split_dataset_by_node`` is not used: it hands whole files to nodes when it can, which loses the global
row index and with it the input order of the merged output and O(1) resume; the price is paid only by
sources of unknown size, a 🤗 stream that is not stored as Parquet and local manifests: every process reads
past the other processes' rows there, without decoding them. Parquet sources, local or remote, and hub
datasets stored as Parquet know every row's index from their footers, so a process opens only the row
groups of its own blocks.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import jax

from distil_whisper_jax.data.sources import Source


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
        # Sources of known size are jumped over (rows of other processes are not even downloaded); the
        # others are read past, which for local manifests costs little and never decodes audio.
        if self.it is None or self.pos > start or (self.known is not None and start > self.pos):
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


def process_info() -> tuple[int, int]:
    """``(jax.process_index(), jax.process_count())``."""
    return jax.process_index(), jax.process_count()
