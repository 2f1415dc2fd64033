"""espeak-ng speech through its shared library from PyPI ``espeakng-loader`` (the library and its voice data, pinned
by pip), so no system program is needed.

``speak(text, VOICE, RATE, PITCH, GAP)`` gives the samples of ``espeak-ng -v VOICE -s RATE -p PITCH -g GAP -b 1``:
identical ones, for the same library version (checked against Debian's 1.51 program and library). That needs a
fresh library for every utterance: it keeps state in C globals that outlive an utterance and that
``espeak_Terminate``/``espeak_Initialize`` do not reset (speaking one sentence twice in one loaded library gives two
slightly different waveforms, so a clip would depend on what was spoken before it). Each call therefore loads a
private copy of the library file (private, so no other handle on it, such as phonemizer's, keeps it loaded),
initialises it, speaks, and unloads it: about 10 ms on top of the synthesis. The breathy variants (``f2``...) add
random noise; its generator is seeded the same way before each utterance (1.52's own program seeds it from the clock,
so this is where the library is more reproducible than the program). Calls take turns under one lock (the library
also sets the process's ``LC_CTYPE`` locale, and 1.51 uses the process's ``rand()``), so ``speak`` is safe to call
from several threads.
"""

from __future__ import annotations

import _ctypes
import contextlib
import ctypes
import shutil
import tempfile
import threading
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import numpy as np

AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT: espeak_Synth returns when done, samples go to the callback
INITIALIZE_DONT_EXIT = 0x8000  # report missing voice data instead of calling exit()
CHARS_UTF8, PHONEMES, ENDPAUSE = 0x1, 0x100, 0x1000  # the flags the program speaks ``-b 1`` text with
POS_CHARACTER = 1
RATE, PITCH, WORDGAP = 1, 3, 7  # espeak_PARAMETER
ERRORS = {-1: "internal error", 1: "buffer full", 2: "not found"}  # espeak_ERROR (0 is EE_OK)


class Voice(ctypes.Structure):
    """``espeak_VOICE``: the properties to select a voice by (only ``languages`` is set here)."""

    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_char_p), ("identifier", ctypes.c_char_p)]
    _fields_ += [("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte)]
    _fields_ += [("xx1", ctypes.c_ubyte), ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]


SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_LOCK = threading.Lock()  # one loaded library at a time (each sets the process's locale)


def library_paths() -> tuple[Path, Path]:
    """The shared library and the ``espeak-ng-data`` directory of ``espeakng-loader``."""
    try:
        import espeakng_loader
    except ImportError:
        raise RuntimeError('espeak-ng: the espeakng-loader package is missing (pip install -e ".[tts]")') from None
    return Path(espeakng_loader.get_library_path()), Path(espeakng_loader.get_data_path())


def _bind(lib: ctypes.CDLL) -> None:
    """Argument and result types of the functions used (ctypes would otherwise pass and return C ints)."""
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Info.argtypes, lib.espeak_Info.restype = [ctypes.c_void_p], ctypes.c_char_p
    lib.espeak_SetSynthCallback.argtypes, lib.espeak_SetSynthCallback.restype = [SynthCallback], None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByProperties.argtypes = [ctypes.POINTER(Voice)]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint]
    lib.espeak_Synth.argtypes += [ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]


@contextlib.contextmanager
def _fresh_library(library: Path, data: Path) -> Iterator[tuple[ctypes.CDLL, int]]:
    """A private copy of ``library``, loaded and initialised with the voices of ``data`` (the library and its
    sample rate); terminated and unloaded afterwards, so the next call starts from the same state."""
    with _LOCK, tempfile.TemporaryDirectory(prefix="espeak-ng-") as tmp:
        copy = Path(tmp) / library.name
        try:
            shutil.copyfile(library, copy)
            lib = ctypes.CDLL(str(copy))
        except OSError as e:
            raise RuntimeError(f"espeak-ng: cannot load the library {library}: {e}") from None
        try:
            _bind(lib)
            rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data).encode(), INITIALIZE_DONT_EXIT)
            if rate <= 0:
                raise RuntimeError(f"espeak-ng: espeak_Initialize failed ({rate}) with the voice data {data}")
            try:
                yield lib, rate
            finally:
                lib.espeak_Terminate()
        finally:
            _ctypes.dlclose(lib._handle)


def _check(code: int, what: str) -> None:
    if code != 0:
        raise RuntimeError(f"espeak-ng: {what} failed: {ERRORS.get(code, f'error {code}')}")


def _seed_noise(lib: ctypes.CDLL) -> None:
    """Fix the noise of the breathy variants (``f2``, ``f3``...): 1.52 draws it from its own generator, seeded from
    the clock by ``espeak_Initialize``; 1.51 from the C library's ``rand()``, whose state is the process's (reseeded
    as a new process starts it, the program's state)."""
    if hasattr(lib, "espeak_ng_SetRandSeed"):
        lib.espeak_ng_SetRandSeed(ctypes.c_long(1))
    ctypes.CDLL(None).srand(1)


def _set_voice(lib: ctypes.CDLL, voice: str) -> None:
    """Select ``voice`` as the program's ``-v`` does: by voice name or file name, else by language (``en-gb+f2``
    is the voice of language ``en-gb``, file ``gmw/en``, with the variant ``f2``)."""
    if lib.espeak_SetVoiceByName(voice.encode()) != 0:
        code = lib.espeak_SetVoiceByProperties(ctypes.byref(Voice(languages=voice.encode())))
        _check(code, f"selecting the voice {voice!r} (a voice or language of espeak-ng --voices, +variant)")


def speak(text: str, voice: str, rate: int, pitch: int = 50, gap: int = 0) -> tuple[np.ndarray, int]:
    """float32 samples in [-1, 1) of ``text`` and their sample rate (espeak-ng's own, 22050 Hz). ``voice`` is a
    voice name with an optional variant (``en-gb-x-rp+klatt``), ``rate`` words per minute, ``pitch`` 0-99 (50 is
    the voice's own), ``gap`` an extra pause between words in units of 10 ms."""
    chunks: list[np.ndarray] = []

    def collect(wav, n: int, _events) -> int:
        if n > 0 and wav:
            chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
        return 0  # 0: go on

    callback = SynthCallback(collect)  # referenced until the library is unloaded
    with _fresh_library(*library_paths()) as (lib, sample_rate):
        lib.espeak_SetSynthCallback(callback)
        _set_voice(lib, voice)
        for param, value, name in ((RATE, rate, "rate"), (PITCH, pitch, "pitch"), (WORDGAP, gap, "word gap")):
            _check(lib.espeak_SetParameter(param, value, 0), f"setting the {name} to {value}")
        raw = text.encode("utf-8")  # bytes end in a NUL, counted in the size as the program does
        flags = CHARS_UTF8 | PHONEMES | ENDPAUSE
        _seed_noise(lib)
        _check(lib.espeak_Synth(raw, len(raw) + 1, 0, POS_CHARACTER, 0, flags, None, None), f"speaking {text!r}")
    if not chunks:
        raise RuntimeError(f"espeak-ng: no audio for {text!r} with the voice {voice!r}")
    return np.concatenate(chunks).astype(np.float32) / 32768.0, sample_rate


def version() -> str:
    """``espeak-ng <library version> (espeakng-loader <package version>)``. It loads the library, so it is also the
    check to run before any work."""
    with _fresh_library(*library_paths()) as (lib, _):
        lib_version = lib.espeak_Info(None).decode()
    return f"espeak-ng {lib_version} (espeakng-loader {metadata.version('espeakng-loader')})"
