"""Distillation run loop: label construction, the resumable data stream, checkpoints, the training loop
(exact resume after SIGKILL / SIGTERM, 2 jax.distributed processes == 1, bad input) and the end-to-end
demo on the bundled corpus with the real tiny.en.

Speed: the loop tests use a small random teacher (d_model 64) so each run takes seconds; subprocesses
only where a process must die or several must cooperate."""

import collections
import dataclasses
import gc
import io
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from . import fake_gcs, helpers
from .helpers import cli_args, free_port, subprocess_env

REPO = Path(__file__).resolve().parents[1]
# ----------------------------------------------------------------------------------------------
# Fixtures


def _flac_bytes(wav: np.ndarray) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, wav, 16000, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def write_labelled(path: Path, rows: list[dict], rows_per_group: int = 3) -> Path:
    """A labelled dataset in the labelling stage's layout (one Parquet file, several row groups)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path / "part-00000.parquet", row_group_size=rows_per_group)
    return path


@pytest.fixture(scope="module")
def tok(tiny):
    return tiny.tokenizer


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, clips, clip_audio, tok):
    """Bundled clips (cut to ≤ 8 s, and a second copy shifted by 0.5 s) with their reference transcript as
    the pseudo-label (with made-up timestamps on every other row), in the labelling script's layout."""
    rows = []
    for copy in range(2):
        for i, ((path, text), wav) in enumerate(zip(clips, clip_audio)):
            wav = wav[copy * 8000 : copy * 8000 + 8 * 16000]
            ids = tok.encode(" " + text.strip(), add_special_tokens=False)[:20]
            ts = i % 2 == 0
            ids_ts = ([50364] + ids + [50364 + 50]) if ts else ids
            rows.append(
                {
                    "audio": {"bytes": _flac_bytes(wav), "path": f"{Path(path).stem}_{copy}.flac"},
                    "text": text,
                    "speaker_id": str(i),
                    "whisper_transcript": tok.decode(ids_ts, decode_with_timestamps=True),
                    "whisper_token_ids": ids_ts,
                    "wer": float(10 * i),
                    "condition_on_prev": rows[-1]["whisper_token_ids"] if copy else [],
                    "duration": len(wav) / 16000,
                }
            )
    return write_labelled(tmp_path_factory.mktemp("labelled"), rows)


def small_config(tiny):
    return tiny.config.replace(
        d_model=64,
        encoder_layers=1,
        decoder_layers=4,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_target_positions=64,
    )


@pytest.fixture(scope="module")
def small_models(tmp_path_factory, tiny):
    """A small random teacher (4 decoder layers, d_model 64, tiny.en's vocabulary) and its 2-layer student."""
    from distil_whisper_jax.core.model import init_params
    from distil_whisper_jax.stages.student.create_student import create_student
    from distil_whisper_jax.weights.convert.hf import write_hf_dir
    from distil_whisper_jax.weights.student import student_generation_config

    root = tmp_path_factory.mktemp("models")
    config = small_config(tiny)
    params = init_params(config, 0)
    gen = student_generation_config(tiny, config, [0, 1, 2, 3])
    gen["alignment_heads"] = []
    write_hf_dir(root / "teacher", config, params, generation_config=gen, tokenizer=tiny.tokenizer)
    create_student(str(root / "teacher"), root / "student", decoder_layers=2)
    return root / "teacher", root / "student"


# ----------------------------------------------------------------------------------------------
# Labels


def test_build_sequence_timestamps_prompt_and_masking(specials):
    from distil_whisper_jax.data.stream import IGNORE, LabelOptions, build_sequence, sequence_to_arrays

    tb = specials.timestamp_begin
    target = [tb, 100, 200, tb + 50]
    keep = LabelOptions(max_label_length=16, timestamp_probability=1.0, condition_on_prev_probability=1.0)
    strip = LabelOptions(max_label_length=16, timestamp_probability=0.0, condition_on_prev_probability=0.0)
    rng = lambda: np.random.default_rng(0)
    # timestamps kept: no <|notimestamps|>; previous text conditioned (its timestamps kept too)
    seq = build_sequence(target, [tb, 7, 8, tb + 3], specials, keep, rng())
    assert seq == [specials.startofprev, tb, 7, 8, tb + 3, specials.sot, *target, specials.eot]
    # stripped: <|notimestamps|> and plain text; no previous text at probability 0
    seq2 = build_sequence(target, [7, 8], specials, strip, rng())
    assert seq2 == [specials.sot, specials.no_timestamps, 100, 200, specials.eot]
    # teacher forcing arrays: previous-text targets ignored, SOT predicted from the prompt, padding ignored
    inputs, labels = sequence_to_arrays(seq, 15, specials)
    assert inputs[: len(seq) - 1].tolist() == seq[:-1]
    assert labels.tolist() == [IGNORE] * 4 + seq[5:] + [IGNORE] * (15 - len(seq) + 1)
    assert labels[4] == specials.sot
    inputs2, labels2 = sequence_to_arrays(seq2, 15, specials)
    assert labels2[:4].tolist() == seq2[1:] and inputs2[0] == specials.sot


def test_build_sequence_length_limits(specials):
    from distil_whisper_jax.data.stream import LabelOptions, build_sequence

    target = list(range(100, 120))  # 20 text tokens; with sot + notimestamps + eot = 23
    rng = lambda: np.random.default_rng(0)
    drop = LabelOptions(max_label_length=22, timestamp_probability=0.0)
    assert build_sequence(target, None, specials, drop, rng()) is None  # the original drops
    cut = LabelOptions(max_label_length=22, timestamp_probability=0.0, truncate=True)
    assert len(build_sequence(target, None, specials, cut, rng())) == 22
    # the previous text is front-trimmed to fit: total never exceeds max_label_length
    fit = LabelOptions(max_label_length=30, timestamp_probability=0.0, condition_on_prev_probability=1.0)
    seq = build_sequence(target, list(range(300, 340)), specials, fit, rng())
    assert (
        len(seq) == 30
        and seq[0] == specials.startofprev
        and seq[7] == specials.sot
        and seq[1:7] == list(range(334, 340))
    )


