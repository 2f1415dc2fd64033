"""Plain helpers shared by several test modules (the fixtures they share live in ``conftest.py``)."""

from __future__ import annotations

import contextlib
import csv
import os
import socket
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tsv_table(path: Path | str) -> tuple[list[str], list[dict]]:
    """``(header, rows)`` of a TSV manifest, read strictly: no quoting, every row exactly as long as the header."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        return header, [dict(zip(header, r, strict=True)) for r in reader]


def read_tsv(path: Path | str) -> list[dict]:
    """The rows of a TSV manifest as dicts (``tsv_table``'s rows)."""
    return tsv_table(path)[1]


def read_manifest(split: str, language: str | None = None) -> tuple[Path, list[str], list[dict]]:
    """``(path, header, rows)`` of a bundled speech manifest: the English one of ``split``, or ``language``'s."""
    from distil_whisper_jax.assets import multilingual_speech_manifest, speech_manifest

    path = speech_manifest(split) if language is None else multilingual_speech_manifest(language, split)
    return (path, *tsv_table(path))


def write_tsv(path: Path, rows: Iterable[dict], columns: Sequence[str] | None = None) -> Path:
    """A TSV manifest of ``rows`` with ``columns`` (default: the first row's keys, in order), quoted as the
    package's reader (``csv``) expects where a value holds a quote, tab or newline."""
    rows = list(rows)
    cols = list(rows[0]) if columns is None else list(columns)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(cols)
        writer.writerows([r[c] for c in cols] for r in rows)
    return path


def labelled_rows(directory: Path | str) -> list[dict]:
    """Every row of a Parquet dataset directory (the labelling stage's output), its files in name order."""
    import pyarrow.parquet as pq

    return [r for f in sorted(Path(directory).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def subprocess_env(devices: int = 8) -> dict[str, str]:
    """The environment of a Python subprocess a test starts: this checkout importable, jax on ``devices``
    emulated CPU devices, no network, no progress bars, no tokenizer threads."""
    return dict(
        os.environ,
        PYTHONPATH=str(REPO),
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        TQDM_DISABLE="1",
    )


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_together(commands: Sequence[Sequence[str]], env: dict[str, str], cwd: Path | None = None) -> list[str]:
    """Start every command at once (the processes of one ``jax.distributed`` job), wait for all, and return
    their combined stdout/stderr; fails the test unless every one exited 0."""
    procs = [
        subprocess.Popen(list(c), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for c in commands
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), logs
    return logs


def cli_args(flags: dict) -> list[str]:
    """``flags`` as command-line arguments: ``--name value``, ``--name`` alone for True, nothing for None or False."""
    argv = []
    for k, v in flags.items():
        if v is True:
            argv.append(f"--{k}")
        elif v is not None and v is not False:
            argv += [f"--{k}", str(v)]
    return argv


def small_config(**overrides):
    """A small random Whisper's config (d_model 64, 1 encoder and 2 decoder layers, tiny.en's vocabulary) that
    every export layout accepts, with ``overrides``."""
    from distil_whisper_jax.core.model import WhisperConfig

    fields = dict(
        vocab_size=51864,
        d_model=64,
        encoder_layers=1,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=256,
        decoder_ffn_dim=256,
        max_target_positions=32,
    )
    return WhisperConfig(**{**fields, **overrides})


def random_params(config, seed=0):
    """Random float32 params of ``config`` (numpy; no model init compile)."""
    import jax
    import numpy as np

    from distil_whisper_jax.core.model import param_shapes

    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda s: (0.05 * rng.standard_normal(s.shape)).astype(np.float32), param_shapes(config)
    )


def export_cli(tmp_path: Path, *args: str) -> int:
    """``distil-whisper-export ARGS`` into ``tmp_path/E`` without verification; its exit code."""
    from distil_whisper_jax.cli import export as cli

    return cli.main(["--output_dir", str(tmp_path / "E"), "--no-verify", *args])


@contextlib.contextmanager
def small_disk(directory: Path, size: str = "512k") -> Iterator[Path]:
    """``directory`` (created) as a tmpfs of ``size`` bytes, a real disk that fills up, unmounted afterwards.
    Needs root (as in CI containers); the test is skipped where the kernel refuses the mount."""
    import pytest

    directory.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], capture_output=True, text=True
    )
    if mount.returncode:
        pytest.skip(f"ALLOWED-SKIP: the kernel refuses to mount a small tmpfs here ({mount.stderr.strip()})")
    # A descriptor of the directory under the mount follows it when another pytest session's clean-up renames
    # an old basetemp while this test runs: unmounting by its current path then still works.
    fd = os.open(directory.parent, os.O_RDONLY)
    try:
        yield directory
    finally:
        where = Path(os.readlink(f"/proc/self/fd/{fd}")) / directory.name
        os.close(fd)
        subprocess.run(["umount", str(where)], check=False)


def free_bytes(directory: Path) -> int:
    """Bytes a file may still take on ``directory``'s file system."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize
