"""Orbax checkpoints of a distillation run: ``O/checkpoints/<step>/{state,data,meta}``.

* ``state``: the whole train state (params, optimizer state, step, RNG) — everything an exact resume needs.
* ``data``: the training stream's position (``train_data.StreamState``, JSON) — resuming is O(1), no re-streaming.
* ``meta``: the student's ``WhisperConfig``, teacher, run flags, tokenizer location, eval WERs (JSON).

Orbax writes each step into a temporary directory and renames it when complete, so a save that dies
half-way (preemption, full disk) never replaces the previous good checkpoint. Retention: the last
``save_total_limit`` plus the best one by eval WER. A checkpoint that fails to restore (truncated,
corrupted) is reported by name and the previous good one is used; a run that trains on renames the
damaged one ``<step>.damaged-<time>`` so that it neither blocks the save of that step nor is lost.

``is_checkpoint_dir`` and ``load_params`` make these directories loadable by ``models.load_pretrained``
(format "orbax"), hence by every model loader and the exporter.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from distil_whisper_jax.core.model import WhisperConfig
from distil_whisper_jax.infra import storage

log = logging.getLogger(__name__)
CHECKPOINTS = "checkpoints"  # sub-directory of the run's output_dir
TOKENIZER = "tokenizer"  # sub-directory of output_dir holding the tokenizer + generation_config.json
ITEMS = ("state", "data", "meta")
# Orbax's marker of a finished step on gs:// (written last; a bucket has no directory rename to finalise with).
COMMIT_MARKER = "commit_success.txt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names it (and the previous good one when known)."""


def _is_finished_step(d: storage.OutPath) -> bool:
    """A finalised step directory: ``<step>/meta`` exists, and on gs:// (where Orbax writes in place and
    marks the end with a file) its commit marker too; a half-written step is not one."""
    if not (d.name.isdigit() and (d / "meta").is_dir()):
        return False
    return not str(d).startswith("gs://") or (d / COMMIT_MARKER).is_file()


def checkpoint_root(path: str | os.PathLike) -> storage.OutPath:
    """``O/checkpoints`` for ``O``, ``O/checkpoints`` or ``O/checkpoints/<step>`` (local or a bucket URL)."""
    p = storage.location(path)
    if p.name.isdigit() and (p / "meta").is_dir():
        return p.parent
    if (p / CHECKPOINTS).is_dir():
        return p / CHECKPOINTS
    return p


def checkpoint_steps(root: str | os.PathLike) -> list[int]:
    """Finalised checkpoint steps under ``root`` (ascending); temporary, half-written ones are ignored."""
    root = storage.location(root)
    if storage.is_remote(root):  # Orbax writes through tensorstore, past fsspec's cached listings: list afresh
        root.fs.invalidate_cache()
    if not root.is_dir():
        return []
    return sorted(int(d.name) for d in root.iterdir() if d.name.isdigit() and _is_finished_step(d))


def is_checkpoint_dir(path: str | os.PathLike) -> bool:
    """True for a run directory ``O``, its ``O/checkpoints``, or one ``O/checkpoints/<step>``."""
    p = storage.location(path)
    if not p.is_dir():
        return False
    if _is_finished_step(p) and (p / "state").is_dir():
        return True
    return bool(checkpoint_steps(checkpoint_root(p)))


def make_manager(
    root: str | os.PathLike, save_total_limit: int | None = None, keep_best: bool = True, async_save: bool = True
):
    """An Orbax ``CheckpointManager`` keeping the last ``save_total_limit`` steps (all if None) plus
    the best by ``eval_wer`` (lower is better) among checkpoints saved with metrics."""
    policies = [pp.LatestN(n=save_total_limit)]
    if keep_best:
        policies.append(
            pp.BestN(get_metric_fn=lambda m: m["eval_wer"], reverse=True, n=1, keep_checkpoints_without_metrics=False)
        )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=pp.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save,
        create=True,
        cleanup_tmp_directories=True,
    )
    # A bucket URL goes to Orbax as it is: Orbax writes gs:// itself (tensorstore, etils.epath).
    directory = str(root) if storage.is_remote(root) else Path(root).absolute()
    return ocp.CheckpointManager(directory, options=options, item_names=ITEMS)


def host_copy(tree: Any) -> Any:
    """This process's copy of a replicated (possibly multi-host) array tree, as numpy."""
    return jax.tree_util.tree_map(
        lambda a: np.asarray(a.addressable_data(0)) if hasattr(a, "addressable_data") else np.asarray(a), tree
    )


def save(manager, step: int, state: Any, data_state: dict, meta: dict, eval_wer: float | None = None) -> None:
    """Start saving (asynchronously) ``state`` + data position + metadata at ``step``.

    The state is copied to host memory first (numpy): the checkpoint then does not depend on the device
    layout (resume on any device count), and Orbax skips its per-array replica slicing, which on a
    replicated state costs one compilation per array."""
    metrics = None if eval_wer is None else {"eval_wer": float(eval_wer)}
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(host_copy(state)),
            data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta),
        ),
        metrics=metrics,
        force=True,
    )


