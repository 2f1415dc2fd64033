"""A Google Cloud Storage API server on 127.0.0.1 (PyPI ``gcp-storage-emulator``), the stand-in for a bucket that
both storage layers of the package talk to over HTTP: fsspec/gcsfs (``UPath``, and etils.epath, Orbax's path
layer, which here resolves gs:// to gcsfs because TensorFlow is not installed) and tensorstore's ``gcs`` driver
(Orbax's array writes and reads).

What each client needs to reach it and never the network:

* gcsfs: ``STORAGE_EMULATOR_HOST``; ``FSSPEC_GS_TOKEN=anon`` (no credential lookup: without it google-auth
  probes the metadata server before falling back); ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` (newer gcsfs asks
  the gRPC storage-control API for the bucket type, which an HTTP emulator cannot answer: a 60 s timeout per
  bucket). The core ``gcsfs.GCSFileSystem`` is also registered for ``gs://`` explicitly, in case another test
  registered a stand-in or gcsfs was imported before the variable was set.
* tensorstore: ``TENSORSTORE_GCS_HTTP_URL`` (the endpoint) and ``GOOGLE_AUTH_TOKEN_FOR_TESTING`` (a fixed
  bearer token; tensorstore's own tests use it with their GCS testbench), so its auth never looks further.
* google-cloud-storage (Orbax asks it whether a bucket is hierarchical when deleting old steps):
  ``STORAGE_EMULATOR_HOST`` with anonymous credentials.
* everything Google: ``GCE_METADATA_HOST``/``GCE_METADATA_IP`` point at a closed local port, so a stray
  metadata-server lookup fails at once instead of waiting on 169.254.169.254.

The server runs in its own process (so the tests' CPU-heavy training does not starve it, and the rename guard
of the test process does not apply to the server's own files) and keeps objects as files under
``<data_dir>/.cloudstorage/<bucket>/<key>``: tests read what reached the bucket from there.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .helpers import free_port

BUCKET = "bucket"


@dataclasses.dataclass
class Emulator:
    url: str
    data_dir: Path
    process: subprocess.Popen

    @property
    def root(self) -> Path:
        """Where the server keeps the objects of every bucket."""
        return self.data_dir / ".cloudstorage"

    def object_path(self, url: str) -> Path:
        """The server's file for object ``gs://bucket/key``."""
        return self.root / url.removeprefix("gs://")

    def env(self) -> dict[str, str]:
        """The environment variables that point every client at this server (see the module docstring)."""
        closed = f"127.0.0.1:{free_port()}"
        return {
            "STORAGE_EMULATOR_HOST": self.url,
            "FSSPEC_GS_TOKEN": "anon",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
            "GOOGLE_CLOUD_PROJECT": "emulator",
            "GCE_METADATA_HOST": closed,
            "GCE_METADATA_IP": closed,
            "NO_GCE_CHECK": "true",
        }

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


# The server's command line, with one gap filled: real GCS sends an object's generation with its bytes (the
# x-goog-generation header of a media download), this emulator does not, and tensorstore needs it (its cached,
# conditional reads of Orbax's OCDBT manifest fail with "Malformed StorageGeneration" without it). The route
# table is built when the server module is imported, so the handler is wrapped before that.
SERVER = """
import sys
from gcp_storage_emulator.handlers import objects
download = objects.download
def download_with_generation(request, response, storage, *args, **kwargs):
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except Exception:  # no such object: the handler answers 404
        obj = {}
    for key in ("generation", "metageneration"):
        if obj.get(key) is not None:
            response["x-goog-" + key] = str(obj[key])
    return download(request, response, storage, *args, **kwargs)
objects.download = download_with_generation
from gcp_storage_emulator.__main__ import main
main(sys.argv[1:])
"""


def start(data_dir: Path, log_file: Path, buckets: tuple[str, ...] = (BUCKET,)) -> Emulator:
    """Start the server on a free port of 127.0.0.1 with ``buckets`` created; waits until it answers."""
    port = free_port()
    cmd = [sys.executable, "-c", SERVER, "-d", str(data_dir), "start"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--default-bucket", buckets[0]]
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    emu = Emulator(f"http://127.0.0.1:{port}", data_dir, proc)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{emu.url}/storage/v1/b", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the GCS emulator did not start (see {log_file})") from None
            time.sleep(0.1)
    for b in buckets[1:]:
        req = urllib.request.Request(f"{emu.url}/storage/v1/b", data=f'{{"name": "{b}"}}'.encode(), method="POST")
        req.add_header("Content-Type", "application/json")
        urllib.request.urlopen(req, timeout=10).read()
    return emu


def use_gcsfs() -> None:
    """Serve gs:// with the real gcsfs (core class) and forget file system instances made before."""
    import fsspec
    from gcsfs.core import GCSFileSystem

    for protocol in ("gs", "gcs"):
        fsspec.register_implementation(protocol, GCSFileSystem, clobber=True)
    GCSFileSystem.clear_instance_cache()
