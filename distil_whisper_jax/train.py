"""Distillation training core: schedules, optimiser, train/eval steps, data parallelism, FLOP counts.

Design (what differs from the original distil-whisper Flax trainer, ``upstream.md`` §2.4 and §6):

* **Optimizer updates are the unit of time.** Gradient accumulation runs *inside* the jitted step (a
  ``lax.scan`` over micro-batches, gradients summed), followed by one optimiser update. The schedule,
  ``TrainState.step`` and the logged LR all count updates, and k micro-batches of b give the same
  update as one batch of k·b (the original wrapped AdamW in ``optax.MultiSteps`` and stretched the
  schedule by k, so warmup ran k× too long and the LR never decayed to 0).
* **Exact global token mean.** Each micro-batch/shard loss is divided by the token count of the whole
  global batch (known up front from the labels), so loss and gradients are the token mean of the
  global batch regardless of device count, host count or accumulation.
* **Frozen parameters are not in the optimiser.** ``optax.multi_transform`` routes them to
  ``set_to_zero`` (no Adam moments allocated, no weight decay: the original decayed frozen encoder
  weights whenever weight_decay > 0). The encoder's sinusoidal position table is never trained or decayed.
* **Weight decay mask**: decay only matmul kernels and embeddings, never biases or LayerNorm params.
* **Data parallel = jit over a 1-D mesh** of all devices of all processes (pmap semantics, gradients
  reduced over every device by XLA). Multi-host: each process passes only its local rows; the global
  batch is assembled with ``jax.make_array_from_process_local_data``.
* **Shared encoder pass** only when the student's encoder is frozen AND its architecture equals the
  teacher's AND the caller says the weights are the teacher's (``share_encoder``): the encoder runs
  once, under ``stop_gradient``, for both decoders (the original decided from ``freeze_encoder`` and
  ``d_model`` alone, so a student with fewer encoder layers silently used the teacher's).
* **Precision**: parameters, gradients and optimiser state fp32 (master weights); ``dtype`` (bf16 on
  TPU) is the compute dtype of matmuls; softmax, LayerNorm and the loss run in fp32.
* **Dropout RNG**: ``fold_in(fold_in(state.rng, step), micro_batch)``. Threefry is partitionable
  (``jax_threefry_partitionable``), so each example's mask depends only on its global position, not on
  the device that holds it: runs with dropout are also device-count invariant.

Usage::

    config, params, _ = student.make_student(teacher_config, teacher_params, 2)
    tx = make_optimizer(params, schedule=make_schedule("linear", 1e-4, 500, 80_000), freeze_encoder=True)
    step = make_train_step(config, teacher_config, tx, freeze_encoder=True,
                           share_encoder=encoders_identical(params, teacher_params), grad_accum_steps=k)
    teacher = parallel.replicate(teacher_params, step.mesh)  # once
    state = create_train_state(params, tx, seed)
    for batch in batches:  # numpy rows of this process: input_features, decoder_input_ids, labels
        state, metrics = step(state, teacher, batch)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from . import losses
from .model import DecoderLayer, Whisper, WhisperConfig
from .parallel import DATA_AXIS

Array = jax.Array
Batch = Mapping[str, Any]
SCHEDULES = ("linear", "constant", "constant_with_warmup", "cosine")
BATCH_KEYS = ("input_features", "encoder_outputs", "decoder_input_ids", "labels")

# ----------------------------------------------------------------------------------------------
# Schedules and optimiser


def make_schedule(
    kind: str, learning_rate: float, warmup_steps: int = 0, max_steps: int | None = None
) -> optax.Schedule:
    """LR as a function of the number of optimizer updates done.

    ``linear``: 0 → lr over ``warmup_steps`` then linearly → 0 at ``max_steps``; ``cosine``: same
    warmup then half a cosine → 0 at ``max_steps``; ``constant_with_warmup``: warmup then flat;
    ``constant``: lr throughout (warmup ignored, as transformers does).
    """
    if kind not in SCHEDULES:
        raise ValueError(f"--lr_scheduler_type must be one of {SCHEDULES}, got {kind!r}")
    if warmup_steps < 0:
        raise ValueError(f"--warmup_steps must be ≥ 0, got {warmup_steps}")
    decays = kind in ("linear", "cosine")
    if decays and (max_steps is None or max_steps <= warmup_steps):
        raise ValueError(
            f"--lr_scheduler_type {kind} needs --max_steps > --warmup_steps "
            f"(got max_steps={max_steps}, warmup_steps={warmup_steps})"
        )
    lr = float(learning_rate)

    def schedule(count):
        step = jnp.asarray(count, jnp.float32)
        if kind == "constant":
            return jnp.full_like(step, lr)
        warm = jnp.minimum(step / warmup_steps, 1.0) if warmup_steps else jnp.ones_like(step)
        if not decays:
            return lr * warm
        progress = jnp.clip((step - warmup_steps) / (max_steps - warmup_steps), 0.0, 1.0)
        decay = 1.0 - progress if kind == "linear" else 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return lr * jnp.where(step < warmup_steps, warm, decay)

    return schedule


def _path_names(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def param_labels(params: Any, freeze_encoder: bool) -> Any:
    """ "trainable" / "frozen" per parameter. Frozen: the whole encoder when ``freeze_encoder``, and
    always the encoder's sinusoidal position table (a fixed buffer stored like a weight)."""

    def label(path, _):
        names = _path_names(path)
        if names[:1] == ("encoder",) and (freeze_encoder or "embed_positions" in names):
            return "frozen"
        return "trainable"

    return jax.tree_util.tree_map_with_path(label, params)


