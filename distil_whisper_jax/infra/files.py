"""Small shared helpers: CLI logging, atomic file writes, writability checks and write-error messages."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from distil_whisper_jax.infra import storage


class OutputWriteError(OSError):
    """Writing an output failed (disk full, read-only, permission): the message names the path and cause."""


def write_error(path: str | os.PathLike, e: OSError) -> OutputWriteError:
    """An ``OutputWriteError`` naming ``path`` and the cause of ``e`` (raise it ``from e``)."""
    return OutputWriteError(f"cannot write {path}: {os_error_cause(e)}")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record, not the one it was created with
    (a caller that swaps stderr, as pytest's capture does, may close the old one)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(timestamps: bool = False) -> None:
    """INFO logging for a CLI: our progress lines, not the libraries' chatter (Orbax logs every checkpoint
    save and restore step at INFO through absl)."""
    fmt = "%(levelname)s %(name)s: %(message)s"
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    if not any(getattr(h, "distil_whisper_jax", False) for h in root.handlers):
        # Importing orbax puts a bare stderr handler on the root logger (which would make basicConfig a
        # no-op): replace that one, keep any other (e.g. a test's log capture).
        for h in list(root.handlers):
            if type(h) is logging.StreamHandler and h.stream is sys.stderr:
                root.removeHandler(h)
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s " + fmt if timestamps else fmt))
        handler.distil_whisper_jax = True
        root.addHandler(handler)
    logging.getLogger("absl").setLevel(logging.WARNING)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str | None = None) -> Iterator:
    """Write ``path`` atomically: yields a temp path (``mode=None``) or an open file (``mode='w'``/``'wb'``)
    in the same directory, renamed over ``path`` only if the block finishes without error.

    The temp name ``.<name>.<pid>.<random>.tmp`` carries the writer's process id, so that
    ``remove_stale_temporaries`` can tell a killed writer's leftovers from a live one's. The file gets the
    permissions a plain ``open()`` would give (0666 minus the umask), set just before the rename, so a
    caller that replaced the temp file (as some library writers do) gets them too.

    A remote ``path`` (``storage.location`` of a URL) is written to a local temp file and uploaded in one
    go when the block finishes: the object appears whole or not at all."""
    if storage.is_remote(path):
        with tempfile.TemporaryDirectory(prefix="distil-whisper-jax-") as d:
            tmp = Path(d) / path.name
            if mode is None:
                yield tmp
            else:
                with open(tmp, mode) as f:
                    yield f
            path.fs.put_file(str(tmp), path.path)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if mode is None:
            yield Path(tmp)
        else:
            with open(tmp, mode) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Write directory ``path`` atomically: yields a temp sibling ``.<name>.tmp-<pid>`` that replaces ``path``
    (an earlier one is moved aside as ``.<name>.old-<pid>`` and deleted) only if the block finishes without
    error; on error the temp directory is removed and ``path`` stays as it was, so a full disk never leaves a
    half-written directory where a reader looks. A killed writer's leftovers carry its pid
    (``remove_stale_temporaries``). A remote ``path`` is written to a local temp directory and uploaded when
    the block finishes (``storage.staged_dir``)."""
    if storage.is_remote(path):
        with storage.staged_dir(path) as d:
            yield d
        return
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = (final.with_name(f".{final.name}.{kind}-{os.getpid()}") for kind in ("tmp", "old"))
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def pid_alive(pid: int) -> bool:
    """True when a process with this id runs on this machine (ours included)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_PID_IN_NAME = re.compile(r"(?:\.tmp-|\.old-|\.)(\d+)(?:\.|$)")


def remove_stale_temporaries(directory: str | os.PathLike, patterns: Iterable[str]) -> list[Path]:
    """Delete temp files/folders matching ``patterns`` in ``directory`` that no live process is writing.

    A temp name carries its writer's pid (``atomic_write``'s ``.<name>.<pid>.<random>.tmp``, a folder's
    ``.<name>.tmp-<pid>``); one whose pid is dead, or that carries none (an older writer's), is a killed
    run's leftover. Returns what was removed."""
    removed = []
    for pattern in patterns:
        for p in sorted(Path(directory).glob(pattern)):
            m = _PID_IN_NAME.search(p.name[1:])
            if m is not None and pid_alive(int(m.group(1))):
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


# errno → what went wrong, in the words an error message uses.
_CAUSES = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a parent is a file, not a directory",
    errno.EISDIR: "is a directory",
}
# Text → the same words, for errors that carry the cause only in their message (Orbax and tensorstore
# report a full disk as a ValueError, a bucket its quota as RESOURCE_EXHAUSTED).
_CAUSE_TEXTS = {
    "No space left": "no space left on device",
    "ENOSPC": "no space left on device",
    "RESOURCE_EXHAUSTED": "no space left on device",
    "Read-only file system": "read-only file system",
    "Permission denied": "permission denied",
}


def cause_in_text(e: BaseException) -> str | None:
    """The cause an error names only in its text ('No space left', 'RESOURCE_EXHAUSTED', …), else None."""
    text = f"{type(e).__name__}: {e}"
    return next((words for key, words in _CAUSE_TEXTS.items() if key in text), None)


def os_error_cause(e: BaseException) -> str:
    """What made a write fail, in a few words for an error message: 'no space left on device', 'permission
    denied', …; for an error of another kind its own strerror, or its type and text."""
    if isinstance(e, OSError) and e.errno in _CAUSES:
        return _CAUSES[e.errno]
    if found := cause_in_text(e):
        return found
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return f"{type(e).__name__}: {e}"


def check_writable(path: str | os.PathLike | storage.OutPath, flag: str) -> None:
    """``ValueError`` naming ``flag``, ``path`` and the cause when outputs cannot be written at ``path``, a local
    directory or a bucket URL: every stage checks its output with this before any work, so a wrong bucket,
    missing credentials or a read-only disk fail at once, not hours later.

    A probe file is written, read back and deleted: for a local directory (which need not exist yet) in its
    nearest existing ancestor, which catches read-only mounts and, for root, places where permission bits
    say nothing; for a bucket under the URL itself (an object needs no parent)."""
    what = f"{flag} {path}".strip()
    where = storage.location(path, flag)
    if not storage.is_remote(where):
        where = _nearest_existing(where.absolute())
        if not where.is_dir():
            raise ValueError(f"{what}: cannot write there ({where} is not a directory)")
    try:
        back = _probe(where / f".write-check.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    except Exception as e:  # noqa: BLE001 - each fsspec backend raises its own errors (auth, 404, 403)
        raise ValueError(f"{what}: cannot write there ({os_error_cause(e)})") from None
    if back != _PROBE:
        raise ValueError(f"{what}: a probe written there read back as {len(back)} other bytes")


_PROBE = b"write-check"


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (a dangling symlink counts as existing)."""
    while not path.exists() and not path.is_symlink() and path != path.parent:
        path = path.parent
    return path


def _probe(path: storage.OutPath) -> bytes:
    """Write ``path``, read it back and delete it (also when the write failed half-way); the bytes read."""
    try:
        path.write_bytes(_PROBE)
        return path.read_bytes()
    finally:
        with contextlib.suppress(Exception):
            path.unlink()


def is_hub_id(s: str | os.PathLike) -> bool:
    """'owner/name' that is not an existing local path: a 🤗 hub repository id."""
    s = str(s)
    return s.count("/") == 1 and not s.startswith((".", "/", "~")) and not os.path.exists(s)
