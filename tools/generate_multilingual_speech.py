"""Generate the bundled French, German and Spanish speech corpus (``assets/speech_multilingual/<lang>/``). Run once;
output committed.

Not part of the installed package. It speaks with the espeak-ng library of PyPI ``espeakng-loader`` (part of the
``tts`` extra; ``tools/espeak_ng.py``), no system program. Debian's ``espeak-ng`` program 1.51 made the committed
files; the library is 1.52, which gives 150 of the 180 clips bit for bit and the other 30 (every ``de+klatt3`` and
``es+f2`` clip, one ``de+m1`` clip) slightly different::

    python -m tools.generate_multilingual_speech   # writes into distil_whisper_jax/assets/speech_multilingual/

For each language, the sentences of ``<lang>/sentences.txt`` are split into train and held-out sets first (seeded;
no sentence in both; the three files are line-aligned translations, and the same seed gives the same split
positions, so the held-out sets are translations of each other), then dealt round-robin (in a seeded order) to the
language's speakers, so every speaker appears in both splits; each sentence is spoken exactly once. A speaker is one
espeak-ng voice variant (``fr+m3``) at one speaking rate (words per minute), pitch and gap between words. Audio is
espeak-ng's 22.05 kHz output resampled to 16 kHz with ``distil_whisper_jax.speech.audio.resample``, its leading and
trailing silence trimmed to ``PAD_SECONDS``, peak-normalised to a seeded level and written as 16-bit mono FLAC.
espeak-ng has no randomness and each clip is spoken by a freshly loaded library, so the same espeak-ng version
reproduces the files exactly.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import numpy as np
import soundfile as sf

from distil_whisper_jax.assets import SPEECH_MULTILINGUAL_DIR, SPEECH_SPLITS
from distil_whisper_jax.infra.files import atomic_write
from distil_whisper_jax.speech.audio import SAMPLE_RATE, resample
from tools import espeak_ng
from tools.generate_speech import read_sentences, write_manifest  # same sentence-file and manifest rules

log = logging.getLogger("generate")

HEADER = ["audio", "text", "speaker_id", "duration", "language"]
MIN_SECONDS, MAX_SECONDS = 1.5, 10.0
PAD_SECONDS = 0.2  # silence kept before and after the speech
SILENCE = 1e-3  # |sample| below this (after peak-normalising to 1) counts as silence when trimming


@dataclasses.dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: an espeak-ng voice with a variant, its rate (words per minute), pitch (0-99, espeak
    default 50) and extra gap between words (units of 10 ms)."""

    voice: str  # e.g. "fr+m3": language voice + variant
    rate: int
    pitch: int = 50
    gap: int = 0

    @property
    def id(self) -> str:
        return f"{self.voice.replace('+', '_')}_s{self.rate}_p{self.pitch}_g{self.gap}"


# Chosen by measuring the whisper-base teacher on 12 sentences per setting (see the corpus README): a gap of 50-100 ms
# between words took German and Spanish from ~50 % to ~33 % WER; rates below ~150 wpm and most female variants were
# less intelligible to it; low-pass filtering, reverb or noise did not help. French stays hard whatever the setting
# (~60 % at best, fr+m5), and gaps did not help it. Pitch is spread for variety.
SPEAKERS: dict[str, list[Speaker]] = {
    "fr": [Speaker("fr+m5", 175, 50), Speaker("fr+m5", 165, 35), Speaker("fr+m1", 160, 45), Speaker("fr+m4", 180, 55)],
    "de": [
        Speaker("de+m3", 165, 45, 6),
        Speaker("de+m1", 170, 40, 6),
        Speaker("de", 175, 50, 6),
        Speaker("de+klatt3", 170, 55, 6),
    ],
    "es": [
        Speaker("es+m3", 155, 45, 6),
        Speaker("es+m1", 165, 40, 6),
        Speaker("es", 170, 50, 6),
        Speaker("es+f2", 160, 60, 6),
    ],
}
LANGUAGES = tuple(SPEAKERS)


