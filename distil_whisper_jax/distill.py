"""Distil a Whisper teacher into a student: the training loop behind ``run_distillation.py``.

    python run_distillation.py --model_name_or_path STUDENT --teacher_model_name_or_path TEACHER \\
        --train_dataset_name LABELLED_DIR[+...] --eval_dataset_name HELDOUT --output_dir O --max_steps N

Reads top to bottom: load teacher and student, open the labelled data, build the optimizer and train
state, resume from ``O/checkpoints`` if a checkpoint is there, then loop: batch → step → log → evaluate
→ checkpoint, until ``--max_steps``. On SIGTERM (TPU preemption) the current step is checkpointed before
exiting; a non-finite loss stops the run naming the step and its examples, keeping the last good
checkpoint. The result: Orbax checkpoints under ``O/checkpoints/`` and the student as a transformers
directory at ``O/hf/`` (with ``distil_info.json``), loadable by every model loader of this project.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .losses import default_ce_weight
from .model import DTYPES as COMPUTE_DTYPES

log = logging.getLogger(__name__)
DTYPES = tuple(COMPUTE_DTYPES)
EXIT_PREEMPTED, EXIT_NAN, EXIT_SAVE_FAILED = 143, 3, 4


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_distillation.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    m = p.add_argument_group("models")
    m.add_argument(
        "--model_name_or_path",
        required=True,
        help="the student to train (e.g. made by python -m distil_whisper_jax.create_student): "
        "transformers/CTranslate2 dir, openai .pt, Orbax run dir, or hub id",
    )
    m.add_argument(
        "--teacher_model_name_or_path",
        default=None,
        help="the teacher (same formats); default: the bundled tiny.en. Must be the model that "
        "pseudo-labelled the data for a meaningful KL term",
    )
    m.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="compute dtype of the forward/backward passes (params and optimizer stay fp32)",
    )
    m.add_argument("--gradient_checkpointing", action="store_true", help="rematerialise layers in the backward pass")
    d = p.add_argument_group("data")
    d.add_argument(
        "--train_dataset_name",
        required=True,
        help="'+'-joined labelled datasets: run_pseudo_label.py output dirs, Parquet files/globs, "
        "TSV manifests, or hub dataset ids",
    )
    d.add_argument(
        "--train_dataset_samples",
        default=None,
        help="'+'-joined weights (hours or sample counts): datasets are mixed in proportion; default equal",
    )
    d.add_argument(
        "--train_split_name",
        default="train",
        help="split of hub datasets / sharded dirs (Parquet files whose path contains it)",
    )
    d.add_argument(
        "--eval_dataset_name",
        default=None,
        help="'+'-joined evaluation datasets (each evaluated and logged separately); none = no eval",
    )
    d.add_argument("--eval_split_name", default="validation", help="split of hub evaluation datasets")
    d.add_argument("--eval_text_column_name", default="text", help="reference transcript column of eval data")
    d.add_argument("--train_text_column_name", default="whisper_transcript", help="training target column")
    d.add_argument("--audio_column_name", default="audio", help="audio column (🤗 Audio struct or path)")
    d.add_argument("--min_duration_in_seconds", type=float, default=0.0, help="drop shorter training audio")
    d.add_argument("--max_duration_in_seconds", type=float, default=30.0, help="drop longer training audio")
    d.add_argument(
        "--max_label_length",
        type=int,
        default=128,
        help="max decoder tokens per example (prompt + text + EOT); sets the static label width",
    )
    d.add_argument(
        "--truncate_long_labels",
        action="store_true",
        help="cut over-long labels to --max_label_length instead of dropping the row (the original drops)",
    )
    d.add_argument(
        "--wer_threshold",
        type=float,
        default=None,
        help="drop rows whose pseudo-label WER vs. ground truth (the 'wer' column, %%) is ≥ this",
    )
    d.add_argument(
        "--drop_rows_without_ground_truth",
        action="store_true",
        help="with --wer_threshold, also drop rows whose WER is unknown (no ground truth)",
    )
    d.add_argument(
        "--timestamp_probability",
        type=float,
        default=0.2,
        help="keep the pseudo-label's timestamps with this probability (else strip them)",
    )
    d.add_argument(
        "--condition_on_prev_probability",
        type=float,
        default=0.2,
        help="prepend <|startofprev|> + the previous segment's text with this probability",
    )
    d.add_argument("--language", default=None, help="language of multilingual prompts (default English)")
    d.add_argument("--task", default="transcribe", choices=["transcribe", "translate"])
    d.add_argument("--max_eval_samples", type=int, default=None, help="cap on rows per evaluation set")
    d.add_argument(
        "--generation_max_length",
        type=int,
        default=None,
        help="max new tokens of eval generation (default: --max_label_length)",
    )
    t = p.add_argument_group("training")
    t.add_argument(
        "--output_dir",
        required=True,
        help="run directory: checkpoints/, hf/, tokenizer/, runs/ (TensorBoard), metrics.jsonl",
    )
    t.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="delete existing checkpoints in --output_dir and start afresh (default: resume from them)",
    )
    t.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help="an Orbax checkpoint step dir (O/checkpoints/<step>) or run dir to resume from; "
        "default: the latest one in --output_dir",
    )
    t.add_argument("--max_steps", type=int, required=True, help="optimizer steps to train for")
    t.add_argument("--per_device_train_batch_size", type=int, default=8, help="examples per device per micro-batch")
    t.add_argument("--per_device_eval_batch_size", type=int, default=8, help="examples per device in eval generation")
    t.add_argument("--gradient_accumulation_steps", type=int, default=1, help="micro-batches per optimizer step")
    t.add_argument("--learning_rate", type=float, default=5e-5, help="peak learning rate")
    t.add_argument(
        "--lr_scheduler_type",
        choices=["linear", "constant_with_warmup", "constant", "cosine"],
        default="linear",
        help="decay after warmup",
    )
    t.add_argument("--warmup_steps", type=int, default=0, help="linear warmup from 0 (optimizer steps)")
    t.add_argument("--weight_decay", type=float, default=0.0, help="AdamW decay (never on biases / norms)")
    t.add_argument("--adam_beta1", type=float, default=0.9)
    t.add_argument("--adam_beta2", type=float, default=0.999)
    t.add_argument("--adam_epsilon", type=float, default=1e-8)
    t.add_argument("--max_grad_norm", type=float, default=1.0, help="global gradient-norm clip")
    t.add_argument(
        "--device_peak_tflops",
        type=float,
        default=None,
        help="peak TFLOP/s of one device, for the logged MFU; default: known for TPU v3/v4/v5e/v5p/v6e "
        "(bf16), otherwise only model TFLOP/s is logged",
    )
    t.add_argument(
        "--freeze_encoder",
        action="store_true",
        help="do not train the encoder; when it equals the teacher's, one encoder pass feeds both decoders",
    )
    t.add_argument("--kl_weight", type=float, default=1.0, help="weight of T²·KL(teacher_T ‖ student_T)")
    t.add_argument(
        "--ce_weight",
        type=float,
        default=None,
        help="weight of the cross-entropy on pseudo-labels; default 0.8 with KL, 1.0 without (original)",
    )
    t.add_argument("--mse_weight", type=float, default=0.0, help="weight of an optional hidden-state MSE")
    t.add_argument("--temperature", type=float, default=2.0, help="softmax temperature T of the KL term")
    t.add_argument(
        "--cache_encoder_outputs",
        action="store_true",
        help="with --freeze_encoder and a shared encoder, keep each example's encoder output in memory "
        "(valid: the encoder is frozen, inputs are not augmented) so repeated epochs skip the "
        "30 s encoder pass and audio decoding",
    )
    t.add_argument("--cache_encoder_outputs_max_gb", type=float, default=2.0, help="memory bound of that cache")
    t.add_argument("--seed", type=int, default=42, help="seeds init RNG, data order and label randomness")
    t.add_argument("--logging_steps", type=int, default=25, help="log train metrics every N steps")
    t.add_argument(
        "--eval_steps",
        type=int,
        default=None,
        help="evaluate every N steps, before training and at the end; each evaluation is also "
        "checkpointed so the best checkpoint by WER is kept",
    )
    t.add_argument("--save_steps", type=int, default=500, help="checkpoint every N steps (and at the end)")
    t.add_argument(
        "--save_total_limit",
        type=int,
        default=None,
        help="keep the last N checkpoints (plus the best by eval WER); default: all",
    )
    t.add_argument("--disable_tqdm", action="store_true", help="no progress bar")
    t.add_argument(
        "--compilation_cache",
        action="store_true",
        help="persist compiled XLA programs in --cache_dir/jax_cache (restarts and resumes skip compiling)",
    )
    t.add_argument(
        "--cache_dir",
        default=str(Path.home() / ".cache" / "distil_whisper_jax"),
        help="where --compilation_cache keeps compiled programs",
    )
    t.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() (multi-host; on TPU pods it needs no arguments)",
    )
    t.add_argument("--coordinator_address", default=None, help="with --distributed: host:port of process 0")
    t.add_argument("--num_processes", type=int, default=None, help="with --distributed")
    t.add_argument("--process_id", type=int, default=None, help="with --distributed")
    return p


# ----------------------------------------------------------------------------------------------
# Setup helpers


def check_compatible(teacher, student, freeze_encoder: bool, mse_weight: float) -> None:
    """Teacher and student must share the vocabulary and features (and d_model when the encoder output or
    hidden states are shared); ``ValueError`` naming both checkpoints otherwise."""
    t, s = teacher.config, student.config
    what = f"teacher {teacher.source} and student {student.source}"
    if t.vocab_size != s.vocab_size:
        raise ValueError(
            f"{what} have different vocabularies ({t.vocab_size} vs {s.vocab_size} tokens); "
            "distillation needs the same one"
        )
    if t.num_mel_bins != s.num_mel_bins:
        raise ValueError(f"{what} take different features ({t.num_mel_bins} vs {s.num_mel_bins} mel bins)")
    if t.d_model != s.d_model and (freeze_encoder or mse_weight > 0):
        raise ValueError(
            f"{what} have different widths (d_model {t.d_model} vs {s.d_model}): "
            f"{'--freeze_encoder' if freeze_encoder else '--mse_weight'} needs equal d_model"
        )


class EncoderCache:
    """Frozen-encoder outputs per example key, first come first kept, up to ``max_bytes``."""

    def __init__(self, max_bytes: float):
        self.max_bytes, self.bytes, self.store = max_bytes, 0, {}
        self.hits = self.misses = 0

    def get(self, key) -> np.ndarray | None:
        out = self.store.get(key)
        self.hits += out is not None
        self.misses += out is None
        return out

    def put(self, key, value: np.ndarray) -> None:
        if key not in self.store and self.bytes + value.nbytes <= self.max_bytes:
            self.store[key] = value
            self.bytes += value.nbytes


@dataclasses.dataclass
class Logger:
    """TensorBoard (tensorboardX, no TensorFlow needed) + JSONL, on process 0."""

    out: Path
    enabled: bool

    def __post_init__(self):
        self.writer = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "runs"))

    def truncate_after(self, step: int) -> None:
        """Drop JSONL entries beyond ``step`` (written after the checkpoint a resumed run restarts from)."""
        f = self.out / "metrics.jsonl"
        if self.enabled and f.is_file():
            from .utils import atomic_write

            keep = [ln for ln in f.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
            with atomic_write(f, "w") as fh:
                fh.write("".join(ln + "\n" for ln in keep))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


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
    from .utils import atomic_write

    with atomic_write(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Evaluation


def evaluate_wer(params: Any, config, pre, eval_set, specials, args, devices) -> tuple[float, list[str]]:
    """Greedy transcripts of an eval set and their WER (EnglishTextNormalizer for English)."""
    from .evaluate import wer
    from .generate import generate, strip
    from .tokenizer import prompt_ids
    from .transcribe import generation_options

    prompt = prompt_ids(specials, args.language, args.task, timestamps=False)
    opts = generation_options(
        pre, specials, max_new_tokens=args.generation_max_length or args.max_label_length, prompt_len=len(prompt)
    )
    n_dev = len(devices)  # batches: a multiple of the device count, no bigger than the set needs
    bs = min(args.per_device_eval_batch_size, -(-len(eval_set.texts) // n_dev)) * n_dev
    texts = []
    for i in range(0, len(eval_set.texts), bs):
        from .parallel import pad_batch

        mel, n = pad_batch(eval_set.features[i : i + bs], bs)
        ids = strip(generate(params, mel, prompt, config, opts, COMPUTE_DTYPES[args.dtype], devices)[:n], specials.eot)
        texts += [pre.tokenizer.decode(t, skip_special_tokens=True).strip() for t in ids]
    return wer(eval_set.texts, texts, language=args.language or "en"), texts


# ----------------------------------------------------------------------------------------------
# The run


# bf16 dense peak per device (chip), TFLOP/s, by jax device_kind prefix.
PEAK_TFLOPS = {
    "TPU v3": 123.0,
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v5": 459.0,
    "TPU v6 lite": 918.0,
    "TPU v6e": 918.0,
}


def known_peak_tflops(device_kind: str) -> float | None:
    """Peak TFLOP/s for a known accelerator kind (longest matching prefix), else None (CPU/GPU: pass
    ``--device_peak_tflops``)."""
    hits = [k for k in PEAK_TFLOPS if device_kind.startswith(k)]
    return PEAK_TFLOPS[max(hits, key=len)] if hits else None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .utils import setup_logging

    setup_logging(timestamps=True)
    try:
        return train(args)
    except ValueError as e:  # bad input: flags, datasets, checkpoints (CheckpointError is a ValueError)
        print(f"error: {e}", file=sys.stderr)
        return 2


def train(args: argparse.Namespace) -> int:
    import jax

    from . import checkpoint, parallel, train_data
    from . import train as core
    from .convert import load_pretrained
    from .tokenizer import save_tokenizer, special_tokens

    _check_flags(args)
    if args.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", str(Path(args.cache_dir) / "jax_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    if args.distributed:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts; TPUs use ICI/DCN
        jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    out = Path(args.output_dir)
    is_main = jax.process_index() == 0
    ckpt_root = out / checkpoint.CHECKPOINTS
    if args.overwrite_output_dir and ckpt_root.exists() and is_main:
        import shutil

        shutil.rmtree(ckpt_root)
        (out / "metrics.jsonl").unlink(missing_ok=True)

    # 1. Teacher and student.
    teacher = load_pretrained(args.teacher_model_name_or_path)
    student = load_pretrained(args.model_name_or_path)
    check_compatible(teacher, student, args.freeze_encoder, args.mse_weight)
    tok = student.tokenizer
    specials = special_tokens(tok)
    # Share one encoder pass only when the weights are the teacher's (not merely the same shapes).
    share_encoder = (
        args.freeze_encoder
        and core.can_share_encoder(student.config, teacher.config)
        and core.encoders_identical(student.params, teacher.params)
    )
    if args.freeze_encoder and not share_encoder:
        log.info("--freeze_encoder: the student's encoder differs from the teacher's, so each runs its own")
    if args.cache_encoder_outputs and not share_encoder:
        raise ValueError(
            "--cache_encoder_outputs needs --freeze_encoder and a student whose encoder is the "
            "teacher's (the cached output must be what both decoders see)"
        )

    # 2. Data: every process walks the same stream; it featurises only its share of each global batch.
    n_dev, n_proc = jax.device_count(), jax.process_count()
    global_batch = args.per_device_train_batch_size * n_dev * args.gradient_accumulation_steps
    label_opts = train_data.LabelOptions(
        args.max_label_length,
        args.timestamp_probability,
        args.condition_on_prev_probability,
        args.truncate_long_labels,
        args.language,
        args.task,
    )
    data_opts = train_data.DataOptions(
        audio_column=args.audio_column_name,
        text_column=args.train_text_column_name,
        min_duration=args.min_duration_in_seconds,
        max_duration=args.max_duration_in_seconds,
        wer_threshold=args.wer_threshold,
        drop_without_ground_truth=args.drop_rows_without_ground_truth,
        labels=label_opts,
    )
    names = train_data.split_plus(args.train_dataset_name)
    sources = [train_data.open_source(n, args.train_split_name) for n in names]
    weights = train_data.weights_from_flag(args.train_dataset_samples, len(names))
    eval_sets = [
        train_data.load_eval_set(
            n,
            args.eval_split_name,
            args.audio_column_name,
            args.eval_text_column_name,
            student.config.num_mel_bins,
            args.max_eval_samples,
        )
        for n in train_data.split_plus(args.eval_dataset_name)
    ]
    log.info(
        "data: %s (%s rows), global batch %d = %d per device × %d devices × %d accumulation, %d processes; eval: %s",
        names,
        [s.num_rows for s in sources],
        global_batch,
        args.per_device_train_batch_size,
        n_dev,
        args.gradient_accumulation_steps,
        n_proc,
        [(e.name, len(e.texts)) for e in eval_sets],
    )

    # 3. Optimizer and train state.
    schedule = core.make_schedule(args.lr_scheduler_type, args.learning_rate, args.warmup_steps, args.max_steps)
    tx = core.make_optimizer(
        student.params,
        schedule=schedule,
        weight_decay=args.weight_decay,
        adam_beta1=args.adam_beta1,
        adam_beta2=args.adam_beta2,
        adam_epsilon=args.adam_epsilon,
        max_grad_norm=args.max_grad_norm,
        freeze_encoder=args.freeze_encoder,
    )
    mesh = core.data_mesh()  # every device of every process
    # One compiled program builds the whole state (eager per-leaf ops would compile once per leaf shape).
    state = jax.jit(lambda p: core.create_train_state(p, tx, args.seed), out_shardings=parallel.replicated(mesh))(
        parallel.replicate_global(student.params, mesh)
    )
    teacher_params = parallel.replicate_global(teacher.params, mesh)
    ce_weight = args.ce_weight if args.ce_weight is not None else default_ce_weight(args.kl_weight)
    dtype = COMPUTE_DTYPES[args.dtype]
    step_fn = core.make_train_step(
        student.config,
        teacher.config,
        tx,
        kl_weight=args.kl_weight,
        ce_weight=ce_weight,
        temperature=args.temperature,
        mse_weight=args.mse_weight,
        freeze_encoder=args.freeze_encoder,
        share_encoder=share_encoder,
        dtype=dtype,
        remat=args.gradient_checkpointing,
        grad_accum_steps=args.gradient_accumulation_steps,
        mesh=mesh,
    )

    # 4. Resume: explicit checkpoint, else the latest in output_dir (damaged ones fall back to older).
    if is_main:
        save_tokenizer(tok, out / checkpoint.TOKENIZER)
        _write_generation_config(student, out / checkpoint.TOKENIZER / "generation_config.json")
    run_meta = {
        "config": student.config.to_dict(),
        "teacher": teacher.source,
        "student": student.source,
        "global_batch": global_batch,
        "args": vars(args),
    }
    manager = checkpoint.make_manager(ckpt_root, args.save_total_limit)
    stream_state, start = None, 0
    resume_root = Path(args.resume_from_checkpoint) if args.resume_from_checkpoint else None
    if resume_root is not None:
        src_root = checkpoint.checkpoint_root(resume_root)
        step = int(resume_root.name) if resume_root.name.isdigit() else None
        src_manager = (
            manager
            if src_root.absolute() == ckpt_root.absolute()
            else checkpoint.make_manager(src_root, async_save=False)
        )
        found = checkpoint.restore(src_manager, state, step=step, fallback=False)
        if found is None:
            raise ValueError(f"--resume_from_checkpoint {resume_root}: holds no finished checkpoint")
    else:
        found = checkpoint.restore(manager, state)
    if found is not None:
        start, host_state, data_dict, meta = found
        state = parallel.replicate_global(host_state, mesh)
        _check_resume(meta, run_meta)
        stream_state = train_data.StreamState.from_dict(data_dict)
        log.info(
            "resumed at step %d (data position: %d batches, %d rows drawn)",
            start,
            stream_state.batches,
            stream_state.draws,
        )
    stream = train_data.TrainStream(sources, weights, tok, specials, data_opts, args.seed, stream_state)
    logger = Logger(out, is_main)
    logger.truncate_after(start)

    # 5. The loop.
    stop = {"signal": None}
    old_handler = signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(signal=signum))
    cache = EncoderCache(args.cache_encoder_outputs_max_gb * 2**30) if args.cache_encoder_outputs else None
    local = train_data.process_slice(global_batch, jax.process_index(), n_proc)
    local_devices = jax.local_devices()
    last_eval: dict[str, dict] = meta.get("eval", {}) if found is not None else {}
    teacher_wer = {k: v["teacher"] for k, v in last_eval.items()}
    from tqdm.auto import tqdm

    bar = tqdm(
        total=args.max_steps, initial=start, unit="step", disable=args.disable_tqdm or not is_main, desc="distil"
    )
    # Model FLOPs per step (padded label width; backward = 2× forward of what is trained) for TFLOP/s and MFU.
    step_flops = core.flops_per_step(
        student.config,
        teacher.config,
        global_batch,
        args.max_label_length - 1,
        kl_weight=args.kl_weight,
        mse_weight=args.mse_weight,
        freeze_encoder=args.freeze_encoder,
        share_encoder=share_encoder,
        cached_encoder=cache is not None,
    )["total"]
    peak = args.device_peak_tflops or known_peak_tflops(jax.devices()[0].device_kind)
    t_log, n_log = time.perf_counter(), 0
    exit_code, step = 0, start
    try:
        if eval_sets and start == 0 and args.eval_steps:  # the untrained student: the baseline of the curves
            _run_eval(state, teacher, student, eval_sets, specials, args, local_devices, teacher_wer, logger, 0)
        while step < args.max_steps:
            examples = stream.next_batch(global_batch)
            batch = _make_batch(
                examples[local], stream, data_opts, student.config, specials, args, cache, teacher, dtype, local_devices
            )
            state, metrics = step_fn(state, teacher_params, batch)
            step += 1
            loss = float(metrics["loss"])
            if not math.isfinite(loss):
                rows = [f"{sources[e.source].name} row {e.key[1]}" for e in examples]
                last = checkpoint.checkpoint_steps(ckpt_root)
                log.error(
                    "non-finite loss (%s) at step %d, batch %d: examples %s; stopping. Last good checkpoint: %s",
                    loss,
                    step,
                    stream.state.batches,
                    rows[:8] + (["…"] if len(rows) > 8 else []),
                    ckpt_root / str(last[-1]) if last else "none",
                )
                exit_code = EXIT_NAN
                break
            bar.update(1)
            n_log += 1
            if step % args.logging_steps == 0 or step == args.max_steps:
                dt = time.perf_counter() - t_log
                scalars = {f"train/{k}": float(v) for k, v in metrics.items()}
                scalars.update(
                    {
                        "train/steps_per_s": n_log / dt,
                        "train/samples_per_s": n_log * global_batch / dt,
                        "train/epoch": float(max(stream.state.epochs)),
                        "train/model_tflops_per_s": step_flops * n_log / dt / 1e12,
                    }
                )
                if peak:
                    scalars["train/mfu"] = scalars["train/model_tflops_per_s"] / (peak * n_dev)
                if cache is not None:
                    scalars["train/encoder_cache_hit_rate"] = cache.hits / max(cache.hits + cache.misses, 1)
                logger.log(step, scalars)
                log.info(
                    "step %d: loss %.4f ce %.4f kl %.4f lr %.2e grad_norm %.3f, %.2f steps/s",
                    step,
                    loss,
                    scalars.get("train/ce", float("nan")),
                    scalars.get("train/kl", float("nan")),
                    scalars.get("train/lr", float("nan")),
                    scalars.get("train/grad_norm", float("nan")),
                    n_log / dt,
                )
                t_log, n_log = time.perf_counter(), 0
            eval_wer = None
            if eval_sets and ((args.eval_steps and step % args.eval_steps == 0) or step == args.max_steps):
                last_eval = _run_eval(
                    state, teacher, student, eval_sets, specials, args, local_devices, teacher_wer, logger, step
                )
                eval_wer = float(np.mean([v["student"] for v in last_eval.values()]))
            if step % args.save_steps == 0 or step == args.max_steps or eval_wer is not None or stop["signal"]:
                checkpoint.save(manager, step, state, stream.state.to_dict(), {**run_meta, "eval": last_eval}, eval_wer)
            if stop["signal"]:
                log.warning("SIGTERM: saved a checkpoint at step %d, exiting", step)
                exit_code = EXIT_PREEMPTED
                break
        manager.wait_until_finished()
    except Exception as e:
        if _is_save_error(e):
            good = checkpoint.checkpoint_steps(ckpt_root)
            print(
                f"error: saving the checkpoint failed ({type(e).__name__}: {e}); the previous checkpoint "
                f"{ckpt_root / str(good[-1]) if good else '(none)'} is intact",
                file=sys.stderr,
            )
            return EXIT_SAVE_FAILED
        raise
    finally:
        bar.close()
        signal.signal(signal.SIGTERM, old_handler)
        logger.close()
        manager.close()
    if exit_code:
        return exit_code

    # 6. Final student: transformers directory + provenance; curves.
    if is_main:
        _write_final(out, student, teacher, checkpoint.host_copy(state.params), step, names, last_eval)
        if (out / "metrics.jsonl").is_file():
            plot_curves(out / "metrics.jsonl", out / "training_curves.png")
        log.info(
            "done: %d steps; student at %s%s",
            step,
            out / "hf",
            f", encoder cache {cache.bytes / 2**20:.0f} MiB, hit rate "
            f"{cache.hits / max(cache.hits + cache.misses, 1):.2f}"
            if cache
            else "",
        )
    return 0


def _check_flags(args: argparse.Namespace) -> None:
    positive = [
        "max_steps",
        "per_device_train_batch_size",
        "per_device_eval_batch_size",
        "gradient_accumulation_steps",
        "logging_steps",
        "save_steps",
        "max_label_length",
    ]
    for name in (
        positive
        + (["eval_steps"] if args.eval_steps is not None else [])
        + (["save_total_limit"] if args.save_total_limit is not None else [])
    ):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be ≥ 1, got {getattr(args, name)}")
    for name in ("timestamp_probability", "condition_on_prev_probability"):
        if not 0 <= getattr(args, name) <= 1:
            raise ValueError(f"--{name} must be in [0, 1], got {getattr(args, name)}")
    if args.temperature <= 0:
        raise ValueError(f"--temperature must be > 0, got {args.temperature}")


def _check_resume(saved: dict, now: dict) -> None:
    if saved.get("config") != now["config"]:
        raise ValueError(
            "the checkpoint's student config differs from --model_name_or_path's "
            f"({saved.get('config')} vs {now['config']}); use another --output_dir"
        )
    if saved.get("global_batch") != now["global_batch"]:
        log.warning(
            "global batch changed from %s to %s since the checkpoint: the run will not match an uninterrupted one",
            saved.get("global_batch"),
            now["global_batch"],
        )


def _is_save_error(e: Exception) -> bool:
    import errno

    text = f"{type(e).__name__}: {e}"
    return (
        (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS))
        or "No space left" in text
        or "RESOURCE_EXHAUSTED" in text
        or "ENOSPC" in text
    )


def _make_batch(examples, stream, opts, config, specials, args, cache, teacher, dtype, devices) -> dict:
    """Contract-C batch for this process's examples: labels, and log-mel features or (cached) encoder outputs."""
    from . import train_data

    batch = train_data.collate_labels(examples, args.max_label_length - 1, specials)
    if cache is None:
        batch["input_features"] = train_data.features(examples, stream.sources, opts, config.num_mel_bins)
        return batch
    from . import train as core
    from .parallel import data_mesh, pad_batch

    outs = [cache.get(e.key) for e in examples]
    missing = [i for i, o in enumerate(outs) if o is None]
    if missing:
        feats = train_data.features([examples[i] for i in missing], stream.sources, opts, config.num_mel_bins)
        feats, n = pad_batch(feats, len(examples))  # one static shape → one compile
        enc = np.asarray(
            core.encoder_outputs(teacher.config, _teacher_local(teacher, devices), feats, dtype, data_mesh(devices))
        )[:n].astype(np.float32)
        for j, i in enumerate(missing):
            outs[i] = enc[j]
            cache.put(examples[i].key, enc[j])
    batch["encoder_outputs"] = np.stack(outs)
    return batch


