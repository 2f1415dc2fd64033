"""Distillation training step: the loss over teacher and student, gradient accumulation, data parallelism, and the
eval step. What the loss weighs and how a step runs are one frozen :class:`StepOptions`. The optimiser and schedules
are in ``optim.py``, FLOP counts in ``flops.py``; this module re-exports both so that callers import one module.

Design (where it differs from the original distil-whisper Flax trainer):

* **Gradient accumulation inside the step.** A ``lax.scan`` over micro-batches sums gradients, then one optimiser
  update: updates are the unit of time (the original wrapped AdamW in ``optax.MultiSteps`` and stretched the
  schedule by k, so warmup ran k× too long and the LR never decayed to 0).
* **Exact global token mean.** Each micro-batch/shard loss is divided by the token count of the whole global batch
  (known up front from the labels), so loss and gradients are the token mean of the global batch regardless of
  device count, host count or accumulation.
* **Data parallel = jit over a 1-D mesh** of all devices of all processes (pmap semantics, gradients reduced over
  every device by XLA). Multi-host: each process passes only its local rows; the global batch is assembled with
  ``jax.make_array_from_process_local_data``.
* **Shared encoder pass** only when the student's encoder is frozen AND its architecture equals the teacher's AND
  the caller says the weights are the teacher's (``share_encoder``): the encoder runs once, under
  ``stop_gradient``, for both decoders (the original decided from ``freeze_encoder`` and ``d_model`` alone, so a
  student with fewer encoder layers silently used the teacher's).
* **Hidden-state loss from the model's own decoder pass** (``Whisper.decode(output_hidden_states=True)``), so the
  MSE term sees exactly the activations the logits come from.
* **Precision**: ``dtype`` (bf16 on TPU) is the compute dtype of matmuls; softmax, LayerNorm and the loss run in
  fp32; parameters, gradients and optimiser state stay fp32.
* **Dropout RNG**: ``fold_in(fold_in(state.rng, step), micro_batch)``. Threefry is partitionable
  (``jax_threefry_partitionable``), so each example's mask depends only on its global position, not on the device
  that holds it: runs with dropout are also device-count invariant.

Usage::

    config, params, _ = student.make_student(teacher_config, teacher_params, 2)
    tx = make_optimizer(params, schedule=make_schedule("linear", 1e-4, 500, 80_000), freeze_encoder=True)
    options = StepOptions(
        freeze_encoder=True, share_encoder=encoders_identical(params, teacher_params), grad_accum_steps=k
    )
    step = make_train_step(config, teacher_config, options, tx)
    teacher = parallel.replicate(teacher_params, step.mesh)  # once
    state = create_train_state(params, tx, seed)
    for batch in batches:  # numpy rows of this process: input_features, decoder_input_ids, labels
        state, metrics = step(state, teacher, batch)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from distil_whisper_jax.core import losses
from distil_whisper_jax.core.flops import (
    decoder_flops,
    decoder_train_flops,
    encoder_flops,
    encoder_train_flops,
    flops_per_step,
)
from distil_whisper_jax.core.model import ATTENTION_QUERY_CHUNK, Whisper, WhisperConfig
from distil_whisper_jax.core.optim import (
    SCHEDULES,
    TrainState,
    create_train_state,
    current_lr,
    decay_mask,
    make_optimizer,
    make_schedule,
    param_labels,
)
from distil_whisper_jax.core.parallel import DATA_AXIS, attention_query_chunk, data_mesh

__all__ = [
    "BATCH_KEYS",
    "SCHEDULES",
    "StepOptions",
    "TrainState",
    "can_share_encoder",
    "create_train_state",
    "current_lr",
    "data_mesh",
    "decay_mask",
    "decoder_flops",
    "decoder_train_flops",
    "encoder_flops",
    "encoder_outputs",
    "encoder_train_flops",
    "encoders_identical",
    "flops_per_step",
    "global_batch",
    "make_eval_step",
    "make_loss_fn",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "param_labels",
]

Array = jax.Array
Batch = Mapping[str, Any]
BATCH_KEYS = ("input_features", "encoder_outputs", "decoder_input_ids", "labels")

# ----------------------------------------------------------------------------------------------
# Options


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """What the distillation loss weighs and how a step computes it: every setting of the loss, train and eval
    steps that is not a model config, the optimiser or the device mesh. Frozen (and hashable), like
    ``decode.generate.GenerationOptions``; the defaults are the original distil-whisper recipe's."""

    # Weight of the distillation term T²·KL(teacher_T ‖ student_T). 0 trains on the labels alone (the teacher's
    # decoder then runs only for the MSE term). Default 1.0.
    kl_weight: float = 1.0
    # Weight of the cross-entropy against the (pseudo-)labels. Default None: 0.8 alongside a KL term, 1.0 without
    # (the original's rule, ``losses.default_ce_weight``).
    ce_weight: float | None = None
    # Knowledge-distillation temperature T: the KL term compares softmax(logits / T) of teacher and student and is
    # scaled by T². Not the sampling temperature of transcription. Default 2.0; the eval step always uses 1.
    kd_temperature: float = 2.0
    # Weight of the hidden-state MSE between each student decoder layer and the teacher layer it is mapped to
    # (``losses.mse_layer_map``); needs equal d_model. Default 0.0 (off).
    mse_weight: float = 0.0
    # The student's encoder is not trained: its output is taken under stop_gradient and the step leaves its
    # parameters untouched (build the optimiser with the same flag). Default False.
    freeze_encoder: bool = False
    # The caller asserts that the student's frozen encoder weights are the teacher's (see ``encoders_identical``):
    # one encoder pass feeds both decoders, and a batch may hold ``encoder_outputs`` instead of
    # ``input_features``. Needs ``freeze_encoder`` and equal encoder architectures. Default False.
    share_encoder: bool = False
    # Compute dtype of the matmuls (bfloat16 on TPU); parameters, gradients, softmax, LayerNorm and the loss stay
    # float32. Default float32.
    dtype: Any = jnp.float32
    # Rematerialise the student's layers in the backward pass: less activation memory for more compute.
    # Default False (the eval step, which has no backward pass, never does).
    remat: bool = False
    # Layers per iteration of the scan over the layer stack (True: all of them, no loop). Default 1.
    unroll: int | bool = 1
    # Micro-batches per optimiser update: the train step splits its batch into this many and sums their
    # gradients in one scan, so one update sees the whole batch. Default 1.
    grad_accum_steps: int = 1

    def __post_init__(self):
        if self.grad_accum_steps < 1:
            raise ValueError(f"gradient_accumulation_steps must be ≥ 1, got {self.grad_accum_steps}")


