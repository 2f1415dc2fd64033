"""Model FLOPs, counted analytically, and the accelerators' peaks they are measured against (MFU): the one
home of the FLOP formulas the distillation step, the benchmarks and ``tools/recipe_cost.py`` use.

Matmuls only (2·m·n·k each). Backward costs 2× the forward of a matmul whose input needs a gradient
(activation + weight gradients), 1× when only the weight gradient exists (the input is data or sits behind a
``stop_gradient``: the mel under ``conv1``, a frozen or shared encoder's output under the decoder's
cross-attention k/v projections), 0 for frozen parts and the teacher. Rematerialisation is not counted
(model FLOPs, not hardware FLOPs).
"""

from __future__ import annotations

from distil_whisper_jax.core.model import WhisperConfig

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


def encoder_flops_by_part(config: WhisperConfig, batch: int = 1) -> dict[str, float]:
    """Forward matmul FLOPs of the encoder by part (``conv1``, ``conv2``, ``qkvo_proj``, ``qk_t``, ``av``,
    ``mlp``) and their ``total``: the split a benchmark reports next to XLA's own count.

    Per example, F = 2·S mel frames, S = max_source_positions, d = d_model, f = ffn dim: conv1 2·F·3·n_mels·d,
    conv2 2·S·3d·d, and per layer q,k,v,out 8·S·d², QKᵀ 2·S²·d, AV 2·S²·d, MLP 4·S·d·f.
    """
    c = config
    s, d, f, layers = c.max_source_positions, c.d_model, c.encoder_ffn_dim, c.encoder_layers
    parts = {
        "conv1": 2.0 * c.n_frames * d * (3 * c.num_mel_bins),
        "conv2": 2.0 * s * d * (3 * d),
        "qkvo_proj": layers * 4 * 2.0 * s * d * d,
        "qk_t": layers * 2.0 * s * s * d,
        "av": layers * 2.0 * s * s * d,
        "mlp": layers * 2 * 2.0 * s * d * f,
    }
    parts = {k: v * batch for k, v in parts.items()}
    parts["total"] = sum(parts.values())
    return parts


def encoder_flops(config: WhisperConfig, batch: int = 1) -> float:
    """Forward matmul FLOPs of the encoder over one input window (:func:`encoder_flops_by_part`'s total)."""
    return encoder_flops_by_part(config, batch)["total"]


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


def decoder_token_flops(config: WhisperConfig, context: int = 224) -> float:
    """Forward matmul FLOPs of the decoder for one generated token with a KV cache (per example): what
    generation costs per token, the cross-attention k/v being computed once per window, not per token.

    Per layer: self q,k,v,out 8·d², cross q,out 4·d², MLP 4·d·f, attention over ``context`` cached positions
    and the S encoder positions 4·d·(context + S); plus the output projection onto the vocabulary 2·d·V.
    """
    d, f = config.d_model, config.decoder_ffn_dim
    per_layer = 2.0 * (4 * d * d + 2 * d * d + 2 * d * f) + 4.0 * d * (context + config.max_source_positions)
    return config.decoder_layers * per_layer + 2.0 * d * config.vocab_size


def _cross_kv_flops(config: WhisperConfig) -> float:
    """Forward FLOPs of the decoder's cross-attention k/v projections per example (their input is the
    encoder output)."""
    return config.decoder_layers * 4.0 * config.max_source_positions * config.d_model**2


def encoder_train_flops(config: WhisperConfig, batch: int = 1) -> float:
    """Forward + backward FLOPs of a trained encoder: 3× forward, except that ``conv1`` has no input
    gradient (only its weight gradient, 1× its forward)."""
    parts = encoder_flops_by_part(config, batch)
    return 3 * parts["total"] - parts["conv1"]


def decoder_train_flops(config: WhisperConfig, length: int, batch: int = 1, encoder_grad: bool = False) -> float:
    """Forward + backward FLOPs of the trained decoder: 3× forward, except that without a gradient into
    the encoder output (``encoder_grad`` False: frozen, shared or cached encoder) the cross-attention k/v
    projections have no input gradient (only their weight gradient, 1× their forward)."""
    total = 3 * decoder_flops(config, length, batch)
    return total if encoder_grad else total - batch * _cross_kv_flops(config)


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

    Parts: ``teacher_encoder`` (forward; once when shared, absent with cached encoder outputs),
    ``student_encoder`` (unshared only: forward when frozen, :func:`encoder_train_flops` when trained),
    ``teacher_decoder`` (forward, when KL or MSE is on), ``student_decoder``
    (:func:`decoder_train_flops`), ``total``.
    """
    b, n = batch_size, label_length
    need_teacher = bool(kl_weight or mse_weight)
    if share_encoder:
        student_encoder = 0.0
    elif freeze_encoder:
        student_encoder = encoder_flops(student_config, b)
    else:
        student_encoder = encoder_train_flops(student_config, b)
    no_teacher_encoder = cached_encoder or not (share_encoder or need_teacher)
    parts = {
        "teacher_encoder": 0.0 if no_teacher_encoder else encoder_flops(teacher_config, b),
        "student_encoder": student_encoder,
        "teacher_decoder": decoder_flops(teacher_config, n, b) if need_teacher else 0.0,
        "student_decoder": decoder_train_flops(student_config, n, b, encoder_grad=not freeze_encoder),
    }
    parts["total"] = sum(parts.values())
    return parts