# ----------------------------------------------------------------------------------------------
# Stream


def _stream(names, tok, specials, weights=None, state=None, **kw):
    from distil_whisper_jax.data.stream import DataOptions, LabelOptions, TrainStream, open_sources

    opts = DataOptions(
        labels=LabelOptions(max_label_length=64, timestamp_probability=0.5, condition_on_prev_probability=0.5), **kw
    )
    return TrainStream([open_sources(str(n))[0] for n in names], weights, tok, specials, opts, seed=3, state=state)


def test_stream_resumes_exactly_mixes_and_wraps(labelled, tmp_path, tok, specials):
    import pyarrow.parquet as pq

    from distil_whisper_jax.data.stream import StreamState

    small = write_labelled(tmp_path / "small", pq.read_table(labelled / "part-00000.parquet").slice(0, 2).to_pylist())
    ref = _stream([labelled, small], tok, specials, weights=[3, 1])
    batches = [ref.next_batch(4) for _ in range(12)]  # 48 draws: the 2-row source wraps many times
    assert max(ref.state.epochs) >= 3
    drawn = [e.source for b in batches for e in b]
    assert 0.55 < drawn.count(0) / len(drawn) < 0.95  # ∝ 3:1 weights
    # O(1) resume: a stream rebuilt from the saved position continues identically
    mid = _stream([labelled, small], tok, specials, weights=[3, 1])
    for _ in range(5):
        mid.next_batch(4)
    saved = json.loads(json.dumps(mid.state.to_dict()))
    resumed = _stream([labelled, small], tok, specials, weights=[3, 1], state=StreamState.from_dict(saved))
    for b in batches[5:]:
        got = resumed.next_batch(4)
        assert [(e.key, e.sequence) for e in got] == [(e.key, e.sequence) for e in b]


def test_stream_filters_and_bad_columns(labelled, tmp_path, tok, specials):
    import pyarrow.parquet as pq

    s = _stream([labelled], tok, specials, wer_threshold=25.0)  # wer column = 0,10,...,50 per clip
    keys = {s.next_example().key[1] for _ in range(30)}
    table = pq.read_table(labelled / "part-00000.parquet")
    assert keys == {i for i, w in enumerate(table["wer"].to_pylist()) if w < 25}
    assert s.state.filtered["wer"] > 0
    s = _stream([labelled], tok, specials, max_duration_in_seconds=5.0)
    assert all(table["duration"][e.key[1]].as_py() <= 5.0 for e in (s.next_example() for _ in range(10)))
    with pytest.raises(ValueError, match="filtered out"):
        _stream([labelled], tok, specials, max_duration_in_seconds=0.1).next_example()
    bad = write_labelled(tmp_path / "bad", table.drop(["audio"]).to_pylist())
    with pytest.raises(ValueError, match=r"missing column\(s\) \['audio'\]"):
        _stream([bad], tok, specials)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .parquet files"):
        _stream([tmp_path / "empty"], tok, specials)


# ----------------------------------------------------------------------------------------------
# Checkpoints


def _toy_state(i):
    import jax
    import jax.numpy as jnp

    return {
        "params": {"w": jnp.full((3, 4), float(i))},
        "opt": (jnp.zeros(2),),
        "step": jnp.int32(i),
        "rng": jax.random.PRNGKey(i),
    }


