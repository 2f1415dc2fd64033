"""Distillation losses: pure functions of logits, hidden states and labels.

Every term is returned as a **sum over non-ignored label positions** (labels < 0, i.e.
``IGNORE_INDEX``, are padding or prompt positions) together with the number of those positions. The
training step divides the weighted sum by the token count of the GLOBAL batch (all devices, hosts and
accumulation micro-batches), so the loss is the token mean of the whole batch whatever the batch is
split into: the original distil-whisper's token mean, made exact under accumulation.

    loss = (ce_weight · CE_sum + kl_weight · T² · KL_sum + mse_weight · MSE_sum) / N

with T the knowledge-distillation temperature (``kd_temperature``, not a sampling temperature) and
``ce_weight`` defaulting to the original's 0.8 when ``kl_weight > 0`` and 1.0 otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
IGNORE_INDEX = -100  # the label of positions no loss term counts (prompt, padding)


def label_mask(labels: Array) -> Array:
    """True where a label is a real target (every negative id, e.g. ``IGNORE_INDEX``, is ignored)."""
    return labels >= 0


def default_ce_weight(kl_weight: float) -> float:
    """The original's CE weight: 0.8 alongside a KL term, 1.0 for plain pseudo-label training."""
    return 0.8 if kl_weight > 0 else 1.0


def cross_entropy(logits: Array, labels: Array) -> tuple[Array, Array]:
    """Masked token cross-entropy. ``logits`` [..., V], ``labels`` [...] → (sum of −log p(label), count)."""
    mask = label_mask(labels)
    logits = logits.astype(jnp.float32)
    target = jnp.take_along_axis(logits, jnp.where(mask, labels, 0)[..., None], axis=-1)[..., 0]
    nll = jax.nn.logsumexp(logits, axis=-1) - target
    return jnp.sum(jnp.where(mask, nll, 0.0)), jnp.sum(mask)


def kl_divergence(
    teacher_logits: Array, student_logits: Array, labels: Array, kd_temperature: float = 2.0
) -> tuple[Array, Array]:
    """T² · KL(p_teacher,T ‖ q_student,T) summed over non-ignored positions, and their count.

    T is ``kd_temperature``, the knowledge-distillation temperature (not a sampling temperature).
    p = softmax(teacher/T) (no gradient flows into the teacher), q = softmax(student/T); the T² factor
    keeps gradient magnitudes comparable across temperatures (Hinton et al.). Zero-probability teacher
    entries contribute exactly 0 (no ``+1e-20`` fudge as in the original).
    """
    mask = label_mask(labels)
    t = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32)) / kd_temperature
    log_p = jax.nn.log_softmax(t, axis=-1)
    log_q = jax.nn.log_softmax(student_logits.astype(jnp.float32) / kd_temperature, axis=-1)
    p = jnp.exp(log_p)
    per_token = jnp.sum(jnp.where(p > 0, p * (log_p - log_q), 0.0), axis=-1)
    return kd_temperature**2 * jnp.sum(jnp.where(mask, per_token, 0.0)), jnp.sum(mask)


def mse_layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher decoder layer supervising each student layer's output (the original's MSE map):
    ``floor(linspace(T//S − 1, T − 1, S))`` with the last forced to ``T − 1`` (32 → 2: [15, 31])."""
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(f"student_layers must be in [1, {teacher_layers}], got {student_layers}")
    m = np.floor(np.linspace(teacher_layers // student_layers - 1, teacher_layers - 1, student_layers)).astype(int)
    m[-1] = teacher_layers - 1
    return [int(i) for i in m]


def hidden_mse(
    student_hidden: Sequence[Array],
    teacher_hidden: Sequence[Array],
    labels: Array,
    layer_map: Sequence[int] | None = None,
) -> tuple[Array, Array]:
    """Hidden-state MSE summed over non-ignored positions, and their count.

    ``*_hidden`` hold the embedding output followed by every layer's output (S+1 and T+1 arrays of
    [B, L, D], or those stacked, as ``Whisper.decode(..., output_hidden_states=True)`` returns them).
    The embedding outputs are tied, and student layer i to teacher layer ``layer_map[i]`` (default
    :func:`mse_layer_map`). Per position: Σ over tied pairs of the mean over D of the squared
    difference. Unlike the original, padding positions are masked out.
    """
    s_layers, t_layers = len(student_hidden) - 1, len(teacher_hidden) - 1
    layer_map = mse_layer_map(t_layers, s_layers) if layer_map is None else list(layer_map)
    if len(layer_map) != s_layers:
        raise ValueError(f"layer_map has {len(layer_map)} entries for {s_layers} student layers")
    pairs = [(0, 0)] + [(i + 1, t + 1) for i, t in enumerate(layer_map)]
    mask = label_mask(labels)
    per_token = sum(
        jnp.mean(
            jnp.square(
                student_hidden[s].astype(jnp.float32) - jax.lax.stop_gradient(teacher_hidden[t]).astype(jnp.float32)
            ),
            axis=-1,
        )
        for s, t in pairs
    )
    return jnp.sum(jnp.where(mask, per_token, 0.0)), jnp.sum(mask)


def distillation_loss(
    student_logits: Array,
    teacher_logits: Array | None,
    labels: Array,
    *,
    kd_temperature: float = 2.0,
    kl_weight: float = 1.0,
    ce_weight: float | None = None,
    mse_weight: float = 0.0,
    student_hidden: Sequence[Array] | None = None,
    teacher_hidden: Sequence[Array] | None = None,
    layer_map: Sequence[int] | None = None,
    num_tokens: Array | int | None = None,
) -> tuple[Array, dict]:
    """Weighted distillation loss, normalised by ``num_tokens`` (default: this batch's count).

    Pass the GLOBAL token count as ``num_tokens`` when this batch is one shard or micro-batch of a
    larger one: the per-shard losses (and their gradients) then add up to the global token mean.
    ``teacher_logits`` may be None when ``kl_weight == 0`` (plain pseudo-label training). ``kd_temperature`` is
    the T of the KL term (see :func:`kl_divergence`).

    Metrics: ``loss``, ``ce``, ``kl`` (T²-scaled), ``mse`` (each a sum / num_tokens) and ``num_tokens`` (this
    batch's count).
    """
    ce_weight = default_ce_weight(kl_weight) if ce_weight is None else ce_weight
    ce_sum, count = cross_entropy(student_logits, labels)
    denom = jnp.maximum(count if num_tokens is None else num_tokens, 1).astype(jnp.float32)
    kl_sum = mse_sum = jnp.zeros((), jnp.float32)
    if kl_weight:
        if teacher_logits is None:
            raise ValueError("kl_weight > 0 needs teacher_logits")
        kl_sum, _ = kl_divergence(teacher_logits, student_logits, labels, kd_temperature)
    if mse_weight:
        if student_hidden is None or teacher_hidden is None:
            raise ValueError("mse_weight > 0 needs student_hidden and teacher_hidden")
        mse_sum, _ = hidden_mse(student_hidden, teacher_hidden, labels, layer_map)
    total = ce_weight * ce_sum + kl_weight * kl_sum + mse_weight * mse_sum
    metrics = {
        "loss": total / denom,
        "ce": ce_sum / denom,
        "kl": kl_sum / denom,
        "mse": mse_sum / denom,
        "num_tokens": count,
    }
    return total / denom, metrics