def _restore_step(manager, step: int, target: Any | None) -> tuple[Any, dict, dict]:
    state_args = ocp.args.StandardRestore(host_copy(target)) if target is not None else ocp.args.StandardRestore()
    out = manager.restore(
        step, args=ocp.args.Composite(state=state_args, data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore())
    )
    return out["state"], out["data"], out["meta"]


def restore(
    manager, target: Any | None, step: int | None = None, fallback: bool = True, set_aside: bool = False
) -> tuple[int, Any, dict, dict] | None:
    """Restore ``step`` (default: the latest) as host (numpy) arrays shaped like ``target``.

    A checkpoint that fails to load is logged by name and, when ``fallback``, the next older one is tried;
    otherwise ``CheckpointError`` names the previous good one. With ``set_aside`` (a run that will train
    on), each damaged step directory is renamed ``<step>.damaged-<time>``, so that saving that step again
    later does not collide with it. Returns ``(step, state, data_state, meta)`` or None when there is no
    checkpoint."""
    root = storage.location(str(manager.directory))
    steps = checkpoint_steps(root)
    if step is not None:
        if step not in steps:
            raise CheckpointError(f"{root}: no checkpoint for step {step} (have {steps})")
        steps = [s for s in steps if s <= step]
    errors = []
    # Installed before the first attempt: a damaged file's orphaned reads may report while the restore is
    # still failing, before control comes back here.
    _silence_orphaned_reads()
    for s in reversed(steps):
        try:
            state, data, meta = _restore_step(manager, s, target)
        except Exception as e:  # orbax/tensorstore raise many types for damaged files
            msg = f"{root / str(s)}: unreadable checkpoint ({type(e).__name__}: {str(e)[:300]})"
            errors.append(msg)
            older = [t for t in steps if t < s]
            if not fallback:
                prev = (
                    f"the previous checkpoint is {root / str(older[-1])}" if older else "there is no older checkpoint"
                )
                raise CheckpointError(f"{msg}; {prev}") from None
            log.error("%s; %s", msg, f"trying {root / str(older[-1])}" if older else "no older checkpoint left")
            if set_aside:
                _set_aside(manager, root / str(s))
            continue
        if errors:
            log.warning("resumed from %s after skipping %d damaged checkpoint(s)", root / str(s), len(errors))
        return s, state, data, meta
    if errors:
        raise CheckpointError("; ".join(errors) + ": no usable checkpoint left")
    return None


def _silence_orphaned_reads() -> None:
    """Drop the ``RuntimeError('Event loop is closed')`` reports of a failed restore's other reads.

    When one file of a checkpoint is unreadable, Orbax gives up and closes its event loop while
    tensorstore still has the other reads in flight; each then completes on a worker thread, fails to
    schedule its callback on the closed loop and is reported through ``sys.unraisablehook`` (some hundred
    tracebacks that say nothing about the damaged file, which the error already names). The hook installed
    here drops exactly those reports and passes every other one on."""
    previous = sys.unraisablehook
    if getattr(previous, "_drops_closed_loop", False):
        return

    def hook(unraisable) -> None:
        e = unraisable.exc_value
        if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
            return
        previous(unraisable)

    hook._drops_closed_loop = True
    sys.unraisablehook = hook


def _set_aside(manager, step_dir: Path) -> None:
    """Rename a damaged step directory out of the manager's sight (process 0 renames; all reload)."""
    if jax.process_index() == 0:
        target = step_dir.with_name(f"{step_dir.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
        step_dir.rename(target)
        log.warning("set the damaged checkpoint aside as %s", target)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"set aside {step_dir.name}")
    manager.reload()


def load_params(path: str | os.PathLike) -> tuple[WhisperConfig, dict]:
    """(config, fp32 numpy params) of the latest usable checkpoint under ``path`` (``O``,
    ``O/checkpoints``) or of one step directory ``O/checkpoints/<step>``."""
    p = storage.location(path)
    root = checkpoint_root(p)
    step = int(p.name) if p.name.isdigit() and p.parent == root else None
    manager = make_manager(root, async_save=False)
    try:
        found = restore(manager, None, step=step, fallback=step is None)
    finally:
        manager.close()
    if found is None:
        raise CheckpointError(f"{path}: holds no finished Orbax checkpoint")
    _, state, _, meta = found
    params = state["params"] if isinstance(state, dict) else state.params
    params = jax.tree_util.tree_map(lambda x: np.asarray(x, dtype=np.float32), params)
    if "config" not in meta:
        raise CheckpointError(f"{path}: checkpoint metadata has no model config")
    return WhisperConfig.from_dict(meta["config"]), params


def tokenizer_dir(path: str | os.PathLike) -> Path | None:
    """The run's saved tokenizer directory (``O/tokenizer``) for a checkpoint path, if present."""
    d = checkpoint_root(path).parent / TOKENIZER
    return d if d.is_dir() else None
