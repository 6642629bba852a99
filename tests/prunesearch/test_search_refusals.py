"""`prunesearch search` refuses a mistyped model path at once, before loading anything (issue 17 item 4)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

# Before the fix the CLI took 27 s to fail with a network error; loading nothing takes a few seconds.
FAST_S = 15.0


def test_a_mistyped_model_path_fails_fast_offline(tmp_path: Path) -> None:
    env = os.environ | {
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path / "empty-hub-cache"),
        "PRUNESEARCH_DATA_DIR": str(tmp_path / "data"),
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "prunesearch", "search", "--model", "models/ref-llama-70m", "--param-ratio", "0.5"],
        cwd=tmp_path,  # no models/ folder here
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - started

    assert result.returncode == 2, result.stdout + result.stderr  # a usage error, not a failed search
    assert "model 'models/ref-llama-70m': no such directory; not a cached hub model" in result.stderr
    assert "Traceback" not in result.stderr and "Loading" not in result.stdout
    assert elapsed < FAST_S
    assert not (tmp_path / "data").exists()
