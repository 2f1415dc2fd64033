"""Every stage reads and writes gs:// itself, tested against a real GCS API server running here
(``tests/gcs_emulator.py``) that both storage layers use over HTTP: fsspec/gcsfs (UPath, etils.epath) and
tensorstore (Orbax's arrays). Directory renames are refused on gs:// and under the server's object store, as
gcsfuse refuses them on a flat bucket (``tests/rename_guard.py``): a stage that finalised its output by
renaming a directory on the bucket would fail here.

What this does not prove: that a real Google Cloud Storage bucket, its authentication and its consistency
behave like the emulator (none was used)."""

import json
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from . import gcs_emulator, rename_guard, test_distill
from .helpers import cli_args
from .test_distill import _max_diff, small_config

# test_distill's fixtures (module-scoped, so made again for this module): the small random teacher and its
# 2-layer student, and a labelled dataset of the bundled clips
small_models, labelled, tok = test_distill.small_models, test_distill.labelled, test_distill.tok


def _upload(local: Path, url: str) -> None:
    from distil_whisper_jax.infra import storage

    dest = storage.location(url)
    if local.is_dir():
        storage.upload_tree(local, dest)
    else:
        dest.fs.put_file(str(local), dest.path)


def _flags(student: str, out: str, labelled: Path, max_steps: int, **extra) -> dict:
    """A short run of the small student (teacher: the one its distil_info.json records), saving every step."""
    return {
        "model_name_or_path": student,
        "train_dataset_name": str(labelled),
        "output_dir": out,
        "max_steps": max_steps,
        "save_steps": 1,
        "per_device_train_batch_size": 1,
        "logging_steps": 1,
        "learning_rate": 3e-3,
        "warmup_steps": 1,
        "max_label_length": 32,
        "seed": 1,
        "disable_tqdm": True,
        "freeze_encoder": True,
        **extra,
    }


# ----------------------------------------------------------------------------------------------
# The guard itself


def test_rename_guard_refuses_what_a_gcsfuse_mount_refuses(gcs, small_models, tmp_path, monkeypatch):
    """The old way (stages writing to a gcsfuse mount) fails under the guard: Orbax finalises a local-style
    checkpoint by renaming its temporary directory, the exporter swaps ``hf/`` in with ``os.replace``, and a
    directory move on gs:// is refused too. Without this the bucket tests below would prove nothing."""
    from distil_whisper_jax.infra import storage
    from distil_whisper_jax.infra.files import OutputWriteError
    from distil_whisper_jax.stages.export.export import ExportConfig, run
    from distil_whisper_jax.weights import checkpoint

    mount = tmp_path / "mount"
    mount.mkdir()
    for obj, name, value in rename_guard.patches([mount, gcs.root]):
        monkeypatch.setattr(obj, name, value)
    rename_guard.REFUSED.clear()
    manager = checkpoint.make_manager(mount / "checkpoints", async_save=False)
    with pytest.raises(Exception, match="(?i)operation not supported"):
        checkpoint.save(manager, 1, {"params": {"w": np.zeros(3)}}, {}, {})
    manager.close()
    assert any(".orbax-checkpoint-tmp" in r for r in rename_guard.REFUSED), rename_guard.REFUSED
    teacher, _ = small_models
    with pytest.raises(OutputWriteError, match="(?i)operation not supported"):
        run(ExportConfig(output_dir=str(mount / "export"), model_name_or_path=str(teacher), formats="hf", verify=False))
    assert any(Path(r).name.startswith(".hf.tmp-") for r in rename_guard.REFUSED), rename_guard.REFUSED
    d = storage.location("gs://bucket/guard/d")
    (d / "x").write_text("x")
    with pytest.raises(OSError, match="(?i)operation not supported"):
        d.rename("gs://bucket/guard/e")
    assert (d / "x").read_text() == "x"


# ----------------------------------------------------------------------------------------------
# Models from URLs