def split_sentences(sentences: list[str], num_heldout: int, seed: int) -> dict[str, list[str]]:
    """Seeded split by position: the same seed and count give the same positions for every language."""
    perm = np.random.default_rng(seed).permutation(len(sentences))
    return {
        "train": [sentences[i] for i in sorted(perm[num_heldout:])],
        "heldout": [sentences[i] for i in sorted(perm[:num_heldout])],
    }


def assign(sentences: list[str], speakers: list[Speaker], rng: np.random.Generator) -> list[tuple[str, Speaker]]:
    """Deal the sentences round-robin in a seeded order; the rows of one speaker are consecutive."""
    order = rng.permutation(len(sentences))
    groups: list[list[str]] = [[] for _ in speakers]
    for k, i in enumerate(order):
        groups[k % len(speakers)].append(sentences[i])
    return [(s, sp) for sp, group in zip(speakers, groups) for s in group]


def synthesise(text: str, speaker: Speaker) -> np.ndarray:
    """16 kHz float32 speech from espeak-ng (22.05 kHz), silence trimmed to ``PAD_SECONDS``."""
    x, sr = espeak_ng.speak(text, speaker.voice, speaker.rate, speaker.pitch, speaker.gap)
    x = resample(x, sr, SAMPLE_RATE)
    x = x / np.max(np.abs(x))
    loud = np.flatnonzero(np.abs(x) > SILENCE)
    pad = int(PAD_SECONDS * SAMPLE_RATE)
    x = x[loud[0] : loud[-1] + 1]
    return np.concatenate([np.zeros(pad, np.float32), x, np.zeros(pad, np.float32)])


def write_split(out_dir: Path, lang: str, split: str, rows: list[tuple[str, Speaker]], rng) -> float:
    """Synthesise, write the FLAC files and the manifest of one language's split; returns its seconds."""
    manifest, total = [], 0.0
    for n, (text, sp) in enumerate(rows, start=1):
        x = synthesise(text, sp) * rng.uniform(0.3, 0.6)  # recording levels differ
        seconds = len(x) / SAMPLE_RATE
        if not MIN_SECONDS <= seconds <= MAX_SECONDS:
            raise ValueError(f"{sp.id} says {text!r} in {seconds:.2f} s, outside {MIN_SECONDS}-{MAX_SECONDS} s")
        rel = f"flac/{split}_{n:04d}.flac"
        with atomic_write(out_dir / rel) as tmp:
            sf.write(str(tmp), x, SAMPLE_RATE, format="FLAC", subtype="PCM_16", compression_level=1.0)
        manifest.append([rel, text, sp.id, f"{seconds:.4f}", lang])
        total += seconds
    write_manifest(out_dir / f"{split}.tsv", HEADER, manifest)
    return total


def generate_language(lang: str, sentences_file: Path, out_dir: Path, num_heldout: int, seed: int) -> None:
    splits = split_sentences(read_sentences(sentences_file, 6, 18), num_heldout, seed)
    rng = np.random.default_rng([seed, LANGUAGES.index(lang)])
    written: set[str] = set()
    for split in SPEECH_SPLITS:
        rows = assign(splits[split], SPEAKERS[lang], rng)
        seconds = write_split(out_dir, lang, split, rows, rng)
        written.update(f"{split}_{n:04d}.flac" for n in range(1, len(rows) + 1))
        log.info("%s %s: %d clips, %.1f s (%.1f min)", lang, split, len(rows), seconds, seconds / 60)
    for p in (out_dir / "flac").glob("*.flac"):  # left over from an earlier run with more sentences
        if p.name not in written:
            p.unlink()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output_dir", type=Path, default=SPEECH_MULTILINGUAL_DIR, help="gets one folder per language")
    ap.add_argument("--languages", nargs="+", default=list(LANGUAGES), choices=LANGUAGES)
    ap.add_argument("--num_heldout", type=int, default=15, help="held-out sentences per language")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("speaking with %s", espeak_ng.version())  # fails here, before any work, without the library
    for lang in args.languages:
        out = args.output_dir / lang
        sentences = out / "sentences.txt"
        if not sentences.is_file():  # writing elsewhere (a trial run): the committed sentences
            sentences = SPEECH_MULTILINGUAL_DIR / lang / "sentences.txt"
        generate_language(lang, sentences, out, args.num_heldout, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
