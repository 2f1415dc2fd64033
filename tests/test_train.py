"""Training core: schedules, optimiser masks, and the jitted step's invariances (device count,
gradient accumulation, shared encoder pass) on a small random teacher/student pair."""

import math
import operator

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jax_core

from distil_whisper_jax.core import losses, train
from distil_whisper_jax.core.model import DecoderLayer, Whisper, WhisperConfig, param_shapes
from distil_whisper_jax.weights.student import make_student

TEACHER = WhisperConfig(
    vocab_size=96,
    num_mel_bins=8,
    d_model=32,
    encoder_layers=1,
    encoder_attention_heads=2,
    decoder_layers=4,
    decoder_attention_heads=2,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    max_source_positions=16,
    max_target_positions=16,
)
STUDENT = TEACHER.replace(decoder_layers=2)
STEPS = 3
SHARED = train.StepOptions(freeze_encoder=True, share_encoder=True)  # the student's encoder is the teacher's
FAST = {"xla_backend_optimization_level": 0}  # halves XLA:CPU compile time; these models are tiny


@pytest.fixture(scope="module")
def pair():
    model, rng = Whisper(TEACHER), jax.random.PRNGKey(0)
    mel, tokens = jnp.zeros((1, TEACHER.num_mel_bins, TEACHER.n_frames)), jnp.zeros((1, 1), jnp.int32)
    teacher = jax.jit(model.init, compiler_options=FAST)(rng, mel, tokens)["params"]  # = init_params, faster
    config, student, maps = make_student(TEACHER, teacher, 2)
    assert config == STUDENT and maps["decoder_layer_map"] == [0, 3]
    return teacher, student


def _batch(seed, b=8, length=8):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, TEACHER.vocab_size, (b, length)).astype(np.int32)
    labels[:, :2] = -100  # prompt
    for i in range(b):  # ragged padding
        labels[i, length - (i % 4) :] = -100
    return {
        "input_features": rng.standard_normal((b, TEACHER.num_mel_bins, TEACHER.n_frames)).astype(np.float32),
        "decoder_input_ids": rng.integers(0, TEACHER.vocab_size, (b, length)).astype(np.int32),
        "labels": labels,
    }


def _tx(params, freeze_encoder=True, **kw):
    return train.make_optimizer(
        params,
        schedule=train.make_schedule("linear", 1e-2, 1, 10),
        freeze_encoder=freeze_encoder,
        weight_decay=0.01,
        **kw,
    )


def _run(pair, devices, grad_accum_steps=1, **kw):
    teacher, student = pair
    tx = _tx(student)
    options = train.StepOptions(freeze_encoder=True, share_encoder=True, grad_accum_steps=grad_accum_steps, **kw)
    step = train.make_train_step(STUDENT, TEACHER, options, tx, mesh=train.data_mesh(devices), compiler_options=FAST)
    state = train.create_train_state(student, tx, seed=0)
    history = []
    for i in range(STEPS):
        state, m = step(state, teacher, _batch(i))
        history.append({k: float(v) for k, v in m.items()})
    return jax.device_get(state), history


@pytest.fixture(scope="module")
def reference(pair):
    """1 device, no accumulation."""
    return _run(pair, jax.devices()[:1])


def _assert_same_run(run, ref):
    (state, hist), (ref_state, ref_hist) = run, ref
    assert int(state.step) == int(ref_state.step) == STEPS
    for key in ("loss", "ce", "kl", "grad_norm", "lr", "num_tokens"):
        np.testing.assert_allclose(
            [h[key] for h in hist], [h[key] for h in ref_hist], rtol=2e-5, atol=1e-6, err_msg=key
        )
    # Adam normalises each gradient element, so fp32 reassociation noise in near-zero gradients shows
    # up at ~1e-6 in the params; every decoder param moves by ≥ 1e-2 over the run (LR 1e-2, 3 steps).
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=5e-6)