def test_checkpoint_retention_and_damaged_fallback(tmp_path):
    from distil_whisper_jax.weights import checkpoint as ck

    m = ck.make_manager(tmp_path / "checkpoints", save_total_limit=2)
    for i, w in zip(range(1, 6), [50.0, 10.0, 60.0, None, 70.0]):
        ck.save(m, i, _toy_state(i), {"draws": i}, {"config": {}}, eval_wer=w)
    m.wait_until_finished()
    assert ck.checkpoint_steps(tmp_path / "checkpoints") == [2, 4, 5]  # last 2 + best WER (step 2)
    for f in (tmp_path / "checkpoints" / "5" / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[:7])  # truncated data files
    step, state, data, _ = ck.restore(m, _toy_state(0))
    assert step == 4 and data == {"draws": 4} and float(state["params"]["w"][0, 0]) == 4.0
    with pytest.raises(ck.CheckpointError, match=r"checkpoints/5: unreadable checkpoint.*previous checkpoint is .*/4"):
        ck.restore(m, _toy_state(0), fallback=False)
    m.close()


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs (``helpers.small_disk``)."""
    with helpers.small_disk(tmp_path / "disk", "512k") as d:
        yield d


def test_full_disk_keeps_previous_checkpoint(small_disk):
    import jax.numpy as jnp

    from distil_whisper_jax.stages.distill.distill import is_write_error
    from distil_whisper_jax.weights import checkpoint as ck

    m = ck.make_manager(small_disk / "checkpoints")
    ck.save(m, 1, {"w": jnp.ones((10, 10))}, {"draws": 1}, {"config": {}})
    m.wait_until_finished()
    (small_disk / "filler").write_bytes(b"0" * 400 * 1024)
    with pytest.raises(Exception) as info:
        big = np.random.default_rng(0).random((300, 300), dtype=np.float32)  # 360 KB, incompressible
        ck.save(m, 2, {"w": jnp.asarray(big)}, {"draws": 2}, {"config": {}})
        m.wait_until_finished()
    assert is_write_error(info.value), info.value
    assert ck.checkpoint_steps(small_disk / "checkpoints") == [1]
    step, state, data, _ = ck.restore(m, {"w": jnp.zeros((10, 10))})
    assert step == 1 and data == {"draws": 1} and float(state["w"].sum()) == 100.0
    m.close()


# ----------------------------------------------------------------------------------------------
# The training loop (small random teacher)


def _flags(small_models, labelled, out, max_steps=8, **extra) -> dict:
    teacher, student = small_models
    return {
        "model_name_or_path": str(student),
        "teacher_model_name_or_path": str(teacher),
        "train_dataset_name": str(labelled),
        "output_dir": str(out),
        "max_steps": max_steps,
        "per_device_train_batch_size": 1,
        "save_steps": 3,
        "logging_steps": 1,
        "learning_rate": 3e-3,
        "warmup_steps": 2,
        "max_label_length": 32,
        "timestamp_probability": 0.5,
        "condition_on_prev_probability": 0.5,
        "seed": 1,
        "disable_tqdm": True,
        "freeze_encoder": True,
        **{k: str(v) if isinstance(v, Path) else v for k, v in extra.items()},
    }


def _cfg(small_models, labelled, out, max_steps=8, **extra):
    """The run config of the small-model runs (tests call the library's ``run(cfg)``)."""
    from distil_whisper_jax.stages.distill.distill import DistillConfig

    return DistillConfig(**_flags(small_models, labelled, out, max_steps, **extra))


def _argv(small_models, labelled, out, max_steps=8, **extra) -> list[str]:
    """The same run as command-line flags (for subprocesses and CLI tests)."""
    return cli_args(_flags(small_models, labelled, out, max_steps, **extra))


def _final_params(out):
    from distil_whisper_jax.weights.checkpoint import load_params

    return load_params(out)[1]


def _max_diff(a, b):
    import jax

    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


def _run_until(argv, step, sig, ready=lambda: True, command=("-m", "distil_whisper_jax.cli.distill"), wait=60.0):
    """Start a training subprocess (``python COMMAND ARGV``), send ``sig`` once it logged ``step`` and
    ``ready()`` holds (waited for up to ``wait`` s); returns (returncode, log)."""
    p = subprocess.Popen(
        [sys.executable, *command, *argv],
        env=subprocess_env(),
        cwd=REPO,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    lines = []
    for line in p.stderr:
        lines.append(line)
        if f"step {step}: loss" in line:
            deadline = time.monotonic() + wait
            while not ready() and time.monotonic() < deadline:
                time.sleep(0.05)
            p.send_signal(sig)
            break
    _, rest = p.communicate(timeout=300)
    return p.wait(), "".join(lines) + (rest or "")


@pytest.fixture(scope="module")
def uninterrupted(small_models, labelled, tmp_path_factory):
    from distil_whisper_jax.stages.distill.distill import run

    out = tmp_path_factory.mktemp("run_a")
    assert run(_cfg(small_models, labelled, out)) == 0
    return out


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=["SIGKILL", "SIGTERM", "SIGINT"])
def test_exact_resume_after_kill(sig, small_models, labelled, uninterrupted, tmp_path):
    from distil_whisper_jax.stages.distill.distill import run
    from distil_whisper_jax.weights.checkpoint import checkpoint_steps

    out = tmp_path / "run"
    # the step-3 checkpoint is saved asynchronously: kill only once it is final (as a preemption that
    # comes after it would find it), else a loaded machine kills before it lands
    code, text = _run_until(
        _argv(small_models, labelled, out), 4, sig, lambda: 3 in checkpoint_steps(out / "checkpoints")
    )
    steps = checkpoint_steps(out / "checkpoints")
    if sig == signal.SIGKILL:  # killed after step 4: the last checkpoint is step 3's
        assert code == -signal.SIGKILL and steps == [3], (code, steps, text[-2000:])
    else:  # checkpointed the step it was in, then exited (Ctrl-C like a preemption, no traceback)
        assert code == 128 + sig and steps[0] == 3 and steps[-1] >= 4, (code, steps, text[-2000:])
        assert f"{signal.Signals(sig).name}: saved a checkpoint at step {steps[-1]}" in text
        assert "KeyboardInterrupt" not in text and "Traceback" not in text
    assert run(_cfg(small_models, labelled, out)) == 0  # automatic resume from output_dir
    assert _max_diff(_final_params(out), _final_params(uninterrupted)) <= 1e-6
    # the resumed run's metrics hold each step once
    logged = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s for s in logged if s] == list(range(1, 9))


# Runs the distillation CLI counting the calls that decode a training row's audio; the count goes to argv[1].
COUNT_DECODES = """
import sys
from distil_whisper_jax.data import stream as train_data
from distil_whisper_jax.cli.distill import main
calls = [0]
decode = train_data.row_audio
def counted(*args, **kwargs):
    calls[0] += 1
    return decode(*args, **kwargs)
train_data.row_audio = counted
code = main(sys.argv[2:])
open(sys.argv[1], "w").write(str(calls[0]))
sys.exit(code)
"""


def test_two_processes_train_like_one(small_models, labelled, uninterrupted, tmp_path):
    """2 jax.distributed CPU processes × 4 devices == 1 process × 8 devices (same global batch)."""
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                COUNT_DECODES,
                str(tmp_path / f"decoded-{i}"),
                *_argv(small_models, labelled, out, per_device_train_batch_size=1),
                "--distributed",
                "--coordinator_address",
                f"localhost:{port}",
                "--num_processes",
                "2",
                "--process_id",
                str(i),
            ],
            env=subprocess_env(4),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    logs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "8 devices" in logs[0] and "2 processes" in logs[0]
    assert _max_diff(_final_params(out), _final_params(uninterrupted)) <= 1e-5
    # each process decoded the audio of its own half of every global batch (8 steps x 4 rows), and no more
    for i in range(2):
        assert (tmp_path / f"decoded-{i}").read_text() == "32", logs[i][-3000:]
        assert f"process {i} decoded the audio of 32 training examples" in logs[i]


