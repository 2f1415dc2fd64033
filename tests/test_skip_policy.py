"""The skip policy (tests/skip_policy.py): an unexplained skip or xfail fails the run, an allowed one does not, and
every one is listed. Each case runs pytest in a subprocess on a tiny test file."""

import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.skip_policy import SkipPolicy

REPO = Path(__file__).resolve().parents[1]

CONFTEST = """
from tests.skip_policy import SkipPolicy

def pytest_configure(config):
    config.pluginmanager.register(
        SkipPolicy({"test_cases.py::test_allowed": ("no tmpfs here", "the kernel forbids the mount")}), "skip_policy"
    )
"""


def _outer_env() -> dict[str, str]:
    """This process's environment without the options given to the outer pytest (``PYTEST_ADDOPTS``, e.g. a
    ``--suite-record`` file), which are not the inner session's to take."""
    return {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}


def run_pytest(tmp_path: Path, body: str, *args: str, path: str = "test_cases.py", **env_extra: str):
    """pytest in a subprocess on ``body`` written to ``tmp_path/path``, under ``CONFTEST``."""
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / path).write_text(textwrap.dedent(body))
    env = dict(_outer_env(), PYTHONPATH=str(REPO), **env_extra)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


ALLOWED_ONLY = """
    import pytest

    def test_passes():
        pass

    @pytest.mark.parametrize("x", [1, 2])
    def test_allowed(x):
        pytest.skip("no tmpfs here")

    @pytest.mark.slow
    def test_deselected():
        pytest.skip("never runs: deselected by -m")
"""


def test_allowed_skips_and_deselection_pass(tmp_path):
    proc = run_pytest(tmp_path, ALLOWED_ONLY)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skip policy: 2 skipped or xfail, 0 not allowed" in proc.stdout
    assert "allowed     test_cases.py::test_allowed[1]: no tmpfs here (the kernel forbids the mount)" in proc.stdout


def test_unexplained_skip_fails_the_run(tmp_path):
    body = (
        ALLOWED_ONLY
        + """
    def test_needs_tool():
        pytest.skip("ffmpeg not on PATH")

    @pytest.fixture
    def missing():
        pytest.skip("library not found")

    def test_fixture_skip(missing):
        pass
    """
    )
    proc = run_pytest(tmp_path, body)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "skip policy: 4 skipped or xfail, 2 not allowed" in proc.stdout
    assert "NOT ALLOWED test_cases.py::test_needs_tool: ffmpeg not on PATH" in proc.stdout
    assert "NOT ALLOWED test_cases.py::test_fixture_skip: library not found" in proc.stdout
    assert "passed" in proc.stdout  # the tests themselves all passed: only the policy failed the run


def test_module_level_importorskip_fails_the_run(tmp_path):
    proc = run_pytest(tmp_path, 'import pytest\npytest.importorskip("no_such_module_xyz")\n\ndef test_a():\n    pass\n')
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "NOT ALLOWED test_cases.py" in proc.stdout and "no_such_module_xyz" in proc.stdout


def test_allowed_test_skipping_for_another_reason_fails(tmp_path):
    proc = run_pytest(tmp_path, 'import pytest\n\ndef test_allowed():\n    pytest.skip("ffmpeg missing")\n')
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "NOT ALLOWED test_cases.py::test_allowed: ffmpeg missing" in proc.stdout
    proc = run_pytest(
        tmp_path, 'import pytest\n\ndef test_allowed():\n    pytest.skip("no tmpfs here (ffmpeg missing)")\n'
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the pattern must match the whole reason


@pytest.mark.parametrize(
    "body",
    [
        '@pytest.mark.xfail(reason="known bug")\ndef test_xfail():\n    raise AssertionError\n',
        'def test_xfail():\n    pytest.xfail("known bug")\n',
        '@pytest.mark.xfail(reason="known bug")\ndef test_xfail():\n    pass\n',  # xpass
    ],
    ids=["marker", "call", "xpass"],
)
def test_xfail_fails_the_run(tmp_path, body):
    """An xfail is a check whose failure is ignored (an xpass, one whose verdict is): it used to pass silently."""
    proc = run_pytest(tmp_path, "import pytest\n\n" + body)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "skip policy: 1 skipped or xfail, 1 not allowed" in proc.stdout
    assert "NOT ALLOWED test_cases.py::test_xfail (x" in proc.stdout and "known bug" in proc.stdout


FULL_DISK = """
    from tests import helpers

    def test_full_disk_keeps_previous_checkpoint(tmp_path):
        with helpers.small_disk(tmp_path / "disk"):
            pass
"""


def full_disk_skip(tmp_path: Path, mount_as: list[str]) -> subprocess.CompletedProcess:
    """The full-disk test's real skip under the suite's real allow-list: helpers.small_disk runs the real mount
    program, through ``mount_as`` (a setpriv prefix: the kernel refuses it a different way)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "mount").write_text(f'#!/bin/sh\nexec {" ".join(mount_as)} {shutil.which("mount")} "$@"\n')
    (bin_dir / "mount").chmod(stat.S_IRWXU)
    conftest = "from tests.skip_policy import ALLOWED_SKIPS, SkipPolicy\n\ndef pytest_configure(config):\n"
    conftest += '    config.pluginmanager.register(SkipPolicy(ALLOWED_SKIPS), "skip_policy")\n'
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "conftest.py").write_text(conftest)
    (tmp_path / "run" / "tests").mkdir()
    (tmp_path / "run" / "tests" / "test_distill.py").write_text(textwrap.dedent(FULL_DISK))
    env = dict(_outer_env(), PYTHONPATH=str(REPO), PATH=f"{bin_dir}:{os.environ['PATH']}")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "t")]
    return subprocess.run(cmd, cwd=tmp_path / "run", env=env, capture_output=True, text=True, timeout=120)


def test_full_disk_test_may_skip_only_when_mounts_are_forbidden_to_root(tmp_path):
    """Allowed: root without CAP_SYS_ADMIN (a container that forbids mount(2)): EPERM, "permission denied". Not
    allowed, though the reason also names a tmpfs: any other failure to mount, here not being root."""
    assert os.geteuid() == 0, "runs the mount program as root with setpriv, as CI does (the full-disk tests need root)"
    proc = full_disk_skip(tmp_path / "eperm", ["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "permission denied" in proc.stdout and "1 skipped or xfail, 0 not allowed" in proc.stdout
    proc = full_disk_skip(tmp_path / "user", ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 skipped or xfail, 1 not allowed" in proc.stdout
    assert (
        "NOT ALLOWED tests/test_distill.py::test_full_disk_keeps_previous_checkpoint: ALLOWED-SKIP: the kernel "
        in proc.stdout
    )


def test_the_suite_runs_under_the_policy(request):
    assert isinstance(request.config.pluginmanager.get_plugin("skip_policy"), SkipPolicy)
