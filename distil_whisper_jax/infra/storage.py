"""Where outputs go: a local directory, or a bucket URL (``gs://``, ``s3://``, ... through fsspec).

``location(s)`` gives a ``pathlib.Path`` for a local path and a ``upath.UPath`` (the same API over fsspec)
for a URL, so the writers use one set of path operations for both. What differs is atomicity: a local file
is written to a temp name and renamed; an object store has no rename, but an upload becomes visible whole
or not at all, so a remote file is written locally first and uploaded in one go (``files.atomic_write``).
Whether a location can be written at all is checked by ``files.check_writable``.
Appending (a metrics log) is done to a local copy that is re-uploaded (``Mirror``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import fsspec
from upath import UPath

OutPath = Path | UPath


def user_cache_dir() -> Path:
    """This project's per-user cache (assembled models, compiled programs): ``$XDG_CACHE_HOME/distil_whisper_jax``,
    ``~/.cache/distil_whisper_jax`` when the variable is unset."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "distil_whisper_jax"


def is_url(name: str | os.PathLike) -> bool:
    """True for ``scheme://...`` names other than local ``file://`` ones."""
    scheme, sep, _ = os.fspath(name).partition("://")
    return bool(sep) and scheme.isidentifier() and scheme != "file"


def is_remote(path: str | os.PathLike | UPath) -> bool:
    """True for a location on an fsspec file system other than the local disk."""
    return isinstance(path, UPath) and not isinstance(path, Path) or isinstance(path, str) and is_url(path)


@contextlib.contextmanager
def _scheme_errors(name: str, flag: str) -> Iterator[None]:
    """fsspec's errors for a URL it cannot serve as ``ValueError`` naming ``flag`` and what to do."""
    what = f"{flag} {name}" if flag else name
    try:
        yield
    except ImportError as e:
        extra = ' (pip install "distil-whisper-jax[gcs]")' if name.startswith(("gs://", "gcs://")) else ""
        raise ValueError(f"{what}: this URL needs a package that is not installed ({e}){extra}") from None
    except ValueError as e:
        raise ValueError(f"{what}: not a URL fsspec knows ({e})") from None


def location(name: str | os.PathLike, flag: str = "--output_dir") -> OutPath:
    """``Path`` for a local path (``~`` expanded), ``UPath`` for a URL; ``ValueError`` naming ``flag`` when
    the URL's scheme is unknown or needs a package that is not installed (``gs://`` → ``gcsfs``)."""
    if isinstance(name, UPath) or isinstance(name, Path):
        return name
    if not is_url(name):
        return Path(os.path.expanduser(os.fspath(name)))
    with _scheme_errors(name, flag):
        fsspec.get_filesystem_class(name.split("://")[0])
    return UPath(name)


def file_system(url: str, flag: str = "") -> tuple[fsspec.AbstractFileSystem, str]:
    """``(fsspec file system, path inside it)`` of ``url``; ``ValueError`` as :func:`location` raises."""
    with _scheme_errors(url, flag):
        return fsspec.core.url_to_fs(url)


def remove_tree(path: OutPath) -> None:
    """Delete a directory (or prefix) and everything below it; nothing when it does not exist."""
    if is_remote(path):
        if path.exists():
            path.fs.rm(path.path, recursive=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def upload_tree(local: Path, dest: OutPath, seen: dict[Path, tuple[int, int]] | None = None) -> int:
    """Copy a finished local directory to ``dest`` (a remote location), file by file; a reader that waits
    for a marker file written last (such as a checkpoint's) never sees a partial tree. With ``seen`` (file →
    (size, mtime) at its last upload, updated here), only new and changed files go. Returns files uploaded."""
    seen = {} if seen is None else seen
    uploaded = 0
    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        st = f.stat()
        if seen.get(f) == (st.st_size, st.st_mtime_ns):
            continue
        target = dest / f.relative_to(local).as_posix()
        target.fs.put_file(str(f), target.path)
        seen[f], uploaded = (st.st_size, st.st_mtime_ns), uploaded + 1
    return uploaded


@contextlib.contextmanager
def staged_dir(dest: OutPath) -> Iterator[Path]:
    """A local directory to write ``dest``'s files in: ``dest`` itself when it is local, else a temp
    directory uploaded to ``dest`` when the block finishes without error."""
    if not is_remote(dest):
        Path(dest).mkdir(parents=True, exist_ok=True)
        yield Path(dest)
        return
    with tempfile.TemporaryDirectory(prefix="distil-whisper-jax-") as d:
        yield Path(d)
        upload_tree(Path(d), dest)


class Mirror:
    """A local working copy of a remote file that is appended to (``metrics.jsonl``): ``local`` is written
    as usual and ``push()`` uploads it whole. For a local path, ``local`` is the path itself."""

    def __init__(self, path: OutPath):
        self.path = path
        if not is_remote(path):
            self.local = Path(path)
            return
        self.local = Path(tempfile.mkdtemp(prefix="distil-whisper-jax-")) / path.name
        if path.exists():
            self.local.write_bytes(path.read_bytes())

    def push(self) -> None:
        if is_remote(self.path):
            self.path.fs.put_file(str(self.local), self.path.path)
