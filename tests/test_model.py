"""Flax Whisper on small random configs: shapes, KV cache, scan/remat, save/load round trip, and
parity with transformers PyTorch on configs unlike any released model (128 mels, odd layer counts)."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from distil_whisper_jax.core import parallel
from distil_whisper_jax.core.model import (
    Whisper,
    WhisperConfig,
    count_params,
    init_cache,
    init_params,
    param_shapes,
    preset,
    unstack_decoder,
)
from distil_whisper_jax.weights.convert import tree_equal
from distil_whisper_jax.weights.convert.hf import flax_to_hf, hf_to_flax, write_hf_dir
from distil_whisper_jax.weights.loading import load_pretrained
from tests.conftest import torch_whisper

CONFIGS = {
    "multilingual-128mel": WhisperConfig(
        vocab_size=51866,
        num_mel_bins=128,
        d_model=64,
        encoder_layers=3,
        decoder_layers=1,
        encoder_attention_heads=4,
        decoder_attention_heads=2,
        encoder_ffn_dim=96,
        decoder_ffn_dim=160,
        max_target_positions=64,
    ),
    "english-odd": WhisperConfig(
        vocab_size=51864,
        num_mel_bins=80,
        d_model=48,
        encoder_layers=1,
        decoder_layers=3,
        encoder_attention_heads=3,
        decoder_attention_heads=6,
        encoder_ffn_dim=192,
        decoder_ffn_dim=192,
        max_target_positions=32,
    ),
    "short-context": WhisperConfig(
        vocab_size=51865,
        num_mel_bins=80,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=750,
        max_target_positions=40,
    ),
}


@functools.cache
def _setup(name):
    config = CONFIGS[name]
    params = init_params(config, 0)
    rng = np.random.default_rng(1)
    mel = rng.standard_normal((2, config.num_mel_bins, config.n_frames)).astype(np.float32)
    tokens = rng.integers(0, config.vocab_size, (2, 7)).astype(np.int32)
    return config, params, mel, tokens


@pytest.fixture(scope="module", params=list(CONFIGS), ids=list(CONFIGS))
def setup(request):
    return _setup(request.param)


# The compile-heavy checks (scan vs unroll vs remat, gradients, dropout) run on one config in CI; the
# other configs add nothing new to them and take ~30 s each, so they run with `-m slow`.
@pytest.fixture(
    scope="module",
    params=[pytest.param(n, marks=[] if n == "english-odd" else pytest.mark.slow) for n in CONFIGS],
    ids=list(CONFIGS),
)
def setup_heavy(request):
    return _setup(request.param)


def test_shapes_and_param_tree(setup):
    config, params, mel, tokens = setup
    logits = Whisper(config).apply({"params": params}, mel, tokens)
    assert logits.shape == (2, 7, config.vocab_size) and logits.dtype == jnp.float32
    shapes = jax.tree_util.tree_map(lambda x: x.shape, param_shapes(config))
    assert shapes == jax.tree_util.tree_map(lambda x: x.shape, params)
    assert params["decoder"]["layers"]["self_attn"]["q_proj"]["kernel"].shape[0] == config.decoder_layers
    assert "bias" not in params["encoder"]["layers"]["self_attn"]["k_proj"]  # Whisper has no key bias


def test_cached_decoding_equals_full_pass(setup):
    config, params, mel, tokens = setup
    model = Whisper(config)
    full = model.apply({"params": params}, mel, tokens)
    enc = model.apply({"params": params}, mel, method=Whisper.encode)
    cache = init_cache(config, 2, 10)
    out, cache = model.apply({"params": params}, tokens[:, :3], enc, cache, 0, method=Whisper.decode)
    steps = [out]
    for i in range(3, 7):
        out, cache = model.apply({"params": params}, tokens[:, i : i + 1], None, cache, i, method=Whisper.decode)
        steps.append(out)
    np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=2e-5)


def test_unrolled_and_remat_are_the_same_function(setup_heavy):
    config, params, mel, tokens = setup_heavy
    base = Whisper(config)
    for variant in (Whisper(config, unroll=True), Whisper(config, remat=True)):
        np.testing.assert_allclose(
            variant.apply({"params": params}, mel, tokens), base.apply({"params": params}, mel, tokens), atol=1e-5
        )

    def loss(p, model):
        return jnp.mean(model.apply({"params": p}, mel, tokens) ** 2)

    g_base = jax.grad(loss)(params, base)
    g_remat = jax.grad(loss)(params, Whisper(config, remat=True))
    for a, b in zip(jax.tree_util.tree_leaves(g_base), jax.tree_util.tree_leaves(g_remat)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_dropout_is_active_only_when_training(setup_heavy):
    config, params, mel, tokens = setup_heavy
    model = Whisper(dataclasses.replace(config, dropout=0.3, attention_dropout=0.1, activation_dropout=0.1))
    a = model.apply({"params": params}, mel, tokens, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)})
    b = model.apply({"params": params}, mel, tokens, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})
    c = model.apply({"params": params}, mel, tokens)
    assert not np.allclose(a, b)
    np.testing.assert_allclose(c, Whisper(config).apply({"params": params}, mel, tokens), atol=1e-6)


def test_save_load_round_trip_and_transformers_parity(setup, tmp_path):
    config, params, mel, tokens = setup
    write_hf_dir(tmp_path, config, params)
    loaded = load_pretrained(tmp_path)
    assert loaded.config == config and loaded.fmt == "hf"
    assert tree_equal(loaded.params, jax.device_get(params))
    ours = np.asarray(Whisper(config).apply({"params": params}, mel, tokens))
    ref = torch_whisper(config, flax_to_hf(params, config))
    with torch.no_grad():
        theirs = ref(input_features=torch.from_numpy(mel), decoder_input_ids=torch.from_numpy(tokens).long()).logits
    np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-4)
    # transformers itself reads what we wrote
    from transformers import WhisperForConditionalGeneration

    hf = WhisperForConditionalGeneration.from_pretrained(tmp_path)
    np.testing.assert_array_equal(
        hf.model.decoder.embed_tokens.weight.detach().numpy(),
        np.asarray(params["decoder"]["embed_tokens"]["embedding"]),
    )


def test_hf_to_flax_rejects_mismatched_state(setup):
    config, params, _, _ = setup
    state = flax_to_hf(params, config)
    bad = dict(state)
    del bad["model.decoder.layer_norm.bias"]
    with pytest.raises(ValueError, match="missing.*layer_norm.bias"):
        hf_to_flax(bad, config, source="x")
    bad = dict(state, **{"model.encoder.layers.0.self_attn.k_proj.bias": np.zeros(config.d_model)})
    with pytest.raises(ValueError, match="unexpected"):
        hf_to_flax(bad, config)
    bad = dict(state, **{"model.encoder.conv1.bias": np.zeros(config.d_model + 1)})
    with pytest.raises(ValueError, match="shape"):
        hf_to_flax(bad, config)


@pytest.mark.parametrize("name", ["tiny.en", "base", "small.en", "medium", "large-v2", "large-v3", "large-v3-turbo"])
def test_presets_have_transformers_parameter_counts(name):
    from transformers import WhisperConfig as HFConfig
    from transformers import WhisperForConditionalGeneration

    from distil_whisper_jax.weights.convert.hf import hf_config_dict

    config = preset(name)
    with torch.device("meta"):
        ref = WhisperForConditionalGeneration(HFConfig(**hf_config_dict(config)))
    n_ref = sum(p.numel() for n, p in ref.named_parameters())  # tied proj_out counted once
    assert count_params(param_shapes(config)) == n_ref


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        WhisperConfig(d_model=100, encoder_attention_heads=3)
    with pytest.raises(ValueError, match="unknown Whisper size"):
        preset("huge")
    with pytest.raises(ValueError, match="log-mel of shape"):
        c = CONFIGS["english-odd"]
        Whisper(c).init(jax.random.PRNGKey(0), jnp.zeros((1, 80, 100)), jnp.zeros((1, 1), jnp.int32))


def test_attention_tiling_is_a_model_field_not_a_backend_query(monkeypatch):
    """The CPU attention tiling is chosen by the caller (``attention_query_chunk``): the model never asks
    JAX for the backend, the tiled and full-matrix forms compute the same encoder output, and only the
    tiled form loops over tiles."""
    config, params, mel, _ = _setup("short-context")  # 750 encoder positions: long enough to tile
    x = jnp.asarray(mel[:1])

    def encode(chunk):
        model = Whisper(config, attention_query_chunk=chunk)
        return model, lambda p, m: model.apply({"params": p}, m, method=Whisper.encode)

    def no_backend_query(*_):
        raise AssertionError("the model asked for the backend")

    monkeypatch.setattr(jax, "default_backend", no_backend_query)
    outputs = {chunk: np.asarray(jax.jit(encode(chunk)[1])(params, x)) for chunk in (None, 750, 250)}
    monkeypatch.undo()
    np.testing.assert_allclose(outputs[750], outputs[None], atol=2e-5)
    np.testing.assert_allclose(outputs[250], outputs[None], atol=2e-5)
    # lax.map over tiles is a scan inside the layer scan; the full-matrix form has only the layer scan
    scans = {chunk: str(jax.make_jaxpr(encode(chunk)[1])(params, x)).count("scan[") for chunk in (None, 750)}
    assert scans[None] == 1 and scans[750] > 1, scans
    assert parallel.attention_query_chunk("cpu") == 750
    assert parallel.attention_query_chunk("tpu") is None and parallel.attention_query_chunk("gpu") is None


def test_decoder_hidden_states(setup_heavy):
    """``output_hidden_states``: the embedding output and every layer's output, stacked, the same from the
    scanned, unrolled and per-layer decoders; the last one, through the final LayerNorm and the tied
    projection, gives the logits."""
    config, params, mel, tokens = setup_heavy
    model = Whisper(config)
    enc = model.apply({"params": params}, mel, method=Whisper.encode)
    logits, cache, hidden = model.apply({"params": params}, tokens, enc, output_hidden_states=True, method="decode")
    assert cache is None and hidden.shape == (config.decoder_layers + 1, 2, 7, config.d_model)
    plain, _ = model.apply({"params": params}, tokens, enc, method=Whisper.decode)
    np.testing.assert_array_equal(logits, plain)
    d = params["decoder"]
    embedded = d["embed_tokens"]["embedding"][tokens] + d["embed_positions"]["embedding"][:7][None]
    np.testing.assert_allclose(hidden[0], embedded, atol=1e-6)
    x = np.asarray(hidden[-1], np.float64)
    x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    x = x * d["layer_norm"]["scale"] + d["layer_norm"]["bias"]
    np.testing.assert_allclose(x @ np.asarray(d["embed_tokens"]["embedding"], np.float64).T, logits, atol=1e-4)
    unrolled = Whisper(config, unroll=True)
    per_layer = Whisper(config, unstacked_decoder=True)
    for variant, p in ((unrolled, params), (per_layer, unstack_decoder(params))):
        _, _, h = variant.apply({"params": p}, tokens, enc, output_hidden_states=True, method="decode")
        np.testing.assert_allclose(h, hidden, atol=1e-5)
