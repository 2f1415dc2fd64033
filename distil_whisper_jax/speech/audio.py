"""Audio loading and Whisper log-mel features, in numpy.

``load_audio`` / ``decode_audio_bytes`` decode a file (or its bytes) with soundfile, falling back to the
``ffmpeg`` command line for formats libsndfile cannot read, and return float32 mono at 16 kHz.
``log_mel_spectrogram`` computes Whisper's input features for a batch, matching
``transformers.WhisperFeatureExtractor`` (~1e-7 from its float64 numpy path, ~5e-5 from its float32 torch
path), with each example's STFT vectorised over all of its frames.
"""

from __future__ import annotations

import functools
import io
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from typing import Union

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

__all__ = [
    "SAMPLE_RATE",
    "N_FFT",
    "HOP_LENGTH",
    "CHUNK_LENGTH",
    "N_SAMPLES",
    "N_FRAMES",
    "AUDIO_EXTENSIONS",
    "AudioError",
    "load_audio",
    "stream_audio",
    "decode_audio_bytes",
    "resample",
    "pad_or_trim",
    "mel_filters",
    "log_mel_spectrogram",
]

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH = 30
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in a 30 s window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames in a 30 s window

_MEL_BLOCK = 1  # examples per vectorised STFT block in log_mel_spectrogram (see there)

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".webm", ".aac", ".aiff", ".aif")
"""File extensions taken as audio when a folder is expanded (transcription inputs, audio-only datasets)."""

_PathLike = Union[str, "os.PathLike[str]"]


class AudioError(ValueError):
    """An audio file (or buffer) that cannot be used; the message names the file and the problem."""


# ----------------------------------------------------------------------------------------------------------------
# decoding


