"""Checks of one TPU VM worker before hours are spent on it (``tpu_scripts/preflight.sh`` runs this on every
worker at once and prints the rows of all workers as one table).

    python -m distil_whisper_jax.preflight --expected_devices 4 --bucket gs://B/preflight --run_id ID

Each check prints one tab-separated row, ``PREFLIGHT check PASS|FAIL detail fix``: the Python and package
versions, the JAX devices this host sees and the slice's (through ``jax.distributed`` when asked), free disk,
writing/reading/deleting an object in the bucket, and a 3-step distillation of a 2-layer student of the bundled
tiny.en on the bundled speech, checkpointing every step to the bucket, stopped by SIGTERM (what a preemption
sends) after its first checkpoint and resumed from the bucket to the end (``--remove`` then deletes what it
wrote, run on one host). JAX runs in child processes only, so
this process never holds the TPU that the distillation needs.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from distil_whisper_jax.assets import speech_manifest
from distil_whisper_jax.infra import storage
from distil_whisper_jax.infra.config import flag
from distil_whisper_jax.infra.files import check_writable
from distil_whisper_jax.weights import checkpoint

PYTHON_MIN, PYTHON_BELOW = (3, 11), (3, 13)  # pyproject.toml's requires-python
MIN_FREE_GB = 20.0
EXIT_PREEMPTED = 143  # distill.EXIT_PREEMPTED (not imported: that would load JAX here)
SETUP_FIX = "run tpu_scripts/setup.sh (it installs a supported Python and the package)"


@dataclasses.dataclass(frozen=True)
class Row:
    """One check's outcome; ``fix`` says what to do when it failed."""

    check: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        fields = (self.check, "PASS" if self.ok else "FAIL", self.detail, "" if self.ok else self.fix)
        return "\t".join(["PREFLIGHT", *(f.replace("\t", " ").replace("\n", " ") for f in fields)])


def check_python() -> Row:
    """The interpreter is one the package supports."""
    v = sys.version_info[:2]
    ok = PYTHON_MIN <= v < PYTHON_BELOW
    want = f">= {PYTHON_MIN[0]}.{PYTHON_MIN[1]}, < {PYTHON_BELOW[0]}.{PYTHON_BELOW[1]}"
    return Row("python", ok, f"{sys.executable}: {v[0]}.{v[1]} (needs {want})", SETUP_FIX)


