"""Whisper in Flax linen: config, encoder, decoder with an explicit KV cache.

One readable file, in the spirit of openai/whisper's ``model.py``. Parameter names mirror 🤗 transformers'
``WhisperForConditionalGeneration``, so converters are a rename plus a transpose.

Layers are always held *stacked* (one leading layer axis, as ``nn.scan`` lays them out): a student is a slice of
its teacher, and the tree is the same whether the layers run as a scan or unrolled (``unroll=True``).

Numerics that matter for parity with PyTorch: LayerNorm eps 1e-5, exact (erf) GELU, q scaled by
``head_dim**-0.5`` after its bias, no bias on k projections, output projection tied to the token embedding.
Parameters are fp32; ``dtype`` sets the compute dtype (bf16 on TPU); softmax and LayerNorm statistics run in fp32.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Dtype = Any

# Compute dtypes by the name the command-line flags use (parameters stay fp32 whatever is chosen).
DTYPES: dict[str, Dtype] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# Query rows per tile of long unmasked attention (the encoder's) in its tiled form, the CPU form: a
# [750, 1500] fp32 score tile, the tile size measured fastest on CPU (docs/benchmarks.md).
ATTENTION_QUERY_CHUNK = 750


@dataclasses.dataclass(frozen=True)
class WhisperConfig:
    """Architecture of a Whisper model (field names are 🤗 transformers' config names)."""

    vocab_size: int = 51865
    num_mel_bins: int = 80
    d_model: int = 384
    encoder_layers: int = 4
    encoder_attention_heads: int = 6
    decoder_layers: int = 4
    decoder_attention_heads: int = 6
    encoder_ffn_dim: int = 1536
    decoder_ffn_dim: int = 1536
    max_source_positions: int = 1500
    max_target_positions: int = 448
    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0

    def __post_init__(self):
        for name in ("d_model", "encoder_layers", "decoder_layers", "vocab_size", "num_mel_bins"):
            if getattr(self, name) <= 0:
                raise ValueError(f"WhisperConfig.{name} must be positive, got {getattr(self, name)}")
        for heads in (self.encoder_attention_heads, self.decoder_attention_heads):
            if self.d_model % heads:
                raise ValueError(f"d_model={self.d_model} is not divisible by {heads} attention heads")

    @property
    def n_frames(self) -> int:
        """Log-mel frames the encoder takes (conv2 has stride 2)."""
        return 2 * self.max_source_positions

    @property
    def input_seconds(self) -> float:
        """Seconds of audio the encoder takes: one position per 20 ms (1500 → 30 s, 750 → 15 s)."""
        return self.max_source_positions / 50

    @property
    def is_multilingual(self) -> bool:
        return self.vocab_size >= 51865

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WhisperConfig:
        """From an HF ``config.json`` dict (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **kw) -> WhisperConfig:
        return dataclasses.replace(self, **kw)


# Standard sizes: (d_model, attention heads, encoder layers, decoder layers). The mel bins and the vocabulary
# follow from the name (large-v3*: 128 bins; ".en": English-only vocabulary), see preset().
_SIZES = {
    "tiny": (384, 6, 4, 4),
    "base": (512, 8, 6, 6),
    "small": (768, 12, 12, 12),
    "medium": (1024, 16, 24, 24),
    "large": (1280, 20, 32, 32),
    "large-v2": (1280, 20, 32, 32),
    "large-v3": (1280, 20, 32, 32),
    "large-v3-turbo": (1280, 20, 32, 4),
}


def preset(name: str) -> WhisperConfig:
    """Config of a standard Whisper size, e.g. ``preset("tiny.en")`` or ``preset("large-v3")``."""
    english = name.endswith(".en")
    size = name[:-3] if english else name
    if size not in _SIZES:
        raise ValueError(f"unknown Whisper size {name!r}; expected one of {sorted(_SIZES)} (+ '.en')")
    d, h, enc, dec = _SIZES[size]
    v3 = size.startswith("large-v3")
    return WhisperConfig(
        vocab_size=51864 if english else (51866 if v3 else 51865),
        num_mel_bins=128 if v3 else 80,
        d_model=d,
        encoder_layers=enc,
        decoder_layers=dec,
        encoder_attention_heads=h,
        decoder_attention_heads=h,
        encoder_ffn_dim=4 * d,
        decoder_ffn_dim=4 * d,
    )


def sinusoids(length: int, channels: int) -> np.ndarray:
    """Whisper's encoder position table: [sin | cos] halves, not interleaved."""
    log_inc = math.log(10000) / (channels // 2 - 1)
    inv = np.exp(-log_inc * np.arange(channels // 2))
    t = np.arange(length)[:, None] * inv[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Layers


def _layer_norm(name: str) -> nn.LayerNorm:
    # Whisper uses eps 1e-5; Flax's default 1e-6 is measurably wrong on small-variance inputs.
    # Two-pass variance: the fast E[x²]-E[x]² form loses ~1e-3 to cancellation on real activations.
    return nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, use_fast_variance=False, name=name)


class Attention(nn.Module):
    """Multi-head attention; ``kv`` given → cross-attention on precomputed keys/values."""

    num_heads: int
    d_model: int
    dtype: Dtype = jnp.float32
    dropout: float = 0.0
    query_chunk: int | None = None  # tile long unmasked attention by this many query rows (see Whisper)

    def setup(self):
        dense = lambda name, bias=True: nn.Dense(self.d_model, use_bias=bias, dtype=self.dtype, name=name)
        self.q_proj, self.k_proj, self.v_proj = dense("q_proj"), dense("k_proj", False), dense("v_proj")
        self.out_proj = dense("out_proj")
        self.attn_dropout = nn.Dropout(self.dropout)

    def _split(self, x: Array) -> Array:
        return x.reshape(x.shape[:2] + (self.num_heads, -1))

    def project_kv(self, x: Array) -> tuple[Array, Array]:
        """k as [B, H, D, T] and v as [B, H, T, D]: the layouts q·kᵀ and p·v read without a transpose,
        which matters in decoding where cached cross-attention k/v are read at every step."""
        k = jnp.transpose(self._split(self.k_proj(x)), (0, 2, 3, 1))
        return k, jnp.swapaxes(self._split(self.v_proj(x)), 1, 2)

    def __call__(self, x: Array, k: Array, v: Array, mask: Array | None, deterministic: bool = True) -> Array:
        head_dim = self.d_model // self.num_heads
        q = self._split(self.q_proj(x)) * (head_dim**-0.5)
        # Long unmasked attention (the encoder), tiled when the caller asks for it (on CPU, so score blocks
        # stay in cache); without ``query_chunk`` the full-matrix form, which TPU/GPU fuse.
        if (
            self.query_chunk
            and mask is None
            and (deterministic or self.dropout == 0)
            and q.shape[1] >= 512
            and k.shape[3] >= 512
        ):
            q, k, v = (jnp.swapaxes(q, 1, 2).astype(self.dtype), k.astype(self.dtype), v.astype(self.dtype))
            out = _tiled_attention(q, k, v, self.query_chunk)
            out = jnp.swapaxes(out, 1, 2)
            return self.out_proj(out.reshape(out.shape[:2] + (self.d_model,)))
        scores = jnp.einsum("bqhd,bhdk->bhqk", q, k, preferred_element_type=jnp.float32)
        if mask is not None:
            scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1)
        if self.dropout > 0 and not deterministic:
            probs = self.attn_dropout(probs, deterministic=False)
        out = jnp.einsum("bhqk,bhkd->bqhd", probs.astype(self.dtype), v.astype(self.dtype))
        return self.out_proj(out.reshape(out.shape[:2] + (self.d_model,)))


def _tiled_attention(q: Array, k: Array, v: Array, q_chunk: int) -> Array:
    """softmax(q kᵀ) v for heads-first [B, H, T, D] inputs, one (batch, head, query-chunk) tile at a time.

    Each score tile ([q_chunk, K] fp32) stays in cache instead of streaming a [B, H, T, K] tensor through memory
    for the max/exp/sum/normalise passes. When ``q_chunk`` does not divide T, one tile per (batch, head) holds
    every query.
    """
    b, h, t, d = q.shape
    c = q_chunk if t % q_chunk == 0 else t
    qt = q.reshape(b * h, t // c, c, d)
    kt, vt = k.reshape(b * h, d, k.shape[3]), v.reshape(b * h, v.shape[2], d)

    def one_head(args):
        qq, kk, vv = args

        def one_chunk(qc):
            s = jnp.einsum("qd,dk->qk", qc, kk, preferred_element_type=jnp.float32)
            return jnp.einsum("qk,kd->qd", jax.nn.softmax(s, axis=-1).astype(vv.dtype), vv)

        return jax.lax.map(one_chunk, qq)

    return jax.lax.map(one_head, (qt, kt, vt)).reshape(b, h, t, d)


class MLP(nn.Module):
    ffn_dim: int
    d_model: int
    dtype: Dtype = jnp.float32
    activation_dropout: float = 0.0

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        x = nn.Dense(self.ffn_dim, dtype=self.dtype, name="fc1")(x)
        x = jax.nn.gelu(x, approximate=False)  # exact erf GELU, as PyTorch
        x = nn.Dropout(self.activation_dropout)(x, deterministic=deterministic or self.activation_dropout == 0)
        return nn.Dense(self.d_model, dtype=self.dtype, name="fc2")(x)


class EncoderLayer(nn.Module):
    config: WhisperConfig
    dtype: Dtype = jnp.float32
    query_chunk: int | None = None

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> tuple[Array, None]:
        c = self.config
        drop = lambda y: nn.Dropout(c.dropout)(y, deterministic=deterministic or c.dropout == 0)
        attn = Attention(
            c.encoder_attention_heads, c.d_model, self.dtype, c.attention_dropout, self.query_chunk, name="self_attn"
        )
        h = _layer_norm("self_attn_layer_norm")(x).astype(self.dtype)
        k, v = attn.project_kv(h)
        x = x + drop(attn(h, k, v, None, deterministic))
        h = _layer_norm("final_layer_norm")(x).astype(self.dtype)
        x = x + drop(MLP(c.encoder_ffn_dim, c.d_model, self.dtype, c.activation_dropout, name="mlp")(h, deterministic))
        return x, None


class DecoderLayer(nn.Module):
    """Pre-LN decoder block.

    ``cache`` (per layer) holds the self-attention k/v for every position up to the cache length and the
    cross-attention k/v; without it the block runs causally on ``x`` alone.

    Returns ``(x, (new_cache, x or None))``: the second ``x`` (with ``output_hidden``) is what a scan stacks
    into the per-layer hidden states.
    """

    config: WhisperConfig
    dtype: Dtype = jnp.float32
    query_chunk: int | None = None

    @nn.compact
    def __call__(
        self,
        x: Array,
        cache: dict | None,
        encoder_out: Array | None,
        index: Array | None,
        deterministic: bool,
        output_hidden: bool = False,
    ) -> tuple[Array, tuple[dict | None, Array | None]]:
        c = self.config
        drop = lambda y: nn.Dropout(c.dropout)(y, deterministic=deterministic or c.dropout == 0)
        heads, attn_dropout = c.decoder_attention_heads, c.attention_dropout
        self_attn = Attention(heads, c.d_model, self.dtype, attn_dropout, name="self_attn")
        cross_attn = Attention(heads, c.d_model, self.dtype, attn_dropout, self.query_chunk, name="encoder_attn")
        t = x.shape[1]
        h = _layer_norm("self_attn_layer_norm")(x).astype(self.dtype)
        k, v = self_attn.project_kv(h)
        if cache is None:
            mask = jnp.tril(jnp.ones((t, t), bool))[None, None]
        else:
            # Write the new keys/values at `index`; a query at absolute position i sees keys j <= i.
            k = jax.lax.dynamic_update_slice(cache["self_k"], k.astype(cache["self_k"].dtype), (0, 0, 0, index))
            v = jax.lax.dynamic_update_slice(cache["self_v"], v.astype(cache["self_v"].dtype), (0, 0, index, 0))
            q_pos = index + jnp.arange(t)
            mask = (jnp.arange(k.shape[3])[None, :] <= q_pos[:, None])[None, None]
        x = x + drop(self_attn(h, k, v, mask, deterministic))

        h = _layer_norm("encoder_attn_layer_norm")(x).astype(self.dtype)
        if cache is not None and "cross_k" in cache:
            ck, cv = cache["cross_k"], cache["cross_v"]
        else:
            ck, cv = cross_attn.project_kv(encoder_out.astype(self.dtype))
        x = x + drop(cross_attn(h, ck, cv, None, deterministic))

        h = _layer_norm("final_layer_norm")(x).astype(self.dtype)
        x = x + drop(MLP(c.decoder_ffn_dim, c.d_model, self.dtype, c.activation_dropout, name="mlp")(h, deterministic))
        new_cache = None if cache is None else {"self_k": k, "self_v": v, "cross_k": ck, "cross_v": cv}
        return x, (new_cache, x if output_hidden else None)


def _stack(layer_cls, length: int, remat: bool, unroll: int | bool, in_axes, n_static: int = 1):
    """Layers held with a leading layer axis (nn.scan), optionally rematerialised."""
    if remat:
        # The last `n_static` arguments (flags such as `deterministic`) are static; self is argument 0 and
        # the carry 1. prevent_cse=False is safe inside scan.
        n_args = len(in_axes) + 2
        static = tuple(range(n_args - n_static, n_args))
        layer_cls = nn.remat(layer_cls, prevent_cse=False, static_argnums=static)
    return nn.scan(
        layer_cls,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=in_axes,
        length=length,
        unroll=unroll,
    )


class Encoder(nn.Module):
    config: WhisperConfig
    dtype: Dtype = jnp.float32
    remat: bool = False
    unroll: int | bool = 1
    attention_query_chunk: int | None = ATTENTION_QUERY_CHUNK

    @nn.compact
    def __call__(self, mel: Array, deterministic: bool = True) -> Array:
        c = self.config
        if mel.ndim != 3 or mel.shape[1:] != (c.num_mel_bins, c.n_frames):
            raise ValueError(
                f"encoder expects log-mel of shape [batch, {c.num_mel_bins}, {c.n_frames}], got {tuple(mel.shape)}"
            )
        x = jnp.transpose(mel, (0, 2, 1)).astype(self.dtype)  # NWC
        x = jax.nn.gelu(nn.Conv(c.d_model, (3,), padding=((1, 1),), dtype=self.dtype, name="conv1")(x), False)
        x = jax.nn.gelu(nn.Conv(c.d_model, (3,), (2,), padding=((1, 1),), dtype=self.dtype, name="conv2")(x), False)
        pos = nn.Embed(
            c.max_source_positions,
            c.d_model,
            name="embed_positions",
            embedding_init=lambda *_: jnp.asarray(sinusoids(c.max_source_positions, c.d_model)),
        )
        # The sinusoid table is stored like a weight but never trained.
        x = x.astype(jnp.float32) + jax.lax.stop_gradient(pos.embedding)[None]
        layers = _stack(EncoderLayer, c.encoder_layers, self.remat, self.unroll, (nn.broadcast,))
        x, _ = layers(c, self.dtype, self.attention_query_chunk, name="layers")(x, deterministic)
        return _layer_norm("layer_norm")(x)


class Decoder(nn.Module):
    config: WhisperConfig
    dtype: Dtype = jnp.float32
    remat: bool = False
    unroll: int | bool = 1
    unstacked: bool = False  # per-layer params/cache (generation: no per-step slicing of stacked arrays)
    attention_query_chunk: int | None = ATTENTION_QUERY_CHUNK

    def setup(self):
        c = self.config
        init = nn.initializers.normal(0.02)
        self.embed_tokens = nn.Embed(c.vocab_size, c.d_model, embedding_init=init, name="embed_tokens")
        self.embed_positions = nn.Embed(c.max_target_positions, c.d_model, embedding_init=init, name="embed_positions")
        chunk = self.attention_query_chunk
        if self.unstacked:
            self.layer_list = [DecoderLayer(c, self.dtype, chunk, name=f"layer_{i}") for i in range(c.decoder_layers)]
        else:
            in_axes = (0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast)
            layer_cls = _stack(DecoderLayer, c.decoder_layers, self.remat, self.unroll, in_axes, n_static=2)
            self.layers = layer_cls(c, self.dtype, chunk, name="layers")
        self.layer_norm = _layer_norm("layer_norm")

    def __call__(
        self,
        tokens: Array,
        encoder_out: Array | None,
        cache: dict | None = None,
        index: Array | int = 0,
        deterministic: bool = True,
        output_hidden_states: bool = False,
        project: bool = True,
    ):
        """Logits for ``tokens`` [B, T] at absolute positions ``index + arange(T)``.

        Returns ``(logits, new_cache)`` (``new_cache`` is None without a cache). With
        ``output_hidden_states``, also the hidden states [layers + 1, B, T, d_model]: the embedding output
        followed by every layer's output (before the final LayerNorm), for the hidden-state loss. With
        ``project=False``, the final (normalised) hidden states [B, T, d_model] take the logits' place: for a
        caller that projects onto part of the vocabulary (a draft model's shortlist).
        """
        t = tokens.shape[1]
        positions = jnp.asarray(index) + jnp.arange(t)
        x = self.embed_tokens(tokens) + self.embed_positions(positions)[None]
        embedded = x  # the first of the hidden states
        index = jnp.asarray(index, jnp.int32)
        if self.unstacked:  # cache: a list of per-layer dicts
            new_cache, hidden = [], []
            for i, layer in enumerate(self.layer_list):
                layer_cache = None if cache is None else cache[i]
                x, (nc, h) = layer(x, layer_cache, encoder_out, index, deterministic, output_hidden_states)
                new_cache.append(nc)
                hidden.append(h)
            new_cache = None if cache is None else new_cache
            hidden = jnp.stack(hidden) if output_hidden_states else None
        else:
            x, (new_cache, hidden) = self.layers(x, cache, encoder_out, index, deterministic, output_hidden_states)
        x = self.layer_norm(x)
        if not project:
            logits = x.astype(self.dtype)
        else:
            logits = self.embed_tokens.attend(x.astype(self.dtype)).astype(jnp.float32)  # tied output projection
        if not output_hidden_states:
            return logits, new_cache
        return logits, new_cache, jnp.concatenate([embedded[None].astype(hidden.dtype), hidden])


class Whisper(nn.Module):
    """Whisper encoder-decoder. ``encode`` and ``decode`` are separate entry points so that one encoder pass can
    feed several decoders (distillation) and generation can run the decoder step by step.

    ``attention_query_chunk``: when set (the default), long unmasked attention (≥ 512 queries and keys: the
    encoder) runs one (example, head, chunk of this many queries) tile at a time, which keeps score blocks in
    cache on CPU; None keeps the full-matrix form that TPU/GPU compilers fuse. The model never looks at the
    backend: the code that builds a program for one passes ``parallel.attention_query_chunk(platform)``. Both
    forms compute the same numbers up to float rounding.
    """

    config: WhisperConfig
    dtype: Dtype = jnp.float32
    remat: bool = False
    unroll: int | bool = 1
    unstacked_decoder: bool = False
    attention_query_chunk: int | None = ATTENTION_QUERY_CHUNK

    def setup(self):
        chunk = self.attention_query_chunk
        self.encoder = Encoder(self.config, self.dtype, self.remat, self.unroll, chunk)
        self.decoder = Decoder(self.config, self.dtype, self.remat, self.unroll, self.unstacked_decoder, chunk)

    def encode(self, mel: Array, deterministic: bool = True) -> Array:
        return self.encoder(mel, deterministic)

    def decode(
        self,
        tokens: Array,
        encoder_out: Array | None,
        cache: dict | None = None,
        index: Array | int = 0,
        deterministic: bool = True,
        output_hidden_states: bool = False,
        project: bool = True,
    ):
        """See :class:`Decoder`: ``(logits, new_cache)``, plus stacked hidden states if asked for."""
        return self.decoder(tokens, encoder_out, cache, index, deterministic, output_hidden_states, project)

    def __call__(self, mel: Array, tokens: Array, deterministic: bool = True) -> Array:
        logits, _ = self.decode(tokens, self.encode(mel, deterministic), deterministic=deterministic)
        return logits


def init_cache(
    config: WhisperConfig, batch: int, length: int, dtype: Dtype = jnp.float32, per_layer: bool = False
) -> dict | list[dict]:
    """Empty self-attention cache for ``length`` positions (the cross-attention k/v are filled by the first decode).

    Stacked [layers, batch, ...] arrays for the scanned decoder, or one dict per layer (``per_layer``) for
    ``Whisper(..., unstacked_decoder=True)``. k is [batch, heads, head_dim, length] and v [batch, heads, length,
    head_dim] (see ``Attention.project_kv``).
    """
    if length > config.max_target_positions:
        raise ValueError(f"cache length {length} exceeds max_target_positions={config.max_target_positions}")
    h, d = config.decoder_attention_heads, config.d_model // config.decoder_attention_heads
    k, v = (batch, h, d, length), (batch, h, length, d)
    if per_layer:
        return [{"self_k": jnp.zeros(k, dtype), "self_v": jnp.zeros(v, dtype)} for _ in range(config.decoder_layers)]
    n = config.decoder_layers
    return {"self_k": jnp.zeros((n, *k), dtype), "self_v": jnp.zeros((n, *v), dtype)}


def init_params(config: WhisperConfig, rng: Array | int = 0) -> dict:
    """Randomly initialised fp32 parameters (for tests and from-scratch configs)."""
    if isinstance(rng, int):
        rng = jax.random.PRNGKey(rng)
    model = Whisper(config)
    mel = jnp.zeros((1, config.num_mel_bins, config.n_frames), jnp.float32)
    tokens = jnp.zeros((1, 1), jnp.int32)
    return jax.jit(model.init)(rng, mel, tokens)["params"]


def param_shapes(config: WhisperConfig) -> dict:
    """Shape/dtype tree of the parameters, without allocating them."""
    model = Whisper(config)
    mel = jax.ShapeDtypeStruct((1, config.num_mel_bins, config.n_frames), jnp.float32)
    tokens = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), mel, tokens)["params"]


def count_params(params: Any) -> int:
    """Number of parameters (scalars) in a parameter tree."""
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


def unstack_decoder(params: dict) -> dict:
    """Params for ``Whisper(..., unstacked_decoder=True)``: the decoder layers as ``layer_{i}`` subtrees.

    Called inside the generation jit, so that the per-layer slices are taken once, before the decode loop, instead
    of a dynamic slice of every stacked weight and cache at every step.
    """
    dec = dict(params["decoder"])
    stacked = dec.pop("layers")
    n = jax.tree_util.tree_leaves(stacked)[0].shape[0]
    for i in range(n):
        dec[f"layer_{i}"] = jax.tree_util.tree_map(operator.itemgetter(i), stacked)
    return {**params, "decoder": dec}
