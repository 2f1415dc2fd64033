"""The skip policy (tests/skip_policy.py): an unexplained skip fails the run, an allowed one does not, and every
skip is listed. Each case runs pytest in a subprocess on a tiny test file."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.skip_policy import SkipPolicy

REPO = Path(__file__).resolve().parents[1]

CONFTEST = """
from tests.skip_policy import SkipPolicy

def pytest_configure(config):
    config.pluginmanager.register(
        SkipPolicy({"test_cases.py::test_allowed": ("no tmpfs", "the kernel forbids the mount")}), "skip_policy"
    )
"""


def run_pytest(tmp_path: Path, body: str, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_cases.py").write_text(textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=str(REPO))
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

    @pytest.mark.xfail(reason="known")
    def test_xfail():
        raise AssertionError

    @pytest.mark.slow
    def test_deselected():
        pytest.skip("never runs: deselected by -m")
"""


def test_allowed_skips_xfail_and_deselection_pass(tmp_path):
    proc = run_pytest(tmp_path, ALLOWED_ONLY)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skip policy: 2 skipped, 0 not allowed" in proc.stdout
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
    assert "skip policy: 4 skipped, 2 not allowed" in proc.stdout
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


def test_the_suite_runs_under_the_policy(request):
    assert isinstance(request.config.pluginmanager.get_plugin("skip_policy"), SkipPolicy)
