"""Speculative decoding: a small assistant drafts tokens, the teacher verifies them in one pass.

Greedy only, so the result is the teacher's own greedy output: every iteration the assistant proposes
``k`` tokens one by one; the teacher scores the last accepted token and the ``k`` drafts in one forward
pass of ``k + 1`` positions, which yields its own choice at each of them. The drafts are accepted up to
the first one that differs from the teacher's choice, and the teacher's choice at that point is appended
(a correction, or a free extra token when all ``k`` were right). Logit processing (suppression, timestamp
rules) is the same function as plain generation's and is applied to both models at every position.

Rows of a batch accept different numbers of tokens, so every row keeps its own position: the decoders
run under ``jax.vmap`` over rows with a per-row cache index. Shapes are static (one compile per batch
shape and options). When the assistant shares the teacher's encoder (a distilled student with its
encoder frozen), the encoder runs once for both.

A draft may be scored on a shortlist of the vocabulary (``assistant_vocab``: the tokens its text is made of, say
the most frequent of its training labels). At batch 1 on a CPU the projection onto Whisper's 51,865 tokens is most
of a small decoder's step (it reads the whole embedding matrix for one row), so a shortlist of a few thousand makes
a draft several times cheaper. A token outside the shortlist cannot be drafted, so the draft is rejected there and
the teacher supplies it: the output is still the teacher's own, only the acceptance falls.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from distil_whisper_jax.core import parallel
from distil_whisper_jax.core.model import Whisper, WhisperConfig, init_cache, unstack_decoder
from distil_whisper_jax.decode import generate as gen_lib


@dataclasses.dataclass(frozen=True)
class SpeculativeStats:
    """Drafted and accepted token counts of a call (acceptance = accepted / drafted)."""

    drafted: int
    accepted: int
    teacher_passes: int

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


def _decode_rows(model: Whisper, params, tokens, cache, index, shortlist=None):
    """Decoder on ``tokens`` [B, T] with a per-row start position ``index`` [B]; cache rows follow. With a
    ``shortlist`` ``(ids [V'], embedding rows [V', d])`` only those logits are computed; the rest are -inf."""

    def one(tok, c, i):
        c1 = jax.tree_util.tree_map(lambda a: a[None], c)
        out, nc = model.apply(
            {"params": params}, tok[None], None, c1, i, project=shortlist is None, method=Whisper.decode
        )
        return out[0], jax.tree_util.tree_map(lambda a: a[0], nc)

    out, cache = jax.vmap(one)(tokens, cache, index)
    if shortlist is None:
        return out, cache
    ids, rows = shortlist
    scores = jnp.einsum("btd,vd->btv", out, rows).astype(jnp.float32)
    logits = jnp.full(out.shape[:2] + (model.config.vocab_size,), -jnp.inf, jnp.float32)
    return logits.at[..., ids].set(scores), cache


def _process_rows(logits, tokens, steps, prompt_len: int, opts: gen_lib.GenerationOptions):
    """``generate.process_logits`` with a per-row generation step ``steps`` [B]."""

    def one(lg, tok, s):
        return gen_lib.process_logits(lg[None], tok[None], s, prompt_len, opts)[0]

    return jax.vmap(one)(logits, tokens, steps)


def _prefill(model: Whisper, params, enc, prompt, length: int):
    """Prompt pass over encoder output ``enc``: last prompt logits [B, V] and the filled cache."""
    cache = init_cache(model.config, enc.shape[0], length, model.dtype, per_layer=True)
    tokens = jnp.broadcast_to(prompt[None], (enc.shape[0], prompt.shape[0]))
    logits, cache = model.apply({"params": params}, tokens, enc, cache, 0, method=Whisper.decode)
    return logits[:, -1], cache


def _speculative(teacher, t_params, student, s_params, mel, prompt, opts, k: int, share_encoder: bool, vocab=None):
    b, p = mel.shape[0], prompt.shape[0]
    n_max = opts.max_new_tokens
    length = p + n_max + k + 1  # room for the last iteration's overshoot
    rows = jnp.arange(b)
    t_enc = teacher.apply({"params": t_params}, mel, method=Whisper.encode)
    s_mel = mel[..., : student.config.n_frames]  # a shorter-window assistant hears the start of the clip
    s_enc = t_enc if share_encoder else student.apply({"params": s_params}, s_mel, method=Whisper.encode)
    t_logits, t_cache = _prefill(teacher, t_params, t_enc, prompt, length)
    _, s_cache = _prefill(student, s_params, s_enc, prompt, length)
    embedding = s_params["decoder"]["embed_tokens"]["embedding"]
    shortlist = None if vocab is None else (vocab, jnp.take(embedding, vocab, axis=0).astype(student.dtype))
    tokens = jnp.full((b, length), opts.eot, jnp.int32).at[:, :p].set(prompt[None])
    first = gen_lib.first_argmax(_process_rows(t_logits, tokens, jnp.zeros((b,), jnp.int32), p, opts))
    tokens = tokens.at[:, p].set(first)
    n = jnp.ones((b,), jnp.int32)  # generated tokens so far, per row
    done = first == opts.eot

    def choose(logits, drafts, steps):
        return gen_lib.first_argmax(_process_rows(logits, drafts, steps, p, opts))

    def draft(tokens, n, s_cache):
        """``k`` assistant tokens after each row's last token (the assistant re-reads the two last
        tokens, so its cache is right whether or not the previous drafts were all accepted)."""
        last2 = jnp.stack([tokens[rows, p + n - 2], tokens[rows, p + n - 1]], axis=1)
        logits, s_cache = _decode_rows(student, s_params, last2, s_cache, p + n - 2, shortlist)

        def step(j, carry):
            drafts, logits, s_cache = carry
            nxt = choose(logits[:, -1], drafts, n + j)
            drafts = drafts.at[rows, p + n + j].set(nxt)
            logits, s_cache = _decode_rows(student, s_params, nxt[:, None], s_cache, p + n + j, shortlist)
            return drafts, logits, s_cache

        drafts, logits, s_cache = jax.lax.fori_loop(0, k - 1, step, (tokens, logits[:, -1:], s_cache))
        drafts = drafts.at[rows, p + n + k - 1].set(choose(logits[:, -1], drafts, n + k - 1))
        return drafts, s_cache

    def body(state):
        tokens, n, done, t_cache, s_cache, drafted, accepted, passes = state
        drafts, s_cache = draft(tokens, n, s_cache)
        window = jax.vmap(lambda row, i: jax.lax.dynamic_slice(row, (i,), (k + 1,)))(drafts, p + n - 1)
        logits, t_cache = _decode_rows(teacher, t_params, window, t_cache, p + n - 1)
        # The teacher's own choice at each of the k + 1 positions, given the drafts before it.
        choice = jax.vmap(choose, in_axes=(1, None, 0), out_axes=1)(
            logits, drafts, n[None] + jnp.arange(k + 1)[:, None]
        )
        agree = choice[:, :k] == window[:, 1:]
        a = jnp.sum(jnp.cumprod(agree.astype(jnp.int32), axis=1), axis=1)  # leading agreements
        # Accepted drafts equal the teacher's choices, so writing all k + 1 choices is exact up to a;
        # the positions after it are overwritten before anything reads them.
        new = jax.vmap(lambda row, c, i: jax.lax.dynamic_update_slice(row, c, (i,)))(tokens, choice, p + n)
        live = ~done
        tokens = jnp.where(live[:, None], new, tokens)
        kept = jnp.arange(k + 1)[None] <= a[:, None]
        hit_eot = jnp.any(kept & (choice == opts.eot), axis=1)
        n = jnp.where(live, n + a + 1, n)
        done = done | hit_eot | (n >= n_max)
        drafted = drafted + jnp.sum(jnp.where(live, k, 0))
        accepted = accepted + jnp.sum(jnp.where(live, jnp.minimum(a, k), 0))
        return tokens, n, done, t_cache, s_cache, drafted, accepted, passes + 1

    def cond(state):
        return ~jnp.all(state[2])

    zero = jnp.int32(0)
    state = (tokens, n, done | (n >= n_max), t_cache, s_cache, zero, zero, zero)
    tokens, n, _, _, _, drafted, accepted, passes = jax.lax.while_loop(cond, body, state)
    out = tokens[:, p : p + n_max]
    # Greedy stops at the first EOT: everything after it is EOT filler.
    after_eot = jnp.cumsum(out == opts.eot, axis=1) > 0
    out = jnp.where(after_eot, opts.eot, out)
    return out, jnp.stack([drafted, accepted, passes])


@functools.lru_cache(maxsize=16)
def _compiled(t_config, s_config, dtype, opts, k: int, share_encoder: bool):
    chunk = parallel.attention_query_chunk()
    teacher = Whisper(t_config, dtype=dtype, unstacked_decoder=True, attention_query_chunk=chunk)
    student = Whisper(s_config, dtype=dtype, unstacked_decoder=True, attention_query_chunk=chunk)

    def run(t_params, s_params, mel, prompt, vocab):
        t_params, s_params = unstack_decoder(t_params), unstack_decoder(s_params)
        return _speculative(teacher, t_params, student, s_params, mel, prompt, opts, k, share_encoder, vocab)

    return jax.jit(run)


def check_assistant(t_config: WhisperConfig, s_config: WhisperConfig) -> None:
    """``ValueError`` unless the assistant can draft for the teacher: same vocabulary and features, and a window no
    longer than the teacher's. A shorter window (a 15 s student of a 30 s teacher) is accepted: the assistant
    reads the first part of the teacher's input, so on longer audio its drafts are accepted less often, while
    the output stays the teacher's own."""
    for field in ("vocab_size", "num_mel_bins"):
        if getattr(t_config, field) != getattr(s_config, field):
            raise ValueError(
                f"assistant model: {field} {getattr(s_config, field)} differs from the teacher's "
                f"{getattr(t_config, field)}; the assistant must share the teacher's tokenizer and input"
            )
    if s_config.max_source_positions > t_config.max_source_positions:
        raise ValueError(
            f"assistant model: its window ({s_config.input_seconds:g} s) is longer than the teacher's "
            f"({t_config.input_seconds:g} s)"
        )


