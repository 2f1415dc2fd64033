"""A file system that refuses directory renames, as gcsfuse does on a flat bucket.

gcsfuse mounts a bucket as a directory tree, but a flat bucket has no directories: renaming one would be a copy
and delete of every object below it, which gcsfuse refuses by default (``--rename-dir-limit 0``: the rename
fails with ``EOPNOTSUPP``). A writer that finalises a directory by renaming it (Orbax's local-style
checkpoints, the exporter's ``os.replace`` of ``hf/``) therefore fails on such a mount. ``install(roots)``
makes this process behave the same way under ``roots``: ``os.rename`` / ``os.replace`` (which ``pathlib``,
``shutil.move`` and etils' local paths call) raise that error when the source is a directory below a root.
It also refuses directory moves on ``gs://`` through gcsfs (``mv``/``rename`` of a prefix, which gcsfs would
do as copy + delete, not atomically). Every refused attempt is appended to ``REFUSED``.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

REFUSED: list[str] = []
_ORIGINAL = {"rename": os.rename, "replace": os.replace}


def _under(path: str, roots: list[Path]) -> bool:
    p = Path(os.path.abspath(path))
    return any(p == r or r in p.parents for r in roots)


def refusal(src: str) -> OSError:
    """The error gcsfuse gives for a directory rename on a flat bucket."""
    REFUSED.append(str(src))
    return OSError(errno.EOPNOTSUPP, "Operation not supported (directory rename on a flat bucket, as gcsfuse)", src)


def _guarded(name: str, roots: list[Path]):
    original = _ORIGINAL[name]

    def call(src, dst, *args, **kwargs):
        s = os.fspath(src)
        if isinstance(s, str) and os.path.isdir(s) and not os.path.islink(s) and _under(s, roots):
            raise refusal(s)
        return original(src, dst, *args, **kwargs)

    return call


def _guarded_gcs_mv():
    from gcsfs.core import GCSFileSystem

    original = GCSFileSystem.mv

    def mv(self, path1, path2, *args, **kwargs):
        if isinstance(path1, str) and self.isdir(path1):
            raise refusal(f"gs://{self._strip_protocol(path1)}")
        return original(self, path1, path2, *args, **kwargs)

    return GCSFileSystem, mv


def patches(roots: list[str | os.PathLike]) -> list[tuple[object, str, object]]:
    """``(object, attribute, replacement)`` for every function the guard replaces."""
    resolved = [Path(os.path.abspath(r)) for r in roots]
    cls, mv = _guarded_gcs_mv()
    return [
        (os, "rename", _guarded("rename", resolved)),
        (os, "replace", _guarded("replace", resolved)),
        (cls, "mv", mv),
    ]


def install(roots: list[str | os.PathLike]) -> None:
    """Refuse directory renames under ``roots`` (and on gs://) for the rest of this process (a subprocess's)."""
    for obj, name, value in patches(roots):
        setattr(obj, name, value)
