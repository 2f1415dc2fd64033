"""Distil a Whisper teacher into a student: the training run behind ``run_distillation.py``.

    distil-whisper-distill --model_name_or_path STUDENT --train_dataset_name LABELLED_DIR[+...] \\
        --eval_dataset_name HELDOUT --output_dir O --max_steps N

``run(cfg)`` reads top to bottom: ``setup`` (check flags and the output directory, load teacher and
student, open the labelled data, build the optimizer and train state, resume from ``O/checkpoints``),
``loop`` (batch → step → NaN check → log → evaluate → checkpoint, until ``--max_steps``), ``finish`` (the
student as a transformers directory at ``O/hf/`` with ``distil_info.json``, and the training curves).
On SIGTERM (TPU preemption) or Ctrl-C the current step is checkpointed before exiting, on a pod by every process
after the same step (``stop_signals``); a non-finite loss stops the
run naming the step and its examples, keeping the last good checkpoint; a failed write names the path
and the cause and keeps the last good checkpoint. A checkpoint is written in the background during the next
step, which then waits for it (``_settle_save``), so a failed save stops the run one step later, not at the
next save; ``O/tokenizer`` and ``O/hf`` are written under a temporary name and renamed into place.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from distil_whisper_jax.core import parallel
from distil_whisper_jax.core import train as core
from distil_whisper_jax.core.flops import known_peak_tflops
from distil_whisper_jax.core.model import DTYPES
from distil_whisper_jax.data import stream as train_data
from distil_whisper_jax.infra import compile_cache, stop_signals, storage
from distil_whisper_jax.infra.config import to_dict
from distil_whisper_jax.infra.files import (
    OutputWriteError,
    atomic_dir,
    atomic_write,
    check_writable,
    os_error_cause,
    remove_stale_temporaries,
    write_error,
)
from distil_whisper_jax.speech.token_layout import special_tokens
from distil_whisper_jax.speech.tokenizer import save_tokenizer
from distil_whisper_jax.stages.distill import corpus
from distil_whisper_jax.stages.distill.batch import Batcher, EncoderCache
from distil_whisper_jax.stages.distill.config import DistillConfig
from distil_whisper_jax.stages.distill.heldout import Evaluator, tag
from distil_whisper_jax.stages.distill.log import (
    Logger,
    Throughput,
    is_write_error,
    log_line,
    plot_curves,
)
from distil_whisper_jax.stages.distill.setup import (
    Models,
    build_state,
    load_models,
    resume,
    step_options,
)
from distil_whisper_jax.weights import checkpoint
from distil_whisper_jax.weights.convert.hf import write_hf_dir
from distil_whisper_jax.weights.loading import Pretrained
from distil_whisper_jax.weights.student import DISTIL_INFO, student_generation_config, write_draft_vocab

__all__ = ["DistillConfig", "run", "known_peak_tflops", "is_write_error"]

log = logging.getLogger(__name__)
EXIT_PREEMPTED, EXIT_NAN, EXIT_SAVE_FAILED = 143, 3, 4


@dataclasses.dataclass
class Run:
    """Everything the loop needs, made by ``setup``."""

    cfg: DistillConfig
    out: storage.OutPath
    is_main: bool
    models: Models
    data: corpus.TrainData
    global_batch: int
    state: Any  # the train state, replicated over every device of every process
    teacher_params: Any
    step_fn: Callable
    stream: train_data.TrainStream
    batcher: Batcher
    evaluate: Evaluator
    manager: Any  # the Orbax checkpoint manager of O/checkpoints
    meta: dict  # run metadata stored with every checkpoint
    logger: Logger
    throughput: Throughput
    step: int = 0
    last_eval: dict = dataclasses.field(default_factory=dict)
    stop_signal: int | None = None
    saving: int | None = None  # the step whose checkpoint is being written in the background

    @property
    def ckpt_root(self) -> Path:
        return self.out / checkpoint.CHECKPOINTS


def run(cfg: DistillConfig) -> int:
    """Train; 0 when done, ``EXIT_NAN`` / ``EXIT_SAVE_FAILED`` / ``EXIT_PREEMPTED`` (130 after Ctrl-C) when
    stopped early.
    Bad input (flags, data, models, checkpoints) raises ``ValueError`` before training starts."""
    cfg.validate()
    with compile_cache.CompileClock() as clock:
        code = _train(cfg)
    log.info("process %d: %s", jax.process_index(), clock.summary())
    return code


def _train(cfg: DistillConfig) -> int:
    """``run``'s work: set up, loop, settle the saves, write the final student."""
    try:
        r = setup(cfg)
    except OSError as e:  # the disk refused a set-up write (tokenizer, metrics, checkpoint directory)
        if not isinstance(e, OutputWriteError) and not is_write_error(e):
            raise
        log.error("%s; nothing was trained", e if isinstance(e, OutputWriteError) else write_error(e.filename, e))
        return EXIT_SAVE_FAILED
    handlers = stop_signals.install(lambda signum: setattr(r, "stop_signal", signum))
    try:
        code = loop(r)
        log.info("process %d decoded the audio of %d training examples", jax.process_index(), r.batcher.decoded)
        r.manager.wait_until_finished()
    except Exception as e:
        if not is_write_error(e):
            raise
        try:  # let the saves in flight settle, so the report names the last checkpoint that is complete
            r.manager.wait_until_finished()
        except Exception as again:
            log.debug("a save in flight failed too: %s", again)
        _report_write_error(r, e)
        code = EXIT_SAVE_FAILED
    finally:
        stop_signals.restore(handlers)
        r.logger.close()
        r.manager.close()
    return code or finish(r)


