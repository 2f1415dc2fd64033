"""Which language each row is in: one ``--language`` for all data, one per ``+``-joined dataset, or a
column of Whisper language codes (``--language_column_name``), checked against the model's vocabulary.

The language picks a multilingual model's ``<|lang|>`` prompt token and the WER normaliser (English for
``en``, the basic one otherwise). An English-only model takes no language token, so asking one for another
language is refused before any work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from distil_whisper_jax.data.spec import DataConfigError
from distil_whisper_jax.speech.token_layout import SpecialTokens, language_code


def per_source(language: str | None, n: int, flag: str = "--language") -> list[str | None]:
    """The language of each of ``n`` ``+``-joined datasets (codes; None where none is given)."""
    if not language:
        return [None] * n
    parts = [p.strip() or None for p in language.split("+")]
    if len(parts) == 1:
        parts *= n
    if len(parts) != n:
        raise DataConfigError(
            f"{flag} {language!r} has {len(parts)} '+'-separated entries for {n} datasets; give one or one each"
        )
    try:
        return [None if p is None else language_code(p) for p in parts]
    except ValueError as e:
        raise DataConfigError(f"{flag} {language!r}: {e}") from None


def check_model(specials: SpecialTokens, languages: Sequence[str | None], column: str | None, what: str) -> None:
    """``DataConfigError`` when ``what`` (e.g. 'the teacher') cannot take these languages: an English-only
    model given another language or a language column, or a language outside the model's vocabulary."""
    asked = sorted({lang for lang in languages if lang is not None})
    if not specials.is_multilingual:
        if column is not None:
            raise DataConfigError(f"--language_column_name {column}: {what} is English-only (no language tokens)")
        if any(lang != "en" for lang in asked):
            raise DataConfigError(f"--language {'+'.join(asked)}: {what} is English-only; use a multilingual model")
        return
    missing = [lang for lang in asked if lang not in specials.language_codes]
    if missing:
        raise DataConfigError(f"--language: {what}'s vocabulary has no token for {missing}")


def row_language(
    row: Mapping[str, Any], column: str | None, default: str | None, specials: SpecialTokens
) -> str | None:
    """The row's language code: its ``column`` value when given and set, else ``default``. ``ValueError``
    naming the value when the model does not know it."""
    value = row.get(column) if column else None
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    code = language_code(str(value))  # ValueError: not a Whisper language
    if specials.is_multilingual and code not in specials.language_codes:
        raise ValueError(f"language {value!r} is not in the model's vocabulary")
    return code
