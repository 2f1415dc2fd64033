"""Distillation losses against direct numpy computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distil_whisper_jax.core import losses


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def logits():
    rng = np.random.default_rng(0)
    b, length, v = 3, 5, 11
    s = rng.standard_normal((b, length, v)).astype(np.float32) * 3
    t = rng.standard_normal((b, length, v)).astype(np.float32) * 3
    labels = rng.integers(0, v, (b, length)).astype(np.int32)
    labels[0, :2] = -100  # prompt positions
    labels[2, 3:] = -100  # padding
    return s, t, labels


def test_cross_entropy_matches_numpy(logits):
    s, _, labels = logits
    total, count = losses.cross_entropy(jnp.asarray(s), jnp.asarray(labels))
    logp = _np_log_softmax(s.astype(np.float64))
    m = labels >= 0
    expected = -sum(logp[i, j, labels[i, j]] for i, j in zip(*np.nonzero(m)))
    assert int(count) == m.sum() == 11
    np.testing.assert_allclose(float(total), expected, rtol=1e-5)


def test_kl_matches_numpy(logits):
    s, t, labels = logits
    for temp in (1.0, 2.0):
        total, count = losses.kl_divergence(jnp.asarray(t), jnp.asarray(s), jnp.asarray(labels), temp)
        log_p = _np_log_softmax(t.astype(np.float64) / temp)
        log_q = _np_log_softmax(s.astype(np.float64) / temp)
        per_tok = (np.exp(log_p) * (log_p - log_q)).sum(-1)
        expected = temp**2 * per_tok[labels >= 0].sum()
        assert int(count) == 11
        np.testing.assert_allclose(float(total), expected, rtol=1e-5)


def test_kl_zero_when_student_is_teacher(logits):
    _, t, labels = logits
    total, _ = losses.kl_divergence(jnp.asarray(t), jnp.asarray(t), jnp.asarray(labels), 2.0)
    assert abs(float(total)) < 1e-5
    # ... and its gradient w.r.t. the student vanishes there.
    g = jax.grad(lambda z: losses.kl_divergence(jnp.asarray(t), z, jnp.asarray(labels), 2.0)[0])(jnp.asarray(t))
    assert float(jnp.abs(g).max()) < 1e-6


def test_padding_ignored(logits):
    s, t, labels = logits
    garbage_s, garbage_t = s.copy(), t.copy()
    ignored = labels < 0
    garbage_s[ignored] = 1e4 * np.random.default_rng(1).standard_normal((ignored.sum(), s.shape[-1]))
    garbage_t[ignored] = -garbage_s[ignored]
    ref_loss, ref_m = losses.distillation_loss(jnp.asarray(s), jnp.asarray(t), jnp.asarray(labels))
    loss, m = losses.distillation_loss(jnp.asarray(garbage_s), jnp.asarray(garbage_t), jnp.asarray(labels))
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
    assert int(m["num_tokens"]) == 11
    # A batch of only ignored labels gives 0, not NaN.
    empty, _ = losses.distillation_loss(jnp.asarray(s), jnp.asarray(t), jnp.full(labels.shape, -100))
    assert float(empty) == 0.0


def test_weights_and_global_normaliser(logits):
    s, t, labels = logits
    s, t, labels = jnp.asarray(s), jnp.asarray(t), jnp.asarray(labels)
    ce, n = losses.cross_entropy(s, labels)
    kl, _ = losses.kl_divergence(t, s, labels, 2.0)
    loss, m = losses.distillation_loss(s, t, labels, kd_temperature=2.0, kl_weight=1.0)
    np.testing.assert_allclose(float(loss), (0.8 * float(ce) + float(kl)) / int(n), rtol=1e-6)  # original default
    loss, _ = losses.distillation_loss(s, None, labels, kl_weight=0.0)
    np.testing.assert_allclose(float(loss), float(ce) / int(n), rtol=1e-6)  # CE only → weight 1.0
    loss, _ = losses.distillation_loss(s, t, labels, kl_weight=0.5, ce_weight=2.0)
    np.testing.assert_allclose(float(loss), (2.0 * float(ce) + 0.5 * float(kl)) / int(n), rtol=1e-6)
    # Split the batch in two shards normalised by the global count: the parts add up to the whole.
    parts = [losses.distillation_loss(s[sl], t[sl], labels[sl], num_tokens=n)[0] for sl in (slice(0, 1), slice(1, 3))]
    whole, _ = losses.distillation_loss(s, t, labels)
    np.testing.assert_allclose(float(sum(parts)), float(whole), rtol=1e-6)


def test_hidden_mse_and_layer_map():
    assert losses.mse_layer_map(32, 2) == [15, 31]
    assert losses.mse_layer_map(12, 3) == [3, 7, 11]
    assert losses.mse_layer_map(4, 1) == [3]
    rng = np.random.default_rng(2)
    sh = rng.standard_normal((3, 2, 4, 6)).astype(np.float32)  # embeddings + 2 student layers
    th = rng.standard_normal((5, 2, 4, 6)).astype(np.float32)  # embeddings + 4 teacher layers
    labels = np.array([[1, 2, -100, -100], [3, 4, 5, 6]])
    total, count = losses.hidden_mse(list(sh), list(th), jnp.asarray(labels))
    pairs = [(0, 0), (1, 2), (2, 4)]  # map(4, 2) = [1, 3] → hidden index +1
    per_tok = sum(((sh[a] - th[b]) ** 2).mean(-1) for a, b in pairs)
    np.testing.assert_allclose(float(total), per_tok[labels >= 0].sum(), rtol=1e-5)
    assert int(count) == 6
    # Stacked [layers + 1, B, L, D] arrays, as the model's decoder returns them: the same sum.
    stacked, _ = losses.hidden_mse(jnp.asarray(sh), jnp.asarray(th), jnp.asarray(labels))
    assert float(stacked) == pytest.approx(float(total), rel=1e-6)