# ----------------------------------------------------------------------------------------------
# Sharing the encoder pass


def can_share_encoder(student_config: WhisperConfig, teacher_config: WhisperConfig) -> bool:
    """Whether the two encoders have the same architecture (a necessary condition for sharing)."""
    keys = (
        "num_mel_bins",
        "d_model",
        "encoder_layers",
        "encoder_attention_heads",
        "encoder_ffn_dim",
        "max_source_positions",
    )
    return all(getattr(student_config, k) == getattr(teacher_config, k) for k in keys)


def encoders_identical(student_params: Any, teacher_params: Any) -> bool:
    """Bitwise equality of the two encoders' weights (host-side check for ``share_encoder``)."""
    s, t = student_params["encoder"], teacher_params["encoder"]
    if jax.tree.structure(s) != jax.tree.structure(t):
        return False
    return all(
        a.shape == b.shape and np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(t))
    )


# ----------------------------------------------------------------------------------------------
# The loss


def _has_dropout(c: WhisperConfig) -> bool:
    return bool(c.dropout or c.attention_dropout or c.activation_dropout)


def _check_pair(student_config: WhisperConfig, teacher_config: WhisperConfig, options: StepOptions) -> None:
    """Refuse a teacher/student combination the loss cannot honour."""
    if student_config.vocab_size != teacher_config.vocab_size:
        raise ValueError(
            f"student vocab_size {student_config.vocab_size} != teacher vocab_size "
            f"{teacher_config.vocab_size}: KL needs one vocabulary"
        )
    if options.share_encoder:
        if student_config.d_model != teacher_config.d_model:
            raise ValueError("share_encoder needs equal d_model")
        if not options.freeze_encoder:
            raise ValueError(
                "share_encoder needs freeze_encoder: a trained student encoder diverges from the teacher's"
            )
        if not can_share_encoder(student_config, teacher_config):
            raise ValueError(
                "share_encoder needs the student's encoder architecture to equal the teacher's "
                f"(student {student_config.encoder_layers} layers, teacher {teacher_config.encoder_layers})"
            )
    if options.mse_weight and student_config.d_model != teacher_config.d_model:
        raise ValueError("mse_weight > 0 needs equal d_model")
    if student_config.max_source_positions > teacher_config.max_source_positions:
        raise ValueError(
            f"the student's encoder takes more audio than the teacher's ({student_config.input_seconds:g} s)"
        )