# ----------------------------------------------------------------------------------------------
# setup


def setup(cfg: DistillConfig) -> Run:
    """Runtime, output directory, models, data, train state and resume point."""
    _init_runtime(cfg)
    out, is_main = storage.location(cfg.output_dir), jax.process_index() == 0
    _prepare_output(cfg, out, is_main)
    started = time.perf_counter()
    models = load_models(cfg)
    log.info("loaded the teacher and the student in %.1f s", time.perf_counter() - started)
    data = corpus.open_data(cfg, models.student, models.teacher)
    global_batch = cfg.per_device_train_batch_size * jax.device_count() * cfg.gradient_accumulation_steps
    corpus.log_data(cfg, data, global_batch)
    mesh = parallel.data_mesh()  # every device of every process
    state, step_fn = build_state(cfg, models, mesh)
    specials = special_tokens(models.student.tokenizer)
    if is_main:
        _write_tokenizer_dir(models.student, out / checkpoint.TOKENIZER)
    meta = {
        "config": models.student.config.to_dict(),
        "teacher": models.teacher_ref,
        "teacher_sha256": models.teacher_sha256,
        "student": models.student.source,
        "global_batch": global_batch,
        "run_config": to_dict(cfg),
        "data": corpus.identity(data),
    }
    manager = checkpoint.make_manager(out / checkpoint.CHECKPOINTS, cfg.save_total_limit)
    try:
        start, state, stream_state, saved = resume(cfg, manager, state, meta, mesh)
    except BaseException:
        manager.close()
        raise
    tok = models.student.tokenizer
    stream = train_data.TrainStream(data.sources, data.weights, tok, specials, data.opts, cfg.seed, stream_state)
    gen = _gen_options(cfg)
    evaluate = Evaluator(
        models.student,
        models.teacher,
        data.eval_sets,
        specials,
        gen,
        jax.local_devices(),
        eval_step=_make_eval_step(cfg, models) if data.eval_sets else None,
        label_opts=data.opts.labels,
    )
    last_eval = saved.get("eval", {})
    evaluate.teacher_wer.update({k: v["teacher"] for k, v in last_eval.items()})
    batcher = _make_batcher(cfg, models, data, specials, evaluate)
    logger = Logger(out, is_main)
    logger.truncate_after(start)
    return Run(
        cfg=cfg,
        out=out,
        is_main=is_main,
        models=models,
        data=data,
        global_batch=global_batch,
        state=state,
        teacher_params=parallel.replicate_global(models.teacher.params, mesh),
        step_fn=step_fn,
        stream=stream,
        batcher=batcher,
        evaluate=evaluate,
        manager=manager,
        meta=meta,
        logger=logger,
        throughput=_make_throughput(cfg, models, global_batch, batcher.cache is not None),
        step=start,
        last_eval=last_eval,
    )


def _prepare_output(cfg: DistillConfig, out: storage.OutPath, is_main: bool) -> None:
    check_writable(out, "--output_dir")
    if is_main and not storage.is_remote(out) and out.is_dir():  # a killed run's half-written directories
        remove_stale_temporaries(
            out, [f".{d}.{kind}-*" for d in (checkpoint.TOKENIZER, "hf") for kind in ("tmp", "old")]
        )
    if cfg.overwrite_output_dir and is_main and (out / checkpoint.CHECKPOINTS).exists():
        storage.remove_tree(out / checkpoint.CHECKPOINTS)
        (out / "metrics.jsonl").unlink(missing_ok=True)


def _make_batcher(cfg: DistillConfig, models: Models, data: corpus.TrainData, specials, evaluate: Evaluator) -> Batcher:
    cache = EncoderCache(cfg.cache_encoder_outputs_max_gb * 2**30) if cfg.cache_encoder_outputs else None
    return Batcher(
        data.sources,
        data.opts,
        specials,
        label_width=cfg.max_label_length - 1,
        num_mel_bins=models.student.config.num_mel_bins,
        n_frames=models.teacher.config.n_frames,
        cache=cache,
        teacher_config=models.teacher.config,
        teacher_params=evaluate.teacher_params,
        dtype=DTYPES[cfg.dtype],
        devices=jax.local_devices(),
    )