def test_schedules():
    lin = train.make_schedule("linear", 1.0, 2, 6)
    np.testing.assert_allclose([lin(i) for i in range(8)], [0, 0.5, 1, 0.75, 0.5, 0.25, 0, 0], atol=1e-7)
    cos = train.make_schedule("cosine", 1.0, 2, 6)
    np.testing.assert_allclose([cos(i) for i in (0, 1, 2, 4, 6, 9)], [0, 0.5, 1, 0.5, 0, 0], atol=1e-7)
    cww = train.make_schedule("constant_with_warmup", 1.0, 4)
    np.testing.assert_allclose([cww(i) for i in (0, 2, 4, 100)], [0, 0.5, 1, 1])
    assert float(train.make_schedule("constant", 3e-4, 10)(0)) == pytest.approx(3e-4)
    assert float(train.make_schedule("linear", 1.0, 0, 4)(0)) == 1.0  # no warmup: full LR at once
    with pytest.raises(ValueError, match="lr_scheduler_type"):
        train.make_schedule("polynomial", 1.0)
    with pytest.raises(ValueError, match="max_steps"):
        train.make_schedule("linear", 1.0, 10, 5)


def test_weight_decay_mask_and_frozen_params(pair):
    _, student = pair
    mask = train.decay_mask(student)
    assert mask["decoder"]["layers"]["mlp"]["fc1"]["kernel"]
    assert mask["decoder"]["embed_tokens"]["embedding"]
    assert not mask["decoder"]["layers"]["mlp"]["fc1"]["bias"]
    assert not mask["decoder"]["layer_norm"]["scale"] and not mask["decoder"]["layer_norm"]["bias"]
    assert not mask["decoder"]["layers"]["self_attn_layer_norm"]["scale"]

    labels = train.param_labels(student, freeze_encoder=False)
    assert labels["encoder"]["embed_positions"]["embedding"] == "frozen"  # the sinusoid table, always
    assert labels["encoder"]["conv1"]["kernel"] == "trainable"
    assert set(jax.tree.leaves(train.param_labels(student, True)["encoder"])) == {"frozen"}

    # No optimiser state for frozen params: Adam's two moments cover exactly the decoder.
    n_decoder = sum(x.size for x in jax.tree.leaves(student["decoder"]))
    state_size = sum(np.size(x) for x in jax.tree.leaves(_tx(student).init(student)))
    assert 2 * n_decoder <= state_size < 2 * n_decoder + 16

    # One update with zero gradients: only decayed leaves move (decay ∝ lr·wd·p); frozen never.
    tx = train.make_optimizer(
        student, schedule=train.make_schedule("constant", 0.5), weight_decay=0.1, freeze_encoder=True
    )
    zeros = jax.tree.map(jnp.zeros_like, student)
    updates, _ = jax.jit(tx.update, compiler_options=FAST)(zeros, tx.init(student), student)
    moved = jax.tree.map(lambda u: bool(np.any(u != 0)), updates)
    assert moved["decoder"]["layers"]["mlp"]["fc1"]["kernel"] and moved["decoder"]["embed_tokens"]["embedding"]
    assert not moved["decoder"]["layers"]["mlp"]["fc1"]["bias"] and not moved["decoder"]["layer_norm"]["scale"]
    assert not any(jax.tree.leaves(moved["encoder"]))
    np.testing.assert_allclose(
        updates["decoder"]["layers"]["mlp"]["fc1"]["kernel"],
        -0.5 * 0.1 * student["decoder"]["layers"]["mlp"]["fc1"]["kernel"],
        rtol=1e-6,
    )


def test_frozen_encoder_unchanged_decoder_trained(pair, reference):
    _, student = pair
    state, hist = reference
    for a, b in zip(jax.tree.leaves(state.params["encoder"]), jax.tree.leaves(student["encoder"])):
        np.testing.assert_array_equal(a, b)
    diff = [
        float(np.abs(a - b).max())
        for a, b in zip(jax.tree.leaves(state.params["decoder"]), jax.tree.leaves(student["decoder"]))
    ]
    assert min(diff) > 0  # every decoder leaf moved
    assert [h["lr"] for h in hist] == pytest.approx([0.0, 1e-2, 1e-2 * 8 / 9])  # schedule counts updates
    assert all(np.isfinite(h["loss"]) and h["kl"] > 0 for h in hist)