def make_loss_fn(
    student_config: WhisperConfig,
    teacher_config: WhisperConfig,
    options: StepOptions,
    *,
    train: bool = True,
    attention_query_chunk: int | None = ATTENTION_QUERY_CHUNK,
) -> Callable:
    """``loss_fn(params, teacher_params, batch, rng, num_tokens) -> (loss, metrics)`` for one (micro-)batch.

    The loss is the weighted sum of the terms over the batch's label tokens divided by ``num_tokens``: pass the
    token count of the whole global batch, so that the losses of its shards and micro-batches add up to its token
    mean. ``train=False`` turns dropout off. ``attention_query_chunk`` is the models' attention tiling (the step
    builders pass their mesh's backend's, see ``parallel.attention_query_chunk``).

    Raises ``ValueError`` when the teacher/student pair cannot honour ``options``.
    """
    _check_pair(student_config, teacher_config, options)
    student = Whisper(
        student_config, options.dtype, options.remat, options.unroll, attention_query_chunk=attention_query_chunk
    )
    teacher = Whisper(teacher_config, options.dtype, False, options.unroll, attention_query_chunk=attention_query_chunk)
    dropout = train and _has_dropout(student_config)
    need_teacher = bool(options.kl_weight or options.mse_weight)  # the teacher's decoder pass
    hidden = bool(options.mse_weight)  # both decoders' hidden states

    def encode(params, teacher_params, batch, rng):
        """(student, teacher) encoder outputs; the teacher's is None when no teacher term needs it."""
        if "encoder_outputs" in batch:
            if not options.share_encoder:
                raise ValueError("batch['encoder_outputs'] is only accepted with share_encoder=True")
            enc = jax.lax.stop_gradient(batch["encoder_outputs"])
            return enc, enc
        tv = {"params": teacher_params}
        if options.share_encoder:
            enc = jax.lax.stop_gradient(teacher.apply(tv, batch["input_features"], method=Whisper.encode))
            return enc, enc
        enc_t = teacher.apply(tv, batch["input_features"], method=Whisper.encode) if need_teacher else None
        deterministic = not (dropout and not options.freeze_encoder)
        feats = batch["input_features"][..., : student_config.n_frames]  # a 15 s student: the clip is in the 1st half
        enc_s = student.apply({"params": params}, feats, deterministic, method=Whisper.encode, rngs={"dropout": rng})
        return (jax.lax.stop_gradient(enc_s) if options.freeze_encoder else enc_s), enc_t

    def loss_fn(params, teacher_params, batch, rng, num_tokens):
        tokens = batch["decoder_input_ids"]
        r_enc, r_dec = jax.random.split(rng)
        enc_s, enc_t = encode(params, teacher_params, batch, r_enc)
        # Whisper.decode gives (logits, cache) and, with output_hidden_states, the stacked hidden states.
        s_out = student.apply(
            {"params": params},
            tokens,
            enc_s,
            deterministic=not dropout,
            output_hidden_states=hidden,
            method=Whisper.decode,
            rngs={"dropout": r_dec},
        )
        t_out = (None, None, None)
        if need_teacher:
            t_out = teacher.apply(
                {"params": teacher_params}, tokens, enc_t, output_hidden_states=hidden, method=Whisper.decode
            )
            t_out = jax.lax.stop_gradient(t_out)
        return losses.distillation_loss(
            s_out[0],
            t_out[0],
            batch["labels"],
            kd_temperature=options.kd_temperature,
            kl_weight=options.kl_weight,
            ce_weight=options.ce_weight,
            mse_weight=options.mse_weight,
            student_hidden=s_out[2] if hidden else None,
            teacher_hidden=t_out[2] if hidden else None,
            num_tokens=num_tokens,
        )

    return loss_fn


# ----------------------------------------------------------------------------------------------
# Steps


def global_batch(batch: Batch, mesh: Mesh) -> dict:
    """Process-local numpy rows → global arrays split over the mesh along axis 0.

    Keys other than ``BATCH_KEYS`` are dropped; jax Arrays are passed through unchanged.
    """
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    out = {}
    for key in BATCH_KEYS:
        if key not in batch:
            continue
        x = batch[key]
        out[key] = x if isinstance(x, jax.Array) else jax.make_array_from_process_local_data(sharding, np.asarray(x))
    return out