def _make_throughput(cfg: DistillConfig, models: Models, global_batch: int, cached: bool) -> Throughput:
    """Model FLOPs per step (padded label width; backward = 2× forward of what is trained), for the logged
    TFLOP/s and MFU."""
    flops = core.flops_per_step(
        models.student.config,
        models.teacher.config,
        global_batch,
        cfg.max_label_length - 1,
        kl_weight=cfg.kl_weight,
        mse_weight=cfg.mse_weight,
        freeze_encoder=cfg.freeze_encoder,
        share_encoder=models.share_encoder,
        cached_encoder=cached,
    )["total"]
    peak = cfg.device_peak_tflops or known_peak_tflops(jax.devices()[0].device_kind)
    return Throughput(global_batch, flops, peak, jax.device_count())


def _init_runtime(cfg: DistillConfig) -> None:
    compile_cache.enable(cfg)
    if cfg.multi_host:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts; TPUs use ICI/DCN
        cfg.init_distributed()


def _make_eval_step(cfg: DistillConfig, models: Models) -> Callable:
    """The eval-loss step on this process's devices (each process evaluates every eval row)."""
    return core.make_eval_step(
        models.student.config,
        models.teacher.config,
        step_options(cfg, models),
        mesh=parallel.data_mesh(jax.local_devices()),
    )


def _gen_options(cfg: DistillConfig) -> dict:
    return {
        "language": cfg.language,
        "task": cfg.task,
        "max_new_tokens": cfg.generation_max_length or cfg.max_label_length,
        "batch_per_device": cfg.per_device_eval_batch_size,
        "dtype": cfg.dtype,
    }


# ----------------------------------------------------------------------------------------------
# loop


def loop(r: Run) -> int:
    """Train from ``r.step`` to ``--max_steps``; 0, or the exit code of an early stop."""
    cfg = r.cfg
    bar = tqdm(total=cfg.max_steps, initial=r.step, unit="step", disable=cfg.disable_tqdm or not r.is_main)
    local = train_data.process_slice(r.global_batch, jax.process_index(), jax.process_count())
    try:
        if stop_signals.preempted(r.step):  # a pod's notice that came during set-up: its checkpoint stands
            log.warning("preempted before the first step of this run; exiting at step %d", r.step)
            return EXIT_PREEMPTED
        if r.data.eval_sets and r.step == 0 and cfg.eval_steps:  # the untrained student: the curves' baseline
            r.evaluate(r.state.params, 0, r.logger)
        while r.step < cfg.max_steps:
            examples = r.stream.next_batch(r.global_batch)
            r.state, metrics = r.step_fn(r.state, r.teacher_params, r.batcher(examples[local]))
            _settle_save(r)  # while the devices compute this step
            r.step += 1
            if stop_signals.preempted(r.step):
                r.stop_signal = signal.SIGTERM
            loss = float(metrics["loss"])
            if not math.isfinite(loss):
                _report_nan(r, loss, examples)
                return EXIT_NAN
            bar.update(1)
            r.throughput.tick()
            if r.step % cfg.logging_steps == 0 or r.step == cfg.max_steps:
                _log_train(r, metrics)
            eval_wer = _maybe_evaluate(r)
            if r.step % cfg.save_steps == 0 or r.step == cfg.max_steps or eval_wer is not None or r.stop_signal:
                checkpoint.save(r.manager, r.step, r.state, r.stream.state.to_dict(), _meta(r), eval_wer)
                r.saving = r.step
            if r.stop_signal:
                name = signal.Signals(r.stop_signal).name
                log.warning("%s: saved a checkpoint at step %d, exiting", name, r.step)
                return EXIT_PREEMPTED if r.stop_signal == signal.SIGTERM else 128 + r.stop_signal
        return 0
    finally:
        bar.close()


def _settle_save(r: Run) -> None:
    """Wait for the checkpoint started after the previous step, written in the background while this step
    was computed: a failed save stops the run now, one step after it, instead of at the next save
    ``--save_steps`` later with every step in between lost. (On a step shorter than the write, the wait is the
    rest of the write; ``r.saving`` keeps the failed step for the report.)"""
    if r.saving is not None:
        r.manager.wait_until_finished()  # raises the background write's error
        r.saving = None


def _log_train(r: Run, metrics: dict) -> None:
    cache = r.batcher.cache
    epoch = float(max(r.stream.state.epochs))
    scalars = r.throughput.scalars(metrics, epoch, cache.hit_rate if cache is not None else None)
    r.logger.log(r.step, scalars)
    log_line(r.step, scalars)