def test_device_count_invariance(pair, reference):
    assert len(jax.devices()) == 8
    _assert_same_run(_run(pair, jax.devices()), reference)


def test_grad_accumulation_equals_big_batch(pair, reference):
    # 4 micro-batches of 2 == 1 batch of 8: same updates, same step count and LR per update.
    _assert_same_run(_run(pair, jax.devices()[:1], grad_accum_steps=4), reference)


def test_shared_encoder_pass_equals_separate_passes(pair):
    teacher, student = pair
    batch = {k: jnp.asarray(v) for k, v in _batch(7).items()}
    rng = jax.random.PRNGKey(0)
    results = {}
    for share in (True, False):
        fn = train.make_loss_fn(STUDENT, TEACHER, train.StepOptions(freeze_encoder=True, share_encoder=share))
        results[share] = jax.jit(jax.value_and_grad(fn, has_aux=True), compiler_options=FAST)(
            student, teacher, batch, rng, 20
        )
    (loss, _), grads = results[True]
    np.testing.assert_allclose(float(results[False][0][0]), float(loss), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(results[False][1]), jax.tree.leaves(grads)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    assert not any(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads["encoder"]))
    # Cached teacher encoder outputs in place of the features: the same loss.
    enc = train.encoder_outputs(TEACHER, teacher, batch["input_features"], mesh=train.data_mesh(jax.devices()[:1]))
    cached = {k: v for k, v in batch.items() if k != "input_features"} | {"encoder_outputs": enc}
    fn = train.make_loss_fn(STUDENT, TEACHER, SHARED)
    np.testing.assert_allclose(
        float(jax.jit(fn, compiler_options=FAST)(student, teacher, cached, rng, 20)[0]), float(loss), rtol=1e-6
    )


def test_share_encoder_refused_when_encoders_differ(pair):
    teacher, student = pair
    with pytest.raises(ValueError, match="encoder architecture"):
        train.make_loss_fn(STUDENT.replace(encoder_layers=2), TEACHER, SHARED)
    with pytest.raises(ValueError, match="freeze_encoder"):
        train.make_loss_fn(STUDENT, TEACHER, train.StepOptions(freeze_encoder=False, share_encoder=True))
    with pytest.raises(ValueError, match="vocab_size"):
        train.make_loss_fn(STUDENT.replace(vocab_size=97), TEACHER, train.StepOptions())
    with pytest.raises(ValueError, match="gradient_accumulation_steps must be ≥ 1"):
        train.StepOptions(grad_accum_steps=0)
    assert train.encoders_identical(student, teacher)
    other = {**student, "encoder": jax.tree.map(lambda a: a + 1, student["encoder"])}
    assert not train.encoders_identical(other, teacher)
    options = train.StepOptions(freeze_encoder=True, grad_accum_steps=3)
    step = train.make_train_step(STUDENT, TEACHER, options, _tx(student))
    with pytest.raises(ValueError, match="multiple of local devices"):
        step(train.create_train_state(student, _tx(student)), teacher, _batch(0))


def test_bf16_dropout_unfrozen_step(pair):
    """bf16 compute, fp32 master weights; dropout on; encoder trained except its position table."""
    teacher, student = pair
    config = STUDENT.replace(dropout=0.1, attention_dropout=0.1, activation_dropout=0.1)
    tx = _tx(student, freeze_encoder=False)
    step = train.make_train_step(config, TEACHER, train.StepOptions(dtype=jnp.bfloat16), tx, compiler_options=FAST)
    state = train.create_train_state(student, tx, seed=1)
    for i in range(2):
        state, m = step(state, teacher, _batch(i))
        assert np.isfinite(float(m["loss"])) and float(m["grad_norm"]) > 0
    params = jax.device_get(state.params)
    assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype(np.float32)}
    assert {x.dtype for x in jax.tree.leaves(jax.device_get(state.opt_state))} <= {
        np.dtype(np.float32),
        np.dtype(np.int32),
    }
    assert np.abs(params["encoder"]["conv1"]["kernel"] - student["encoder"]["conv1"]["kernel"]).max() > 0
    np.testing.assert_array_equal(
        params["encoder"]["embed_positions"]["embedding"], student["encoder"]["embed_positions"]["embedding"]
    )