def test_load_pretrained_from_bucket_urls(gcs, tiny, tmp_path, caplog, monkeypatch):
    """A CTranslate2 dir (the bundled tiny.en), a transformers dir and a ggml file, each loaded from gs://:
    copied once into the cache (a second load downloads nothing), copied again when the model at the URL
    changes; a missing object, a directory without a model and a URL scheme without its package are named."""
    fsspec_registry = sys.modules["fsspec.registry"]

    from distil_whisper_jax.core.model import init_params
    from distil_whisper_jax.weights.convert import tree_equal
    from distil_whisper_jax.weights.convert.ggml import write_ggml
    from distil_whisper_jax.weights.convert.hf import write_hf_dir
    from distil_whisper_jax.weights.loading import default_model_dir, load_pretrained

    cache = tmp_path / "cache" / "distil_whisper_jax" / "remote"
    _upload(default_model_dir(), "gs://bucket/models/tiny-ct2")
    pre = load_pretrained("gs://bucket/models/tiny-ct2", "--model")
    assert pre.fmt == "ct2" and pre.config == tiny.config and tree_equal(pre.params, tiny.params)
    assert pre.tokenizer.encode(" hello world") == tiny.tokenizer.encode(" hello world")
    assert Path(pre.source).parent == cache
    caplog.clear()
    assert load_pretrained("gs://bucket/models/tiny-ct2").source == pre.source
    assert "fetched" not in caplog.text and len(list(cache.iterdir())) == 1

    config = small_config(tiny)
    for seed in (0, 1):  # the second model replaces the first at the same URL
        params = init_params(config, seed)
        write_hf_dir(tmp_path / f"hf{seed}", config, params, tokenizer=tiny.tokenizer)
        _upload(tmp_path / f"hf{seed}", "gs://bucket/models/small-hf")
        hf = load_pretrained("gs://bucket/models/small-hf", "--model")
        assert hf.fmt == "hf" and hf.config == config and tree_equal(hf.params, params)
    assert len(list(cache.iterdir())) == 3

    config = config.replace(encoder_ffn_dim=4 * config.d_model, decoder_ffn_dim=4 * config.d_model)  # ggml's rule
    write_ggml(tmp_path / "ggml-small.bin", config, init_params(config, 0), tiny.tokenizer)
    _upload(tmp_path / "ggml-small.bin", "gs://bucket/models/ggml-small.bin")
    gg = load_pretrained("gs://bucket/models/ggml-small.bin")
    assert gg.fmt == "ggml" and gg.config == config and Path(gg.source).name == "ggml-small.bin"

    with pytest.raises(ValueError, match="--model gs://bucket/models/missing: no such object or directory"):
        load_pretrained("gs://bucket/models/missing", "--model")
    _upload(tmp_path / "hf0" / "config.json", "gs://bucket/models/junk/notes.json")
    with pytest.raises(ValueError, match="--model gs://bucket/models/junk: directory holds neither"):
        load_pretrained("gs://bucket/models/junk", "--model")
    # gcsfs not installed: fsspec's own import of it fails
    monkeypatch.delitem(fsspec_registry._registry, "gs")
    missing = {"class": "no_such_gcsfs_module.GCSFileSystem", "err": "Please install gcsfs to access Google Storage"}
    monkeypatch.setitem(fsspec_registry.known_implementations, "gs", missing)
    with pytest.raises(ValueError, match=r"--model gs://bucket/m: .*distil-whisper-jax\[gcs\]"):
        load_pretrained("gs://bucket/m", "--model")


# ----------------------------------------------------------------------------------------------
# The chain on a bucket


def test_create_student_distill_export_all_on_the_bucket(gcs, small_models, labelled, tmp_path):
    """teacher (gs://) → create-student → gs://…/student → distil → gs://…/run → export → gs://…/export:
    every model input is a URL and every output lands in the bucket; the student records its teacher's URL,
    distillation finds that teacher through it, and the exported weights are the run's checkpoint."""
    from distil_whisper_jax.cli import create_student, export
    from distil_whisper_jax.stages.distill.distill import DistillConfig, run
    from distil_whisper_jax.weights.checkpoint import checkpoint_steps, load_params
    from distil_whisper_jax.weights.convert import tree_equal
    from distil_whisper_jax.weights.loading import load_pretrained

    teacher, _ = small_models
    base = "gs://bucket/chain"
    _upload(teacher, f"{base}/teacher")
    argv = ["--teacher_model_name_or_path", f"{base}/teacher", "--decoder_layers", "2"]
    assert create_student.main([*argv, "--output_dir", f"{base}/student"]) == 0
    info = json.loads(gcs.object_path(f"{base}/student/distil_info.json").read_text())
    assert info["teacher"] == f"{base}/teacher" and info["decoder_layer_map"] == [0, 3]
    assert gcs.object_path(f"{base}/student/model.safetensors").is_file()

    assert run(DistillConfig(**_flags(f"{base}/student", f"{base}/run", labelled, max_steps=2))) == 0
    assert checkpoint_steps(f"{base}/run/checkpoints") == [1, 2]
    assert gcs.object_path(f"{base}/run/checkpoints/2/commit_success.txt").is_file()
    assert json.loads(gcs.object_path(f"{base}/run/hf/distil_info.json").read_text())["teacher"] == f"{base}/teacher"

    out = ["--output_dir", f"{base}/export", "--formats", "hf", "--no-verify"]  # ggml needs ffn_dim = 4·d_model
    assert export.main(["--model", f"{base}/run", *out]) == 0
    assert gcs.object_path(f"{base}/export/hf/model.safetensors").is_file()
    exported = load_pretrained(f"{base}/export/hf")
    config, params = load_params(f"{base}/run")
    assert exported.config == config and tree_equal(exported.params, params)
    assert tree_equal(load_pretrained(f"{base}/run/hf").params, params)