_TEACHER_LOCAL: dict = {}


def _teacher_local(teacher, devices):
    """The teacher replicated over this process's devices (for the encoder-output cache), made once."""
    from .parallel import data_mesh, replicate

    key = (id(teacher), tuple(devices))
    if key not in _TEACHER_LOCAL:
        _TEACHER_LOCAL.clear()
        _TEACHER_LOCAL[key] = replicate(teacher.params, data_mesh(devices))
    return _TEACHER_LOCAL[key]


def _run_eval(state, teacher, student, eval_sets, specials, args, devices, teacher_wer, logger, step) -> dict:
    from .checkpoint import host_copy
    from .parallel import data_mesh, replicate

    params = replicate(host_copy(state.params), data_mesh(devices))
    results = {}
    for es in eval_sets:
        s_wer, _ = evaluate_wer(params, student.config, student, es, specials, args, devices)
        if es.name not in teacher_wer:  # once: the teacher does not change
            teacher_wer[es.name], _ = evaluate_wer(
                _teacher_local(teacher, devices), teacher.config, teacher, es, specials, args, devices
            )
        results[es.name] = {"student": s_wer, "teacher": teacher_wer[es.name]}
        logger.log(
            step, {f"eval/{_tag(es.name)}/wer": s_wer, f"eval/{_tag(es.name)}/teacher_wer": teacher_wer[es.name]}
        )
        log.info(
            "eval step %d on %s (%d clips): student WER %.2f%%, teacher %.2f%%",
            step,
            es.name,
            len(es.texts),
            s_wer,
            teacher_wer[es.name],
        )
    return results


