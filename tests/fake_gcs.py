"""A stand-in for Google Cloud Storage that runs here: ``gs://BUCKET/KEY`` is ``ROOT/BUCKET/KEY`` on local
disk, registered with fsspec for the ``gs`` protocol (where gcsfs would be). As on GCS, a bucket must exist
(a missing one fails every write) and there are no directories to create; every object written is recorded
in ``FakeGCS.written`` (keys) so tests can see what reached the bucket."""

import os

import fsspec
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem


class FakeGCS(DirFileSystem):
    protocol = ("gs", "gcs")
    sep = "/"
    root_marker = ""
    root = ""  # set by use()
    written: list = []

    def __init__(self, *args, **kwargs):
        super().__init__(path=self.root, fs=LocalFileSystem(auto_mkdir=True), **kwargs)

    @classmethod
    def _strip_protocol(cls, path):
        path = path[0] if isinstance(path, list) else path
        for prefix in ("gs://", "gcs://"):
            path = path.removeprefix(prefix)
        return path.rstrip("/")

    def _check_bucket(self, path):
        bucket = self._strip_protocol(path).split("/")[0]
        if not os.path.isdir(os.path.join(self.root, bucket)):
            raise FileNotFoundError(f"gs://{bucket}: no such bucket")
        FakeGCS.written.append(self._strip_protocol(path))

    def open(self, path, mode="rb", **kwargs):
        if "w" in mode or "a" in mode:
            self._check_bucket(path)
        return super().open(path, mode, **kwargs)

    def put_file(self, lpath, rpath, **kwargs):
        self._check_bucket(rpath)
        return super().put_file(lpath, rpath, **kwargs)


def use(root, buckets=("bucket",)):
    """Serve ``gs://`` from ``root`` (with ``buckets`` created) for the rest of the process."""
    for b in buckets:
        os.makedirs(os.path.join(root, b), exist_ok=True)
    FakeGCS.root = str(root)
    FakeGCS.written = []
    FakeGCS.clear_instance_cache()
    fsspec.register_implementation("gs", FakeGCS, clobber=True)
    return FakeGCS