def _two_processes(argv: list[str], logs: Path) -> list[subprocess.Popen]:
    """Start the distillation CLI as 2 jax.distributed CPU processes × 4 devices, logging to ``logs``-i.txt."""
    dist = ["--distributed", "--coordinator_address", f"localhost:{free_port()}", "--num_processes", "2"]
    return [
        subprocess.Popen(
            [sys.executable, "-m", "distil_whisper_jax.cli.distill", *argv, *dist, "--process_id", str(i)],
            env=subprocess_env(4),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=open(f"{logs}-{i}.txt", "w"),  # noqa: SIM115
        )  # fmt: skip
        for i in range(2)
    ]


def test_a_preemption_notice_on_one_host_stops_every_process_at_the_same_step(
    small_models, labelled, uninterrupted, tmp_path
):
    """SIGTERM reaches only process 1 of 2 (one host got the notice): JAX's preemption service has both save the
    same step and exit as preempted, none waits in a collective for the other; both resume to the end and
    match one uninterrupted process. (With a Python handler per process, process 1 stops alone and process 0
    hangs in its next step.)"""
    from distil_whisper_jax.weights.checkpoint import checkpoint_steps

    out = tmp_path / "run"
    argv = _argv(small_models, labelled, out, per_device_train_batch_size=1)
    procs = _two_processes(argv, tmp_path / "first")
    log0 = tmp_path / "first-0.txt"
    deadline = time.monotonic() + 300
    while "step 3: loss" not in log0.read_text() and time.monotonic() < deadline and procs[0].poll() is None:
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGTERM)
    codes = [p.wait(timeout=300) for p in procs]
    logs = [(tmp_path / f"first-{i}.txt").read_text() for i in range(2)]
    assert codes == [143, 143], logs[0][-3000:] + logs[1][-3000:]
    stopped = checkpoint_steps(out / "checkpoints")[-1]
    assert 3 <= stopped < 8 and f"SIGTERM: saved a checkpoint at step {stopped}" in logs[0]
    procs = _two_processes(argv, tmp_path / "second")
    assert [p.wait(timeout=300) for p in procs] == [0, 0], (tmp_path / "second-0.txt").read_text()[-3000:]
    assert f"resumed at step {stopped}" in (tmp_path / "second-0.txt").read_text()
    assert _max_diff(_final_params(out), _final_params(uninterrupted)) <= 1e-5