def test_eval_step_and_hidden_states(pair, reference):
    teacher, student = pair
    ev = train.make_eval_step(STUDENT, TEACHER, SHARED, compiler_options=FAST)
    m = ev(student, teacher, _batch(0))
    # CE does not depend on temperature: the eval CE at the initial params is the first train step's.
    assert float(m["ce"]) == pytest.approx(reference[1][0]["ce"], rel=1e-5)
    assert float(m["kl"]) > 0 and float(m["ce_sum"]) == pytest.approx(float(m["ce"]) * float(m["num_tokens"]))
    # The decoder pass with hidden states (for the MSE term) computes the same logits as Whisper.decode.
    b = _batch(1)
    enc = jax.random.normal(jax.random.PRNGKey(0), (8, TEACHER.max_source_positions, TEACHER.d_model))
    ref, _ = Whisper(STUDENT).apply({"params": student}, b["decoder_input_ids"], enc, method=Whisper.decode)
    logits, _, hidden = jax.jit(
        lambda p, t, e: Whisper(STUDENT).apply({"params": p}, t, e, output_hidden_states=True, method="decode"),
        compiler_options=FAST,
    )(student, b["decoder_input_ids"], enc)
    assert len(hidden) == STUDENT.decoder_layers + 1
    np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-5)


def _layer_by_layer_decode(config, params, tokens, encoder_out):
    """Independent decoder forward for the hidden-state loss: embeddings, then each stacked layer applied
    on its own slice of the parameters, then a hand-written LayerNorm and the tied projection. Returns
    the logits and [embedding output, layer 1 output, ...]."""
    d = params["decoder"]
    x = d["embed_tokens"]["embedding"][tokens] + d["embed_positions"]["embedding"][: tokens.shape[1]][None]
    hidden, layer = [x], DecoderLayer(config)
    for i in range(config.decoder_layers):
        p_i = jax.tree.map(operator.itemgetter(i), d["layers"])
        x, _ = layer.apply({"params": p_i}, x, None, encoder_out, jnp.zeros((), jnp.int32), True)
        hidden.append(x)
    mean = jnp.mean(x, -1, keepdims=True)
    x = (x - mean) * jax.lax.rsqrt(jnp.mean(jnp.square(x - mean), -1, keepdims=True) + 1e-5)
    x = x * d["layer_norm"]["scale"] + d["layer_norm"]["bias"]
    return jnp.einsum("bld,vd->blv", x, d["embed_tokens"]["embedding"]), hidden


