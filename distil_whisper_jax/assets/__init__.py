"""Files that ship with the package: speech clips with transcripts, five LibriVox sentences (``librivox/``),
a small English speech corpus (``speech/``: train and held-out manifests), a small French, German and Spanish
one (``speech_multilingual/<lang>/``), the English spelling map."""

from __future__ import annotations

from pathlib import Path

import soundfile as sf

from distil_whisper_jax.infra import delimited

ASSETS_DIR = Path(__file__).parent
CLIPS_DIR = ASSETS_DIR / "clips"
LIBRIVOX_DIR = ASSETS_DIR / "librivox"
SPEECH_DIR = ASSETS_DIR / "speech"
SPEECH_SPLITS = ("train", "heldout")
SPEECH_MULTILINGUAL_DIR = ASSETS_DIR / "speech_multilingual"
SPEECH_LANGUAGES = ("fr", "de", "es")  # Whisper language codes of the multilingual corpus


def bundled_clips(max_seconds: float | None = 30.0) -> list[tuple[Path, str]]:
    """(path, reference transcript) of the bundled clips, optionally only those ≤ ``max_seconds`` long."""
    rows = [(CLIPS_DIR / r["file"], r["text"]) for r in delimited.read_rows(CLIPS_DIR / "clips.tsv")]
    if max_seconds is not None:
        rows = [(p, t) for p, t in rows if sf.info(str(p)).duration <= max_seconds]
    return rows


def librivox_recordings() -> list[tuple[Path, str]]:
    """(flac, transcript) of the five bundled LibriVox sentences (real read speech, 2.99-7.10 s each, 24.7 s in
    all; lower-case transcripts without punctuation, see ``librivox/README.md``)."""
    return [(LIBRIVOX_DIR / r["file"], r["text"]) for r in delimited.read_rows(LIBRIVOX_DIR / "librivox.tsv")]


def speech_manifest(split: str) -> Path:
    """Path of the bundled speech corpus manifest for ``split`` ("train" | "heldout"): a tab-separated file with
    header ``audio text speaker_id duration``, audio paths relative to the manifest (see ``speech/README.md``)."""
    if split not in SPEECH_SPLITS:
        raise ValueError(f"unknown speech corpus split {split!r}; expected one of {', '.join(SPEECH_SPLITS)}")
    path = SPEECH_DIR / f"{split}.tsv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: bundled speech manifest is missing (reinstall the package, or regenerate the corpus "
            "with tools/generate_speech.py from the source repository)"
        )
    return path


def multilingual_speech_manifest(language: str, split: str) -> Path:
    """Path of the bundled multilingual speech corpus manifest of ``language`` ("fr" | "de" | "es") and ``split``
    ("train" | "heldout"): tab-separated, header ``audio text speaker_id duration language``, audio paths relative
    to the manifest (see ``speech_multilingual/README.md``)."""
    if language not in SPEECH_LANGUAGES:
        raise ValueError(f"unknown speech corpus language {language!r}; expected one of {', '.join(SPEECH_LANGUAGES)}")
    if split not in SPEECH_SPLITS:
        raise ValueError(f"unknown speech corpus split {split!r}; expected one of {', '.join(SPEECH_SPLITS)}")
    path = SPEECH_MULTILINGUAL_DIR / language / f"{split}.tsv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: bundled speech manifest is missing (reinstall the package, or regenerate the corpus "
            "with tools/generate_multilingual_speech.py from the source repository)"
        )
    return path
