"""audio.py: decoding (soundfile + PyAV fallback), errors, truncated files, resampling, and log-mel parity with
transformers. The PyAV test files are made with PyAV's own encoders (no ffmpeg program needed)."""

from __future__ import annotations

import av
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
    stream_audio,
)


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
def test_lossy_formats_ogg_through_soundfile_mp3_through_pyav(tmp_path, pyav_calls, fmt, subtype, ext):
    # The soundfile wheels bundle libsndfile >= 1.1, which reads and writes both; without them an ogg file
    # would silently go through PyAV, which is what this test guards against. An mp3 goes to PyAV on purpose
    # (test_vbr_mp3_without_a_xing_header_is_read_whole).
    assert fmt in sf.available_formats(), f"this libsndfile ({sf.__libsndfile_version__}) cannot handle {fmt}"
    path = tmp_path / f"tone.{ext}"
    sf.write(str(path), tone(1000, 22050, 1.0), 22050, format=fmt, subtype=subtype)
    y = load_audio(path)
    assert pyav_calls == ([] if fmt == "OGG" else [str(path)])
    assert abs(len(y) - 16000) <= 1200 and abs(peak_hz(y, 16000) - 1000) <= 16000 / len(y)


def test_vbr_mp3_without_a_xing_header_is_read_whole(tmp_path):
    """1 s at 160 kb/s then 19 s at 32 kb/s, no Xing/Info header (as some encoders and cut-and-joined files
    leave them): libsndfile reckons the length from the first frame's bitrate and stopped reading at 4.9 s."""
    sr, parts = 16000, []
    x = tone(440, sr, 20.0, 0.3)
    for i, (piece, kbps) in enumerate([(x[:sr], 160), (x[sr:], 32)]):
        parts.append(tmp_path / f"part{i}.mp3")
        encode(parts[-1], piece, sr, "libmp3lame", bit_rate=kbps * 1000, write_xing="0", id3v2_version="0")
    path = tmp_path / "joined.mp3"
    path.write_bytes(b"".join(p.read_bytes() for p in parts))
    assert sf.info(str(path)).duration < 6  # what libsndfile reckons
    for y in (
        load_audio(path),
        decode_audio_bytes(path.read_bytes(), path.name),
        np.concatenate(list(stream_audio(path))),
    ):
        assert 20.0 <= len(y) / sr < 20.3, len(y) / sr  # the encoder adds up to a frame of padding per part
    assert abs(peak_hz(load_audio(path)[-5 * sr :], sr) - 440) < 1


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


def test_text_named_mp3_is_not_audio_not_missing(tmp_path):
    """libsndfile's mpg123 decoder reports a text file named .mp3 as "does not exist"; the file is there."""
    path = tmp_path / "notes.mp3"
    path.write_text("hello, this is not audio at all\n" * 20)
    with pytest.raises(AudioError) as err:
        load_audio(path)
    msg = str(err.value)
    assert "notes.mp3" in msg and "does not exist" not in msg and "no such" not in msg
    assert "not a decodable audio file" in msg and "not recognised as audio" in msg


def test_undecodable_reports_both_decoders(tmp_path, pyav_calls):
    path = tmp_path / "notes.wav"
    _write_text_as_wav(path)
    with pytest.raises(AudioError, match=r"notes\.wav: not a decodable audio file \(soundfile: .+; PyAV: .+\)"):
        load_audio(path)
    assert pyav_calls == [str(path)]


# ---------------------------------------------------------------------------------------------------- PyAV fallback


