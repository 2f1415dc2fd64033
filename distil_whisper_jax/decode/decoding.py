"""The decoder behind ``transcribe``: a batch of waveforms → generated ids, through one compiled program.

Plain decoding is ``generate.generate`` over every local device. With an assistant model it is speculative
decoding (``speculative.speculative_generate``: the assistant drafts a few tokens, the model verifies them in
one pass, the output is the model's own greedy output) on one device, with the drafted/accepted counts added
up so that callers can report the acceptance rate. Built once (``decoder``), called for many batches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from distil_whisper_jax.core import parallel
from distil_whisper_jax.core.model import DTYPES
from distil_whisper_jax.decode import speculative
from distil_whisper_jax.decode.generate import GenerationOptions, generate, generation_options, strip
from distil_whisper_jax.speech import audio
from distil_whisper_jax.speech.token_layout import prompt_ids, special_tokens
from distil_whisper_jax.weights.loading import Pretrained
from distil_whisper_jax.weights.student import read_draft_vocab


def check_assistant_mode(assistant_model: Any, long_form: str, num_beams: int, flag: str = "--assistant_model") -> None:
    """``ValueError`` naming ``flag`` for a decoding mode speculative decoding does not do."""
    if assistant_model is None:
        return
    if num_beams != 1:
        raise ValueError(f"{flag}: speculative decoding is greedy; drop --num_beams {num_beams}")
    if long_form not in ("none", "chunked", "vad"):
        raise ValueError(f"{flag}: works with --long_form none, chunked or vad, not {long_form}")


def padded_rows(n: int, batch_size: int, multiple: int = 1) -> int:
    """The rows a batch of ``n`` waveforms runs as: the smallest ``multiple`` · 2^k that holds them, at most
    ``batch_size`` (a multiple of ``multiple``). A few static shapes, each compiled once, instead of one: the
    last batch of a run, a lone file or a long-form file's few pieces no longer pay for a full batch of
    encoder passes (a 30 s window costs the same whether it holds speech or filler)."""
    if n >= batch_size:
        return -(-n // batch_size) * batch_size
    rows = multiple
    while rows < n:
        rows *= 2
    return min(rows, batch_size)


def pad_rows(mel: np.ndarray, batch_size: int, multiple: int = 1) -> np.ndarray:
    """``mel`` [n, ...] padded to ``padded_rows(n, ...)`` rows with copies of its last row: a silent filler
    might never emit EOT and keep the batch looping; a copy stops with the row it copies."""
    n = len(mel)
    return np.concatenate([mel, np.repeat(mel[-1:], padded_rows(n, batch_size, multiple) - n, axis=0)])


@dataclasses.dataclass
class Decoder:
    """A batch of waveforms → generated ids, through a few compiled programs (batches padded to
    ``padded_rows``: 1, 2, 4, … rows up to ``batch_size``, times the device count).

    With an ``assistant`` the ids come from ``speculative.speculative_generate`` (the assistant drafts, the
    model verifies: the model's own greedy output) on one device; ``drafted``/``accepted``/``passes`` add
    up its counts over calls."""

    pre: Pretrained
    prompt: tuple[int, ...]
    opts: GenerationOptions
    dtype: str
    devices: tuple[Any, ...]
    params: Any
    batch_size: int
    seconds: float = 0.0  # audio decoded so far (long-form overlaps included)
    language: str | None = None  # as asked for (sequential long-form builds its own prompts from these)
    task: str = "transcribe"
    max_new_tokens: int | None = None
    assistant: Pretrained | None = None
    assistant_params: Any = None
    num_assistant_tokens: int = 5
    share_encoder: bool = False
    assistant_vocab: tuple[int, ...] | None = None  # the ids the assistant drafts from (None: all)
    drafted: int = 0
    accepted: int = 0
    passes: int = 0

    def __call__(self, waves: list[np.ndarray]) -> list[list[int]]:
        c = self.pre.config
        self.seconds += sum(len(w) for w in waves) / audio.SAMPLE_RATE
        mel = audio.log_mel_spectrogram(waves, n_mels=c.num_mel_bins, padding=c.n_frames * audio.HOP_LENGTH)
        n, mel = len(mel), pad_rows(mel, self.batch_size, len(self.devices))
        if self.assistant is None:
            out = generate(self.params, mel, self.prompt, c, self.opts, DTYPES[self.dtype], list(self.devices))
            return strip(out[:n], self.opts.eot)
        out, stats = speculative.speculative_generate(
            self.params,
            c,
            self.assistant_params,
            self.assistant.config,
            mel,
            self.prompt,
            self.opts,
            self.num_assistant_tokens,
            DTYPES[self.dtype],
            share_encoder=self.share_encoder,
            assistant_vocab=self.assistant_vocab,
        )
        self.drafted, self.accepted, self.passes = (
            self.drafted + stats.drafted,
            self.accepted + stats.accepted,
            self.passes + stats.teacher_passes,
        )
        return strip(out[:n], self.opts.eot)

    @property
    def acceptance(self) -> float | None:
        """Accepted / drafted assistant tokens so far (None without an assistant or before any draft)."""
        return self.accepted / self.drafted if self.assistant is not None and self.drafted else None


def _same_encoder(a: Pretrained, b: Pretrained) -> bool:
    """Does the assistant carry the model's encoder unchanged (a student distilled with a frozen encoder)?"""
    if a is b:
        return True
    la, lb = jax.tree_util.tree_leaves(a.params["encoder"]), jax.tree_util.tree_leaves(b.params["encoder"])
    return len(la) == len(lb) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(la, lb))


