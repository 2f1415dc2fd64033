"""Whisper's special-token layout: languages, the ids of every special token, and decoder prompts.

openai-whisper derives every special id from the vocabulary size alone: 51864 (English-only), 51865
(multilingual v1/v2) or 51866 (v3, which adds Cantonese). ``<|endoftext|>`` is 50256 (English-only) or 50257
(multilingual, whose id 50256 is an empty token); then come ``<|startoftranscript|>``, one token per
language, ``<|translate|>``, ``<|transcribe|>``, ``<|startoflm|>``, ``<|startofprev|>``, the no-speech token
and ``<|notimestamps|>``, and after them the 1501 timestamps ``<|0.00|>`` … ``<|30.00|>`` (0.02 s steps),
the last of which is id ``n_vocab - 1``. English-only vocabularies hold the language tokens too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

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
    """Ids of Whisper's special tokens, as openai-whisper derives them from ``n_vocab``.

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
            "would be shifted (load it with distil_whisper_jax.speech.tokenizer.load_tokenizer)"
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