def load_audio(path: _PathLike, sampling_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode an audio file to float32 mono at ``sampling_rate`` Hz.

    wav/flac/ogg/mp3 (anything libsndfile reads) are decoded with soundfile; other formats (m4a, webm, ...)
    with the ``ffmpeg`` command line if it is installed. Channels are averaged to mono (ffmpeg: its standard
    downmix, which for stereo is the same mean), then resampled with ``resample`` (ffmpeg: its own resampler).
    Raises ``AudioError`` for a missing, empty, undecodable or zero-length file, or non-finite samples.
    """
    name = _check_file(path)
    return _decode(name, name, sampling_rate)


def _check_file(path: _PathLike) -> str:
    """The path as a string, after checking that it is a non-empty file (``AudioError`` otherwise)."""
    name = os.fspath(path)
    try:
        if not os.path.exists(name):
            raise AudioError(f"{name}: no such audio file")
        if os.path.isdir(name):
            raise AudioError(f"{name}: is a directory, not an audio file")
        if os.path.getsize(name) == 0:
            raise AudioError(f"{name}: empty file (0 bytes), not audio")
    except OSError as e:
        raise AudioError(f"{name}: cannot access audio file ({e})") from e
    return name


def stream_audio(path: _PathLike, block_samples: int = N_SAMPLES) -> Iterator[np.ndarray]:
    """Decode an audio file block by block: float32 mono 16 kHz arrays of ``block_samples`` (the last one
    shorter), so that a long recording is never held whole.

    A file soundfile reads at 16 kHz is read in blocks (the same samples as ``load_audio``); anything else
    goes through ``ffmpeg`` piped to this process (its resampler, not ``resample``'s, for other rates); without
    ffmpeg the file is decoded whole by ``load_audio`` and handed out in blocks. Same ``AudioError`` cases
    as ``load_audio``, raised when the generator is first advanced (or later, for damage further in)."""
    if block_samples < 1:
        raise ValueError(f"block_samples must be ≥ 1, got {block_samples}")
    name = _check_file(path)
    try:
        f = sf.SoundFile(name)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        f, reason = None, _soundfile_reason(e)
    if f is not None and f.samplerate != SAMPLE_RATE:
        reason = f"{f.samplerate} Hz, not {SAMPLE_RATE}"
        f.close()
        f = None
    if f is not None:
        with f:
            blocks = (
                b.mean(axis=1, dtype=np.float32) for b in f.blocks(block_samples, dtype="float32", always_2d=True)
            )
            try:
                yield from _checked_blocks(blocks, name)
            except (sf.LibsndfileError, RuntimeError) as e:  # damage further into the file
                raise AudioError(f"{name}: cannot decode the audio after the start ({_soundfile_reason(e)})") from e
    elif shutil.which("ffmpeg"):
        yield from _checked_blocks(_ffmpeg_stream(name, block_samples, reason), name)
    else:
        wav = load_audio(name)
        yield from (wav[i : i + block_samples] for i in range(0, len(wav), block_samples))


def _checked_blocks(blocks: Iterator[np.ndarray], name: str) -> Iterator[np.ndarray]:
    """``blocks`` as contiguous float32, refusing non-finite samples and a stream without any sample."""
    total = 0
    for b in blocks:
        if not np.isfinite(b).all():
            raise AudioError(f"{name}: audio contains non-finite samples (NaN or inf)")
        total += len(b)
        if len(b):
            yield np.ascontiguousarray(b, dtype=np.float32)
    if total == 0:
        raise AudioError(f"{name}: zero-length audio (the file decodes to no samples)")


def _ffmpeg_stream(name: str, block_samples: int, sf_reason: str) -> Iterator[np.ndarray]:
    """ffmpeg's float32 mono 16 kHz output, read from its stdout ``block_samples`` at a time."""
    path = "file:" + os.path.abspath(name)
    cmd = [shutil.which("ffmpeg") or "ffmpeg", *_FFMPEG_IN, path, *_FFMPEG_OUT, str(SAMPLE_RATE), "-"]
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        except OSError as e:
            raise AudioError(f"{name}: soundfile cannot read it ({sf_reason}) and ffmpeg failed to run ({e})") from e
        try:
            while data := proc.stdout.read(4 * block_samples):
                yield np.frombuffer(data[: len(data) // 4 * 4], dtype="<f4").astype(np.float32)
            code = proc.wait()
        finally:  # also when the consumer stops early: no ffmpeg left running
            proc.stdout.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if code != 0:
            err.seek(0)
            lines = err.read().decode("utf-8", "replace").strip().splitlines()
            reason = lines[-1].replace(path, name) if lines else f"exit status {code}"
            raise AudioError(f"{name}: not a decodable audio file (soundfile: {sf_reason}; ffmpeg: {reason})")


def decode_audio_bytes(data: bytes, name: str, sampling_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the encoded bytes of an audio file (e.g. ``datasets.Audio(decode=False)``'s ``bytes``).

    ``name`` (the original file name) is used in error messages and gives ffmpeg a format hint through its
    extension. Same output and errors as ``load_audio``.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise AudioError(f"{name}: expected the file's bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise AudioError(f"{name}: empty audio data (0 bytes)")
    return _decode(data, name, sampling_rate)


def _decode(source: str | bytes, name: str, sampling_rate: int) -> np.ndarray:
    """Shared by ``load_audio`` (``source`` is a path) and ``decode_audio_bytes`` (``source`` is the bytes)."""
    if int(sampling_rate) != sampling_rate or sampling_rate <= 0:
        raise ValueError(f"sampling_rate must be a positive integer, got {sampling_rate!r}")
    sampling_rate = int(sampling_rate)
    try:
        with sf.SoundFile(io.BytesIO(source) if isinstance(source, bytes) else source) as f:
            sr = f.samplerate
            audio = f.read(dtype="float32", always_2d=True)  # [T, C]
        audio = audio.mean(axis=1, dtype=np.float32) if audio.shape[1] > 1 else audio[:, 0]
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        sf_reason = _soundfile_reason(e)
        audio = _ffmpeg_decode(source, name, sampling_rate, sf_reason)
        sr = sampling_rate
    if audio.size == 0:
        raise AudioError(f"{name}: zero-length audio (the file decodes to no samples)")
    if not np.isfinite(audio).all():
        raise AudioError(f"{name}: audio contains non-finite samples (NaN or inf)")
    return np.ascontiguousarray(resample(audio, sr, sampling_rate), dtype=np.float32)


def _soundfile_reason(e: Exception) -> str:
    """libsndfile's reason, minus its misleading "does not exist" (it says that when a decoder, e.g. mpg123
    on a text file named .mp3, rejects a file that is there: the caller has checked that it exists)."""
    reason = getattr(e, "error_string", None) or str(e) or type(e).__name__
    if "does not exist" in reason:
        return "not recognised as audio, cannot decode it"
    return reason


# ffmpeg arguments before the input and after it (up to the sample rate): float32 mono output on stdout.
_FFMPEG_IN = ("-nostdin", "-hide_banner", "-loglevel", "error", "-threads", "0", "-i")
# with float output ffmpeg does not normalise its downmix (stereo would be (L+R)*0.707);
# rematrix_maxval=1 makes it (L+R)/2, the channel mean soundfile's path uses.
_FFMPEG_OUT = (
    "-vn",
    "-map",
    "0:a:0",
    "-f",
    "f32le",
    "-acodec",
    "pcm_f32le",
    "-ac",
    "1",
    "-rematrix_maxval",
    "1.0",
    "-ar",
)


def _ffmpeg_decode(source: str | bytes, name: str, sampling_rate: int, sf_reason: str) -> np.ndarray:
    """Decode with the ffmpeg CLI to float32 mono at ``sampling_rate`` (stereo is downmixed to the mean)."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise AudioError(
            f"{name}: not a format soundfile can read ({sf_reason}), and ffmpeg is not installed "
            "to try it (apt-get install ffmpeg)"
        )
    with tempfile.TemporaryDirectory(prefix="dwj-audio-") as tmp:
        if isinstance(source, bytes):
            # ffmpeg needs a seekable input for formats like mp4/m4a, so bytes go through a temp file.
            path = os.path.join(tmp, "input" + os.path.splitext(name)[1][:16])
            with open(path, "wb") as f:
                f.write(source)
        else:
            path = os.path.abspath(source)
        cmd = [exe, *_FFMPEG_IN, "file:" + path, *_FFMPEG_OUT, str(sampling_rate), "-"]
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, check=False)
        except OSError as e:
            raise AudioError(f"{name}: soundfile cannot read it ({sf_reason}) and ffmpeg failed to run ({e})") from e
    if proc.returncode != 0:
        lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        ff_reason = lines[-1].replace("file:" + path, name) if lines else f"exit status {proc.returncode}"
        raise AudioError(f"{name}: not a decodable audio file (soundfile: {sf_reason}; ffmpeg: {ff_reason})")
    return np.frombuffer(proc.stdout, dtype="<f4").astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# resampling and framing


def resample(x: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Resample along the last axis from ``orig_sr`` to ``new_sr`` Hz (polyphase FIR, ``resample_poly``).

    Returns float32; the output length is ``ceil(len * new_sr / orig_sr)``. No-op (a float32 view/copy)
    when the rates are equal.
    """
    x = np.asarray(x, dtype=np.float32)
    if orig_sr <= 0 or new_sr <= 0 or int(orig_sr) != orig_sr or int(new_sr) != new_sr:
        raise ValueError(f"sample rates must be positive integers, got {orig_sr!r} -> {new_sr!r}")
    orig_sr, new_sr = int(orig_sr), int(new_sr)
    if orig_sr == new_sr:
        return x
    g = math.gcd(orig_sr, new_sr)
    return resample_poly(x, new_sr // g, orig_sr // g, axis=-1).astype(np.float32, copy=False)


def pad_or_trim(x: np.ndarray, length: int = N_SAMPLES, axis: int = -1) -> np.ndarray:
    """Zero-pad at the end, or cut, ``x`` along ``axis`` to exactly ``length`` samples (like Whisper's)."""
    x = np.asarray(x)
    n = x.shape[axis]
    if n > length:
        return np.take(x, np.arange(length), axis=axis)
    if n < length:
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, length - n)
        return np.pad(x, widths)
    return x


# ----------------------------------------------------------------------------------------------------------------
# log-mel features


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear (3 mel per 200 Hz) below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    log_part = 15.0 + np.log(np.maximum(f, 1000.0) / 1000.0) * (27.0 / np.log(6.4))
    return np.where(f >= 1000.0, log_part, 3.0 * f / 200.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    """Inverse of ``_hz_to_mel``."""
    m = np.asarray(m, dtype=np.float64)
    log_part = 1000.0 * np.exp((np.log(6.4) / 27.0) * (np.maximum(m, 15.0) - 15.0))
    return np.where(m >= 15.0, log_part, 200.0 * m / 3.0)


@functools.cache
def mel_filters(n_mels: int) -> np.ndarray:
    """Slaney-scale, Slaney-normalised (constant area) triangular mel filters over 0-8 kHz, [n_mels, 201].

    The same bank as ``WhisperFeatureExtractor`` / librosa ``filters.mel(sr=16000, n_fft=400, norm="slaney")``.
    Computed in float64, returned as a read-only float64 array (cached per ``n_mels``).
    """
    if n_mels <= 0:
        raise ValueError(f"n_mels must be positive, got {n_mels}")
    bin_hz = np.linspace(0.0, SAMPLE_RATE // 2, N_FFT // 2 + 1)  # centre frequency of each rfft bin
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(8000.0), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rise = (bin_hz - lo) / (mid - lo)
    fall = (hi - bin_hz) / (hi - mid)
    weights = np.clip(np.minimum(rise, fall), 0.0, None) * (2.0 / (hi - lo))
    weights.flags.writeable = False
    return weights


@functools.cache
def _hann_window(n: int) -> np.ndarray:
    """Periodic Hann window (``torch.hann_window(n)``), float64, read-only."""
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)
    w.flags.writeable = False
    return w


def _as_batch(audio: np.ndarray | Sequence[np.ndarray], length: int) -> np.ndarray:
    """1-D array, 2-D [B, T] array or list of 1-D arrays -> float32 [B, length] (each padded/trimmed)."""
    if isinstance(audio, np.ndarray) or not isinstance(audio, (list, tuple)):
        arr = np.asarray(audio, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2:
            raise ValueError(f"audio must be 1-D [T], 2-D [B, T] or a list of 1-D arrays, got shape {arr.shape}")
        return np.ascontiguousarray(pad_or_trim(arr, length, axis=-1))
    out = np.zeros((len(audio), length), dtype=np.float32)
    for i, a in enumerate(audio):
        a = np.asarray(a, dtype=np.float32)
        if a.ndim != 1:
            raise ValueError(f"audio[{i}] must be 1-D, got shape {a.shape}")
        n = min(a.shape[0], length)
        out[i, :n] = a[:n]
    return out


def log_mel_spectrogram(
    audio: np.ndarray | Sequence[np.ndarray], n_mels: int = 80, padding: int = N_SAMPLES
) -> np.ndarray:
    """Whisper's log-mel input features, float32 [B, n_mels, padding // 160] (default [B, n_mels, 3000]).

    ``audio``: 16 kHz float audio as a 1-D array, a 2-D [B, T] array, or a list of 1-D arrays of any lengths.
    Each example is zero-padded or trimmed to ``padding`` samples (30 s by default), then: centred STFT
    (reflect padding, periodic Hann window of 400, hop 160, last frame dropped), power spectrum, slaney mel
    filters, ``log10(max(x, 1e-10))``, clamp to (per-example max - 8), ``(x + 4) / 4``.
    """
    if padding <= N_FFT // 2:
        raise ValueError(f"padding must be more than {N_FFT // 2} samples, got {padding}")
    batch = _as_batch(audio, int(padding))
    filters_t = np.ascontiguousarray(mel_filters(n_mels).T)  # [201, n_mels] float64
    window = _hann_window(N_FFT)
    n_frames = batch.shape[1] // HOP_LENGTH
    out = np.empty((batch.shape[0], n_mels, n_frames), dtype=np.float32)
    # All frames of a block are done at once; blocks of one example measured fastest (a 3000x400 float64
    # frame buffer stays cache-friendly; bigger blocks were 1.5-2x slower on a 2-core machine).
    for start in range(0, batch.shape[0], _MEL_BLOCK):
        x = np.pad(
            batch[start : start + _MEL_BLOCK].astype(np.float64), ((0, 0), (N_FFT // 2, N_FFT // 2)), mode="reflect"
        )
        # frame t starts at t * HOP_LENGTH of the padded signal; the STFT's final frame is dropped (never computed)
        frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT, axis=-1)[:, : n_frames * HOP_LENGTH : HOP_LENGTH]
        spec = np.fft.rfft(frames * window, axis=-1)  # [b, n_frames, 201] complex128
        power = np.square(spec.real)
        power += np.square(spec.imag)
        mel = (power.reshape(-1, power.shape[-1]) @ filters_t).reshape(power.shape[0], n_frames, n_mels)
        log_spec = np.log10(np.maximum(mel, 1e-10, out=mel), out=mel)
        np.maximum(log_spec, log_spec.max(axis=(1, 2), keepdims=True) - 8.0, out=log_spec)
        log_spec += 4.0
        log_spec /= 4.0
        out[start : start + _MEL_BLOCK] = log_spec.transpose(0, 2, 1)
    return out
