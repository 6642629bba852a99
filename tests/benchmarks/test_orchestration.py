"""The orchestration benchmark runs in CI at small settings and writes its figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import POSTGRES_ADMIN_URL

ROOT = Path(__file__).resolve().parents[2]


def test_orchestration_benchmark_measures_the_loop_beside_bare_optuna(tmp_path: Path) -> None:
    out, figures = tmp_path / "performance.md", tmp_path / "orchestration.json"
    command = [
        sys.executable, str(ROOT / "benchmarks" / "orchestration.py"),
        "--params", "32", "--storages", "sqlite,postgresql", "--samplers", "evo", "--trials", "3",
        "--postgres", POSTGRES_ADMIN_URL, "--out", str(out), "--json", str(figures),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(figures.read_text())["rows"]
    assert [(r["params"], r["storage"], r["sampler"]) for r in rows] == [
        (32, "sqlite", "evo"),
        (32, "postgresql", "evo"),
    ]
    for row in rows:
        assert row["trials"] == 3 and row["bare_optuna_ms"] > 0 and row["sample_ms"] > 0 and row["realise_ms"] > 0
        assert row["orchestration_ms"] == row["trial_ms"] - row["sample_ms"] - row["realise_ms"]
    text = out.read_text()
    assert "<!-- orchestration -->" in text and "| 32 | postgresql | evo |" in text
