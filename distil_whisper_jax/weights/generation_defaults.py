"""Per-checkpoint decoding defaults: the suppress lists and alignment heads a model directory stores, or,
when it stores none, the lists openai-whisper's decoder computes from the tokenizer."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from distil_whisper_jax.speech.token_layout import SpecialTokens, special_tokens
from distil_whisper_jax.speech.tokenizer import config_vocab_size, ct2_vocabulary, load_tokenizer, read_json

# ------------------------------------------------------------------------------------------------
# Suppression lists and generation defaults

# openai-whisper's non-speech symbols (speaker tags, music, brackets): suppressed when any spelling of the
# symbol (bare or after a space) is a single token; for the U+2640..U+267F music signs always the first token.
_NON_SPEECH_SYMBOLS = tuple('"#()*+/:;<=>@[\\]^_`{|}~「」『』') + tuple(
    "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
)
_MUSIC_SIGNS = tuple("♩♪♫♬♭♮♯")


def non_speech_tokens(tokenizer: Any) -> tuple[int, ...]:
    """Token ids openai-whisper suppresses by default (``suppress_tokens="-1"``) to keep generations to
    spoken words: speaker tags, brackets and music symbols, plus a leading " -" and " '"
    (hyphens and apostrophes stay allowed inside words). Sorted."""

    def enc(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False))

    result = {enc(" -")[0], enc(" '")[0]}
    for symbol in _NON_SPEECH_SYMBOLS + _MUSIC_SIGNS:
        for ids in (enc(symbol), enc(" " + symbol)):
            if len(ids) == 1 or symbol in _MUSIC_SIGNS:
                result.add(ids[0])
    return tuple(sorted(result))


@dataclasses.dataclass(frozen=True)
class GenerationDefaults:
    """Per-checkpoint decoding defaults.

    suppress_tokens: ids never generated (CT2 ``suppress_ids`` / HF ``suppress_tokens`` / computed
        ``non_speech_tokens``). begin_suppress_tokens: ids not allowed as the first generated token
        (" " and ``<|endoftext|>``). alignment_heads: ``((layer, head), …)`` for word timestamps, empty when the
        source does not say. lang_ids: language token ids, always derived from the vocabulary layout (CT2's
        ``lang_ids`` can disagree with the vocabulary). source: where the suppress lists came from
        ("ct2 config.json", "generation_config.json", "config.json" or "computed")."""

    suppress_tokens: tuple[int, ...]
    begin_suppress_tokens: tuple[int, ...]
    alignment_heads: tuple[tuple[int, int], ...]
    lang_ids: tuple[int, ...]
    source: str

    def as_dict(self) -> dict:
        """Plain lists, with the 🤗 ``generation_config.json`` key names (plus ``lang_ids``)."""
        return {
            "suppress_tokens": list(self.suppress_tokens),
            "begin_suppress_tokens": list(self.begin_suppress_tokens),
            "alignment_heads": [list(h) for h in self.alignment_heads],
            "lang_ids": list(self.lang_ids),
        }


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) for v in value):
        raise ValueError(f"{what}: expected a list of token ids, got {type(value).__name__}")
    return tuple(value)


def _heads(value: Any, what: str) -> tuple[tuple[int, int], ...]:
    if value is None:
        return ()
    try:
        heads = tuple((int(layer), int(head)) for layer, head in value)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: expected [[layer, head], ...]") from None
    return heads


def _file_lists(path: Path) -> tuple[tuple[int, ...], tuple[int, ...], tuple, str] | None:
    """Suppress lists + alignment heads stored in a model directory, or None."""
    cfg = read_json(path / "config.json") if (path / "config.json").is_file() else {}
    is_ct2 = (path / "vocabulary.json").is_file() or (path / "vocabulary.txt").is_file()
    if is_ct2 and isinstance(cfg, dict) and "suppress_ids" in cfg:
        where = f"{path / 'config.json'}"
        return (
            _int_tuple(cfg["suppress_ids"], where + " suppress_ids"),
            _int_tuple(cfg.get("suppress_ids_begin", []), where + " suppress_ids_begin"),
            _heads(cfg.get("alignment_heads"), where + " alignment_heads"),
            "ct2 config.json",
        )
    gen = read_json(path / "generation_config.json") if (path / "generation_config.json").is_file() else {}
    for name, d in (("generation_config.json", gen), ("config.json", cfg)):
        if isinstance(d, dict) and d.get("suppress_tokens") is not None:
            where = str(path / name)
            return (
                _int_tuple(d["suppress_tokens"], where + " suppress_tokens"),
                _int_tuple(d.get("begin_suppress_tokens") or [], where + " begin_suppress_tokens"),
                _heads(
                    gen.get("alignment_heads") if isinstance(gen, dict) else None,
                    str(path / "generation_config.json") + " alignment_heads",
                ),
                name,
            )
    return None


def suppress_tokens(source: str | os.PathLike | Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(suppress_tokens, begin_suppress_tokens) for a model directory (CT2 ``config.json`` ``suppress_ids`` /
    ``suppress_ids_begin``, or HF ``generation_config.json`` / ``config.json``), or computed from a tokenizer
    (or from the directory's tokenizer when the files hold no lists) as openai-whisper's decoding default
    does: ``non_speech_tokens`` plus sot, translate, transcribe, startoflm, startofprev and no-speech;
    begin: ``(id of " ", <|endoftext|>)``. The computed lists equal the ones stored in the CT2 tiny.en and
    base directories."""
    if not hasattr(source, "encode"):
        path = Path(source)
        stored = _file_lists(path) if path.is_dir() else None
        if stored is not None:
            return stored[0], stored[1]
        source = load_tokenizer(path)
    sp = special_tokens(source)
    control = {sp.sot, sp.translate, sp.transcribe, sp.startoflm, sp.startofprev, sp.no_speech}
    return (
        tuple(sorted(set(non_speech_tokens(source)) | control)),
        (source.encode(" ", add_special_tokens=False)[0], sp.eot),
    )


def load_generation_defaults(path: str | os.PathLike, vocab_size: int | None = None) -> GenerationDefaults:
    """``GenerationDefaults`` for a model directory (CT2 or 🤗); see that class. ``vocab_size`` (the model's)
    is checked against a CT2 vocabulary; without it the size comes from the directory."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: not a model directory")
    tok = None
    reference = ct2_vocabulary(path)
    n_vocab = len(reference) if reference is not None else config_vocab_size(path)
    if vocab_size is not None and n_vocab is not None and int(vocab_size) != n_vocab:
        raise ValueError(f"{path}: the model has vocab_size {vocab_size} but the directory describes {n_vocab} tokens")
    if n_vocab is None:
        n_vocab = vocab_size
    if n_vocab is None:
        tok = load_tokenizer(path)
        n_vocab = special_tokens(tok).n_vocab
    stored = _file_lists(path)
    if stored is None:
        tok = tok or load_tokenizer(path)
        suppress, begin = suppress_tokens(tok)
        stored = (suppress, begin, (), "computed")
    sp = SpecialTokens.from_vocab_size(n_vocab)
    return GenerationDefaults(
        suppress_tokens=stored[0],
        begin_suppress_tokens=stored[1],
        alignment_heads=stored[2],
        lang_ids=sp.language_ids,
        source=stored[3],
    )
