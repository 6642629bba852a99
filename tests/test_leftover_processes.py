"""The session-end check of tests/conftest.py: a process a test started and left running fails the
run (and is killed); one that exits within the grace period does not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import proctree

ROOT = Path(__file__).resolve().parents[1]

LEAKY_TEST = """
import subprocess


def test_leaves_processes_behind():
    subprocess.Popen(["sleep", "1"])  # exits within the grace period: not flagged
    orphan_maker = "import subprocess; subprocess.Popen(['sleep', '97'])"
    subprocess.run(["python3", "-c", orphan_maker], check=True)  # its child is orphaned at once
"""


@pytest.mark.skipif(not proctree.supported(), reason="reads the process tree from /proc (Linux)")
def test_a_process_left_running_fails_the_session(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text("from tests.conftest import pytest_configure, pytest_sessionfinish\n")
    (tmp_path / "test_leaky.py").write_text(LEAKY_TEST)
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    assert "processes left running" in result.stdout and "sleep 97" in result.stdout
    assert "sleep 1\n" not in result.stdout
    still = subprocess.run(["pgrep", "-f", "^sleep 97$"], capture_output=True, text=True)
    assert still.stdout == "", "the check kills what it reports"
