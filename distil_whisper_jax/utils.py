"""Small shared helpers: CLI logging, atomic file writes."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def setup_logging(timestamps: bool = False) -> None:
    """INFO logging for a CLI: our progress lines, not the libraries' chatter (Orbax logs every checkpoint
    save and restore step at INFO through absl)."""
    fmt = "%(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s " + fmt if timestamps else fmt)
    logging.getLogger("absl").setLevel(logging.WARNING)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str | None = None) -> Iterator:
    """Write ``path`` atomically: yields a temp path (``mode=None``) or an open file (``mode='w'``/``'wb'``)
    in the same directory, renamed over ``path`` only if the block finishes without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
    try:
        if mode is None:
            yield Path(tmp)
        else:
            with open(tmp, mode) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def is_hub_id(s: str | os.PathLike) -> bool:
    """'owner/name' that is not an existing local path: a 🤗 hub repository id."""
    s = str(s)
    return s.count("/") == 1 and not s.startswith((".", "/", "~")) and not os.path.exists(s)