def test_bucket_output_dir_gets_every_output_and_orbax_gets_the_url(
    small_models, labelled, uninterrupted, tmp_path, monkeypatch
):
    """``--output_dir gs://...`` on a GCS stand-in that runs here: the tokenizer, metrics, curves, event files
    and the final ``hf/`` reach the bucket through fsspec, and Orbax is handed the checkpoint URL unchanged
    (it writes gs:// with its own tensorstore driver, which cannot run here: the spy below lets it write
    where the stand-in keeps the bucket). A bucket that does not exist fails before any training. Orbax's own
    gs:// writes, and resuming from them, are tested against a GCS API server in test_bucket_emulator.py."""
    from distil_whisper_jax.stages.distill.distill import run
    from distil_whisper_jax.weights import checkpoint

    gcs = fake_gcs.use(tmp_path / "gcs")
    bucket = tmp_path / "gcs" / "bucket"
    handed = []
    manager = checkpoint.ocp.CheckpointManager

    def spy(directory, *args, **kwargs):
        handed.append(directory)
        return manager(tmp_path / "gcs" / str(directory).removeprefix("gs://"), *args, **kwargs)

    monkeypatch.setattr(checkpoint.ocp, "CheckpointManager", spy)
    assert run(_cfg(small_models, labelled, "gs://bucket/run")) == 0
    assert handed == ["gs://bucket/run/checkpoints"]  # a str, exactly the URL
    assert _max_diff(_final_params(bucket / "run"), _final_params(uninterrupted)) <= 1e-6
    written = {k.removeprefix("bucket/run/") for k in gcs.written}
    for name in ("hf/model.safetensors", "hf/config.json", "tokenizer/tokenizer.json", "training_curves.png"):
        assert name in written, sorted(written)
    assert (bucket / "run" / "hf" / "model.safetensors").read_bytes() == (
        uninterrupted / "hf" / "model.safetensors"
    ).read_bytes()
    assert any(k.startswith("runs/") for k in written)
    steps = [json.loads(ln)["step"] for ln in (bucket / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [s for s in steps if s] == list(range(1, 9))
    # Resuming from the bucket needs Orbax's own gs:// layout (a commit marker per step, which the spy's local
    # checkpoints lack): tests/test_bucket_emulator.py resumes on a real GCS API server instead.
    with pytest.raises(ValueError, match="--output_dir gs://nobucket/run: cannot write there"):
        run(_cfg(small_models, labelled, "gs://nobucket/run"))
    runs = [d for d in handed if isinstance(d, str)]  # the others: this test's own local reads
    assert runs == ["gs://bucket/run/checkpoints"]


def test_resume_refuses_changed_settings(small_models, labelled, uninterrupted, tmp_path, caplog):
    """A resumed run must be the run that was checkpointed: each changed setting is named and refused unless
    --allow_resume_changes; how often it logs/evaluates/saves may change."""
    import shutil

    from distil_whisper_jax.stages.distill.distill import run

    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    shutil.rmtree(out / "hf")
    changed = _cfg(small_models, labelled, out, learning_rate=1e-3, seed=5, max_steps=10)
    with pytest.raises(ValueError) as info:
        run(changed)
    msg = str(info.value)
    assert "--learning_rate: 0.003 → 0.001" in msg and "--seed: 1 → 5" in msg and "--max_steps: 8 → 10" in msg
    assert "--allow_resume_changes" in msg and "logging_steps" not in msg
    # a bigger global batch changes the data position's meaning: refused too
    with pytest.raises(ValueError, match="global batch: 8 → 16"):
        run(_cfg(small_models, labelled, out, per_device_train_batch_size=2))
    assert not (out / "hf").exists()
    # what may change on resume: logging/saving frequency (the run is complete, so it only finishes)
    assert run(_cfg(small_models, labelled, out, logging_steps=2, save_steps=4)) == 0
    assert (out / "hf" / "model.safetensors").is_file()
    # with --allow_resume_changes: a warning naming the changes, and the run goes on to the new end
    assert run(_cfg(small_models, labelled, out, max_steps=9, allow_resume_changes=True)) == 0
    assert "--max_steps: 8 → 9" in caplog.text and "resuming anyway" in caplog.text


def test_resume_refuses_changed_training_data(small_models, labelled, tmp_path, caplog):
    """The training data replaced under the same path (11 rows by 4 other rows) is refused on resume, naming
    the file and what changed, unless --allow_resume_changes; the same data resumes, and a checkpoint from
    before the data was recorded resumes with a warning. (It used to resume silently at step 2.)"""
    import pyarrow.parquet as pq

    from distil_whisper_jax.stages.distill.distill import run

    caplog.set_level("INFO")
    table = pq.read_table(labelled / "part-00000.parquet")
    data = write_labelled(tmp_path / "data", (table.to_pylist() + table.to_pylist())[:11])
    out = tmp_path / "run"
    cfg = _cfg(small_models, data, out, max_steps=2, save_steps=2, warmup_steps=1)
    assert run(cfg) == 0
    caplog.clear()
    assert run(cfg) == 0 and "resumed at step 2" in caplog.text  # the same data
    assert "records no identity of its training data" not in caplog.text
    write_labelled(data, table.slice(3, 4).to_pylist())  # same path, other rows
    with pytest.raises(ValueError) as info:
        run(cfg)
    msg = str(info.value)
    shard = data / "part-00000.parquet"
    assert f"training data {data}[train]: {shard}: size (bytes)" in msg and f"{shard}: rows 11 → 4" in msg, msg
    assert "--allow_resume_changes" in msg
    (data / "part-00001.parquet").write_bytes(shard.read_bytes())
    with pytest.raises(ValueError, match=re.escape(f"file added: {data / 'part-00001.parquet'}")):
        run(cfg)
    (data / "part-00001.parquet").unlink()
    caplog.clear()
    assert run(dataclasses.replace(cfg, allow_resume_changes=True)) == 0
    assert "rows 11 → 4" in caplog.text and "resuming anyway" in caplog.text and "resumed at step 2" in caplog.text
    # a checkpoint written before the data was recorded: resumes, warning that the data is not checked
    for f in (out / "checkpoints" / "2" / "meta").rglob("*"):
        if f.is_file() and '"run_config"' in f.read_text():
            meta = json.loads(f.read_text())
            f.write_text(json.dumps({k: v for k, v in meta.items() if k != "data"}))
    caplog.clear()
    assert run(cfg) == 0 and "resumed at step 2" in caplog.text
    assert "the checkpoint records no identity of its training data" in caplog.text


def test_teacher_defaults_to_the_students_and_a_different_one_is_refused(small_models, labelled, tmp_path, tiny):
    """The student's distil_info.json names its teacher (portably, with a digest of its weights): that is
    the default teacher, and another teacher is refused unless --allow_teacher_mismatch."""
    from distil_whisper_jax.core.model import init_params
    from distil_whisper_jax.stages.distill.setup import load_models
    from distil_whisper_jax.weights.convert.hf import write_hf_dir
    from distil_whisper_jax.weights.loading import load_pretrained
    from distil_whisper_jax.weights.student import params_digest

    teacher, student = small_models
    info = json.loads((student / "distil_info.json").read_text())
    digest = params_digest(load_pretrained(teacher).params)
    assert info["teacher"] == str(teacher.absolute()) and info["teacher_sha256"] == digest
    models = load_models(_cfg(small_models, labelled, tmp_path / "o", teacher_model_name_or_path=None))
    assert models.teacher.source == str(teacher) and models.teacher_sha256 == digest
    # same architecture, other weights: refused, naming both
    config = small_config(tiny)
    write_hf_dir(tmp_path / "other", config, init_params(config, 1), tokenizer=tiny.tokenizer)
    other = _cfg(small_models, labelled, tmp_path / "o", teacher_model_name_or_path=tmp_path / "other")
    with pytest.raises(ValueError, match=r"is not the model the student was created from .*--allow_teacher_mismatch"):
        load_models(other)
    allowed = _cfg(
        small_models,
        labelled,
        tmp_path / "o",
        teacher_model_name_or_path=tmp_path / "other",
        allow_teacher_mismatch=True,
    )
    assert load_models(allowed).teacher_sha256 == params_digest(init_params(config, 1))


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("learning_rate", -1e-4, "--learning_rate must be in (0, ∞)"),
        ("learning_rate", float("nan"), "--learning_rate must be a finite number"),
        ("learning_rate", float("inf"), "--learning_rate must be a finite number"),
        ("warmup_steps", 9, "--warmup_steps (9) exceeds --max_steps (8)"),
        ("warmup_steps", -1, "--warmup_steps must be ≥ 0"),
        ("per_device_train_batch_size", 0, "--per_device_train_batch_size must be ≥ 1"),
        ("gradient_accumulation_steps", 0, "--gradient_accumulation_steps must be ≥ 1"),
        ("kd_temperature", 0.0, "--kd_temperature must be in (0, ∞)"),
        ("kl_weight", -1.0, "--kl_weight must be in [0, ∞)"),
        ("ce_weight", -0.5, "--ce_weight must be in [0, ∞)"),
        ("mse_weight", float("nan"), "--mse_weight must be a finite number"),
        ("timestamp_probability", 1.5, "--timestamp_probability must be in [0, 1]"),
        ("condition_on_prev_probability", -0.1, "--condition_on_prev_probability must be in [0, 1]"),
        ("adam_beta2", 1.0, "--adam_beta2 must be in [0, 1)"),
        ("weight_decay", -0.1, "--weight_decay must be in [0, ∞)"),
        ("save_steps", 0, "--save_steps must be ≥ 1"),
        ("eval_steps", 0, "--eval_steps must be ≥ 1"),
        ("logging_steps", -5, "--logging_steps must be ≥ 1"),
        ("max_steps", 0, "--max_steps must be ≥ 1"),
        ("max_duration_in_seconds", 0.0, "--max_duration_in_seconds must be in (0, ∞)"),
        ("wer_threshold", -1.0, "--wer_threshold must be in [0, ∞)"),
        ("kl_weight", 0.0, None),  # fine alone (CE-only), but with ce 0 there is nothing to train:
    ],
)
def test_nonsense_hyperparameters_are_refused_before_loading(flag, value, expected, small_models, labelled, tmp_path):
    from distil_whisper_jax.stages.distill.distill import run

    if expected is None:
        flag_values, expected = {"kl_weight": 0.0, "ce_weight": 0.0}, "there is nothing to train"
    else:
        flag_values = {flag: value}
    # the student path does not exist: the flag is named before any model (or data) is opened
    cfg = _cfg((small_models[0], tmp_path / "no-such-student"), labelled, tmp_path / "o", **flag_values)
    with pytest.raises(ValueError, match=re.escape(expected)):
        run(cfg)
    assert not (tmp_path / "o").exists()