def encode(path, x: np.ndarray, sr: int, codec: str, bit_rate: int | None = None, **container_options: str) -> None:
    """Write ``x`` (float in [-1, 1], [T] or [T, C]) with PyAV's encoder ``codec``, the container from the name."""
    x = x[:, None] if x.ndim == 1 else x
    layout = "mono" if x.shape[1] == 1 else "stereo"
    with av.open(str(path), "w", options=container_options) as out:
        stream = out.add_stream(codec, rate=sr, layout=layout)
        if bit_rate:
            stream.bit_rate = bit_rate
        fmt = stream.codec_context.format
        size = stream.codec_context.frame_size or 1024
        for start in range(0, len(x), size):
            chunk = x[start : start + size]
            if fmt.name.startswith("s16"):
                chunk = np.clip(np.round(chunk * 32768), -32768, 32767).astype(np.int16)
            elif fmt.name.startswith("s32"):  # 16-bit samples in the top bits, so lossless codecs stay exact
                chunk = np.clip(np.round(chunk * 32768), -32768, 32767).astype(np.int32) << 16
            else:
                assert fmt.name.startswith("flt"), fmt.name
                chunk = chunk.astype(np.float32)
            data = np.ascontiguousarray(chunk.T) if fmt.is_planar else chunk.reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(data, format=fmt.name, layout=layout)
            frame.sample_rate, frame.pts = sr, start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


@pytest.fixture
def pyav_calls(monkeypatch) -> list[str]:
    """Records the names passed to audio._pyav_frames, proving the fallback path ran."""
    calls: list[str] = []
    real = audio._pyav_frames

    def spy(source, name, rate, sf_reason):
        calls.append(name)
        return real(source, name, rate, sf_reason)

    monkeypatch.setattr(audio, "_pyav_frames", spy)
    return calls


def test_pyav_fallback_lossless_m4a_stereo(tmp_path, pyav_calls):
    left, right = tone(440, 16000, 1.0, 0.4), tone(1000, 16000, 1.0, 0.2)
    m4a = tmp_path / "stereo alac.m4a"  # ALAC in MP4: lossless, and libsndfile cannot read it
    encode(m4a, np.stack([left, right], axis=1), 16000, "alac")
    with pytest.raises(sf.LibsndfileError):
        sf.info(str(m4a))
    expected = (np.round(left * 32768) + np.round(right * 32768)) / 2 / 32768
    got = load_audio(m4a)
    assert pyav_calls == [str(m4a)]
    np.testing.assert_allclose(got, expected, atol=1e-6)  # same channel mean as the soundfile path
    from_bytes = decode_audio_bytes(m4a.read_bytes(), m4a.name)
    np.testing.assert_array_equal(from_bytes, got)


def test_pyav_fallback_aac_resamples(tmp_path, pyav_calls):
    m4a = tmp_path / "tone.m4a"
    encode(m4a, tone(1000, 44100, 2.0), 44100, "aac")
    y = load_audio(m4a)
    assert pyav_calls == [str(m4a)]
    assert y.dtype == np.float32 and abs(len(y) - 32000) <= 1600  # AAC priming/padding
    assert abs(peak_hz(y, 16000) - 1000) <= 16000 / len(y)


def test_pyav_fallback_opus_in_webm(tmp_path, pyav_calls):
    webm = tmp_path / "tone.webm"
    encode(webm, tone(1000, 48000, 1.0, 0.3), 48000, "libopus")
    y = load_audio(webm)
    assert pyav_calls == [str(webm)]
    assert abs(len(y) - 16000) <= 400 and abs(peak_hz(y, 16000) - 1000) <= 16000 / len(y)


def test_pyav_fallback_undecodable_reports_both_decoders(tmp_path, pyav_calls):
    path = tmp_path / "fake.m4a"
    path.write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(AudioError, match="fake.m4a") as err:
        load_audio(path)
    assert pyav_calls and "PyAV" in str(err.value) and "soundfile" in str(err.value)


def test_stream_audio_through_pyav_gives_load_audios_samples_in_blocks(tmp_path, pyav_calls):
    m4a = tmp_path / "speech.m4a"  # 44.1 kHz stereo AAC: PyAV decodes, downmixes and resamples
    x, sr = sf.read(str(audio_asset("jfk.flac")), dtype="float32")
    encode(m4a, np.stack([resample(x, sr, 44100), 0.5 * resample(x, sr, 44100)], axis=1), 44100, "aac")
    want = load_audio(m4a)
    blocks = list(audio.stream_audio(m4a, 7000))
    assert pyav_calls == [str(m4a)] * 2
    assert [len(b) for b in blocks[:-1]] == [7000] * (len(blocks) - 1) and 0 < len(blocks[-1]) <= 7000
    np.testing.assert_array_equal(np.concatenate(blocks), want)
    assert abs(len(want) - len(x)) <= 1600


