"""audio.py: decoding (soundfile + ffmpeg fallback), errors, resampling, and log-mel parity with transformers."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from distil_whisper_jax.assets import bundled_clips, librivox_recordings
from distil_whisper_jax.speech import audio
from distil_whisper_jax.speech.audio import (
    N_FRAMES,
    N_SAMPLES,
    SAMPLE_RATE,
    AudioError,
    decode_audio_bytes,
    load_audio,
    log_mel_spectrogram,
    mel_filters,
    pad_or_trim,
    resample,
)


@pytest.fixture
def needs_ffmpeg():
    """The ffmpeg fallback decoder's tests run for real: CI installs ffmpeg, so its absence is a failure."""
    exe = shutil.which("ffmpeg")
    assert exe is not None, "ffmpeg CLI not on PATH (apt-get install ffmpeg): the ffmpeg fallback decoder is untested"
    return exe


@pytest.fixture(scope="module")
def real_clips() -> list[np.ndarray]:
    """Every bundled clip, decoded (includes the 42 s one, which the features trim to 30 s)."""
    return [load_audio(path) for path, _ in bundled_clips(max_seconds=None)]


@pytest.fixture(scope="module")
def hf_extractors():
    from transformers import WhisperFeatureExtractor

    return {n: WhisperFeatureExtractor(feature_size=n) for n in (80, 128)}


def tone(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(sr * seconds)) / sr)).astype(np.float32)


def peak_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spec)])


# ---------------------------------------------------------------------------------------------------- bundled clips


def test_bundled_clips_are_16k_mono_and_decode(real_clips):
    rows = bundled_clips(max_seconds=None)
    assert len(rows) >= 6 and {p.suffix for p, _ in rows} >= {".wav", ".flac"}
    for (path, text), x in zip(rows, real_clips):
        info = sf.info(str(path))
        assert (info.samplerate, info.channels) == (SAMPLE_RATE, 1), path.name
        assert text.strip() and x.dtype == np.float32 and x.ndim == 1
        assert len(x) == info.frames and 0.01 < np.abs(x).max() <= 1.0, path.name
    assert any(len(x) > N_SAMPLES for x in real_clips)  # the long-form clip


def test_bundled_librivox_sentences_are_16k_mono_with_transcripts():
    rows = librivox_recordings()
    assert [p.name[-9:] for p, _ in rows] == ["0870.flac", "0880.flac", "0890.flac", "0920.flac", "0930.flac"]
    assert sum(len(t.split()) for _, t in rows) == 71 and rows[1][1] == "he was not an ill disposed young man"
    for path, _ in rows:
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16"), path.name
        assert 2.9 < info.duration < 7.2 and 0.05 < np.abs(load_audio(path)).max() <= 1.0, path.name


# ---------------------------------------------------------------------------------------------------- log-mel parity


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_match_transformers(n_mels):
    from transformers.audio_utils import mel_filter_bank

    ref = mel_filter_bank(
        num_frequency_bins=201,
        num_mel_filters=n_mels,
        min_frequency=0,
        max_frequency=8000,
        sampling_rate=16000,
        norm="slaney",
        mel_scale="slaney",
    )
    ours = mel_filters(n_mels)
    assert ours.shape == (n_mels, 201)
    np.testing.assert_allclose(ours, ref.T, rtol=0, atol=1e-12)
    assert mel_filters(n_mels) is ours  # cached


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_whisper_feature_extractor_batched(real_clips, hf_extractors, n_mels):
    ref = hf_extractors[n_mels](real_clips, sampling_rate=16000, return_tensors="np").input_features
    ours = log_mel_spectrogram(real_clips, n_mels=n_mels)  # ragged list, incl. one clip > 30 s
    assert ours.shape == (len(real_clips), n_mels, N_FRAMES) and ours.dtype == np.float32
    assert np.abs(ours - ref).max() <= 1e-4


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_whisper_feature_extractor_single(real_clips, hf_extractors, n_mels):
    for x in real_clips[:3]:
        ref = hf_extractors[n_mels](x, sampling_rate=16000, return_tensors="np").input_features
        ours = log_mel_spectrogram(x, n_mels=n_mels)
        assert ours.shape == (1, n_mels, N_FRAMES)
        assert np.abs(ours - ref).max() <= 1e-4