def _tag(name: str) -> str:
    return Path(name.rstrip("/")).stem or name


def _write_generation_config(student, path: Path) -> None:
    """The student's generation_config.json (kept from its directory, else built from its defaults)."""
    from .utils import atomic_write

    src = Path(student.source) / "generation_config.json"
    if src.is_file():
        gen = json.loads(src.read_text())
    else:
        from .create_student import student_generation_config

        gen = student_generation_config(student, student.config, list(range(student.config.decoder_layers)))
    with atomic_write(path, "w") as f:
        json.dump(gen, f, indent=2)


def _write_final(out: Path, student, teacher, params, step: int, names: list[str], last_eval: dict) -> None:
    from .convert.hf import write_hf_dir
    from .utils import atomic_write

    hf = out / "hf"
    gen = json.loads((out / "tokenizer" / "generation_config.json").read_text())
    write_hf_dir(hf, student.config, params, generation_config=gen, tokenizer=student.tokenizer)
    info_src = Path(student.source) / "distil_info.json"
    info = json.loads(info_src.read_text()) if info_src.is_file() else {}
    info.setdefault("teacher", teacher.source)
    info.setdefault("teacher_decoder_layers", teacher.config.decoder_layers)
    info.update({"train_steps": step, "train_datasets": names, "eval_wer": {_tag(k): v for k, v in last_eval.items()}})
    with atomic_write(hf / "distil_info.json", "w") as f:
        json.dump(info, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
