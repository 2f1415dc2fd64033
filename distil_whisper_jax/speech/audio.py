"""Audio loading and Whisper log-mel features, in numpy.

``load_audio`` / ``decode_audio_bytes`` decode a file (or its bytes) with soundfile, falling back to PyAV
(FFmpeg's libraries, in-process) for formats libsndfile cannot read and for mp3, and return float32 mono at
16 kHz; a file cut short (truncated, or damaged so that decoding fails part-way) is refused, not returned
shorter.
``log_mel_spectrogram`` computes Whisper's input features for a batch, matching
``transformers.WhisperFeatureExtractor`` (~1e-7 from its float64 numpy path, ~5e-5 from its float32 torch
path), with each example's STFT vectorised over all of its frames.
"""

from __future__ import annotations

import functools
import io
import itertools
import math
import os
from collections.abc import Iterator, Sequence
from typing import Union

import av
import numpy as np
import soundfile as sf

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

    wav/flac/ogg (what libsndfile reads) are decoded with soundfile; mp3 and other formats (m4a, webm, ...)
    with PyAV (FFmpeg's libraries, in-process): libsndfile takes an mp3's length from its first frame, which
    for a variable-bitrate file without a Xing header can be a fraction of it, and reads no further. Channels
    are averaged to mono (PyAV: FFmpeg's downmix, which for stereo is the same mean), then resampled with
    ``resample`` (PyAV: FFmpeg's resampler).
    Raises ``AudioError`` for a missing, empty, undecodable, truncated or zero-length file, or non-finite samples.
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

    A file soundfile reads at 16 kHz is read in blocks (the same samples as ``load_audio``); anything else is
    decoded frame by frame with PyAV (FFmpeg's resampler, not ``resample``'s, for other rates). Same
    ``AudioError`` cases as ``load_audio``, raised when the generator is first advanced (or later, for damage
    further in)."""
    if block_samples < 1:
        raise ValueError(f"block_samples must be ≥ 1, got {block_samples}")
    name = _check_file(path)
    try:
        f = _open_soundfile(name, name)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        f, reason = None, _soundfile_reason(e)
    if f is not None and f.samplerate != SAMPLE_RATE:
        reason = f"{f.samplerate} Hz, not {SAMPLE_RATE}"
        f.close()
        f = None
    if f is None:
        frames = _pyav_frames(name, name, SAMPLE_RATE, reason)
        yield from _checked_blocks(_rebatch(frames, block_samples), name)
        return
    with f:
        try:
            yield from _checked_blocks(_soundfile_blocks(f, block_samples), name)
        except (sf.LibsndfileError, RuntimeError) as e:  # damage further into the file
            raise AudioError(f"{name}: cannot decode the audio after the start ({_soundfile_reason(e)})") from e


def _soundfile_blocks(f: sf.SoundFile, n: int) -> Iterator[np.ndarray]:
    """Channel means of ``f`` read ``n`` frames at a time, up to the last frame actually decoded (``f.blocks``
    pads a block that comes up short with the previous block's samples, e.g. an mp3 that holds fewer frames
    than libsndfile estimated)."""
    while len(block := f.read(n, dtype="float32", always_2d=True)):
        yield block.mean(axis=1, dtype=np.float32)


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


def _rebatch(pieces: Iterator[np.ndarray], n: int) -> Iterator[np.ndarray]:
    """The samples of ``pieces`` regrouped into arrays of ``n`` (the last one shorter), holding at most one
    block plus one piece."""
    buf: list[np.ndarray] = []
    have = 0
    for x in pieces:
        buf.append(x)
        have += len(x)
        while have >= n:
            joined = np.concatenate(buf)
            yield joined[:n]
            buf, have = [joined[n:]], have - n
    if have:
        yield np.concatenate(buf)


def decode_audio_bytes(data: bytes, name: str, sampling_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the encoded bytes of an audio file (e.g. ``datasets.Audio(decode=False)``'s ``bytes``).

    ``name`` (the original file name) is used in error messages. Same output and errors as ``load_audio``.
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
        with _open_soundfile(source, name) as f:
            sr = f.samplerate
            audio = f.read(dtype="float32", always_2d=True)  # [T, C]
        audio = audio.mean(axis=1, dtype=np.float32) if audio.shape[1] > 1 else audio[:, 0]
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        pieces = list(_pyav_frames(source, name, sampling_rate, _soundfile_reason(e)))
        audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
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


# ----------------------------------------------------------------------------------------------------------------
# truncated files: a file cut short (an interrupted copy or download) must not pass for a shorter whole one

_TRUNCATION_SLACK = 0.05  # seconds the decoded audio may fall short of the length the header states
_WAV_HEAD_BYTES = 65536  # a WAV whose data chunk starts later is not checked
_PCM_WIDTH = {"PCM_U8": 1, "PCM_S8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8}
# PyAV container formats whose header states the exact length; an mp3's is an estimate unless it has a Xing
# header (a VBR file without one can state twice its length), ogg and webm state none that covers a cut file.
_STATED_LENGTH_FORMATS = frozenset({"flac", "wav", "aiff", "mov,mp4,m4a,3gp,3g2,mj2"})


def _check_length(name: str, decoded: int, stated: int | None, rate: int) -> None:
    """``AudioError`` when ``decoded`` samples fall short of the ``stated`` length by more than the slack."""
    if stated and stated - decoded > _TRUNCATION_SLACK * rate:
        raise AudioError(
            f"{name}: truncated or damaged audio: it decodes to {decoded / rate:.2f} s of the "
            f"{stated / rate:.2f} s its header states"
        )


def _open_soundfile(source: str | bytes, name: str) -> sf.SoundFile:
    """``source`` opened with soundfile; ``AudioError`` for a PCM WAV shorter than its header states (libsndfile
    and FFmpeg both cut the frame count to what the file holds, so only the header tells); ``ValueError`` (the
    callers' cue for PyAV) for an mp3."""
    f = sf.SoundFile(io.BytesIO(source) if isinstance(source, bytes) else source)
    if f.format == "MP3":  # its frame count is an estimate soundfile never reads past: decoded by PyAV
        f.close()
        raise ValueError("mp3 goes to PyAV (libsndfile reckons its length from the first frame)")
    width = _PCM_WIDTH.get(f.subtype)
    if f.format == "WAV" and width is not None:
        if isinstance(source, bytes):
            head = source[:_WAV_HEAD_BYTES]
        else:
            with open(source, "rb") as fh:
                head = fh.read(_WAV_HEAD_BYTES)
        size = _riff_data_size(head)
        try:
            _check_length(name, f.frames, None if size is None else size // (width * f.channels), f.samplerate)
        except AudioError:
            f.close()
            raise
    return f


def _riff_data_size(head: bytes) -> int | None:
    """The byte size a RIFF/WAVE header gives its ``data`` chunk; None if not found in ``head`` or left open
    (0 or 0xFFFFFFFF, as writers that stream do)."""
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(head):
        size = int.from_bytes(head[pos + 4 : pos + 8], "little")
        if head[pos : pos + 4] == b"data":
            return None if size in (0, 0xFFFFFFFF) else size
        pos += 8 + size + size % 2
    return None


# ----------------------------------------------------------------------------------------------------------------
# PyAV fallback: FFmpeg's decoders for what libsndfile cannot read (m4a, webm, opus, ...)

# float output: FFmpeg does not normalise its downmix (stereo would be (L+R)*0.707); rematrix_maxval=1 makes
# it (L+R)/2, the channel mean soundfile's path uses.
_DOWNMIX = {"rematrix_maxval": "1.0"}


def _pyav_frames(source: str | bytes, name: str, rate: int, sf_reason: str) -> Iterator[np.ndarray]:
    """Float32 mono arrays at ``rate``, one per decoded frame, from PyAV. ``AudioError`` naming soundfile's
    reason (``sf_reason``) and FFmpeg's when it cannot decode the file, and for a stream that stops short of
    the length its header states."""

    def fail(reason: str) -> AudioError:
        return AudioError(f"{name}: not a decodable audio file (soundfile: {sf_reason}; PyAV: {reason})")

    decoded, stated = 0, None
    try:
        with av.open(io.BytesIO(source) if isinstance(source, bytes) else "file:" + os.path.abspath(source)) as c:
            if not c.streams.audio:
                raise fail("no audio stream")
            stream = c.streams.audio[0]
            if c.format.name in _STATED_LENGTH_FORMATS and stream.duration and stream.time_base:
                stated = round(stream.duration * stream.time_base * rate)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate, options=_DOWNMIX)
            for frame in itertools.chain(c.decode(stream), [None]):  # None flushes the resampler
                for out in resampler.resample(frame):
                    decoded += out.samples
                    yield out.to_ndarray()[0]
    except AudioError:
        raise
    except (av.FFmpegError, ValueError) as e:
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        if decoded:  # it failed part-way: say where
            of = f" of the {stated / rate:.2f} s its header states" if stated else ""
            reason += f" after {decoded / rate:.2f} s{of} (truncated or damaged)"
        raise fail(reason) from e
    _check_length(name, decoded, stated, rate)


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
    from scipy.signal import resample_poly  # here: scipy.signal takes ~0.4 s to import, 16 kHz input never needs it

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