def _check_batch(batch: Batch, mesh: Mesh, grad_accum_steps: int) -> None:
    for key in ("decoder_input_ids", "labels"):
        if key not in batch:
            raise KeyError(
                f"batch is missing {key!r} (needs decoder_input_ids, labels and input_features or encoder_outputs)"
            )
    if "input_features" not in batch and "encoder_outputs" not in batch:
        raise KeyError("batch needs 'input_features' or 'encoder_outputs'")
    b, n = batch["labels"].shape[0], len(mesh.local_devices)
    if b % (n * grad_accum_steps):
        raise ValueError(
            f"batch of {b} rows (this process) must be a multiple of local devices × "
            f"gradient_accumulation_steps = {n} × {grad_accum_steps}"
        )


def _split_micro(x: Array, k: int) -> Array:
    """[B, ...] → [k, B/k, ...] with micro-batch i = rows i, i+k, i+2k, …

    A device-local reshape when the batch is split over devices in contiguous blocks whose size is a multiple
    of k.
    """
    return jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)


def _accumulated_grads(grad_fn: Callable, params, teacher_params, batch, rng, denom, k: int):
    """(gradients, metrics) of the whole batch, as the sum over ``k`` micro-batches (one scan)."""
    if k == 1:
        (_, metrics), grads = grad_fn(params, teacher_params, batch, rng, denom)
        return grads, metrics
    micro = jax.tree.map(lambda x: _split_micro(x, k), batch)

    def body(carry, inp):
        i, mb = inp
        (_, m), g = grad_fn(params, teacher_params, mb, jax.random.fold_in(rng, i), denom)
        return jax.tree.map(jnp.add, carry, (g, m)), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    m0 = {
        key: jnp.zeros((), jnp.int32 if key == "num_tokens" else jnp.float32)
        for key in ("loss", "ce", "kl", "mse", "num_tokens")
    }
    (grads, metrics), _ = jax.lax.scan(body, (zeros, m0), (jnp.arange(k), micro))
    return grads, metrics