def speculative_generate(
    t_params: Any,
    t_config: WhisperConfig,
    s_params: Any,
    s_config: WhisperConfig,
    mel: np.ndarray,
    prompt: Sequence[int],
    options: gen_lib.GenerationOptions,
    num_assistant_tokens: int = 5,
    dtype: Any = jnp.float32,
    share_encoder: bool = False,
    assistant_vocab: Sequence[int] | None = None,
) -> tuple[np.ndarray, SpeculativeStats]:
    """Greedy token ids [B, max_new_tokens] of the teacher, drafted by the assistant (student).

    Same output contract as ``generate.generate`` (EOT after the end). ``share_encoder``: the assistant's
    encoder is the teacher's (checked by the caller), so it runs once. ``assistant_vocab``: the token ids the
    assistant drafts from (``decoding.decoder`` makes it from the student's ``draft_vocab.json``; the end-of-text
    token is added), None for all.
    """
    check_assistant(t_config, s_config)
    if options.num_beams != 1:
        raise ValueError("speculative decoding is greedy: num_beams must be 1")
    k = int(num_assistant_tokens)
    if k < 1:
        raise ValueError(f"num_assistant_tokens must be ≥ 1, got {k}")
    if len(prompt) + options.max_new_tokens + k + 1 > t_config.max_target_positions:
        raise ValueError(
            f"prompt ({len(prompt)}) + max_new_tokens ({options.max_new_tokens}) + num_assistant_tokens + 1 "
            f"({k + 1}) exceeds the decoder's {t_config.max_target_positions} positions"
        )
    vocab = None if assistant_vocab is None else _check_vocab(assistant_vocab, options.eot, s_config.vocab_size)
    fn = _compiled(t_config, s_config, dtype, options, k, bool(share_encoder))
    mel = jnp.asarray(np.asarray(mel, np.float32))
    out, counts = fn(t_params, s_params, mel, jnp.asarray(np.asarray(prompt, np.int32)), vocab)
    drafted, accepted, passes = (int(x) for x in np.asarray(counts))
    return np.asarray(out), SpeculativeStats(drafted, accepted, passes)


def _check_vocab(ids: Sequence[int], eot: int, vocab_size: int) -> jnp.ndarray:
    """The shortlist as sorted unique int32 ids with end-of-text; ``ValueError`` for ids outside the vocabulary."""
    v = np.unique(np.append(np.asarray(ids, np.int64), eot))
    if v[0] < 0 or v[-1] >= vocab_size:
        raise ValueError(f"assistant vocabulary: token ids must be in [0, {vocab_size}), got {v[0]}..{v[-1]}")
    return jnp.asarray(v.astype(np.int32))
