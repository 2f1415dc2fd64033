"""Setting up a distillation run: the teacher and student (which teacher, checked by
its weights' digest), the optimizer state and train step, and the checkpoint to resume from (checked
against the run's config)."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from distil_whisper_jax.core import parallel
from distil_whisper_jax.core import train as core
from distil_whisper_jax.core.model import DTYPES
from distil_whisper_jax.data import stream
from distil_whisper_jax.infra import storage
from distil_whisper_jax.infra.config import canonical, differences
from distil_whisper_jax.stages.distill.config import RESUME_MAY_CHANGE, DistillConfig
from distil_whisper_jax.weights import checkpoint
from distil_whisper_jax.weights.loading import Pretrained, load_pretrained
from distil_whisper_jax.weights.student import DISTIL_INFO, params_digest, resolve_teacher_reference, teacher_reference

log = logging.getLogger("distil_whisper_jax.stages.distill.distill")


@dataclasses.dataclass
class Models:
    teacher: Pretrained
    student: Pretrained
    teacher_ref: str  # portable name of the teacher (bundled name, hub id or absolute path)
    teacher_sha256: str
    share_encoder: bool  # one frozen encoder pass feeds both decoders
    info: dict  # the student's distil_info.json ({} when it has none)


def load_models(cfg: DistillConfig) -> Models:
    """Student, then its teacher (by default the one recorded in the student's distil_info.json), checked
    to be that teacher (weights digest) and compatible with the student."""
    student = load_pretrained(cfg.model_name_or_path, "--model_name_or_path")
    info_file = storage.location(student.source, "--model_name_or_path") / DISTIL_INFO
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    requested = cfg.teacher_model_name_or_path
    if requested is None and "teacher" in info:
        requested = resolve_teacher_reference(info["teacher"])
        log.info("teacher: %s (recorded in %s)", info["teacher"], info_file)
        try:
            teacher = load_pretrained(requested)
        except ValueError as e:
            raise ValueError(
                f"the teacher recorded in {info_file} cannot be loaded here ({e}); pass --teacher_model_name_or_path"
            ) from None
    else:
        teacher = load_pretrained(requested, "--teacher_model_name_or_path")
    digest = params_digest(teacher.params)
    if info.get("teacher_sha256") not in (None, digest):
        msg = (
            f"teacher {teacher.source} is not the model the student was created from ({info.get('teacher')}, "
            f"per {info_file}): weights sha256 {digest[:16]}… vs {info['teacher_sha256'][:16]}…"
        )
        if not cfg.allow_teacher_mismatch:
            raise ValueError(msg + "; pass that teacher, or --allow_teacher_mismatch")
        log.warning("%s; training anyway (--allow_teacher_mismatch)", msg)
    check_compatible(teacher, student, cfg.freeze_encoder, cfg.mse_weight)
    share = bool(
        cfg.freeze_encoder
        and core.can_share_encoder(student.config, teacher.config)
        and core.encoders_identical(student.params, teacher.params)
    )  # one encoder pass only when the weights are the teacher's (not merely the same shapes)
    if cfg.freeze_encoder and not share:
        log.info("--freeze_encoder: the student's encoder differs from the teacher's, so each runs its own")
    if cfg.cache_encoder_outputs and not share:
        raise ValueError(
            "--cache_encoder_outputs needs --freeze_encoder and a student whose encoder is the "
            "teacher's (the cached output must be what both decoders see)"
        )
    return Models(teacher, student, teacher_reference(requested, teacher.source), digest, share, info)


def check_compatible(teacher: Pretrained, student: Pretrained, freeze_encoder: bool, mse_weight: float) -> None:
    """Teacher and student must share the vocabulary and features, the student's window must fit in the teacher's
    (and d_model must match when the encoder output or hidden states are shared); ``ValueError`` naming both
    checkpoints otherwise, before any data is read."""
    t, s = teacher.config, student.config
    what = f"teacher {teacher.source} and student {student.source}"
    if t.vocab_size != s.vocab_size:
        kinds = {51864: "English-only", 51865: "multilingual", 51866: "multilingual (large-v3)"}
        mixed = (
            f": the teacher is {kinds[t.vocab_size]}, the student {kinds[s.vocab_size]}"
            if {
                t.vocab_size,
                s.vocab_size,
            }
            <= set(kinds)
            else ""
        )
        raise ValueError(
            f"{what} have different vocabularies ({t.vocab_size} vs {s.vocab_size} tokens{mixed}); "
            "distillation needs the same one"
        )
    if t.num_mel_bins != s.num_mel_bins:
        raise ValueError(f"{what} take different features ({t.num_mel_bins} vs {s.num_mel_bins} mel bins)")
    if s.max_source_positions > t.max_source_positions:
        raise ValueError(
            f"{what}: the student's encoder window ({s.input_seconds:g} s, {s.max_source_positions} positions) is "
            f"longer than the teacher's ({t.input_seconds:g} s): the teacher cannot hear the rest of its clips; "
            f"make the student with --max_source_positions of at most {t.max_source_positions}"
        )
    if t.d_model != s.d_model and (freeze_encoder or mse_weight > 0):
        raise ValueError(
            f"{what} have different widths (d_model {t.d_model} vs {s.d_model}): "
            f"{'--freeze_encoder' if freeze_encoder else '--mse_weight'} needs equal d_model"
        )


def build_state(cfg: DistillConfig, models: Models, mesh) -> tuple[Any, Callable]:
    """The optimizer's train state (replicated) and the compiled train step."""
    schedule = core.make_schedule(cfg.lr_scheduler_type, cfg.learning_rate, cfg.warmup_steps, cfg.max_steps)
    tx = core.make_optimizer(
        models.student.params,
        schedule=schedule,
        weight_decay=cfg.weight_decay,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        adam_epsilon=cfg.adam_epsilon,
        max_grad_norm=cfg.max_grad_norm,
        freeze_encoder=cfg.freeze_encoder,
    )
    # One compiled program builds the whole state (eager per-leaf ops would compile once per leaf shape).
    state = jax.jit(lambda p: core.create_train_state(p, tx, cfg.seed), out_shardings=parallel.replicated(mesh))(
        parallel.replicate_global(models.student.params, mesh)
    )
    step_fn = core.make_train_step(
        models.student.config, models.teacher.config, step_options(cfg, models), tx, mesh=mesh
    )
    return state, step_fn


def step_options(cfg: DistillConfig, models: Models) -> core.StepOptions:
    """The run's loss and step settings, for the train step and the eval step (which reads the loss at T = 1)."""
    return core.StepOptions(
        kl_weight=cfg.kl_weight,
        ce_weight=cfg.effective_ce_weight,
        kd_temperature=cfg.kd_temperature,
        mse_weight=cfg.mse_weight,
        freeze_encoder=cfg.freeze_encoder,
        share_encoder=models.share_encoder,
        dtype=DTYPES[cfg.dtype],
        remat=cfg.gradient_checkpointing,
        grad_accum_steps=cfg.gradient_accumulation_steps,
    )


def resume(cfg: DistillConfig, manager, state, meta: dict, mesh) -> tuple[int, Any, Any, dict]:
    """(start step, state, data position, saved metadata): from ``--resume_from_checkpoint``, else from the
    latest usable checkpoint in the output directory (damaged ones are set aside), else a fresh start."""
    if cfg.resume_from_checkpoint:
        src = Path(cfg.resume_from_checkpoint)
        src_root = checkpoint.checkpoint_root(src)
        step = int(src.name) if src.name.isdigit() else None
        same = src_root.absolute() == Path(str(manager.directory)).absolute()
        src_manager = manager if same else checkpoint.make_manager(src_root, async_save=False)
        found = checkpoint.restore(src_manager, state, step=step, fallback=False)
        if found is None:
            raise ValueError(f"--resume_from_checkpoint {src}: holds no finished checkpoint")
    else:
        found = checkpoint.restore(manager, state, set_aside=True)
    if found is None:
        return 0, state, None, {}
    start, host_state, data_dict, saved = found
    check_resume(cfg, saved, meta)
    stream_state = stream.StreamState.from_dict(data_dict)
    log.info(
        "resumed at step %d (data position: %d batches, %d rows drawn)", start, stream_state.batches, stream_state.draws
    )
    return start, parallel.replicate_global(host_state, mesh), stream_state, saved


def check_resume(cfg: DistillConfig, saved: dict, now: dict) -> None:
    """Refuse to resume a checkpoint made with other settings that define the run (listing each), unless
    ``--allow_resume_changes``; the student's architecture must always match."""
    if saved.get("config") != now["config"]:
        raise ValueError(
            "the checkpoint's student config differs from --model_name_or_path's "
            f"({saved.get('config')} vs {now['config']}); use another --output_dir"
        )
    problems = []
    if "run_config" in saved:
        ignore = list(RESUME_MAY_CHANGE)
        stored = canonical(DistillConfig, saved["run_config"], warn=False)  # fields renamed since, by new name
        constant = cfg.lr_scheduler_type in ("constant", "constant_with_warmup")
        if constant and cfg.max_steps >= stored.get("max_steps", 0):
            ignore.append("max_steps")  # training longer on a schedule that does not depend on the end
        problems += [f"--{d}" for d in differences(stored, now["run_config"], ignore)]
    else:
        log.warning("the checkpoint records no run config: only the student config and batch are checked")
    if "data" in saved:
        problems += data_changes(saved["data"], now["data"])
    else:
        log.warning("the checkpoint records no identity of its training data (an older run): the data is not checked")
    if saved.get("global_batch") != now["global_batch"]:
        problems.append(f"global batch: {saved.get('global_batch')} → {now['global_batch']}")
    if saved.get("teacher_sha256", now["teacher_sha256"]) != now["teacher_sha256"]:
        problems.append(f"teacher weights: {saved.get('teacher')} → {now['teacher']} (different sha256)")
    if not problems:
        return
    msg = "the checkpoint was made with other settings or data:\n  " + "\n  ".join(problems)
    if cfg.allow_resume_changes:
        log.warning("%s\nresuming anyway (--allow_resume_changes)", msg)
        return
    raise ValueError(
        msg
        + "\nresume with the same flags and data, or pass --allow_resume_changes, --overwrite_output_dir or another "
        "--output_dir"
    )


def data_changes(saved: list[dict], now: list[dict], most: int = 20) -> list[str]:
    """How the training data differs from the data recorded with a checkpoint (``corpus.identity``): per
    dataset, each file added or removed and each change of a file's size, rows or hash (at most ``most``
    lines, then how many more)."""
    names = [d.get("dataset") for d in saved], [d.get("dataset") for d in now]
    if names[0] != names[1]:
        return [f"training datasets: {names[0]} → {names[1]}"]
    changes = [
        f"training data {new['dataset']}: {c}" for old, new in zip(saved, now) for c in _dataset_changes(old, new)
    ]
    return changes[:most] + ([f"… and {len(changes) - most} more changes"] if len(changes) > most else [])


def _dataset_changes(old: dict, new: dict) -> list[str]:
    """One dataset's changes: its files (added, removed, size, rows, hash), then its other facts."""
    before, after = old.get("files", {}), new.get("files", {})
    changes = [f"file added: {f}" for f in sorted(after.keys() - before.keys())]
    changes += [f"file removed: {f}" for f in sorted(before.keys() - after.keys())]
    for f in sorted(before.keys() & after.keys()):
        changes += [f"{f}: {what}" for what in _facts_changed(before[f], after[f])]
    rest = ({k: v for k, v in d.items() if k not in ("files", "dataset")} for d in (old, new))
    return changes + _facts_changed(*rest)


def _facts_changed(old: dict, new: dict) -> list[str]:
    """``key old → new`` for each key whose value differs (digests shortened)."""

    def show(v):
        return f"{v[:12]}…" if isinstance(v, str) and len(v) > 16 else v

    keys = [k for k in (*old, *(k for k in new if k not in old)) if old.get(k) != new.get(k)]
    return [f"{'size (bytes)' if k == 'bytes' else k} {show(old.get(k))} → {show(new.get(k))}" for k in keys]