def test_mse_term_equals_layer_by_layer_reference(pair):
    """The loss with the hidden-state term, taken from the model's own decoder pass, has the value and
    the gradients of the same loss built on an independent layer-by-layer decoder forward."""
    teacher, student = pair
    student = jax.tree.map(lambda a: a + 0.01 * np.sign(a), student)  # differ from the teacher's layers
    batch = {k: jnp.asarray(v) for k, v in _batch(5).items()}
    weights = {"kl_weight": 1.0, "mse_weight": 0.5, "kd_temperature": 2.0}
    fn = train.make_loss_fn(STUDENT, TEACHER, train.StepOptions(freeze_encoder=True, share_encoder=True, **weights))

    def reference(params, teacher_params, batch, rng, num_tokens):
        enc = Whisper(TEACHER).apply({"params": teacher_params}, batch["input_features"], method=Whisper.encode)
        enc = jax.lax.stop_gradient(enc)
        s_logits, s_hidden = _layer_by_layer_decode(STUDENT, params, batch["decoder_input_ids"], enc)
        t_logits, t_hidden = _layer_by_layer_decode(TEACHER, teacher_params, batch["decoder_input_ids"], enc)
        return losses.distillation_loss(
            s_logits,
            jax.lax.stop_gradient(t_logits),
            batch["labels"],
            student_hidden=s_hidden,
            teacher_hidden=t_hidden,
            num_tokens=num_tokens,
            **weights,
        )

    results = [
        jax.jit(jax.value_and_grad(f, has_aux=True), compiler_options=FAST)(
            student, teacher, batch, jax.random.PRNGKey(0), 20
        )
        for f in (fn, reference)
    ]
    ((loss, m), grads), ((ref_loss, ref_m), ref_grads) = results
    assert float(m["mse"]) > 1e-4
    for key in ("loss", "ce", "kl", "mse"):
        assert float(m[key]) == pytest.approx(float(ref_m[key]), rel=1e-5), key
    for a, b in zip(jax.tree.leaves(grads["decoder"]), jax.tree.leaves(ref_grads["decoder"])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def _matmul_flops(jaxpr) -> float:
    """2·m·n·k of every matmul and convolution in a jaxpr (scan bodies × their length). A convolution
    with a dilated input (the input gradient of a strided one) is charged for its non-zero inputs only."""
    total = 0.0
    for eqn in jaxpr.eqns:
        name, out = eqn.primitive.name, eqn.outvars[0].aval.shape if eqn.outvars else ()
        if name == "dot_general":
            (contracting, _), _ = eqn.params["dimension_numbers"]
            total += 2.0 * math.prod(out) * math.prod(eqn.invars[0].aval.shape[i] for i in contracting)
        elif name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            per_output = math.prod(rhs) / rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
            total += 2.0 * math.prod(out) * per_output / math.prod(eqn.params["lhs_dilation"])
        assert name != "while", "a while loop's trip count is unknown"
        times = eqn.params["length"] if name == "scan" else 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, jax_core.ClosedJaxpr):
                    total += times * _matmul_flops(sub.jaxpr)
                elif isinstance(sub, jax_core.Jaxpr):
                    total += times * _matmul_flops(sub)
    return total


FLOPS_TEACHER = WhisperConfig(
    vocab_size=1024,
    num_mel_bins=16,
    d_model=256,
    encoder_layers=2,
    encoder_attention_heads=4,
    decoder_layers=3,
    decoder_attention_heads=4,
    encoder_ffn_dim=1024,
    decoder_ffn_dim=1024,
    max_source_positions=64,
    max_target_positions=32,
)
# name: (flops_per_step flags / StepOptions fields, cached encoder outputs, bound on XLA's count / analytic)
FLOPS_VARIANTS = {
    "trained encoder": ({"freeze_encoder": False}, False, 1.04),  # measured 1.028
    "frozen encoder": ({"freeze_encoder": True}, False, 1.05),  # 1.039
    "shared encoder": ({"freeze_encoder": True, "share_encoder": True}, False, 1.05),  # 1.034
    "cached encoder outputs": ({"freeze_encoder": True, "share_encoder": True}, True, 1.05),  # 1.024
}