def decay_mask(params: Any) -> Any:
    """True for parameters that get weight decay: matmul/conv kernels and embeddings; never biases or
    LayerNorm scales/offsets."""
    return jax.tree_util.tree_map_with_path(lambda path, _: _path_names(path)[-1] in ("kernel", "embedding"), params)


def make_optimizer(
    params: Any,
    *,
    schedule: optax.Schedule,
    weight_decay: float = 0.0,
    adam_beta1: float = 0.9,
    adam_beta2: float = 0.999,
    adam_epsilon: float = 1e-8,
    max_grad_norm: float | None = 1.0,
    freeze_encoder: bool = False,
) -> optax.GradientTransformation:
    """AdamW (decoupled decay, masked) with global-norm clipping on the trainable parameters only.

    Frozen parameters go through ``set_to_zero``: no optimiser state is allocated for them and they
    are never decayed. The clip norm is computed over the trainable gradients of the whole (global,
    accumulated) batch. The current LR is kept in the state (see :func:`current_lr`).
    """
    trainable = optax.chain(
        optax.clip_by_global_norm(max_grad_norm) if max_grad_norm else optax.identity(),
        optax.scale_by_adam(b1=adam_beta1, b2=adam_beta2, eps=adam_epsilon),
        optax.add_decayed_weights(weight_decay, mask=decay_mask) if weight_decay else optax.identity(),
        optax.inject_hyperparams(optax.scale_by_learning_rate)(learning_rate=schedule),
    )
    return optax.multi_transform(
        {"trainable": trainable, "frozen": optax.set_to_zero()}, param_labels(params, freeze_encoder)
    )


def current_lr(opt_state: Any) -> Array:
    """The LR used by the last update (0 before any update) from an optimiser built by make_optimizer."""
    for path, value in jax.tree_util.tree_flatten_with_path(opt_state)[0]:
        if _path_names(path)[-2:] == ("hyperparams", "learning_rate"):
            return jnp.asarray(value, jnp.float32)
    raise ValueError("optimizer state holds no injected learning_rate (build it with make_optimizer)")


@flax.struct.dataclass
class TrainState:
    """Everything a step changes (a pytree: checkpoint it whole). ``step`` = optimizer updates done;
    ``rng`` is the base dropout key, never consumed (each step folds in its step number)."""

    step: Array
    params: Any
    opt_state: Any
    rng: Array