# ----------------------------------------------------------------------------------------------
# Preemption and resume on a bucket

# Runs the distillation CLI (argv[2:]) with directory renames refused under argv[1] and on gs://, and a
# preemption notice that arrives during step 2, after the step-1 checkpoint: the run waits at its step-2 log
# line for the test's SIGTERM (sent once checkpoint 1 is in the bucket), which goes to the run's own handler.
PREEMPTED_IN_STEP_2 = """
import signal, sys, time
from tests import rename_guard
rename_guard.install([sys.argv[1]])
from distil_whisper_jax.stages.distill import distill
from distil_whisper_jax.cli.distill import main
log_line = distill.log_line
def preempted(step, scalars):
    if step != 2:
        return log_line(step, scalars)
    handler, got = signal.getsignal(signal.SIGTERM), []
    signal.signal(signal.SIGTERM, lambda s, f: (got.append(s), handler(s, f)))
    log_line(step, scalars)
    deadline = time.monotonic() + 120
    while not got and time.monotonic() < deadline:
        time.sleep(0.02)
    signal.signal(signal.SIGTERM, handler)
distill.log_line = preempted
sys.exit(main(sys.argv[2:]))
"""


def test_sigterm_checkpoints_to_the_bucket_and_the_run_resumes_from_it(gcs, small_models, labelled, tmp_path):
    """``--save_steps 1 --max_steps 3`` to gs://: SIGTERM during step 2 (after checkpoint 1 reached the
    bucket) saves step 2 there and exits with EXIT_PREEMPTED; a second run resumes from the bucket and ends
    with the parameters of an uninterrupted local run."""
    from distil_whisper_jax.stages.distill.distill import EXIT_PREEMPTED, DistillConfig, run
    from distil_whisper_jax.weights.checkpoint import checkpoint_steps, load_params

    _, student = small_models
    assert run(DistillConfig(**_flags(str(student), str(tmp_path / "ref"), labelled, max_steps=3))) == 0
    url = "gs://bucket/preempt/run"
    flags = _flags(str(student), url, labelled, max_steps=3)
    committed = gcs.object_path(f"{url}/checkpoints/1/commit_success.txt")
    code, text = test_distill._run_until(
        cli_args(flags), 2, signal.SIGTERM, committed.is_file, ("-c", PREEMPTED_IN_STEP_2, str(gcs.root)), wait=120
    )
    assert committed.is_file(), "checkpoint 1 never reached the bucket"
    assert code == EXIT_PREEMPTED, text[-3000:]
    assert "SIGTERM: saved a checkpoint at step 2" in text
    gcs_emulator.use_gcsfs()  # no listing cached before the subprocess wrote
    assert checkpoint_steps(f"{url}/checkpoints") == [1, 2]

    assert run(DistillConfig(**flags)) == 0  # resumes from step 2 in the bucket
    assert checkpoint_steps(f"{url}/checkpoints") == [1, 2, 3]
    assert _max_diff(load_params(url)[1], load_params(tmp_path / "ref")[1]) <= 1e-6
    logged = [json.loads(ln)["step"] for ln in gcs.object_path(f"{url}/metrics.jsonl").read_text().splitlines()]
    assert [s for s in logged if s] == [1, 2, 3]