def test_unwritable_output_dir_is_refused_before_work(small_models, labelled, tmp_path):
    from distil_whisper_jax.stages.distill.distill import run

    (tmp_path / "file").write_text("a regular file")
    with pytest.raises(ValueError, match=r"--output_dir .*file/run: cannot write there \(.*not a directory"):
        run(_cfg(small_models, labelled, tmp_path / "file" / "run"))


def test_full_disk_mid_run_names_the_path_and_keeps_the_last_checkpoint(
    small_models, labelled, tmp_path, caplog, monkeypatch
):
    """The disk fills up at the second save: exit status 4, the message names the path and the cause, the
    first checkpoint stays usable."""
    import errno

    from distil_whisper_jax.stages.distill import distill
    from distil_whisper_jax.weights.checkpoint import checkpoint_steps

    real_save = distill.checkpoint.save

    def save(manager, step, *args, **kw):
        if step > 3:
            target = Path(str(manager.directory)) / str(step)
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        return real_save(manager, step, *args, **kw)

    monkeypatch.setattr(distill.checkpoint, "save", save)
    out = tmp_path / "run"
    assert distill.run(_cfg(small_models, labelled, out)) == distill.EXIT_SAVE_FAILED
    assert f"writing {out / 'checkpoints' / '6'} failed: no space left on device" in caplog.text
    assert f"the last good checkpoint {out / 'checkpoints' / '3'} is intact" in caplog.text
    assert checkpoint_steps(out / "checkpoints") == [3] and not (out / "hf").exists()


def test_a_failed_background_save_stops_the_run_at_the_next_step(small_models, labelled, tmp_path, caplog, monkeypatch):
    """The checkpoints are on a 64 MiB tmpfs that fills up after the first save: the save of step 6 fails in
    Orbax's background write, and the run stops after computing step 7 (it used to go on to the next save, at
    step 9, and lose every step between), naming the checkpoint directory and the cause; step 3's stays."""
    from distil_whisper_jax.stages.distill import distill
    from distil_whisper_jax.weights.checkpoint import checkpoint_steps

    out = tmp_path / "run"
    real_save = distill.checkpoint.save
    with helpers.small_disk(out / "checkpoints", "64m") as disk:

        def save(manager, step, *args, **kw):
            if step > 3:  # the disk fills up between the first save and the second
                (disk / "filler").write_bytes(b"0" * max(0, helpers.free_bytes(disk) - 256 * 1024))
            return real_save(manager, step, *args, **kw)

        monkeypatch.setattr(distill.checkpoint, "save", save)
        code = distill.run(_cfg(small_models, labelled, out, max_steps=12))
        steps = checkpoint_steps(out / "checkpoints")
    logged = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(logged) == 6, logged  # step 7 was computed, not logged: nothing after the failed save is kept
    assert code == distill.EXIT_SAVE_FAILED, caplog.text[-3000:]
    assert f"writing {out / 'checkpoints' / '6'} failed: no space left on device" in caplog.text
    assert f"the last good checkpoint {out / 'checkpoints' / '3'} is intact" in caplog.text and steps == [3]


def test_full_disk_in_set_up_names_the_path_and_leaves_no_half_written_tokenizer(
    small_models, labelled, small_disk, caplog
):
    """The output directory's disk (512 KiB) cannot take the 5 MB tokenizer: exit status 4 with an error naming
    O/tokenizer and the cause, before any training, and no partial tokenizer/ (it used to be a traceback from
    the tokenizers library and a half-written directory)."""
    from distil_whisper_jax.stages.distill import distill

    out = small_disk / "run"
    assert distill.run(_cfg(small_models, labelled, out)) == distill.EXIT_SAVE_FAILED
    assert f"cannot write {out / 'tokenizer'}: no space left on device; nothing was trained" in caplog.text
    assert not (out / "tokenizer").exists() and not list(out.glob(".tokenizer*")), list(out.iterdir())


