"""A stand-in for the ``gcloud`` commands tpu_scripts/ use, close to the real one where scripts get bitten.

It logs its argv (one JSON list a line, ``FAKE_LOG``) and keeps the slice in a JSON state file
(``FAKE_LOG`` + ``.state``): the node's state and the queued resource's. Behaviour of the real gcloud it copies:

* ``ssh`` is refused (exit 1) on a node that is not READY or does not exist.
* ``ssh --worker=all`` on a slice of several hosts stalls when gcloud's key has a passphrase and is not in an ssh
  agent: here it exits 99 at once with "STALLED", so a test sees that a script called it without checking first.
* A worker command runs once per targeted worker (``--worker=all``: every host of ``FAKE_ACCELERATOR``); the
  call's exit status is the first non-zero one in worker order; with ``--output-directory`` each worker's output
  also goes to ``DIR/<worker>.log``.
* An ssh that exits 255 (a dropped connection) is re-run, up to 10 times, as gcloud does.

Scripted events (each a file holding a count or a queue, consumed as used):
``FAKE_STATES`` node states answered by describe before the state file's; ``FAKE_QUEUE_STATES`` queued-resource
states, the last one sticks; ``FAKE_SSH_FAIL`` + ``FAKE_SSH_FAIL_TIMES``: a worker command containing the pattern
exits 1 (the stage failed); ``FAKE_PREEMPT`` + ``FAKE_PREEMPT_TIMES``: such a command preempts the node (PREEMPTED,
ssh exits 255), after saving a checkpoint under its output in ``FAKE_GCS_ROOT`` while ``FAKE_PROGRESS`` counts;
``FAKE_DROP`` + ``FAKE_DROP_TIMES``: the connection drops (255) while the command keeps running on the worker;
``FAKE_CAPACITY_FAILS``: creates refused for capacity; ``FAKE_DESCRIBE_FAILS``: describes that fail with an HTTP
error (not NOT_FOUND); ``FAKE_WORKER_FAIL`` "k:code": worker k exits ``code``.
Commands run on this machine (``FAKE_SSH_EXEC=1``, or ``FAKE_WORKERS=N`` for N concurrent workers joined the way
Open MPI tells JAX its rank), each worker with its own ``HOME`` under the log's directory.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

MULTI_HOST = {"v4": 8, "v5p": 8, "v2": 8, "v3": 8}  # TensorCores per host; v5e/v6e: 4 chips a host beyond 8


def hosts(accel: str) -> int:
    gen, n = accel.rsplit("-", 1)
    n = int(n)
    if gen in MULTI_HOST:
        return max(1, n // MULTI_HOST[gen])
    return 1 if n <= 8 else n // 4


def take(env: str) -> bool:
    """Consume one from the count in file ``$env``; True when there was one."""
    path = Path(os.environ.get(env, "/nonexistent"))
    if not path.is_file() or int(path.read_text() or 0) <= 0:
        return False
    path.write_text(str(int(path.read_text()) - 1))
    return True


def pop(env: str, keep_last: bool = False) -> str | None:
    path = Path(os.environ.get(env, "/nonexistent"))
    queue = path.read_text().split() if path.is_file() else []
    if not queue:
        return None
    if len(queue) > 1 or not keep_last:
        path.write_text("\n".join(queue[1:]))
    return queue[0]


class Slice:
    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {"node": "READY", "queued": None}

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data))


def flag(args: list[str], name: str) -> str | None:
    return next((a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")), None)


def run_workers(command: str, workers: list[int], out_dir: str | None, base: Path, background: bool) -> list[int]:
    """Run ``command`` once per worker, concurrently; their exit statuses."""
    procs = []
    n = int(os.environ.get("FAKE_WORKERS", "0"))
    for w in workers:
        home = base / f"worker{w}"
        home.mkdir(exist_ok=True)
        env = dict(os.environ, HOME=str(home))
        if n:
            env.update(OMPI_MCA_orte_hnp_uri="1.0;tcp://127.0.0.1:1", OMPI_COMM_WORLD_SIZE=str(n),
                       OMPI_COMM_WORLD_RANK=str(w), OMPI_COMM_WORLD_LOCAL_RANK=str(w))  # fmt: skip
        log = Path(out_dir) / f"{w}.log" if out_dir else base / f"worker{w}.out"
        fh = open(log, "a")  # noqa: SIM115 - closed below
        procs.append((subprocess.Popen(["bash", "-c", command], env=env, stdout=fh, stderr=subprocess.STDOUT), fh, log))
    if background:
        return [255 for _ in procs]
    codes = []
    for proc, fh, log in procs:
        codes.append(proc.wait())
        fh.close()
        if len(procs) == 1 or os.environ.get("FAKE_ECHO_ALL") == "1":
            sys.stdout.write(log.read_text())
    return codes


def save_checkpoint(command: str) -> None:
    """A new step directory under the command's ``--output_dir gs://...``/checkpoints in ``FAKE_GCS_ROOT``."""
    out = re.search(r"--output_dir gs://(\S+)", command).group(1)
    root = Path(os.environ["FAKE_GCS_ROOT"]) / out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    (root / str(len(list(root.iterdir())) + 1)).mkdir()


def needs_agent() -> bool:
    """gcloud's key has a passphrase (a key without one is used without an agent)."""
    key = os.environ.get("GCLOUD_SSH_KEY") or os.path.expanduser("~/.ssh/google_compute_engine")
    plain = subprocess.run(["ssh-keygen", "-y", "-P", "", "-f", key], capture_output=True)
    return not os.path.isfile(key) or plain.returncode != 0


