"""The GPU benchmark's code runs on the CPU on a small shape, so CI keeps it working."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
        "--disk-load",
        "tiny",
        "--out",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.with_suffix(".json").read_text())
    (row,) = figures["rows"]
    assert row["model"] == "tiny" and row["trials"] == 2
    assert row["trial_s"] > 0 and row["floor_s"] > 0 and row["forward_s"] > 0 and row["backward_s"] > 0
    assert "| tiny | 1.3M | tracenas | compact |" in out.read_text()
    assert row["apply_s"] > 0  # the candidate is swapped in and its kept units gathered, every trial
    disk = figures["meta"]["disk"]["tiny"]
    assert disk["load_s"] > 0 and 0 < disk["gib_on_disk"] < 0.01


def test_scaling_benchmark_runs_two_cpu_workers_on_one_study(tmp_path: Path) -> None:
    out = tmp_path / "scaling.md"
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "scaling.py"),
        "--shape", "tiny", "--workers", "1,2", "--trials", "8", "--tokens", "128", "--seq-len", "32",
        "--out", str(out),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = json.loads((tmp_path / "scaling-scaling.json").read_text()).values()
    one, two = run["results"]
    assert one["workers"] == 1 and two["workers"] == 2
    assert one["per_worker_trials"] == [8] and one["trials"] == 8
    # Both workers ran trials of the one study; it ends with n_trials, at most one over per extra worker.
    assert all(n > 0 for n in two["per_worker_trials"]) and 8 <= two["trials"] <= 9
    assert sum(two["per_worker_trials"]) == two["trials"]
    assert one["trials_per_min"] > 0 and two["trials_per_min"] > 0
    assert two["execution"] == ["gather", "gather"]  # what each worker's proxy settled on: no GPU, no replay
    text = out.read_text()
    assert "| 2 | cpu, cpu |" in text and text.count("<!-- scaling: tiny tracenas per_layer gpus=cpu -->") == 1


def test_latency_benchmark_runs_on_a_tiny_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process (torch is imported already): the benchmark's searches and timings on the CPU."""
    import optuna

    from benchmarks import latency

    # A few steps per timing, not a tenth of a second or more: this checks what the benchmark writes.
    for name in ("search.latency.TABLE_SECONDS", "search.latency.CALIBRATION_SECONDS",
                 "search.latency_check.MEASURE_SECONDS", "benchmarks.latency.MEASURE_SECONDS"):  # fmt: skip
        monkeypatch.setattr(name, 0.0)
    out = tmp_path / "performance.md"
    monkeypatch.setattr(sys, "argv", [
        "latency.py", "--shapes", "tiny", "--context", "16", "--decode-batches", "1,2", "--prefill-batch", "2",
        "--trials", "2", "--tokens", "128", "--seq-len", "32", "--out", str(out),
        "--latency-ratio", "1.0",  # feasible whatever a noisy CPU makes of the sub-blocks' costs
        "--random-candidates", "1",
    ])  # fmt: skip
    verbosity = optuna.logging.get_verbosity()
    try:
        latency.main()
    finally:
        optuna.logging.set_verbosity(verbosity)
    (shape,) = json.loads((tmp_path / "performance-latency.json").read_text())["shapes"]
    assert set(shape["candidates"]) == {"dense", "latency-targeted", "parameter-targeted"}
    for candidate in shape["candidates"].values():
        for label in ("decode b1", "decode b2", "prefill b2"):
            assert candidate[label]["measured_ms"] > 0 and candidate[label]["predicted_ms"] > 0
    # The parameter-targeted search ran at the count the latency-targeted best reached.
    latency_ratio, params_ratio = shape["latency_search"]["param_ratio"], shape["params_search"]["param_ratio"]
    assert abs(params_ratio - latency_ratio) <= 0.011 * latency_ratio
    assert set(shape["alignment"]) == {"decode b2", "prefill"}
    text = out.read_text()
    assert "<!-- latency -->" in text and "| latency-targeted |" in text and "MLP (gate, up, down)" in text
    # The table's accuracy over random architectures too, per setting, beside the stacks alone.
    assert len(shape["random_candidates"]) == 1 and set(shape["tables"]) == {"decode b1", "decode b2", "prefill b2"}
    assert all(t["calibration_error"] is not None for t in shape["tables"].values())
    assert "| decode b1 |" in text and "| prefill b2 |" in text and "Stacks alone" in text