def test_damaged_checkpoint_is_set_aside_and_the_run_finishes(small_models, labelled, tmp_path, capfd, caplog):
    """A truncated checkpoint is skipped on resume and renamed out of the way, so that saving its step
    again works (it used to fail on every rerun with 'Checkpoint for step 8 already exists')."""
    import shutil

    from distil_whisper_jax.stages.distill.distill import run
    from distil_whisper_jax.weights.checkpoint import checkpoint_steps

    out = tmp_path / "run"
    cfg = _cfg(small_models, labelled, out, max_steps=12, save_steps=4)
    assert run(cfg) == 0
    shutil.rmtree(out / "checkpoints" / "12")
    shutil.rmtree(out / "hf")
    files = [f for f in (out / "checkpoints" / "8" / "state").rglob("*") if f.is_file()]
    largest = max(files, key=lambda f: f.stat().st_size)
    largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])
    capfd.readouterr()
    gc.collect()  # earlier tests' leftovers are reported now, not during the resume below
    reported = []
    previous = sys.unraisablehook
    sys.unraisablehook = reported.append  # what reaches the hook chain below our checkpoint filter
    try:
        assert run(cfg) == 0
        gc.collect()
    finally:
        sys.unraisablehook = previous
    closed = [r for r in reported if "Event loop is closed" in str(r.exc_value)]
    assert not closed, f"{len(closed)} 'Event loop is closed' reports got through"
    assert checkpoint_steps(out / "checkpoints") == [4, 8, 12]
    aside = list((out / "checkpoints").glob("8.damaged-*"))
    assert len(aside) == 1 and (aside[0] / "state").is_dir()
    assert f"set the damaged checkpoint aside as {aside[0]}" in caplog.text
    assert (out / "hf" / "model.safetensors").is_file()
    err = capfd.readouterr().err
    assert "Event loop is closed" not in err and "Traceback" not in err, err[-3000:]


