"""Generation for sequential long-form decoding: per-row previous-text prompts, temperatures and scores.

openai-whisper's sequential algorithm decodes each 30 s window after a prompt that carries the text
decoded so far (``<|startofprev|>`` + up to 223 earlier tokens), so prompts differ in length from row to
row and from window to window. Everything here has static shapes all the same:

- Prompts are **right-padded** to a fixed capacity ``P`` (the longest prompt a window can get). The prompt
  pass writes the whole ``[B, P]`` block into the KV cache, but row ``r``'s real prompt of ``L_r`` tokens
  sits at positions ``0 .. L_r - 1`` and, the self-attention being causal, never sees the filler after it.
  Its first generated token goes to position ``L_r`` (each decoding step runs the model per row through
  ``jax.vmap`` with the row's own cache index), overwriting the filler's cache entry before any query can
  attend to it. Positions, attention and logits are thus exactly those of the unpadded prompt
  (``tests/test_sequential.py`` compares with ``generate.generate`` on the bare prompt).
- Each row has its own temperature: 0 picks the arg-max (as ``generate``), above 0 samples from
  ``softmax(logits / T)`` with the row's own ``jax.random`` key (folded with the step number), so a row's
  result does not depend on which other rows share its batch.
- Per row it returns the sum of the log-probabilities of the generated tokens (EOT included, after the
  suppression and timestamp rules, as openai-whisper scores them) and the no-speech probability: the
  softmax at the ``<|startoftranscript|>`` position over the no-speech token.

Only greedy/sampled decoding with the timestamp rules on (what the sequential algorithm uses).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from distil_whisper_jax.core import parallel
from distil_whisper_jax.core.model import Whisper, WhisperConfig, init_cache, unstack_decoder
from distil_whisper_jax.decode.generate import GenerationOptions, first_argmax, process_logits
from distil_whisper_jax.infra import compile_cache


@dataclasses.dataclass(frozen=True)
class PromptedResult:
    """Per-row outputs of ``generate_prompted``: ``tokens`` [B, max_new_tokens] (EOT-padded),
    ``sum_logprob`` [B] and ``no_speech_prob`` [B]."""

    tokens: np.ndarray
    sum_logprob: np.ndarray
    no_speech_prob: np.ndarray


def _prefill(model: Whisper, params, mel, prompts, last, sot, length: int, no_speech: int, shards: int):
    """Encoder and prompt pass, row by row on CPU (``parallel.map_rows``). Returns the logits at each row's
    last real prompt position [B, V], the no-speech probability [B] and the cache of ``length`` positions."""

    def one(args):
        m, toks, last_i, sot_i = args
        enc = model.apply({"params": params}, m, method=Whisper.encode)
        cache = init_cache(model.config, m.shape[0], length, model.dtype, per_layer=True)
        logits, cache = model.apply({"params": params}, toks, enc, cache, 0, method=Whisper.decode)
        rows = jnp.arange(m.shape[0])
        probs = jax.nn.softmax(logits[rows, sot_i], axis=-1)
        return logits[rows, last_i], probs[:, no_speech], cache

    return parallel.map_rows(one, (mel, prompts, last, sot), shards)


def _decode_rows(model: Whisper, params, tokens, cache, index):
    """One decoding step for every row at its own cache position ``index`` [B]: logits [B, V] and the cache."""

    def one(tok, row_cache, i):
        add = lambda c: c[None]
        logits, row_cache = model.apply(
            {"params": params}, tok[None, None], None, jax.tree_util.tree_map(add, row_cache), i, method=Whisper.decode
        )
        return logits[0, 0], jax.tree_util.tree_map(lambda c: c[0], row_cache)

    return jax.vmap(one)(tokens, cache, index)


def _sample(scores, temperatures, keys, step):
    """Next token per row: arg-max where the temperature is 0, else a sample at that temperature."""
    safe_t = jnp.where(temperatures > 0, temperatures, 1.0)

    def draw(key, row, t):
        return jax.random.categorical(jax.random.fold_in(key, step), row / t).astype(jnp.int32)

    sampled = jax.vmap(draw)(keys, scores, safe_t)
    return jnp.where(temperatures > 0, sampled, first_argmax(scores))


def _run(
    model: Whisper, opts: GenerationOptions, no_speech: int, shards: int, params, mel, prompts, lens, sot, temps, keys
):
    """The compiled body: prefill, then one while loop over the decoding steps of all rows."""
    if "layers" in params["decoder"]:
        params = unstack_decoder(params)
    b, cap = prompts.shape
    n = opts.max_new_tokens
    logits, no_speech_prob, cache = _prefill(model, params, mel, prompts, lens - 1, sot, cap + n, no_speech, shards)
    done = lens == 0  # filler rows (batch padding) generate nothing
    lens = jnp.maximum(lens, 1)

    def cond(state):
        step, _, _, _, done, _ = state
        return (step < n) & ~jnp.all(done)

    def body(state):
        step, gen, cache, logits, done, sum_lp = state
        scores = process_logits(logits, gen, step, 0, opts)
        logprobs = jax.nn.log_softmax(scores, axis=-1)
        nxt = jnp.where(done, opts.eot, _sample(scores, temps, keys, step))
        sum_lp = sum_lp + jnp.where(done, 0.0, jnp.take_along_axis(logprobs, nxt[:, None], axis=1)[:, 0])
        gen = jax.lax.dynamic_update_slice(gen, nxt[:, None], (0, step))
        done = done | (nxt == opts.eot)
        logits, cache = _decode_rows(model, params, nxt, cache, lens + step)
        return step + 1, gen, cache, logits, done, sum_lp

    gen = jnp.full((b, n), opts.eot, jnp.int32)
    state = (jnp.int32(0), gen, cache, logits, done, jnp.zeros((b,), jnp.float32))
    _, gen, _, _, _, sum_lp = jax.lax.while_loop(cond, body, state)
    return gen, sum_lp, no_speech_prob


@functools.lru_cache(maxsize=16)
def _compiled(config: WhisperConfig, dtype: Any, opts: GenerationOptions, no_speech: int, mesh_key: tuple):
    model = Whisper(config, dtype=dtype, unstacked_decoder=True, attention_query_chunk=parallel.attention_query_chunk())
    fn = functools.partial(_run, model, opts, no_speech, max(1, len(mesh_key)))
    if not mesh_key:
        return jax.jit(fn)
    mesh = parallel.data_mesh(list(mesh_key))
    rows = parallel.batch_sharded(mesh)
    return jax.jit(fn, in_shardings=(parallel.replicated(mesh),) + (rows,) * 6, out_shardings=(rows, rows, rows))


def generate_prompted(
    params: Any,
    mel: np.ndarray,
    prompts: np.ndarray,
    prompt_lens: np.ndarray,
    sot_index: np.ndarray,
    temperatures: np.ndarray,
    keys: np.ndarray,
    config: WhisperConfig,
    options: GenerationOptions,
    no_speech: int,
    dtype: Any = jnp.float32,
    devices: list | None = None,
) -> PromptedResult:
    """Decode log-mel ``mel`` [B, M, F] after right-padded ``prompts`` [B, P] of ``prompt_lens`` [B] real
    tokens (0: a filler row, which generates only EOT and costs no decoding steps), ``<|startoftranscript|>``
    at ``sot_index`` [B], at ``temperatures`` [B] with PRNG ``keys`` [B, 2] (uint32). ``options`` must have
    the timestamp rules on. The batch must be a multiple of the device count (``devices``, default all local
    devices); ``params`` replicated on them beforehand."""
    if not options.return_timestamps or options.num_beams != 1:
        raise ValueError("generate_prompted decodes with timestamps, greedily or by sampling (num_beams=1)")
    if prompts.shape[1] + options.max_new_tokens > config.max_target_positions:
        raise ValueError(
            f"prompt capacity ({prompts.shape[1]}) + max_new_tokens ({options.max_new_tokens}) exceeds the "
            f"decoder's {config.max_target_positions} positions"
        )
    lens = np.asarray(prompt_lens, np.int32)
    if lens.min() < 0 or lens.max() > prompts.shape[1] or lens.max() == 0:
        raise ValueError(f"prompt lengths must be in 0..{prompts.shape[1]} (not all 0), got {lens.min()}..{lens.max()}")
    devices = jax.local_devices() if devices is None else list(devices)
    args = (
        np.asarray(mel, np.float32),
        np.asarray(prompts, np.int32),
        lens,
        np.asarray(sot_index, np.int32),
        np.asarray(temperatures, np.float32),
        np.asarray(keys, np.uint32),
    )
    if len(devices) > 1:
        if mel.shape[0] % len(devices):
            raise ValueError(f"batch {mel.shape[0]} is not a multiple of the {len(devices)} devices")
        mesh = parallel.data_mesh(devices)
        args = tuple(parallel.shard_batch(a, mesh) for a in args)
        fn = _compiled(config, dtype, options, no_speech, tuple(devices))
    else:
        static = (config, np.dtype(dtype).name, options, no_speech, parallel.attention_query_chunk())
        fn = _compiled(config, dtype, options, no_speech, ())
        fn = compile_cache.saved_program(fn, "prompted", static, (params, *args))
    tokens, sum_lp, no_speech_prob = fn(params, *args)
    return PromptedResult(np.asarray(tokens), np.asarray(sum_lp), np.asarray(no_speech_prob))