def check_assistant(pre: Pretrained, assistant: Pretrained, flag: str = "--assistant_model") -> None:
    """``ValueError`` naming ``flag`` unless ``assistant`` can draft for ``pre``: same vocabulary, input and
    special tokens (the drafts are compared with the model's choices token by token)."""
    try:
        speculative.check_assistant(pre.config, assistant.config)
    except ValueError as e:
        raise ValueError(f"{flag} {assistant.source}: {str(e).removeprefix('assistant model: ')}") from None
    if special_tokens(pre.tokenizer) != special_tokens(assistant.tokenizer):
        raise ValueError(
            f"{flag} {assistant.source}: its tokenizer's special tokens differ from the model's "
            f"({pre.source}); the assistant must share the model's tokenizer"
        )


def decoder(
    pre: Pretrained,
    batch_size: int = 8,
    dtype: str = "float32",
    num_beams: int = 1,
    timestamps: bool = False,
    language: str | None = None,
    task: str = "transcribe",
    max_new_tokens: int | None = None,
    devices: Sequence[Any] | None = None,
    assistant: Pretrained | None = None,
    num_assistant_tokens: int = 5,
    assistant_flag: str = "--assistant_model",
    assistant_vocab: Sequence[int] | None = None,
    assistant_vocab_size: int = 0,
) -> Decoder:
    """The decoder ``transcribe_loaded`` runs (build once, reuse for many calls). With an ``assistant``:
    speculative decoding, greedy only (``ValueError`` naming ``assistant_flag`` otherwise), on one device;
    ``assistant_vocab`` is the shortlist of token ids it drafts from, or
    ``assistant_vocab_size`` > 0 takes that many text tokens, the assistant's most frequent label tokens first (its
    ``draft_vocab.json``) and the lowest ids after them, plus every special and timestamp token."""
    specials = special_tokens(pre.tokenizer)
    try:
        prompt = prompt_ids(specials, language=language, task=task, timestamps=timestamps)
    except ValueError as e:
        raise ValueError(f"--language/--task: {e}") from None
    opts = generation_options(
        pre,
        specials,
        num_beams=num_beams,
        return_timestamps=timestamps,
        max_new_tokens=max_new_tokens,
        prompt_len=len(prompt),
    )
    devices = list(devices) if devices else jax.local_devices()
    if assistant is not None:
        check_assistant_mode(assistant, "none", num_beams, assistant_flag)
        check_assistant(pre, assistant, assistant_flag)
        devices = devices[:1]
        if num_assistant_tokens < 1:
            raise ValueError(f"--num_assistant_tokens must be ≥ 1, got {num_assistant_tokens}")
        if assistant_vocab_size < 0:
            raise ValueError(f"--assistant_vocab_size must be ≥ 0, got {assistant_vocab_size}")
        room = pre.config.max_target_positions - len(prompt) - num_assistant_tokens - 1
        if opts.max_new_tokens > room:
            raise ValueError(
                f"--max_new_tokens {opts.max_new_tokens}: with {assistant_flag} at most {room} fit "
                f"(the decoder's {pre.config.max_target_positions} positions less the prompt and the drafts)"
            )
    # Batches are padded to a few static shapes (``padded_rows``), multiples of the device count.
    batch_size = -(-batch_size // len(devices)) * len(devices)
    params = (
        parallel.replicate(pre.params, parallel.data_mesh(devices))
        if len(devices) > 1
        else jax.device_put(pre.params, devices[0])
    )
    dec = Decoder(pre, tuple(prompt), opts, dtype, tuple(devices), params, batch_size)
    dec.language, dec.task, dec.max_new_tokens = language, task, max_new_tokens
    if assistant is not None:
        dec.assistant, dec.num_assistant_tokens = assistant, int(num_assistant_tokens)
        dec.assistant_params = jax.device_put(assistant.params, devices[0])
        dec.share_encoder = _same_encoder(pre, assistant)
        if assistant_vocab is None and assistant_vocab_size > 0:
            frequent = read_draft_vocab(assistant.tokenizer_dir, assistant_vocab_size)
            # labels holding fewer tokens: the lowest ids next (byte-pair merges come in order of frequency)
            taken = set(frequent)
            fill = [t for t in range(specials.eot) if t not in taken][: assistant_vocab_size - len(frequent)]
            assistant_vocab = sorted(taken | set(fill) | set(range(specials.eot, pre.config.vocab_size)))
        dec.assistant_vocab = None if assistant_vocab is None else tuple(int(t) for t in assistant_vocab)
    return dec


def set_language(dec: Decoder, language: str | None) -> None:
    """Point ``dec`` at another language (a multilingual model's prompt token): same program, same counts."""
    specials = special_tokens(dec.pre.tokenizer)
    timestamps = specials.no_timestamps not in dec.prompt
    dec.prompt = tuple(prompt_ids(specials, language=language, task=dec.task, timestamps=timestamps))
    dec.language = language