# ---------------------------------------------------------------------------------------------------- truncated files


def _cut(src, dst, fraction: float = 0.4):
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def _refused_by_every_reader(path, match: str) -> list[str]:
    """The AudioError messages of load_audio, decode_audio_bytes and stream_audio for ``path``, after the file name
    they start with."""
    messages = []
    for read in (load_audio, lambda p: decode_audio_bytes(p.read_bytes(), p.name), lambda p: list(stream_audio(p))):
        with pytest.raises(AudioError, match=match) as err:
            read(path)
        messages.append(str(err.value).split(f"{path.name}: ", 1)[1])
    return messages


def test_truncated_flac_is_refused_not_read_short(tmp_path):
    """A real FLAC clip cut to its first 40 % of bytes: soundfile loses sync and FFmpeg's decoder fails on the
    cut frame, so no reader returns the 2 s it could decode as if they were the clip."""
    path = _cut(audio_asset("piper_train.flac"), tmp_path / "cut.flac")
    whole, from_bytes, streamed = _refused_by_every_reader(path, "cut.flac")
    assert "truncated or damaged" in whole and "of the 5.33 s its header states" in whole
    assert whole == from_bytes and "cannot decode the audio after the start" in streamed


def test_flac_cut_between_frames_is_refused(tmp_path):
    """Cut exactly between two FLAC frames, the rest decodes without an error; the length the header states
    (STREAMINFO) tells."""
    src = audio_asset("piper_train.flac")
    with av.open(str(src)) as c:
        starts = [p.pos for p in c.demux(c.streams.audio[0]) if p.pos is not None and p.size]
    path = tmp_path / "cut between frames.flac"
    path.write_bytes(src.read_bytes()[: starts[len(starts) // 2]])
    msg = _refused_by_every_reader(path, "cut between frames.flac")[0]
    assert "decodes to 2.56 s of the 5.33 s its header states" in msg


def test_truncated_wav_is_refused_and_an_open_ended_one_is_read(tmp_path):
    """libsndfile and FFmpeg both shorten a cut WAV's frame count to what is there; its data chunk header
    states the real length. A header that leaves the length open (0xFFFFFFFF, as streaming writers do) is fine."""
    src = audio_asset("goforward.wav")
    path = _cut(src, tmp_path / "cut.wav")
    msgs = _refused_by_every_reader(path, r"cut\.wav: truncated or damaged audio: it decodes to 1\.11 s of the 2\.79 s")
    assert len(set(msgs)) == 1
    data = bytearray(src.read_bytes())
    at = data.index(b"data") + 4
    data[at : at + 4] = b"\xff\xff\xff\xff"
    (tmp_path / "open.wav").write_bytes(bytes(data))
    np.testing.assert_array_equal(load_audio(tmp_path / "open.wav"), load_audio(src))


def test_truncated_m4a_is_refused(tmp_path):
    whole = tmp_path / "whole.m4a"
    encode(whole, tone(440, 16000, 6.0), 16000, "aac", movflags="faststart")  # sample tables before the audio
    assert 5.9 < len(load_audio(whole)) / 16000 < 6.2
    msg = _refused_by_every_reader(_cut(whole, tmp_path / "cut.m4a"), "cut.m4a: not a decodable audio file")[0]
    assert "PyAV: " in msg and "of the 6.00 s its header states (truncated or damaged)" in msg


def test_stream_of_a_short_mp3_stops_where_load_audio_does(tmp_path):
    """An mp3 holding fewer frames than libsndfile reckons (here cut short; its Xing header states 3 s): the
    block reader stops at the last decoded frame instead of repeating a stale block up to the reckoned length."""
    whole = tmp_path / "whole.mp3"
    encode(whole, tone(440, 16000, 3.0), 16000, "libmp3lame")
    path = _cut(whole, tmp_path / "cut.mp3")
    assert sf.info(str(path)).duration == pytest.approx(3.0, abs=0.1)
    want = load_audio(path)
    assert len(want) < 0.5 * 3 * 16000
    np.testing.assert_allclose(np.concatenate(list(stream_audio(path, 4000))), want, atol=0.01)