def _apply_update(tx: optax.GradientTransformation, state: TrainState, grads, freeze_encoder: bool):
    """(new state, trainable-gradient norm, LR of this update) after one optimiser update."""
    labels_tree = param_labels(state.params, freeze_encoder)
    trainable = jax.tree.map(lambda lab, g: g if lab == "trainable" else None, labels_tree, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    # Frozen leaves are returned untouched (no `p + 0` over the whole encoder).
    new_params = jax.tree.map(
        lambda lab, new, old: old if lab == "frozen" else new, labels_tree, new_params, state.params
    )
    new_state = state.replace(step=state.step + 1, params=new_params, opt_state=opt_state)
    return new_state, optax.global_norm(trainable), current_lr(opt_state)


def make_train_step(
    student_config: WhisperConfig,
    teacher_config: WhisperConfig,
    options: StepOptions,
    tx: optax.GradientTransformation,
    *,
    mesh: Mesh | None = None,
    donate: bool = True,
    compiler_options: dict | None = None,
) -> Callable:
    """Jitted ``step(state, teacher_params, batch) -> (state, metrics)``: one optimiser update from one global
    batch (numpy rows of this process, or global arrays from :func:`global_batch`).

    The batch is split over ``mesh`` (default: all devices of all processes) and, inside the step, into
    ``options.grad_accum_steps`` micro-batches; loss and gradients are the token mean over the whole global batch,
    so the result does not depend on the device count or on accumulation. With ``options.share_encoder`` the batch
    may hold teacher ``encoder_outputs`` [B, 1500, d_model] (see :func:`encoder_outputs`) instead of
    ``input_features``.

    Metrics (replicated scalars): loss, ce, kl, mse, grad_norm (of the trainable gradients, before clipping), lr
    (of this update) and num_tokens (global). The state argument is donated (its buffers are reused) unless
    ``donate=False``. ``compiler_options`` go to ``jax.jit`` (e.g. ``{"xla_backend_optimization_level": 0}``
    halves XLA:CPU compile time for tests).
    """
    k = options.grad_accum_steps
    loss_fn = make_loss_fn(student_config, teacher_config, options, attention_query_chunk=_mesh_attention_chunk(mesh))
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    mesh = data_mesh() if mesh is None else mesh

    def train_step(state: TrainState, teacher_params, batch):
        num_tokens = jnp.sum(losses.label_mask(batch["labels"]))
        step_rng = jax.random.fold_in(state.rng, state.step)
        grads, metrics = _accumulated_grads(
            grad_fn, state.params, teacher_params, batch, step_rng, jnp.maximum(num_tokens, 1), k
        )
        state, grad_norm, lr = _apply_update(tx, state, grads, options.freeze_encoder)
        return state, dict(metrics, num_tokens=num_tokens, grad_norm=grad_norm, lr=lr)

    repl = NamedSharding(mesh, P())
    jitted = jax.jit(
        train_step,
        in_shardings=(repl, repl, NamedSharding(mesh, P(DATA_AXIS))),
        out_shardings=(repl, repl),
        donate_argnums=(0,) if donate else (),
        compiler_options=compiler_options,
    )

    def step(state: TrainState, teacher_params, batch: Batch):
        _check_batch(batch, mesh, k)
        # No-op for trees already replicated on the mesh (every state a step returns; a teacher put
        # there once with `parallel.replicate(teacher_params, step.mesh)`), else one copy per call.
        state, teacher_params = jax.device_put((state, teacher_params), repl)
        return jitted(state, teacher_params, global_batch(batch, mesh))

    step.jitted, step.mesh = jitted, mesh
    return step


def _mesh_attention_chunk(mesh: Mesh | None) -> int | None:
    """The attention tiling for programs that run on ``mesh`` (default mesh: the default backend)."""
    return attention_query_chunk(None if mesh is None else mesh.devices.flat[0].platform)


def make_eval_step(
    student_config: WhisperConfig,
    teacher_config: WhisperConfig,
    options: StepOptions,
    *,
    mesh: Mesh | None = None,
    compiler_options: dict | None = None,
) -> Callable:
    """Jitted ``eval_step(params, teacher_params, batch) -> metrics``: the loss terms of ``options`` at
    temperature 1 (whatever ``options.kd_temperature``), without dropout.

    Returns the token means of this batch (loss, ce, kl, mse) and the sums behind them (``*_sum``,
    ``num_tokens``), so that a caller can average exactly over many batches. Rows whose labels are all ignored
    (padding to a full batch) count for nothing.
    """
    eval_options = dataclasses.replace(options, kd_temperature=1.0, remat=False)
    loss_fn = make_loss_fn(
        student_config, teacher_config, eval_options, train=False, attention_query_chunk=_mesh_attention_chunk(mesh)
    )
    mesh = data_mesh() if mesh is None else mesh

    def eval_step(params, teacher_params, batch):
        _, m = loss_fn(params, teacher_params, batch, jax.random.PRNGKey(0), None)
        n = m["num_tokens"].astype(jnp.float32)
        return dict(m, **{f"{key}_sum": m[key] * jnp.maximum(n, 1) for key in ("loss", "ce", "kl", "mse")})

    repl = NamedSharding(mesh, P())
    jitted = jax.jit(
        eval_step,
        in_shardings=(repl, repl, NamedSharding(mesh, P(DATA_AXIS))),
        out_shardings=repl,
        compiler_options=compiler_options,
    )

    def step(params, teacher_params, batch: Batch):
        _check_batch(batch, mesh, 1)
        params, teacher_params = jax.device_put((params, teacher_params), repl)
        return jitted(params, teacher_params, global_batch(batch, mesh))

    step.jitted, step.mesh = jitted, mesh
    return step


# ----------------------------------------------------------------------------------------------
# Cached teacher encoder outputs


@functools.lru_cache(maxsize=8)
def _encoder_fn(config: WhisperConfig, dtype: Any, mesh: Mesh):
    model = Whisper(config, dtype, attention_query_chunk=_mesh_attention_chunk(mesh))
    data = NamedSharding(mesh, P(DATA_AXIS))
    return jax.jit(
        lambda p, x: model.apply({"params": p}, x, method=Whisper.encode),
        in_shardings=(NamedSharding(mesh, P()), data),
        out_shardings=data,
    )


def encoder_outputs(
    teacher_config: WhisperConfig,
    teacher_params: Any,
    features: Any,
    dtype: Any = jnp.float32,
    mesh: Mesh | None = None,
) -> Array:
    """Teacher encoder outputs [B, 1500, d_model] (fp32) for this process's ``features`` rows, as a global array
    split over ``mesh``.

    Cache them when the encoder is frozen and shared and pass them as ``batch["encoder_outputs"]``. Compiled once
    per (config, dtype, mesh, batch shape).
    """
    mesh = data_mesh() if mesh is None else mesh
    x = (
        features
        if isinstance(features, jax.Array)
        else jax.make_array_from_process_local_data(NamedSharding(mesh, P(DATA_AXIS)), np.asarray(features, np.float32))
    )
    return _encoder_fn(teacher_config, jnp.dtype(dtype), mesh)(teacher_params, x)