def test_log_mel_input_forms_agree(real_clips):
    clips = real_clips[:3]
    batch_2d = np.stack([pad_or_trim(x) for x in clips])
    from_list = log_mel_spectrogram(clips)
    np.testing.assert_array_equal(log_mel_spectrogram(batch_2d), from_list)
    np.testing.assert_array_equal(log_mel_spectrogram(clips[1]), from_list[1:2])
    # each example is normalised on its own: batching does not change any example's features
    np.testing.assert_array_equal(log_mel_spectrogram([clips[2]]), from_list[2:3])
    short = log_mel_spectrogram(clips[0], padding=N_SAMPLES // 2)
    assert short.shape == (1, 80, N_FRAMES // 2)
    with pytest.raises(ValueError):
        log_mel_spectrogram(np.zeros((2, 3, 100), np.float32))


def test_pad_or_trim():
    x = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(pad_or_trim(x, 4), x[:4])
    np.testing.assert_array_equal(pad_or_trim(x, 12), np.r_[x, 0, 0])
    assert pad_or_trim(x, 10) is x
    y = np.ones((3, 5), np.float32)
    assert pad_or_trim(y, 2, axis=0).shape == (2, 5)
    assert pad_or_trim(y, 7, axis=-1).shape == (3, 7)
    assert pad_or_trim(np.zeros(5)).shape == (N_SAMPLES,)


# ---------------------------------------------------------------------------------------------------- resampling


@pytest.mark.parametrize("orig_sr,freq", [(44100, 1000.0), (8000, 440.0), (48000, 3000.0)])
def test_resample_keeps_frequency_and_length_ratio(orig_sr, freq):
    x = tone(freq, orig_sr, 1.5)
    y = resample(x, orig_sr, 16000)
    assert y.dtype == np.float32
    assert len(y) == int(np.ceil(len(x) * 16000 / orig_sr))
    assert abs(peak_hz(y, 16000) - freq) <= 16000 / len(y)  # within one FFT bin
    mid = y[len(y) // 4 : 3 * len(y) // 4]  # away from the filter's edge transients
    assert abs(np.sqrt(2 * np.mean(mid**2)) - 0.5) < 0.01  # amplitude preserved


def test_resample_same_rate_is_noop_and_removes_content_above_nyquist():
    x = tone(440, 16000, 0.5)
    np.testing.assert_array_equal(resample(x, 16000, 16000), x)
    alias = resample(tone(12000, 44100, 1.0), 44100, 16000)  # 12 kHz cannot exist at 16 kHz: filtered, not aliased
    assert np.sqrt(np.mean(alias[2000:-2000] ** 2)) < 0.01
    with pytest.raises(ValueError):
        resample(x, 0, 16000)


def test_load_audio_resamples_to_target_rate(tmp_path):
    path = tmp_path / "tone44k.flac"
    sf.write(str(path), tone(1000, 44100, 1.0), 44100, subtype="PCM_16")
    y = load_audio(path)
    assert len(y) == 16000 and abs(peak_hz(y, 16000) - 1000) <= 1
    assert len(load_audio(path, sampling_rate=8000)) == 8000


# ---------------------------------------------------------------------------------------------------- decoding


def test_stereo_is_downmixed_to_channel_mean(tmp_path):
    left, right = tone(440, 16000, 1.0, 0.4), tone(1000, 16000, 1.0, 0.2)
    stereo = np.stack([left, right], axis=1)
    path = tmp_path / "stereo.wav"
    sf.write(str(path), stereo, 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), (left + right) / 2, atol=1e-7)


def test_wav_and_flac_of_same_audio_decode_equal(tmp_path):
    x, sr = sf.read(str(audio_asset("goforward.wav")), dtype="int16")
    sf.write(str(tmp_path / "a.wav"), x, sr, subtype="PCM_16")
    sf.write(str(tmp_path / "a.flac"), x, sr, subtype="PCM_16")
    a, b = load_audio(tmp_path / "a.wav"), load_audio(tmp_path / "a.flac")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, x.astype(np.float32) / 32768)


def audio_asset(name: str):
    return next(p for p, _ in bundled_clips(max_seconds=None) if p.name == name)


@pytest.mark.parametrize("name", ["goforward.wav", "jfk.flac"])
def test_decode_audio_bytes_matches_load_audio(name):
    path = audio_asset(name)
    np.testing.assert_array_equal(decode_audio_bytes(path.read_bytes(), path.name), load_audio(path))


@pytest.mark.parametrize("fmt,subtype,ext", [("OGG", "VORBIS", "ogg"), ("MP3", "MPEG_LAYER_III", "mp3")])
def test_lossy_formats_soundfile_reads_skip_ffmpeg(tmp_path, ffmpeg_calls, fmt, subtype, ext):
    # The soundfile wheels bundle libsndfile >= 1.1, which reads and writes both; without them these files
    # would silently go through ffmpeg, which is what this test guards against.
    assert fmt in sf.available_formats(), f"this libsndfile ({sf.__libsndfile_version__}) cannot handle {fmt}"
    path = tmp_path / f"tone.{ext}"
    sf.write(str(path), tone(1000, 22050, 1.0), 22050, format=fmt, subtype=subtype)
    y = load_audio(path)
    assert ffmpeg_calls == []
    assert abs(len(y) - 16000) <= 1200 and abs(peak_hz(y, 16000) - 1000) <= 16000 / len(y)


def _write_text_as_wav(path):
    path.write_text("this is not audio, just some text in a file called .wav\n" * 20)


@pytest.mark.parametrize("case", ["missing", "empty", "text", "zero_length", "nan", "inf"])
def test_load_audio_errors_name_the_file(tmp_path, case):
    path = tmp_path / f"bad_{case}.wav"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        _write_text_as_wav(path)
    elif case == "zero_length":
        sf.write(str(path), np.zeros(0, np.int16), 16000, subtype="PCM_16")
    elif case in ("nan", "inf"):
        x = tone(440, 16000, 0.1)
        x[100] = np.nan if case == "nan" else np.inf
        sf.write(str(path), x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert path.name in str(err.value)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("data", [b"", b"definitely not audio bytes" * 10])
def test_decode_audio_bytes_errors_name_the_file(data):
    with pytest.raises(AudioError, match="clip_0042.flac"):
        decode_audio_bytes(data, "clip_0042.flac")


@pytest.mark.parametrize("ffmpeg", [False, True])
def test_text_named_mp3_is_not_audio_not_missing(tmp_path, monkeypatch, ffmpeg):
    """libsndfile's mpg123 decoder reports a text file named .mp3 as "does not exist"; the file is there."""
    path = tmp_path / "notes.mp3"
    path.write_text("hello, this is not audio at all\n" * 20)
    if not ffmpeg:
        monkeypatch.setattr(audio.shutil, "which", lambda _: None)
    with pytest.raises(AudioError) as err:
        load_audio(path)
    msg = str(err.value)
    assert "notes.mp3" in msg and "does not exist" not in msg and "no such" not in msg
    assert "cannot decode" in msg or "not a decodable audio file" in msg


def test_undecodable_without_ffmpeg_says_so(tmp_path, monkeypatch):
    path = tmp_path / "notes.wav"
    _write_text_as_wav(path)
    monkeypatch.setattr(audio.shutil, "which", lambda _: None)
    with pytest.raises(AudioError, match="ffmpeg is not installed") as err:
        load_audio(path)
    assert "notes.wav" in str(err.value)


# ---------------------------------------------------------------------------------------------------- ffmpeg fallback


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture
def ffmpeg_calls(monkeypatch) -> list[str]:
    """Records the names passed to audio._ffmpeg_decode, proving the fallback path ran."""
    calls: list[str] = []
    real = audio._ffmpeg_decode

    def spy(source, name, sampling_rate, sf_reason):
        calls.append(name)
        return real(source, name, sampling_rate, sf_reason)

    monkeypatch.setattr(audio, "_ffmpeg_decode", spy)
    return calls


def test_ffmpeg_fallback_lossless_m4a_stereo(needs_ffmpeg, tmp_path, ffmpeg_calls):
    left, right = tone(440, 16000, 1.0, 0.4), tone(1000, 16000, 1.0, 0.2)
    src = tmp_path / "src.wav"
    sf.write(str(src), np.stack([left, right], axis=1), 16000, subtype="PCM_16")
    m4a = tmp_path / "stereo alac.m4a"  # ALAC in MP4: lossless, and libsndfile cannot read it
    _ffmpeg("-i", str(src), "-c:a", "alac", str(m4a))
    with pytest.raises(sf.LibsndfileError):
        sf.info(str(m4a))
    expected = sf.read(str(src), dtype="float32")[0].mean(axis=1)
    got = load_audio(m4a)
    assert ffmpeg_calls == [str(m4a)]
    np.testing.assert_allclose(got, expected, atol=1e-6)  # same channel mean as the soundfile path
    from_bytes = decode_audio_bytes(m4a.read_bytes(), m4a.name)
    np.testing.assert_array_equal(from_bytes, got)


def test_ffmpeg_fallback_aac_resamples(needs_ffmpeg, tmp_path, ffmpeg_calls):
    src = tmp_path / "tone.wav"
    sf.write(str(src), tone(1000, 44100, 2.0), 44100, subtype="PCM_16")
    m4a = tmp_path / "tone.m4a"
    _ffmpeg("-i", str(src), "-c:a", "aac", "-b:a", "64k", str(m4a))
    y = load_audio(m4a)
    assert ffmpeg_calls == [str(m4a)]
    assert y.dtype == np.float32 and abs(len(y) - 32000) <= 1600  # AAC priming/padding
    assert abs(peak_hz(y, 16000) - 1000) <= 16000 / len(y)


def test_ffmpeg_fallback_undecodable_reports_both_decoders(needs_ffmpeg, tmp_path, ffmpeg_calls):
    path = tmp_path / "fake.m4a"
    path.write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(AudioError, match="fake.m4a") as err:
        load_audio(path)
    assert ffmpeg_calls and "ffmpeg" in str(err.value) and "soundfile" in str(err.value)
