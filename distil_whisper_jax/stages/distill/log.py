"""What a distillation run reports: TensorBoard + JSONL metrics, throughput and MFU, the training curves."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import time
from pathlib import Path

from distil_whisper_jax.infra import storage
from distil_whisper_jax.infra.files import atomic_write, cause_in_text

log = logging.getLogger("distil_whisper_jax.stages.distill.distill")


@dataclasses.dataclass
class Logger:
    """TensorBoard (tensorboardX, no TensorFlow needed) + JSONL, on process 0."""

    out: storage.OutPath
    enabled: bool

    def __post_init__(self):
        self.writer = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            # A bucket output: metrics.jsonl and the event files are kept locally and uploaded after each write.
            self.metrics = storage.Mirror(self.out / "metrics.jsonl")
            self.local = self.metrics.local.parent
            self.writer = SummaryWriter(str(self.local / "runs"))
            self.uploaded: dict = {}  # event file → (size, mtime) last uploaded: only grown files go again

    def truncate_after(self, step: int) -> None:
        """Drop JSONL entries beyond ``step`` (written after the checkpoint a resumed run restarts from)."""
        if self.enabled and self.metrics.local.is_file():
            lines = self.metrics.local.read_text().splitlines()
            keep = [ln for ln in lines if ln.strip() and json.loads(ln).get("step", 0) <= step]
            with atomic_write(self.metrics.local, "w") as fh:
                fh.write("".join(ln + "\n" for ln in keep))
            self.metrics.push()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)
        with open(self.metrics.local, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        self._push()

    def _push(self) -> None:
        if storage.is_remote(self.out):
            self.writer.flush()
            self.metrics.push()
            storage.upload_tree(self.local / "runs", self.out / "runs", self.uploaded)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self._push()


@dataclasses.dataclass
class Throughput:
    """Steps since the last log line, and the training metrics derived from them."""

    global_batch: int
    step_flops: float  # model FLOPs of one optimizer step
    peak_tflops: float | None  # of one device; None: no MFU
    devices: int
    t0: float = dataclasses.field(default_factory=time.perf_counter)
    steps: int = 0

    def tick(self) -> None:
        self.steps += 1

    def scalars(self, metrics: dict, epoch: float, cache_hit_rate: float | None) -> dict[str, float]:
        """Train scalars for one log line (and reset the window)."""
        dt = time.perf_counter() - self.t0
        out = {f"train/{k}": float(v) for k, v in metrics.items()}
        out["train/steps_per_s"] = self.steps / dt
        out["train/samples_per_s"] = self.steps * self.global_batch / dt
        out["train/epoch"] = epoch
        out["train/model_tflops_per_s"] = self.step_flops * self.steps / dt / 1e12
        if self.peak_tflops:
            out["train/mfu"] = out["train/model_tflops_per_s"] / (self.peak_tflops * self.devices)
        if cache_hit_rate is not None:
            out["train/encoder_cache_hit_rate"] = cache_hit_rate
        self.t0, self.steps = time.perf_counter(), 0
        return out


def log_line(step: int, scalars: dict[str, float]) -> None:
    """The one-line console summary of a logged step."""
    nan = float("nan")
    log.info(
        "step %d: loss %.4f ce %.4f kl %.4f lr %.2e grad_norm %.3f, %.2f steps/s",
        step,
        scalars.get("train/loss", nan),
        scalars.get("train/ce", nan),
        scalars.get("train/kl", nan),
        scalars.get("train/lr", nan),
        scalars.get("train/grad_norm", nan),
        scalars.get("train/steps_per_s", nan),
    )


def plot_curves(metrics_file: Path, png: Path) -> None:
    """Loss and eval-WER curves from metrics.jsonl → PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in metrics_file.read_text().splitlines() if ln.strip()]
    train = [r for r in rows if "train/loss" in r]
    wer_keys = sorted({k for r in rows for k in r if k.startswith("eval/") and k.endswith("wer")})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("train/loss", "train/ce", "train/kl"):
        pts = [(r["step"], r[key]) for r in train if key in r]
        if pts:
            axes[0].plot(*zip(*pts), label=key.split("/")[1])
    axes[0].set(xlabel="step", ylabel="loss", title="training loss")
    axes[0].legend()
    for key in wer_keys:
        pts = [(r["step"], r[key]) for r in rows if key in r]
        axes[1].plot(*zip(*pts), marker="o", label=key[len("eval/") :])
    axes[1].set(xlabel="step", ylabel="WER %", title="eval WER (greedy)")
    if wer_keys:
        axes[1].legend()
    fig.tight_layout()
    with atomic_write(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


# The errnos a failed write of the disk's making raises (space, quota, read-only, permission, a file where
# a directory should be): the run stops with a report instead of a traceback.
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR})


def is_write_error(e: BaseException) -> bool:
    """A failed write for a reason of the disk (space, quota, read-only, permission); Orbax and tensorstore
    report a full disk as ``ValueError`` text, hence the look at the message."""
    if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS:
        return True
    return cause_in_text(e) is not None
