"""Evaluation: Whisper text normalisation and word error rate.

The normalisers are transformers' ports of openai-whisper's: ``EnglishTextNormalizer`` (lower case, drop
bracketed text and fillers, expand contractions and titles, spoken numbers → digits, British → American
spelling via the bundled ``assets/english_spelling.json``) and ``BasicTextNormalizer`` (lower case, drop
brackets and symbols) for other languages. WER is corpus-level (total errors / total reference words) as
in the original distil-whisper evaluation, in percent.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import jiwer

SPELLING_FILE = Path(__file__).parents[1] / "assets" / "english_spelling.json"


@functools.cache
def english_spelling_map() -> Mapping[str, str]:
    """British → American spellings (openai-whisper's ``english.json``, MIT), read once."""
    with open(SPELLING_FILE, encoding="utf-8") as f:
        return json.load(f)


@functools.cache
def english_normalizer() -> Callable[[str], str]:
    """transformers' ``EnglishTextNormalizer`` with the bundled spelling map (cached, offline)."""
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer(dict(english_spelling_map()))


@functools.cache
def basic_normalizer(remove_diacritics: bool = False) -> Callable[[str], str]:
    """transformers' ``BasicTextNormalizer`` (language-independent)."""
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    return BasicTextNormalizer(remove_diacritics=remove_diacritics)


def normalizer_for(language: str | None) -> Callable[[str], str]:
    """English normaliser for English ('en', 'english', None), the basic one for any other language."""
    lang = (language or "en").strip().lower()
    return english_normalizer() if lang in ("en", "english", "<|en|>") else basic_normalizer()


@dataclasses.dataclass(frozen=True)
class WERDetails:
    """Corpus-level alignment counts. ``wer`` is in percent; ``dropped`` counts pairs skipped because the
    (normalised) reference was empty."""

    wer: float
    substitutions: int
    deletions: int
    insertions: int
    hits: int
    reference_words: int
    num_pairs: int
    dropped: int


def _prepare(
    references: Sequence[str], predictions: Sequence[str], normalize: bool, language: str | None
) -> tuple[list[str], list[str], int]:
    if isinstance(references, str) or isinstance(predictions, str):
        raise ValueError("references and predictions must be sequences of strings, not single strings")
    references, predictions = list(references), list(predictions)
    if len(references) != len(predictions):
        raise ValueError(f"got {len(references)} references but {len(predictions)} predictions; they must pair up")
    if not references:
        raise ValueError("no references to score")
    norm = normalizer_for(language) if normalize else (lambda s: s)
    refs, hyps = [], []
    for r, p in zip(references, predictions):
        r = " ".join(norm(r or "").split())
        if r:  # as distil-whisper: pairs with an empty (normalised) reference are not scored
            refs.append(r)
            hyps.append(" ".join(norm(p or "").split()))
    if not refs:
        raise ValueError(
            f"all {len(references)} references are empty"
            + (" after normalisation" if normalize else "")
            + "; WER is undefined"
        )
    return refs, hyps, len(references) - len(refs)


def wer_details(
    references: Sequence[str], predictions: Sequence[str], normalize: bool = True, language: str | None = "en"
) -> WERDetails:
    """Corpus-level WER with substitution/deletion/insertion/hit counts (see ``wer``)."""
    refs, hyps, dropped = _prepare(references, predictions, normalize, language)
    out = jiwer.process_words(refs, hyps)
    n_ref = out.substitutions + out.deletions + out.hits
    return WERDetails(
        wer=100.0 * (out.substitutions + out.deletions + out.insertions) / n_ref,
        substitutions=out.substitutions,
        deletions=out.deletions,
        insertions=out.insertions,
        hits=out.hits,
        reference_words=n_ref,
        num_pairs=len(refs),
        dropped=dropped,
    )


def wer(
    references: Sequence[str], predictions: Sequence[str], normalize: bool = True, language: str | None = "en"
) -> float:
    """Corpus-level word error rate in percent (jiwer), after normalising both sides with
    ``normalizer_for(language)`` (whitespace is collapsed either way). Pairs whose normalised reference is
    empty are dropped; ``ValueError`` if all are, or if the two sequences differ in length."""
    return wer_details(references, predictions, normalize=normalize, language=language).wer
