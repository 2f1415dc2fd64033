"""Every command in the guides' ``bash`` blocks is checked where it can be here: the package's commands are
parsed by their real flag parsers (a renamed or misspelt flag fails), ``tpu_scripts/`` run in ``--dry-run``
with a ``gcloud`` on PATH that fails if called, and ``tools/recipe_cost.py`` runs. A command this test does
not know how to check fails it, unless it is on the short list of commands that only set up a machine."""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from distil_whisper_jax.infra import config

REPO = Path(__file__).resolve().parents[1]
GUIDES = ("docs/quickstart.md", "docs/recipes.md", "docs/troubleshooting.md", "docs/tpu.md", "docs/languages.md")
# set up a machine or a session; nothing to check here without a cloud account or a fresh machine
SETUP_ONLY = {"python3", ".", "pip", "gcloud", "sudo", "ls", "tail", "cd", "huggingface-cli"}
SCRIPTS_TABLE = (REPO / "pyproject.toml").read_text().split("[project.scripts]")[1].split("\n[")[0]
ENTRY_POINTS = dict(re.findall(r'^([\w-]+) = "([\w.:]+)"', SCRIPTS_TABLE, re.M))
LEAKY_ENV = ("TPU_", "PROJECT", "ZONE", "ACCELERATOR_TYPE", "RUNTIME_VERSION", "RECIPE", "OUTPUT_DIR", "DRY_RUN")


def commands(doc: str) -> list[list[str]]:
    """The commands of ``doc``'s bash blocks: continuation lines joined, comments dropped, ``&&`` split."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", (REPO / doc).read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            cmd: list[str] = []
            for w in [*words, "&&"]:
                if w == "&&":
                    if cmd:
                        out.append(cmd)
                    cmd = []
                else:
                    cmd.append(w)
    return out


def cli_module(cmd: list[str]) -> tuple[str, list[str]] | None:
    """``(cli module, argv)`` for a command of the package, else None."""
    if cmd[0] in ENTRY_POINTS:
        return ENTRY_POINTS[cmd[0]].split(":")[0], cmd[1:]
    if cmd[0] == "python" and cmd[1:2] == ["-m"] and cmd[2].startswith("distil_whisper_jax"):
        name = cmd[2].removeprefix("distil_whisper_jax").lstrip(".") or "demo"
        return f"distil_whisper_jax.cli.{name}", cmd[3:]
    if cmd[0] == "python" and re.fullmatch(r"run_\w+\.py", cmd[1]):
        module = re.search(r"from (distil_whisper_jax\.cli\.\w+) import main", (REPO / cmd[1]).read_text())
        return module.group(1), cmd[2:]
    return None


class Parsed(Exception):
    pass


def parse_only(module: str, argv: list[str], monkeypatch) -> object:
    """The run config the command's own ``main`` parses from ``argv``; nothing runs."""
    real = config.parse

    def stop(*args, **kwargs):
        raise Parsed(real(*args, **kwargs))

    monkeypatch.setattr(config, "parse", stop)
    with pytest.raises(Parsed) as got:
        importlib.import_module(module).main(argv)
    return got.value.args[0]


def dry_run(cmd: list[str], env: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "gcloud").write_text("#!/bin/sh\necho 'gcloud called in --dry-run' >&2\nexit 99\n")
    (bin_dir / "gcloud").chmod(0o755)
    base = {k: v for k, v in os.environ.items() if not k.startswith(LEAKY_ENV)}
    full = {**base, **env, "PATH": f"{bin_dir}:{base['PATH']}", "DRY_RUN": "1", "LOG_DIR": str(tmp_path / "logs")}
    return subprocess.run(cmd, cwd=REPO, env=full, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("doc", GUIDES)
def test_every_command_of_the_guides_parses_or_dry_runs(doc, tmp_path, monkeypatch):
    cmds = commands(doc)
    assert cmds, f"{doc}: no bash blocks"
    env: dict[str, str] = {}
    checked = 0
    for cmd in cmds:
        if cmd[0] == "export":
            env.update(a.split("=", 1) for a in cmd[1:])
            continue
        if cmd[0].startswith("tpu_scripts/"):
            res = dry_run(cmd, env, tmp_path)
            assert res.returncode == 0 and "gcloud called" not in res.stderr, (cmd, res.stderr)
            assert res.stdout.startswith("+ "), (cmd, res.stdout)  # printed what it would run
        elif cmd[:2] == ["python", "tools/recipe_cost.py"]:
            res = subprocess.run([sys.executable, *cmd[1:]], cwd=REPO, capture_output=True, text=True, timeout=120)
            assert res.returncode == 0 and "chip-hours" in res.stdout, res.stderr
        elif (found := cli_module(cmd)) is not None:
            parse_only(*found, monkeypatch)
        else:
            assert cmd[0] in SETUP_ONLY, f"{doc}: a command this test cannot check: {shlex.join(cmd)}"
            continue
        checked += 1
    assert checked, f"{doc}: no command was checked"


def test_a_misspelt_flag_in_a_guide_would_fail(monkeypatch):
    """The check above is not vacuous: the same parser refuses an unknown flag."""
    argv = ["--output_dir", "o", "--model_name_or_path", "s", "--train_dataset_name", "d"]
    with pytest.raises(SystemExit):
        parse_only("distil_whisper_jax.cli.distill", [*argv, "--max_stepz", "3"], monkeypatch)
    assert parse_only("distil_whisper_jax.cli.distill", [*argv, "--max_steps", "3"], monkeypatch).max_steps == 3
