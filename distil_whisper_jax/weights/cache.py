"""Model files behind a URL (``gs://bucket/model``), copied once to the local disk and loaded from there.

Loaders read local files (safetensors, ``model.bin``, ``.pt``, tokenizer JSON), so a model on a bucket is
copied whole into ``<cache>/remote/<name>-<key>``. The key hashes the URL and every object's name, size and
version stamp (GCS generation, ETag or mtime, whichever the file system reports), so a model rewritten at the
same URL gets a new copy while an unchanged one is reused without a download. A copy is made in a temporary
directory on the local disk and renamed into place: a killed or concurrent fetch never leaves a partial model
where a reader looks (the rename is local; nothing is renamed on the bucket).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import uuid
from pathlib import Path

from distil_whisper_jax.infra import storage
from distil_whisper_jax.infra.files import remove_stale_temporaries

log = logging.getLogger(__name__)
REMOTE = "remote"  # sub-directory of the cache directory holding fetched models
# What identifies an object's version on each file system (gcsfs: generation, md5Hash; s3fs: ETag; others: mtime).
_VERSION_KEYS = ("generation", "md5Hash", "crc32c", "ETag", "etag", "mtime", "updated", "LastModified")


def describe(url: str, flag: str = "") -> tuple[str, dict[str, dict]]:
    """``("file" | "dir", {relative name: object info})`` of the object or prefix ``url``; ``ValueError``
    naming ``flag`` and the URL when nothing is there or it cannot be listed (no bucket, no access)."""
    fs, path = storage.file_system(url, flag)
    what = f"{flag} {url}".strip()
    try:
        if fs.isfile(path):
            return "file", {path.rsplit("/", 1)[-1]: fs.info(path)}
        found = fs.find(path, detail=True)
    except FileNotFoundError:
        found = {}
    except Exception as e:  # noqa: BLE001 - each fsspec backend raises its own errors (auth, 403, bucket)
        raise ValueError(f"{what}: cannot read it ({type(e).__name__}: {e})") from None
    prefix = path.rstrip("/") + "/"
    objects = {k.removeprefix(prefix): v for k, v in found.items() if k.startswith(prefix) and not k.endswith("/")}
    if not objects:
        raise ValueError(f"{what}: no such object or directory (expected a model file or directory there)")
    return "dir", objects


def version_key(url: str, objects: dict[str, dict]) -> str:
    """A short hash of ``url`` and each object's name, size and version stamp: changes when the model does."""
    h = hashlib.sha256(url.rstrip("/").encode())
    for name in sorted(objects):
        info = objects[name]
        stamp = next((str(info[k]) for k in _VERSION_KEYS if info.get(k) is not None), "")
        h.update(f"\0{name}\0{info.get('size')}\0{stamp}".encode())
    return h.hexdigest()[:16]


def cache_name(url: str, key: str) -> str:
    """``<last URL component>-<key>``, characters other than letters, digits, ``_`` and ``-`` replaced (no dots:
    a temporary copy's name ``.<name>.tmp-<pid>.<random>`` must show its writer's pid to stale clean-up)."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", url.rstrip("/").rsplit("/", 1)[-1]) or "model"
    return f"{base}-{key}"


def _download(url: str, kind: str, objects: dict[str, dict], dest: Path) -> None:
    """Copy every object into ``dest`` (a new local directory) and check each copy's size."""
    fs, path = storage.file_system(url)
    for name, info in objects.items():
        local = dest / name
        local.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(path if kind == "file" else f"{path.rstrip('/')}/{name}", str(local))
        if info.get("size") is not None and local.stat().st_size != int(info["size"]):
            raise OSError(f"{url}/{name}: downloaded {local.stat().st_size} bytes, the object has {info['size']}")


def fetch(url: str, cache_dir: str | os.PathLike, flag: str = "") -> Path:
    """A local copy of the model file or directory at ``url`` (see the module docstring); returns the
    directory, or for a single object the file inside it. ``ValueError`` names ``flag`` and the URL when
    there is nothing to fetch or it cannot be read."""
    kind, objects = describe(url, flag)
    root = Path(cache_dir) / REMOTE
    final = root / cache_name(url, version_key(url, objects))
    result = final / next(iter(objects)) if kind == "file" else final
    if final.is_dir():
        return result
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(root, [".*.tmp-*"])
    tmp = root / f".{final.name}.tmp-{os.getpid()}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        try:
            _download(url, kind, objects, tmp)
        except OSError as e:
            raise ValueError(f"{f'{flag} {url}'.strip()}: cannot download it ({type(e).__name__}: {e})") from None
        try:
            os.replace(tmp, final)  # local disk: an atomic rename
        except OSError:
            if not final.is_dir():  # not a concurrent fetch of the same version that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("fetched %s (%d objects) to %s", url, len(objects), final)
    return result