def _maybe_evaluate(r: Run) -> float | None:
    """Evaluate at every ``--eval_steps`` and at the end; the mean student WER, or None."""
    cfg = r.cfg
    if not r.data.eval_sets or not ((cfg.eval_steps and r.step % cfg.eval_steps == 0) or r.step == cfg.max_steps):
        return None
    r.last_eval = r.evaluate(r.state.params, r.step, r.logger)
    return float(np.mean([v["student"] for v in r.last_eval.values()]))


def _meta(r: Run) -> dict:
    return {**r.meta, "eval": r.last_eval}


def _report_nan(r: Run, loss: float, examples: list) -> None:
    rows = [f"{r.data.sources[e.source].name} row {e.key[1]}" for e in examples]
    last = checkpoint.checkpoint_steps(r.ckpt_root)
    log.error(
        "non-finite loss (%s) at step %d, batch %d: examples %s; stopping. Last good checkpoint: %s",
        loss,
        r.step,
        r.stream.state.batches,
        rows[:8] + (["…"] if len(rows) > 8 else []),
        r.ckpt_root / str(last[-1]) if last else "none",
    )


def _report_write_error(r: Run, e: BaseException) -> None:
    good = checkpoint.checkpoint_steps(r.ckpt_root)
    where = getattr(e, "filename", None) or (r.ckpt_root / str(r.saving) if r.saving is not None else r.ckpt_root)
    log.error(
        "writing %s failed: %s (%s: %s); the last good checkpoint %s is intact",
        where,
        os_error_cause(e),
        type(e).__name__,
        str(e)[:300],
        r.ckpt_root / str(good[-1]) if good else "(none)",
    )


# ----------------------------------------------------------------------------------------------
# finish


def finish(r: Run) -> int:
    """Write the final student (transformers directory + provenance) and the curves; 0, or
    ``EXIT_SAVE_FAILED`` naming the path when the disk refuses."""
    if not r.is_main:
        return 0
    try:
        _write_final(r, checkpoint.host_copy(r.state.params))
        if (r.out / "metrics.jsonl").is_file():
            plot_curves(r.out / "metrics.jsonl", r.out / "training_curves.png")
    except OSError as e:
        if not is_write_error(e):
            raise
        _report_write_error(r, e)
        return EXIT_SAVE_FAILED
    cache = r.batcher.cache
    log.info(
        "done: %d steps; student at %s%s",
        r.step,
        r.out / "hf",
        f", encoder cache {cache.bytes / 2**20:.0f} MiB, hit rate {cache.hit_rate:.2f}" if cache else "",
    )
    return 0


def _write_tokenizer_dir(student: Pretrained, path: storage.OutPath) -> None:
    """``O/tokenizer`` (tokenizer files + generation_config.json), written whole or not at all; a disk that
    refuses it raises ``OutputWriteError`` naming the directory and the cause (the tokenizers library reports
    a full disk as a bare ``Exception``)."""
    try:
        with atomic_dir(path) as d:
            save_tokenizer(student.tokenizer, d)
            _write_generation_config(student, d / "generation_config.json")
    except Exception as e:
        if not is_write_error(e):
            raise
        raise write_error(path, e) from e


def _write_generation_config(student: Pretrained, path: Path) -> None:
    """The student's generation_config.json (kept from its directory, else built from its defaults)."""
    src = storage.location(student.source, "--model_name_or_path") / "generation_config.json"
    if src.is_file():
        gen = json.loads(src.read_text())
    else:
        gen = student_generation_config(student, student.config, list(range(student.config.decoder_layers)))
    with atomic_write(path, "w") as f:
        json.dump(gen, f, indent=2)


def _write_final(r: Run, params: Any) -> None:
    gen = json.loads((r.out / checkpoint.TOKENIZER / "generation_config.json").read_text())
    with atomic_dir(r.out / "hf") as hf:
        _write_hf_and_info(r, hf, params, gen)


def _write_hf_and_info(r: Run, hf: Path, params: Any, gen: dict) -> None:
    student, teacher = r.models.student, r.models.teacher
    write_hf_dir(hf, student.config, params, generation_config=gen, tokenizer=student.tokenizer)
    info = dict(r.models.info)
    info["teacher"] = r.models.teacher_ref
    info["teacher_sha256"] = r.models.teacher_sha256
    info.setdefault("teacher_decoder_layers", teacher.config.decoder_layers)
    info.update(
        {"train_steps": r.step, "train_datasets": r.data.names, "eval_wer": {tag(k): v for k, v in r.last_eval.items()}}
    )
    with atomic_write(hf / DISTIL_INFO, "w") as f:
        json.dump(info, f, indent=2)
    write_draft_vocab(hf, r.stream.label_counts())  # a speculative draft shortlist: the labels' tokens
