"""The warm start: a second run of a command loads its compiled programs from the persistent cache instead of
compiling them (counted by JAX's own cache events, written to results.json with the load time), the cache can
be moved or turned off, and a cache directory that cannot be written warns and the run goes on without it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings

import jax
import pytest

from distil_whisper_jax.assets import speech_manifest
from distil_whisper_jax.infra import compile_cache
from distil_whisper_jax.infra.compile_cache import CompileCacheFlags
from distil_whisper_jax.infra.config import parse
from distil_whisper_jax.stages.distill.config import DistillConfig

from .helpers import REPO, read_tsv, subprocess_env, write_tsv


@pytest.fixture
def restore_session_cache():
    """Tests here point JAX's cache elsewhere; give the rest of the run its shared cache back afterwards."""
    yield
    compile_cache.enable(CompileCacheFlags())


def _eval(manifest, out, *flags: str) -> dict:
    """``run_eval.py`` on one device in a fresh process; its results.json."""
    argv = [sys.executable, str(REPO / "run_eval.py"), "--dataset_name", str(manifest), "--output_dir", str(out)]
    argv += ["--per_device_eval_batch_size", "2", *flags]
    done = subprocess.run(argv, env=subprocess_env(1), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "compiling" in done.stderr and "loading the model(s)" in done.stderr, done.stderr[-2000:]
    return json.loads((out / "results.json").read_text())


def test_a_second_run_loads_every_program_from_the_cache(tmp_path):
    rows = read_tsv(speech_manifest("heldout"))[:2]
    for r in rows:
        (tmp_path / r["audio"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(speech_manifest("heldout").parent / r["audio"], tmp_path / r["audio"])
    manifest = write_tsv(tmp_path / "two.tsv", rows)
    cache = tmp_path / "xla"
    first = _eval(manifest, tmp_path / "first", "--compilation_cache_dir", str(cache))["timings"]
    second = _eval(manifest, tmp_path / "second", "--compilation_cache_dir", str(cache))["timings"]

    assert first["programs_stored"] > 0 and first["programs_loaded"] == 0, first
    assert any(cache.iterdir())
    # the same programs again: every one the first run stored is loaded, not compiled
    assert second["programs_loaded"] == first["programs_stored"], (first, second)
    assert second["programs_compiled"] == first["programs_compiled"] - first["programs_stored"], (first, second)
    for t in (first, second):
        assert t["load_seconds"] > 0 and t["process"] == 0


def test_default_directory_follows_jax_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax-own"))
    assert compile_cache.default_dir() == tmp_path / "jax-own"
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.default_dir() == tmp_path / "xdg" / "distil_whisper_jax" / "xla"


def test_unwritable_directory_warns_and_runs_without_the_cache(tmp_path, restore_session_cache):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.warns(UserWarning, match=r"--compilation_cache_dir .*a-file.*running without the compilation cache"):
        assert compile_cache.enable(CompileCacheFlags(compilation_cache_dir=str(blocker / "xla"))) is None
    assert not jax.config.jax_enable_compilation_cache
    with warnings.catch_warnings():  # a program still compiles and runs, uncached
        warnings.simplefilter("error")
        assert float(jax.jit(lambda x: x * 2)(3.0)) == 6.0


def test_turned_off_and_moved(tmp_path, restore_session_cache):
    assert compile_cache.enable(CompileCacheFlags(compilation_cache=False)) is None
    assert not jax.config.jax_enable_compilation_cache
    moved = compile_cache.enable(CompileCacheFlags(compilation_cache_dir=str(tmp_path / "new" / "place")))
    assert moved == str(tmp_path / "new" / "place") and (tmp_path / "new" / "place").is_dir()
    assert jax.config.jax_compilation_cache_dir == moved and jax.config.jax_enable_compilation_cache


def test_a_bucket_is_a_cache_every_host_can_read(gcs, restore_session_cache, monkeypatch):
    """A pod's hosts share the cache through a bucket (JAX writes from process 0 only): an entry written there by
    one compilation is loaded by the next, through JAX's own file layer on the real gcsfs."""
    monkeypatch.setattr(compile_cache, "MIN_COMPILE_SECONDS", 0.0)  # store even this small program
    assert compile_cache.enable(CompileCacheFlags(compilation_cache_dir="gs://bucket/xla")) == "gs://bucket/xla"

    def program(x):
        return jax.numpy.sin(x @ x.T).sum()

    x = jax.numpy.ones((64, 64))
    with compile_cache.CompileClock() as first:
        jax.jit(program)(x).block_until_ready()
    jax.clear_caches()
    with compile_cache.CompileClock() as second:
        jax.jit(program)(x).block_until_ready()
    assert first.stored >= 1 and first.hits == 0 and first.compiled == first.programs, first.as_dict()
    assert second.hits == first.stored and second.compiled == first.compiled - first.stored, second.as_dict()
    with pytest.warns(UserWarning, match="gs://nobucket/xla: cannot write there"):
        assert compile_cache.enable(CompileCacheFlags(compilation_cache_dir="gs://nobucket/xla")) is None


def test_distillations_old_cache_flag_is_refused_not_reinterpreted(capsys):
    """``--cache_dir X`` kept distillation's programs in ``X/jax_cache``; read as the new directory it would mix
    them with the assembled models, and upstream's scripts use the name for the 🤗 cache: refused, named."""
    argv = ["--model_name_or_path", "m", "--train_dataset_name", "d", "--output_dir", "o", "--max_steps", "1"]
    assert parse(DistillConfig, argv).compilation_cache  # on by default now
    with pytest.raises(SystemExit):
        parse(DistillConfig, [*argv, "--cache_dir", "/tmp/c"])
    assert "--cache_dir" in capsys.readouterr().err


def test_a_saved_program_is_traced_once_per_machine_and_decodes_the_same(
    tmp_path, restore_session_cache, monkeypatch, caplog
):
    """``saved_program``: the first call traces the decoding loop and saves it; a new process (here: the memo
    emptied) reads it back without tracing and decodes the same ids; a damaged file is traced again with a
    warning; another package source is another program. (That a saved program decodes like the model traced in
    place, every generation test of the suite checks: the suite runs with the cache on.)"""
    import numpy as np

    from distil_whisper_jax.decode import generate as generation

    from .helpers import random_params, small_config

    config = small_config(max_source_positions=100)  # 2 s windows: the test is about the program, not speed
    params = random_params(config)
    mel = np.random.default_rng(0).standard_normal((1, config.num_mel_bins, config.n_frames)).astype(np.float32)
    opts = generation.GenerationOptions(max_new_tokens=12)
    exported = tmp_path / "xla" / "exported"

    def run_in_a_new_process() -> np.ndarray:
        monkeypatch.setattr(compile_cache, "_SAVED", {})
        generation._compiled.cache_clear()
        jax.clear_caches()  # nothing traced stays in memory
        return generation.generate(params, mel, [50257], config, opts, devices=jax.local_devices()[:1])

    compile_cache.enable(CompileCacheFlags(compilation_cache_dir=str(tmp_path / "xla")))
    reference = run_in_a_new_process()
    saved = list(exported.iterdir())
    assert [p.name.startswith("generate-") for p in saved] == [True], saved

    def traced(*a, **k):
        raise AssertionError("the model was traced again")

    with monkeypatch.context() as m:
        m.setattr(generation, "_greedy", traced)
        assert np.array_equal(run_in_a_new_process(), reference)

    saved[0].write_bytes(b"damaged")
    assert np.array_equal(run_in_a_new_process(), reference)
    assert "unreadable saved program" in caplog.text
    assert saved[0].stat().st_size > 1000  # replaced by the program traced again

    monkeypatch.setattr(compile_cache, "package_fingerprint", lambda: "an edited package")
    assert np.array_equal(run_in_a_new_process(), reference)
    assert len(list(exported.iterdir())) == 2
