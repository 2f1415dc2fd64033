"""Optimiser, learning-rate schedules and the train state: what one update does to the parameters.

* **Optimizer updates are the unit of time.** The schedule, ``TrainState.step`` and the logged LR
  count updates (gradient accumulation runs inside the step, see ``train.py``), so k micro-batches of b
  give the same update as one batch of k·b, and warmup and decay are not stretched by k.
* **Frozen parameters are not in the optimiser.** ``optax.multi_transform`` routes them to
  ``set_to_zero``: no Adam moments allocated, never decayed. The encoder's sinusoidal position table
  is never trained or decayed.
* **Weight decay mask**: decay only matmul kernels and embeddings, never biases or LayerNorm params.
* **Precision**: parameters, gradients and optimiser state are fp32 (master weights).
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

Array = jax.Array
SCHEDULES = ("linear", "constant", "constant_with_warmup", "cosine")


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
