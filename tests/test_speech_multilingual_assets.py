"""The bundled French, German and Spanish speech corpus (assets/speech_multilingual): manifests are consistent with
the audio, each language's splits share no sentence and cover its sentences file, speakers are contiguous and
appear in both splits. Fast: no model is run (the teacher's WER is benchmarks/speech_multilingual_wer.py)."""

import pytest
import soundfile as sf

from distil_whisper_jax import assets
from distil_whisper_jax.assets import (
    SPEECH_LANGUAGES,
    SPEECH_MULTILINGUAL_DIR,
    SPEECH_SPLITS,
    multilingual_speech_manifest,
)

from .helpers import read_manifest

HEADER = ["audio", "text", "speaker_id", "duration", "language"]


@pytest.fixture(scope="module")
def manifests():
    return {(lang, split): read_manifest(split, lang) for lang in SPEECH_LANGUAGES for split in SPEECH_SPLITS}


def test_multilingual_speech_manifest_paths_and_errors(tmp_path, monkeypatch):
    assert SPEECH_LANGUAGES == ("fr", "de", "es")
    assert multilingual_speech_manifest("fr", "train") == SPEECH_MULTILINGUAL_DIR / "fr" / "train.tsv"
    assert multilingual_speech_manifest("es", "heldout") == SPEECH_MULTILINGUAL_DIR / "es" / "heldout.tsv"
    with pytest.raises(ValueError, match="'en'.*fr, de, es"):
        multilingual_speech_manifest("en", "train")
    with pytest.raises(ValueError, match="'test'.*train, heldout"):
        multilingual_speech_manifest("de", "test")
    monkeypatch.setattr(assets, "SPEECH_MULTILINGUAL_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "de" / "train.tsv")):
        multilingual_speech_manifest("de", "train")


def test_manifests_match_audio_files(manifests):
    seen = {lang: set() for lang in SPEECH_LANGUAGES}
    for (lang, split), (path, header, rows) in manifests.items():
        assert header == HEADER, path
        assert len(rows) == {"train": 45, "heldout": 15}[split], (lang, split, len(rows))
        for r in rows:
            f = path.parent / r["audio"]
            assert r["audio"].startswith(f"flac/{split}_") and f.is_file(), f
            info = sf.info(str(f))
            assert (info.format, info.subtype, info.samplerate, info.channels) == ("FLAC", "PCM_16", 16000, 1), f
            assert abs(info.duration - float(r["duration"])) < 0.01, (f, info.duration, r["duration"])
            assert 1.5 <= info.duration <= 10.0, f
            assert r["language"] == lang, (path, r)
            assert r["text"].strip() == r["text"] and 6 <= len(r["text"].split()) <= 18, r
            seen[lang].add(f)
    for lang in SPEECH_LANGUAGES:  # no unlisted (stale) audio ships
        assert seen[lang] == set((SPEECH_MULTILINGUAL_DIR / lang / "flac").glob("*.flac")), lang


def test_splits_share_no_sentence_and_speakers_are_contiguous(manifests):
    for lang in SPEECH_LANGUAGES:
        texts = {split: [r["text"] for r in manifests[lang, split][2]] for split in SPEECH_SPLITS}
        for split, t in texts.items():
            assert len(set(t)) == len(t), f"{lang} {split}: a sentence is repeated"
        assert not set(texts["train"]) & set(texts["heldout"]), lang
        lines = (SPEECH_MULTILINGUAL_DIR / lang / "sentences.txt").read_text(encoding="utf-8").splitlines()
        source = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
        assert sorted(texts["train"] + texts["heldout"]) == sorted(source), lang  # each sentence spoken once
        speakers = {}
        for split in SPEECH_SPLITS:
            ids = [r["speaker_id"] for r in manifests[lang, split][2]]
            runs = [s for i, s in enumerate(ids) if i == 0 or s != ids[i - 1]]
            assert len(runs) == len(set(runs)) > 1, f"{lang} {split}: a speaker's utterances are not consecutive"
            speakers[split] = set(runs)
        assert speakers["train"] == speakers["heldout"], lang
        assert all(s.startswith(f"{lang}_") for s in speakers["train"]), speakers