def create_train_state(params: Any, tx: optax.GradientTransformation, seed: int = 0) -> TrainState:
    """Fresh state with fp32 master weights. The parameters are copied: the step donates the state's
    buffers, which must not be shared with the teacher's (a student made by slicing a teacher is)."""
    params = jax.tree.map(lambda p: jnp.array(p, jnp.float32, copy=True), params)
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=jax.random.PRNGKey(seed)
    )


# ----------------------------------------------------------------------------------------------
# Forward passes and the loss


def data_mesh(devices: list | None = None) -> Mesh:
    """1-D data-parallel mesh over every device of every process (or the given devices)."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), (DATA_AXIS,))


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


def _layer_norm(x: Array, p: Mapping[str, Array]) -> Array:
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * p["scale"] + p["bias"]


def decode_with_hidden(
    config: WhisperConfig,
    params: Any,
    tokens: Array,
    encoder_out: Array,
    *,
    dtype: Any = jnp.float32,
    deterministic: bool = True,
    rng: Array | None = None,
) -> tuple[Array, list[Array]]:
    """Decoder logits plus the hidden states after the embeddings and after every layer (for the MSE
    term), running the stacked layers one by one. Same numbers as ``Whisper.decode``."""
    d = params["decoder"]
    t = tokens.shape[1]
    x = d["embed_tokens"]["embedding"][tokens] + d["embed_positions"]["embedding"][:t][None]
    hidden = [x]
    layer = DecoderLayer(config, dtype)
    index = jnp.zeros((), jnp.int32)
    for i in range(config.decoder_layers):
        p_i = jax.tree.map(lambda a: a[i], d["layers"])
        rngs = None if deterministic else {"dropout": jax.random.fold_in(rng, i)}
        x, _ = layer.apply({"params": p_i}, x, None, encoder_out, index, deterministic, rngs=rngs)
        hidden.append(x)
    x = _layer_norm(x, d["layer_norm"])
    emb = d["embed_tokens"]["embedding"]
    logits = jnp.einsum("bld,vd->blv", x.astype(dtype), emb.astype(dtype)).astype(jnp.float32)
    return logits, hidden


def _has_dropout(c: WhisperConfig) -> bool:
    return bool(c.dropout or c.attention_dropout or c.activation_dropout)


def make_loss_fn(
    student_config: WhisperConfig,
    teacher_config: WhisperConfig,
    *,
    kl_weight: float = 1.0,
    ce_weight: float | None = None,
    temperature: float = 2.0,
    mse_weight: float = 0.0,
    freeze_encoder: bool = False,
    share_encoder: bool = False,
    dtype: Any = jnp.float32,
    remat: bool = False,
    unroll: int | bool = 1,
    train: bool = True,
) -> Callable:
    """``loss_fn(params, teacher_params, batch, rng, num_tokens) -> (loss, metrics)`` for one
    (micro-)batch, loss = weighted sums / ``num_tokens`` (pass the global count). ``train=False``:
    no dropout. Raises if the configuration cannot be honoured (see :func:`make_train_step`)."""
    if student_config.vocab_size != teacher_config.vocab_size:
        raise ValueError(
            f"student vocab_size {student_config.vocab_size} != teacher vocab_size "
            f"{teacher_config.vocab_size}: KL needs one vocabulary"
        )
    if student_config.d_model != teacher_config.d_model and share_encoder:
        raise ValueError("share_encoder needs equal d_model")
    if share_encoder and not freeze_encoder:
        raise ValueError("share_encoder needs freeze_encoder: a trained student encoder diverges from the teacher's")
    if share_encoder and not can_share_encoder(student_config, teacher_config):
        raise ValueError(
            "share_encoder needs the student's encoder architecture to equal the teacher's "
            f"(student {student_config.encoder_layers} layers, teacher {teacher_config.encoder_layers})"
        )
    if mse_weight and student_config.d_model != teacher_config.d_model:
        raise ValueError("mse_weight > 0 needs equal d_model")
    student = Whisper(student_config, dtype, remat, unroll)
    teacher = Whisper(teacher_config, dtype, False, unroll)
    dropout = train and _has_dropout(student_config)
    need_teacher = bool(kl_weight or mse_weight)

    def loss_fn(params, teacher_params, batch, rng, num_tokens):
        tokens, labels = batch["decoder_input_ids"], batch["labels"]
        r_enc, r_dec = jax.random.split(rng)
        sv, tv = {"params": params}, {"params": teacher_params}
        if "encoder_outputs" in batch:
            if not share_encoder:
                raise ValueError("batch['encoder_outputs'] is only accepted with share_encoder=True")
            enc_s = enc_t = jax.lax.stop_gradient(batch["encoder_outputs"])
        elif share_encoder:
            enc_s = enc_t = jax.lax.stop_gradient(teacher.apply(tv, batch["input_features"], method=Whisper.encode))
        else:
            enc_t = teacher.apply(tv, batch["input_features"], method=Whisper.encode) if need_teacher else None
            enc_s = student.apply(
                sv,
                batch["input_features"],
                not (dropout and not freeze_encoder),
                method=Whisper.encode,
                rngs={"dropout": r_enc},
            )
            if freeze_encoder:
                enc_s = jax.lax.stop_gradient(enc_s)
        t_logits = s_hidden = t_hidden = None
        if mse_weight:
            s_logits, s_hidden = decode_with_hidden(
                student_config, params, tokens, enc_s, dtype=dtype, deterministic=not dropout, rng=r_dec
            )
            t_logits, t_hidden = decode_with_hidden(teacher_config, teacher_params, tokens, enc_t, dtype=dtype)
        else:
            s_logits, _ = student.apply(
                sv, tokens, enc_s, deterministic=not dropout, method=Whisper.decode, rngs={"dropout": r_dec}
            )
            if kl_weight:
                t_logits, _ = teacher.apply(tv, tokens, enc_t, method=Whisper.decode)
        if t_logits is not None:
            t_logits = jax.lax.stop_gradient(t_logits)
        return losses.distillation_loss(
            s_logits,
            t_logits,
            labels,
            temperature=temperature,
            kl_weight=kl_weight,
            ce_weight=ce_weight,
            mse_weight=mse_weight,
            student_hidden=s_hidden,
            teacher_hidden=t_hidden,
            num_tokens=num_tokens,
        )

    return loss_fn


# ----------------------------------------------------------------------------------------------
# Steps


def global_batch(batch: Batch, mesh: Mesh) -> dict:
    """Process-local numpy rows → global arrays split over the mesh along axis 0. Keys other than
    ``BATCH_KEYS`` are dropped; jax Arrays are passed through unchanged."""
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
    """[B, ...] → [k, B/k, ...] with micro-batch i = rows i, i+k, i+2k, …: a device-local reshape when
    the batch is split over devices in contiguous blocks whose size is a multiple of k."""
    return jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)


def make_train_step(
    student_config: WhisperConfig,
    teacher_config: WhisperConfig,
    tx: optax.GradientTransformation,
    *,
    kl_weight: float = 1.0,
    ce_weight: float | None = None,
    temperature: float = 2.0,
    mse_weight: float = 0.0,
    freeze_encoder: bool = False,
    share_encoder: bool = False,
    dtype: Any = jnp.float32,
    remat: bool = False,
    unroll: int | bool = 1,
    grad_accum_steps: int = 1,
    mesh: Mesh | None = None,
    donate: bool = True,
    compiler_options: dict | None = None,
) -> Callable:
    """Jitted ``step(state, teacher_params, batch) -> (state, metrics)``: one optimiser update from one
    global batch (numpy rows of this process, or global arrays from :func:`global_batch`).

    The batch is split over ``mesh`` (default: all devices of all processes) and, inside the step, into
    ``grad_accum_steps`` micro-batches; loss and gradients are the token mean over the whole global
    batch, so the result does not depend on the device count or on accumulation. ``share_encoder``:
    the caller asserts the student's (frozen) encoder weights are the teacher's (see
    :func:`encoders_identical`); requires ``freeze_encoder`` and equal encoder configs. The batch may
    then hold ``encoder_outputs`` [B, 1500, d_model] instead of ``input_features``.
    Metrics (replicated scalars): loss, ce, kl, mse, grad_norm (trainable, before clipping), lr (of this
    update), num_tokens (global). The state argument is donated (its buffers are reused).
    ``compiler_options`` go to ``jax.jit`` (e.g. ``{"xla_backend_optimization_level": 0}`` halves
    XLA:CPU compile time for tests).
    """
    if grad_accum_steps < 1:
        raise ValueError(f"gradient_accumulation_steps must be ≥ 1, got {grad_accum_steps}")
    k = grad_accum_steps
    loss_fn = make_loss_fn(
        student_config,
        teacher_config,
        kl_weight=kl_weight,
        ce_weight=ce_weight,
        temperature=temperature,
        mse_weight=mse_weight,
        freeze_encoder=freeze_encoder,
        share_encoder=share_encoder,
        dtype=dtype,
        remat=remat,
        unroll=unroll,
    )
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    mesh = data_mesh() if mesh is None else mesh

    def train_step(state: TrainState, teacher_params, batch):
        labels = batch["labels"]
        num_tokens = jnp.sum(losses.label_mask(labels))
        denom = jnp.maximum(num_tokens, 1)
        step_rng = jax.random.fold_in(state.rng, state.step)
        if k == 1:
            (_, metrics), grads = grad_fn(state.params, teacher_params, batch, step_rng, denom)
        else:
            micro = jax.tree.map(lambda x: _split_micro(x, k), batch)

            def body(carry, inp):
                i, mb = inp
                (_, m), g = grad_fn(state.params, teacher_params, mb, jax.random.fold_in(step_rng, i), denom)
                return jax.tree.map(jnp.add, carry, (g, m)), None

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            m0 = {
                key: jnp.zeros((), jnp.int32 if key == "num_tokens" else jnp.float32)
                for key in ("loss", "ce", "kl", "mse", "num_tokens")
            }
            (grads, metrics), _ = jax.lax.scan(body, (zeros, m0), (jnp.arange(k), micro))
        labels_tree = param_labels(state.params, freeze_encoder)
        trainable = jax.tree.map(lambda lab, g: g if lab == "trainable" else None, labels_tree, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        # Frozen leaves are returned untouched (no `p + 0` over the whole encoder).
        new_params = jax.tree.map(
            lambda lab, new, old: old if lab == "frozen" else new, labels_tree, new_params, state.params
        )
        metrics = dict(metrics, num_tokens=num_tokens, grad_norm=optax.global_norm(trainable), lr=current_lr(opt_state))
        return state.replace(step=state.step + 1, params=new_params, opt_state=opt_state), metrics

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


def make_eval_step(
    student_config: WhisperConfig,
    teacher_config: WhisperConfig,
    *,
    kl_weight: float = 1.0,
    ce_weight: float | None = None,
    mse_weight: float = 0.0,
    freeze_encoder: bool = False,
    share_encoder: bool = False,
    dtype: Any = jnp.float32,
    mesh: Mesh | None = None,
    compiler_options: dict | None = None,
) -> Callable:
    """Jitted ``eval_step(params, teacher_params, batch) -> metrics``: the loss terms at temperature 1,
    no dropout. Returns token means of this batch (loss, ce, kl, mse) and the sums behind them
    (``*_sum``, ``num_tokens``) so a caller can average exactly over many batches. Rows whose labels
    are all -100 (padding to a full batch) count for nothing."""
    loss_fn = make_loss_fn(
        student_config,
        teacher_config,
        kl_weight=kl_weight,
        ce_weight=ce_weight,
        temperature=1.0,
        mse_weight=mse_weight,
        freeze_encoder=freeze_encoder,
        share_encoder=share_encoder,
        dtype=dtype,
        train=False,
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


@functools.lru_cache(maxsize=8)
def _encoder_fn(config: WhisperConfig, dtype: Any, mesh: Mesh):
    model = Whisper(config, dtype)
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
    """Teacher encoder outputs [B, 1500, d_model] (fp32) for this process's ``features`` rows, as a
    global array split over ``mesh``: cache them when the encoder is frozen and shared and pass them as
    ``batch["encoder_outputs"]``. Compiled once per (config, dtype, mesh, batch shape)."""
    mesh = data_mesh() if mesh is None else mesh
    x = (
        features
        if isinstance(features, jax.Array)
        else jax.make_array_from_process_local_data(NamedSharding(mesh, P(DATA_AXIS)), np.asarray(features, np.float32))
    )
    return _encoder_fn(teacher_config, jnp.dtype(dtype), mesh)(teacher_params, x)


# ----------------------------------------------------------------------------------------------
# Model FLOPs (for MFU)


def encoder_flops(config: WhisperConfig, batch: int = 1) -> float:
    """Forward matmul FLOPs of the encoder (2·m·n·k per matmul; elementwise ops not counted).

    Per example, F = 2·S mel frames, S = max_source_positions, d = d_model, f = ffn dim:
    conv1 2·F·3·n_mels·d + conv2 2·S·3d·d + layers · (q,k,v,out 8·S·d² + QKᵀ,AV 4·S²·d + MLP 4·S·d·f).
    """
    c = config
    s, d, f = c.max_source_positions, c.d_model, c.encoder_ffn_dim
    per_layer = 8 * s * d * d + 4 * s * s * d + 4 * s * d * f
    return float(batch) * (2 * c.n_frames * 3 * c.num_mel_bins * d + 2 * s * 3 * d * d + c.encoder_layers * per_layer)


def decoder_flops(config: WhisperConfig, length: int, batch: int = 1) -> float:
    """Forward matmul FLOPs of the decoder over ``length`` tokens (teacher forcing, no cache).

    Per example, L = length, S = encoder positions: layers · (self q,k,v,out 8·L·d² + self QKᵀ,AV
    4·L²·d (dense, as computed: the causal mask does not skip work) + cross q,out 4·L·d² + cross k,v
    4·S·d² + cross QKᵀ,AV 4·L·S·d + MLP 4·L·d·f) + tied output projection 2·L·d·V.
    """
    c = config
    n, s, d, f = length, c.max_source_positions, c.d_model, c.decoder_ffn_dim
    per_layer = 12 * n * d * d + 4 * n * n * d + 4 * s * d * d + 4 * n * s * d + 4 * n * d * f
    return float(batch) * (c.decoder_layers * per_layer + 2 * n * d * c.vocab_size)


def flops_per_step(
    student_config: WhisperConfig,
    teacher_config: WhisperConfig,
    batch_size: int,
    label_length: int,
    *,
    kl_weight: float = 1.0,
    mse_weight: float = 0.0,
    freeze_encoder: bool = False,
    share_encoder: bool = False,
    cached_encoder: bool = False,
) -> dict[str, float]:
    """Model FLOPs of one training step on ``batch_size`` examples of ``label_length`` tokens, by part.

    Backward = 2× forward for every part that is differentiated (activation + weight gradients), 0 for
    frozen or teacher parts; rematerialisation is not counted (model FLOPs, not hardware FLOPs).
    Parts: ``teacher_encoder`` (once when shared, absent with cached encoder outputs),
    ``student_encoder`` (unshared only; ×3 when trained), ``teacher_decoder`` (when KL or MSE is on),
    ``student_decoder`` (×3), ``total``.
    """
    b, n = batch_size, label_length
    need_teacher = bool(kl_weight or mse_weight)
    parts = {
        "teacher_encoder": 0.0
        if cached_encoder or not (share_encoder or need_teacher)
        else encoder_flops(teacher_config, b),
        "student_encoder": 0.0 if share_encoder else encoder_flops(student_config, b) * (1 if freeze_encoder else 3),
        "teacher_decoder": decoder_flops(teacher_config, n, b) if need_teacher else 0.0,
        "student_decoder": 3 * decoder_flops(student_config, n, b),
    }
    parts["total"] = sum(parts.values())
    return parts