def check_versions() -> Row:
    """The package, jax and libtpu versions installed (libtpu only matters on a TPU)."""
    found = {}
    for dist in ("distil-whisper-jax", "jax", "jaxlib", "libtpu"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = None
    ok = all(found[d] for d in ("distil-whisper-jax", "jax", "jaxlib"))
    detail = ", ".join(f"{d} {v or 'missing'}" for d, v in found.items())
    return Row("packages", ok, detail, SETUP_FIX)


_DEVICES = """
import sys, jax
if sys.argv[1] == "1":
    jax.distributed.initialize()
print(jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(), jax.default_backend())
"""


def check_devices(expected: int, distributed: bool, timeout: float = 600) -> Row:
    """JAX starts (with ``jax.distributed`` on a pod: every host must join) and sees ``expected`` devices."""
    fix = "a host that does not see the whole slice: re-create the slice (delete.sh, create.sh), then setup.sh"
    try:
        out = subprocess.run(
            [sys.executable, "-c", _DEVICES, "1" if distributed else "0"],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return Row("devices", False, f"JAX did not start within {timeout:.0f} s (a host did not join)", fix)
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return Row("devices", False, f"JAX failed to start: {tail}", fix)
    index, count, local, total, backend = out.stdout.split()[-5:]
    detail = f"process {index}/{count}: {local} local {backend} devices, {total} in the slice (expected {expected})"
    return Row("devices", int(total) == expected, detail, fix)


def check_disk(path: str | Path, min_gb: float = MIN_FREE_GB) -> Row:
    """Free space where the venv, caches and temporary exports live."""
    free = shutil.disk_usage(path).free / 1e9
    fix = f"free space under {path} (pip cache: pip cache purge; old caches in ~/.cache), or stream datasets"
    return Row("disk", free >= min_gb, f"{free:.0f} GB free under {path} (want >= {min_gb:.0f})", fix)


def check_bucket(url: str) -> Row:
    """An object can be written, read back and deleted under ``url`` from this host (the stages' own check)."""
    fix = "grant this TPU VM's service account roles/storage.objectUser on the bucket, or name a bucket it can write"
    try:
        check_writable(url, "")
    except ValueError as e:
        return Row("bucket", False, str(e), fix)
    return Row("bucket", True, f"wrote, read back and deleted an object under {url}", fix)


def check_readable(url: str) -> Row:
    """``url`` (a model, a dataset; for a glob, its directory) exists and can be listed from this host."""
    base = url
    while any(c in base.rsplit("/", 1)[-1] for c in "*?["):
        base = base.rsplit("/", 1)[0]
    fix = "check the URL, and that this TPU VM's service account may read the bucket (roles/storage.objectViewer)"
    try:
        ok = storage.location(base, "").exists()
    except Exception as e:  # noqa: BLE001 - auth, 404, 403 from each backend
        return Row("input", False, f"{url}: {type(e).__name__}: {e}", fix)
    return Row("input", ok, f"{url}: {'found' if ok else 'no such object or prefix'}", fix)


def _distill_argv(student: Path, out: str, steps: int, distributed: bool) -> list[str]:
    argv = [sys.executable, "-m", "distil_whisper_jax.cli.distill", "--model_name_or_path", str(student)]
    argv += ["--train_dataset_name", str(speech_manifest("train")), "--train_text_column_name", "text"]
    argv += ["--output_dir", out, "--max_steps", str(steps), "--save_steps", "1", "--save_total_limit", "2"]
    argv += ["--per_device_train_batch_size", "1", "--logging_steps", "1", "--disable_tqdm"]
    return argv + (["--jax_distributed"] if distributed else [])


def _stop_after_first_checkpoint(proc: subprocess.Popen, root: str, timeout: float) -> None:
    """SIGTERM ``proc`` once a checkpoint is finalised under ``root`` (on a pod another host may stop the run
    first: JAX's preemption service stops every process at the same step)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if checkpoint.checkpoint_steps(root):
            proc.send_signal(signal.SIGTERM)
            return
        time.sleep(0.5)


def _finish(proc: subprocess.Popen, log: Path, timeout: float) -> tuple[int | None, str]:
    """(exit status, or None when it had to be killed after ``timeout``; its output, echoed)."""
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = None
    text = log.read_text(errors="replace")
    sys.stdout.write(text)
    return code, text


def _distil(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as f:  # a file, not a pipe: nobody reads while it runs
        return subprocess.Popen(argv, env=_env(), stdout=f, stderr=subprocess.STDOUT)


def check_resume(url: str, run_id: str, distributed: bool, steps: int = 10, timeout: float = 1800) -> Row:
    """Distil ``steps`` steps to ``url/run_id``, checkpointing every step; SIGTERM after the first checkpoint
    (a preemption), then resume from the bucket to the end. Passes when the stopped run exits as preempted with
    a checkpoint on the bucket and the resumed one finishes from a later step than 0, with its last checkpoint
    at ``steps``. (``steps`` leaves the first run time to be stopped before it ends: a TPU runs them in
    seconds.) The objects stay for ``--remove``: on a pod the other hosts may still be reading them."""
    fix = "see the log lines above this table; docs/troubleshooting.md (checkpoints on buckets)"
    out = f"{url.rstrip('/')}/{run_id}/distill"
    root = f"{out}/{checkpoint.CHECKPOINTS}"
    with tempfile.TemporaryDirectory(prefix="preflight-") as tmp:
        student = Path(tmp) / "student"
        made = subprocess.run(
            [sys.executable, "-m", "distil_whisper_jax.cli.create_student", "--decoder_layers", "2",
             "--output_dir", str(student)],
            env={**_env(), "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
        )  # fmt: skip
        if made.returncode != 0:
            return Row("resume", False, f"create-student failed: {_last_line(made.stderr)}", fix)
        argv = _distill_argv(student, out, steps, distributed)
        first = _distil(argv, Path(tmp) / "first.log")
        _stop_after_first_checkpoint(first, root, timeout)
        code, _ = _finish(first, Path(tmp) / "first.log", timeout)
        saved = checkpoint.checkpoint_steps(root)
        if code != EXIT_PREEMPTED or not saved:
            what = "was killed after hanging" if code is None else f"exited {code}"
            return Row("resume", False, f"the stopped run {what} with checkpoints {saved} (expected exit "
                       f"{EXIT_PREEMPTED} and a checkpoint on the bucket)", fix)  # fmt: skip
        code, text = _finish(_distil(argv, Path(tmp) / "second.log"), Path(tmp) / "second.log", timeout)
    resumed = [ln for ln in text.splitlines() if "resumed at step" in ln]
    final = checkpoint.checkpoint_steps(root)
    ok = code == 0 and bool(resumed) and final[-1:] == [steps]
    detail = (
        f"stopped by SIGTERM at checkpoint {saved[-1]} on {out}; resumed run exited {code}, "
        f"{resumed[0].split('] ')[-1] if resumed else 'did not resume'}, last checkpoint {final[-1:] or 'none'}"
    )
    return Row("resume", ok, detail, fix)


def _env() -> dict:
    return {**os.environ, "TQDM_DISABLE": "1"}


def _last_line(text: str) -> str:
    return (text.strip().splitlines() or ["no output"])[-1]


@dataclasses.dataclass(frozen=True)
class PreflightConfig:
    """Flags of ``python -m distil_whisper_jax.preflight``."""

    expected_devices: int = flag(0, "jax.device_count() of the whole slice (0: not checked)")
    bucket: str | None = flag(None, "gs://BUCKET/prefix to test (write/read/delete, checkpoint and resume)")
    run_id: str = flag("", "same on every host of a pod (default: the start time)")
    jax_distributed: bool = flag(False, "start jax.distributed (a pod)")
    disk_path: str = flag(str(Path.home()), "where free disk is measured")
    min_free_gb: float = flag(MIN_FREE_GB, "free disk needed at --disk_path")
    skip_resume: bool = flag(False, "no distillation (the quick checks only)")
    write: tuple[str, ...] = flag((), "only check that these output URLs are writable")
    read: tuple[str, ...] = flag((), "... and that these input URLs exist")
    remove: str | None = flag(None, "only remove this prefix (what a passed run of the checks wrote)")


def run(cfg: PreflightConfig) -> int:
    """Run the checks; prints one row each, returns 1 when any failed."""
    if cfg.remove:
        storage.remove_tree(storage.location(cfg.remove, "--remove"))
        return 0
    if cfg.write or cfg.read:  # the stage scripts' check of a stage's buckets, before the stage
        rows = [check_bucket(u) for u in cfg.write] + [check_readable(u) for u in cfg.read]
        for r in rows:
            print(r.line(), flush=True)
        return 0 if all(r.ok for r in rows) else 1
    rows = [check_python(), check_versions(), check_devices(cfg.expected_devices, cfg.jax_distributed)]
    rows.append(check_disk(cfg.disk_path, cfg.min_free_gb))
    if cfg.bucket:
        rows.append(check_bucket(cfg.bucket))
        if not cfg.skip_resume and all(r.ok for r in rows):
            run_id = cfg.run_id or time.strftime("%Y%m%dT%H%M%S")
            rows.append(check_resume(cfg.bucket, run_id, cfg.jax_distributed))
    for r in rows:
        print(r.line(), flush=True)
    return 0 if all(r.ok for r in rows) else 1
