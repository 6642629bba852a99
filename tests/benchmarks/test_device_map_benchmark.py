"""The device-map benchmark's code runs on the CPU on the tiny shape (split across cpu and disk), so the
H200 command stays working."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_device_map_benchmark_runs_whole_and_split_on_a_tiny_shape(tmp_path: Path) -> None:
    out = tmp_path / "performance.md"
    out.write_text("# Performance\n\nWhat was here stays.\n")
    command = [sys.executable, str(ROOT / "benchmarks" / "device_map.py"), "--shape", "tiny", "--proxies", "kl"]
    command += ["--tokens", "128", "--seq-len", "32", "--trials", "1", "--out", str(out)]
    command += ["--max-memory", '{"cpu": "3.6MiB", "disk": "1GiB"}']
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "performance-device-map-tiny.json").read_text())["rows"]
    whole, split = rows
    assert whole["placement"] == "whole on cpu" and split["placement"] == "cpu layers 0-1, disk layers 2-3"
    assert split["offloaded_bytes"] > 0 and split["trial_s"] > 0
    assert split["scores"] == whole["scores"]
    page = out.read_text()
    assert page.startswith("# Performance\n\nWhat was here stays.") and "<!-- device-map: tiny -->" in page
    assert '| `{"cpu": "3.6MiB", "disk": "1GiB"}` | cpu layers 0-1, disk layers 2-3 |' in page