@pytest.mark.parametrize("variant", list(FLOPS_VARIANTS))
def test_flops_per_step_matches_the_program(variant):
    """The analytic model FLOPs (used for MFU) equal the matmul FLOPs of the loss + gradient program,
    counted in its jaxpr; and XLA's cost analysis of the unrolled program, which also counts elementwise
    ops (softmax, GELU, LayerNorm, the loss), is at most 5 % above them (4 % with a trained encoder),
    never below. A frozen, shared or cached encoder output has no gradient, so the student's
    cross-attention k/v projections only get weight gradients (the count once charged their input
    gradients too: 3 % over at this size)."""
    flags, cached, xla_bound = FLOPS_VARIANTS[variant]
    student, b, length = FLOPS_TEACHER.replace(decoder_layers=1), 2, 32
    batch = {
        "decoder_input_ids": jax.ShapeDtypeStruct((b, length), jnp.int32),
        "labels": jax.ShapeDtypeStruct((b, length), jnp.int32),
    }
    if cached:
        batch["encoder_outputs"] = jax.ShapeDtypeStruct((b, 64, 256), jnp.float32)
    else:
        batch["input_features"] = jax.ShapeDtypeStruct((b, 16, 128), jnp.float32)
    analytic = train.flops_per_step(student, FLOPS_TEACHER, b, length, cached_encoder=cached, **flags)["total"]
    args = (param_shapes(student), param_shapes(FLOPS_TEACHER), batch, jax.random.PRNGKey(0), 1)
    fn = train.make_loss_fn(student, FLOPS_TEACHER, train.StepOptions(**flags))
    jaxpr = jax.make_jaxpr(jax.value_and_grad(fn, has_aux=True))(*args)
    assert _matmul_flops(jaxpr.jaxpr) == pytest.approx(analytic, rel=1e-9)
    unrolled = train.make_loss_fn(student, FLOPS_TEACHER, train.StepOptions(unroll=True, **flags))
    cost = jax.jit(jax.value_and_grad(unrolled, has_aux=True)).lower(*args).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    assert 1.0 <= cost["flops"] / analytic < xla_bound, (cost["flops"], analytic)


def test_flops_per_step_parts():
    student, b, length = FLOPS_TEACHER.replace(decoder_layers=1), 2, 32
    shared = train.flops_per_step(student, FLOPS_TEACHER, b, length, freeze_encoder=True, share_encoder=True)
    unshared = train.flops_per_step(student, FLOPS_TEACHER, b, length, freeze_encoder=True)
    assert unshared["total"] - shared["total"] == pytest.approx(train.encoder_flops(student, b))
    cached = train.flops_per_step(
        student, FLOPS_TEACHER, b, length, freeze_encoder=True, share_encoder=True, cached_encoder=True
    )
    assert shared["total"] - cached["total"] == pytest.approx(train.encoder_flops(FLOPS_TEACHER, b))
    trained = train.flops_per_step(student, FLOPS_TEACHER, b, length, freeze_encoder=False)
    # a trained encoder: its backward, and the input gradients of the cross-attention k/v projections
    kv = 4 * FLOPS_TEACHER.max_source_positions * FLOPS_TEACHER.d_model**2 * student.decoder_layers * b
    assert trained["student_decoder"] - unshared["student_decoder"] == pytest.approx(kv)
    assert trained["student_encoder"] == pytest.approx(train.encoder_train_flops(student, b))


def test_mse_term(pair):
    """Hidden-state MSE through the step's loss: 0 (with KL 0) when the student is the teacher, positive
    with a gradient once the student differs."""
    teacher, _ = pair
    fn = train.make_loss_fn(
        TEACHER, TEACHER, train.StepOptions(mse_weight=1.0, freeze_encoder=True, share_encoder=True)
    )
    vg = jax.jit(jax.value_and_grad(fn, has_aux=True), compiler_options=FAST)
    batch = {k: jnp.asarray(v) for k, v in _batch(3).items()}
    (_, m), _ = vg(teacher, teacher, batch, jax.random.PRNGKey(0), 20)
    assert abs(float(m["mse"])) < 1e-10 and abs(float(m["kl"])) < 1e-6
    noisy = jax.tree.map(lambda a: a + 0.01 * np.sign(a), teacher)
    (_, m), grads = vg(noisy, teacher, batch, jax.random.PRNGKey(0), 20)
    assert float(m["mse"]) > 0 and float(m["kl"]) > 0
    g = grads["decoder"]["layers"]["mlp"]["fc2"]["bias"]
    assert np.all(np.isfinite(g)) and float(jnp.abs(g).max()) > 0