def ssh(args: list[str], state: Slice, base: Path) -> int:
    command = flag(args, "command") or ""
    worker = flag(args, "worker") or "0"
    accel = os.environ.get("FAKE_ACCELERATOR", "v4-8")
    if state.data["node"] != "READY":
        print(f"ERROR: (gcloud.compute.tpus.tpu-vm.ssh) the TPU is {state.data['node']}, not READY", file=sys.stderr)
        return 1
    if (
        worker == "all"
        and hosts(accel) > 1
        and needs_agent()
        and subprocess.run(["ssh-add", "-l"], capture_output=True).returncode
    ):
        print("STALLED: waiting for the key's passphrase on every worker", file=sys.stderr)
        return 99
    n = int(os.environ.get("FAKE_WORKERS", "0")) or hosts(accel)
    workers = list(range(n)) if worker == "all" else [int(worker)]
    for attempt in range(10):  # gcloud re-runs an ssh that exits 255
        if state.data["node"] != "READY":
            print("ERROR: (gcloud.compute.tpus.tpu-vm.ssh) the TPU is not READY", file=sys.stderr)
            return 1
        if os.environ.get("FAKE_PREEMPT", "\0") in command and take("FAKE_PREEMPT_TIMES"):
            state.data["node"] = "PREEMPTED"
            state.save()
            if take("FAKE_PROGRESS"):  # the stage saved a checkpoint before the preemption
                save_checkpoint(command)
            codes = [255]
        elif os.environ.get("FAKE_DROP", "\0") in command and take("FAKE_DROP_TIMES"):
            # the connection drops while the worker's copy keeps running; gcloud starts the command again
            run_workers(command, workers, flag(args, "output-directory"), base, background=True)
            time.sleep(float(os.environ.get("FAKE_RETRY_PAUSE", "1")))
            codes = [255]
        elif os.environ.get("FAKE_SSH_FAIL", "\0") in command and take("FAKE_SSH_FAIL_TIMES"):
            codes = [1]
        elif os.environ.get("FAKE_SSH_EXEC") == "1" or os.environ.get("FAKE_WORKERS"):
            codes = run_workers(command, workers, flag(args, "output-directory"), base, background=False)
        else:
            fail = os.environ.get("FAKE_WORKER_FAIL", "")
            codes = [int(fail.split(":")[1]) if fail and int(fail.split(":")[0]) == w else 0 for w in workers]
        first = next((c for c in codes if c), 0)
        if first != 255:
            return first
        print(f"Retrying: SSH command error (attempt {attempt + 1})", file=sys.stderr)
    return 255


def main(args: list[str]) -> int:
    log = Path(os.environ["FAKE_LOG"])
    with open(log, "a") as f:
        f.write(json.dumps(args) + "\n")
    state = Slice(Path(str(log) + ".state"))
    what = args[:4]
    if what[3:4] == ["describe"] and flag(args, "format") != "value(acceleratorType)" and take("FAKE_DESCRIBE_FAILS"):
        print("ERROR: (gcloud.compute.tpus.tpu-vm.describe) HTTPError 503: service unavailable", file=sys.stderr)
        return 1
    if what == ["compute", "tpus", "tpu-vm", "describe"]:
        if flag(args, "format") == "value(acceleratorType)":
            print(os.environ.get("FAKE_ACCELERATOR", "v4-8"))
            return 0
        scripted = pop("FAKE_STATES")
        if scripted:
            state.data["node"] = scripted
            state.save()
        if state.data["node"] == "NOT_FOUND":
            print("ERROR: NOT_FOUND", file=sys.stderr)
            return 1
        print(state.data["node"])
    elif what == ["compute", "tpus", "tpu-vm", "ssh"]:
        return ssh(args, state, log.parent)
    elif what == ["compute", "tpus", "tpu-vm", "create"] or what == ["compute", "tpus", "queued-resources", "create"]:
        if take("FAKE_CAPACITY_FAILS"):
            print('ERROR: {"code": 8, "message": "There is no more capacity in the zone"}', file=sys.stderr)
            return 1
        queued = what[2] == "queued-resources"
        state.data.update(node="READY", queued="ACTIVE" if queued else None)
        if queued and os.environ.get("FAKE_QUEUE_STATES"):
            state.data.update(node="NOT_FOUND", queued="WAITING_FOR_RESOURCES")
    elif what == ["compute", "tpus", "queued-resources", "describe"]:
        scripted = pop("FAKE_QUEUE_STATES", keep_last=True) if state.data["queued"] else None
        if scripted:
            state.data["queued"] = scripted
            state.data["node"] = "READY" if scripted == "ACTIVE" else "NOT_FOUND"
        state.save()
        if not state.data["queued"]:
            print("ERROR: NOT_FOUND", file=sys.stderr)
            return 1
        print(state.data["queued"])
    elif what in (["compute", "tpus", "tpu-vm", "delete"], ["compute", "tpus", "queued-resources", "delete"]):
        state.data.update(node="NOT_FOUND", queued=None)
    elif args[:2] == ["storage", "ls"]:
        root = Path(os.environ.get("FAKE_GCS_ROOT", "/nonexistent"))
        d = root / args[2].removeprefix("gs://")
        if not d.is_dir():
            return 1
        print("\n".join(f"{args[2].rstrip('/')}/{p.name}/" for p in sorted(d.iterdir())))
    state.save()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
