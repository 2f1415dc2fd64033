"""The WER filter, one rule for labelling and training: is a pseudo-label close enough to the ground truth?

With a threshold set, a row is kept iff
- its ground truth normalises to non-empty text, its pseudo-label is present, and
  ``100 · WER(pseudo-label, ground truth) < threshold`` (strictly below, as the original distil-whisper);
- a row whose ground truth normalises to nothing (only punctuation, or only bracketed noise such as
  ``[laughter]``) is dropped: its WER is undefined, so nothing vouches for its label;
- a row with no ground truth at all (the column absent, null or blank: audio-only data) is dropped too,
  unless ``keep_without_ground_truth`` asks to keep such rows (then they are trained on unchecked).

Both texts go through Whisper's normaliser for the language (English for ``None``/``en``, the basic one
otherwise); timestamp tokens in the pseudo-label are ignored. Without a threshold every row is kept.
"""

from __future__ import annotations

import re

from distil_whisper_jax.speech.wer import wer_details

TIMESTAMP = re.compile(r"<\|\d+(?:\.\d+)?\|>")

HELP = (
    "keep a row iff its ground truth normalises to non-empty text, its pseudo-label is present and "
    "100*WER < this (strictly); rows whose ground truth normalises to nothing are dropped; rows without "
    "ground truth are dropped unless --keep_rows_without_ground_truth"
)
KEEP_HELP = (
    "with --wer_threshold, keep rows that have no ground truth at all (audio-only data: the text column "
    "absent, null or blank) instead of dropping them; their pseudo-labels are then unchecked"
)


def has_ground_truth(reference: object) -> bool:
    """A usable ground-truth cell: a string that is not blank."""
    return isinstance(reference, str) and bool(reference.strip())


def row_wer(reference: str | None, transcript: str | None, language: str | None) -> tuple[float | None, int, int]:
    """``(100·WER or None, errors, reference words)``; None when there is no ground truth, when it normalises to
    nothing, or when the pseudo-label is missing."""
    if not has_ground_truth(reference) or transcript is None:
        return None, 0, 0
    try:
        d = wer_details([reference], [TIMESTAMP.sub(" ", transcript)], language=language)
    except ValueError:  # the reference normalises to nothing
        return None, 0, 0
    return d.wer, d.substitutions + d.deletions + d.insertions, d.reference_words


def drop_reason(
    has_reference: bool,
    has_pseudo_label: bool,
    wer: float | None,
    threshold: float | None,
    keep_without_ground_truth: bool,
) -> str | None:
    """None when the row is kept, else why the filter drops it: ``no_ground_truth``, ``no_pseudo_label``,
    ``empty_reference`` (ground truth that normalises to nothing: ``wer`` is None) or ``wer`` (not below
    ``threshold``). ``has_reference``: the row has ground truth (``has_ground_truth``)."""
    if threshold is None:
        return None
    if not has_reference:
        return None if keep_without_ground_truth else "no_ground_truth"
    if not has_pseudo_label:
        return "no_pseudo_label"
    if wer is None:
        return "empty_reference"
    return None if wer < threshold else "wer"
