"""The GPU benchmark's code runs on the CPU on a small shape, so CI keeps it working."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_throughput_benchmark_runs_on_a_tiny_shape(tmp_path: Path) -> None:
    out = tmp_path / "performance.md"
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "throughput.py"),
        "--shapes",
        "tiny",
        "--proxies",
        "tracenas",
        "--spaces",
        "compact",
        "--tokens",
        "128",
        "--seq-len",
        "32",
        "--trials",
        "2",
        "--out",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert row["model"] == "tiny" and row["trials"] == 2
    assert row["trial_s"] > 0 and row["floor_s"] > 0 and row["forward_s"] > 0 and row["backward_s"] > 0
    assert "| tiny | 1.3M | tracenas | compact |" in out.read_text()