def test_bad_inputs(small_models, labelled, tmp_path, tiny, capsys, caplog):
    import pyarrow.parquet as pq

    from distil_whisper_jax.cli.distill import main
    from distil_whisper_jax.stages.distill.distill import run
    from distil_whisper_jax.weights.checkpoint import checkpoint_steps
    from distil_whisper_jax.weights.convert.hf import write_hf_dir

    teacher, student = small_models
    # labelled data without the pseudo-label column: the CLI exits 2 with the message
    table = pq.read_table(labelled / "part-00000.parquet").drop(["whisper_transcript", "whisper_token_ids"])
    bad = write_labelled(tmp_path / "nolabels", table.to_pylist())
    assert main(_argv(small_models, bad, tmp_path / "o1")) == 2
    assert "missing column(s) ['whisper_transcript']" in capsys.readouterr().err
    # a student of another width than the teacher, with a shared frozen encoder
    from distil_whisper_jax.core.model import init_params

    wide = tiny.config.replace(decoder_layers=1, encoder_layers=1, max_target_positions=64)
    write_hf_dir(tmp_path / "wide", wide, init_params(wide, 0), tokenizer=tiny.tokenizer)
    with pytest.raises(ValueError, match=re.escape("different widths (d_model 64 vs 384)")):
        run(_cfg((teacher, tmp_path / "wide"), labelled, tmp_path / "o2"))
    other = small_config(tiny).replace(vocab_size=51865, decoder_layers=1)
    write_hf_dir(tmp_path / "multi", other, init_params(other, 0))
    with pytest.raises(
        ValueError, match=re.escape("(51864 vs 51865 tokens: the teacher is English-only, the student multilingual)")
    ):
        run(_cfg((teacher, tmp_path / "multi"), labelled, tmp_path / "o4"))
    # a student that hears more than its teacher (a window of 31 s against 30)
    longer = small_config(tiny).replace(decoder_layers=1, max_source_positions=1550)
    write_hf_dir(tmp_path / "longer", longer, init_params(longer, 0), tokenizer=tiny.tokenizer)
    with pytest.raises(ValueError, match=re.escape("encoder window (31 s, 1550 positions) is longer than the teacher")):
        run(_cfg((teacher, tmp_path / "longer"), labelled, tmp_path / "o5"))
    assert not (tmp_path / "o5" / "checkpoints").exists()
    # NaN loss: an absurd learning rate blows the params up after the first update
    out = tmp_path / "o3"
    assert run(_cfg(small_models, labelled, out, learning_rate=1e38, warmup_steps=0, save_steps=1)) == 3
    assert "non-finite loss (nan) at step 2, batch 2: examples" in caplog.text
    assert checkpoint_steps(out / "checkpoints") == [1]
    # corrupt the only checkpoint, then ask to resume from it explicitly: a clear error naming it
    for f in (out / "checkpoints" / "1" / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(b"")
    with pytest.raises(ValueError, match="checkpoints/1: unreadable checkpoint"):
        run(_cfg(small_models, labelled, out, learning_rate=1e38, warmup_steps=0, save_steps=1,
                 resume_from_checkpoint=out / "checkpoints" / "1"))  # fmt: skip


# ----------------------------------------------------------------------------------------------
# End to end on the embedded default


# ~4 min on 2 cores (8 emulated devices): over CI's budget. Run with `-m slow`; the README's first command and
# benchmarks/distill_demo.py run the same chain at full size.
@pytest.mark.slow
def test_end_to_end_demo_lowers_heldout_wer(tmp_path):
    """Real tiny.en → pseudo-labels of bundled training clips (concatenated per speaker) → 2-layer student
    trained briefly → its held-out WER is far below the freshly created student's; O/hf transcribes.
    Sized for CI (a fraction of benchmarks/distill_demo.py's corpus and steps; that script has the full run)."""
    from distil_whisper_jax.cli.pseudo_label import main as pseudo_label
    from distil_whisper_jax.decode.transcribe import transcribe
    from distil_whisper_jax.infra import config
    from distil_whisper_jax.stages.demo.demo import demo_commands
    from distil_whisper_jax.stages.distill.distill import DistillConfig, run
    from distil_whisper_jax.stages.student.create_student import create_student

    cmds = demo_commands(
        tmp_path,
        max_steps=E2E["steps"],
        train_rows=E2E["train_rows"],
        eval_rows=E2E["eval_rows"],
        batch=E2E["batch"],
        learning_rate=E2E["lr"],
        max_label_length=E2E["max_label_length"],
        warmup_steps=2,
    )
    create_student(None, tmp_path / "student", decoder_layers=2)
    assert pseudo_label(cmds["label"]) == 0
    argv = cmds["train"] + ["--disable_tqdm"]
    assert run(config.parse(DistillConfig, argv)) == 0
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/heldout/wer" in r]
    before, after, teacher = (
        evals[0]["eval/heldout/wer"],
        evals[-1]["eval/heldout/wer"],
        evals[0]["eval/heldout/teacher_wer"],
    )
    assert evals[0]["step"] == 0 and evals[-1]["step"] == E2E["steps"]
    assert teacher < 15 and after < before - 25, (before, after, teacher)
    assert all(r["train/model_tflops_per_s"] > 0 for r in rows if "train/loss" in r)
    info = json.loads((tmp_path / "run" / "hf" / "distil_info.json").read_text())
    assert info["train_steps"] == E2E["steps"] and info["decoder_layer_map"] == [0, 3]
    assert info["eval_wer"]["heldout"]["student"] == after
    assert (tmp_path / "run" / "training_curves.png").stat().st_size > 1000
    assert list((tmp_path / "run" / "runs").glob("events.out.tfevents.*"))
    # the final student loads through every loader (HF dir and the Orbax run dir give the same weights)
    from distil_whisper_jax.weights.convert import tree_equal
    from distil_whisper_jax.weights.loading import load_pretrained

    hf, orbax = load_pretrained(tmp_path / "run" / "hf"), load_pretrained(tmp_path / "run")
    assert orbax.fmt == "orbax" and tree_equal(hf.params, orbax.params)
    out = transcribe([REPO / "distil_whisper_jax" / "assets" / "clips" / "jfk.flac"], hf, progress=False)
    assert out[0]["text"]


# 8 emulated devices × 1 = global batch 8 (the benchmark's run: 1 device × 4)
E2E = {"steps": 30, "train_rows": 40, "eval_rows": 8, "batch": 1, "lr": 3e-4, "max_label_length": 160}


def test_known_device_peaks():
    from distil_whisper_jax.stages.distill.distill import known_peak_tflops

    assert known_peak_tflops("TPU v4") == 275.0 and known_peak_tflops("TPU v5 lite") == 197.0
    assert known_peak_tflops("TPU v5p") == 459.0 and known_peak_tflops("cpu") is None


def test_labelled_dir_with_other_column_names_trains_without_column_flags(small_models, labelled, tmp_path):
    """A labelled directory whose audio column is ``wav`` and ground truth ``sentence`` (recorded in its
    ``schema.json``, as the labeller writes it) trains and evaluates with no column flags."""
    import pyarrow.parquet as pq

    from distil_whisper_jax.data.sources import SCHEMA_FILE, SCHEMA_FORMAT
    from distil_whisper_jax.stages.distill.distill import run

    table = pq.read_table(labelled).rename_columns(
        [
            "wav" if c == "audio" else "sentence" if c == "text" else c
            for c in pq.read_schema(next(labelled.glob("*.parquet"))).names
        ]
    )
    data_dir = tmp_path / "labelled_wav"
    write_labelled(data_dir, table.to_pylist())
    roles = {
        "audio": "wav",
        "text": "sentence",
        "transcript": "whisper_transcript",
        "token_ids": "whisper_token_ids",
        "previous": "condition_on_prev",
        "duration": "duration",
        "wer": "wer",
        "speaker": "speaker_id",
    }
    (data_dir / SCHEMA_FILE).write_text(json.dumps({"format": SCHEMA_FORMAT, "version": 1, "columns": roles}))
    out = tmp_path / "run"
    cfg = _cfg(
        small_models,
        data_dir,
        out,
        max_steps=3,
        eval_dataset_name=data_dir,
        max_eval_samples=2,
        save_steps=3,
        eval_steps=3,
    )
    assert cfg.audio_column_name is None and cfg.eval_text_column_name is None
    assert run(cfg) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 3 and any(k.endswith("/wer") for r in rows for k in r)
    # the student's draft shortlist: every token of the labels, most frequent first, counted here independently
    counts = collections.Counter(t for r in table.to_pylist() for t in r["whisper_token_ids"])
    draft = json.loads((out / "hf" / "draft_vocab.json").read_text())
    assert dict(zip(draft["ids"], draft["counts"])) == counts and draft["counts"] == sorted(counts.values())[::-1]


def test_short_context_student_trains_with_eval_losses_and_exports(small_models, labelled, tmp_path):
    """A 750-position (15 s) student of the small teacher: the batch's features are sized for the teacher
    (30 s), the student reads their first half; eval CE and KL are logged beside the WER; the final hf/
    keeps 750 positions and a 15 s feature extractor. Asking for longer audio than the student takes is
    refused before training."""
    import dataclasses

    from distil_whisper_jax.stages.distill.distill import run
    from distil_whisper_jax.stages.student.create_student import create_student
    from distil_whisper_jax.weights.loading import load_pretrained

    teacher, _ = small_models
    student = create_student(str(teacher), tmp_path / "s15", decoder_layers=2, max_source_positions=750)
    out = tmp_path / "run"
    cfg = _cfg(
        (teacher, student),
        labelled,
        out,
        max_steps=2,
        warmup_steps=1,
        eval_dataset_name=labelled,
        max_eval_samples=3,
        eval_steps=2,
    )
    with pytest.raises(ValueError, match="--max_duration_in_seconds 30: the student's encoder takes 15 s"):
        run(dataclasses.replace(cfg, max_duration_in_seconds=30.0))
    assert run(cfg) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if any(k.startswith("eval/") and k.endswith("/ce") for k in r)]
    assert [r["step"] for r in evals] == [0, 2]
    for r in evals:
        (ce,) = [v for k, v in r.items() if k.startswith("eval/") and k.endswith("/ce")]
        (kl,) = [v for k, v in r.items() if k.startswith("eval/") and k.endswith("/kl")]
        assert 0 < ce < 20 and 0 <= kl < 20, r
    hf = load_pretrained(out / "hf")
    assert hf.config.max_source_positions == 750
    assert json.loads((out / "hf" / "preprocessor_config.json").read_text())["chunk_length"] == 15
