"""How far apart a busy worker's heartbeats land, to choose the stale limits (docs/reliability.md).

Starts an API and one worker on the shipped reliability defaults (a fresh PostgreSQL database and a
private Redis, ``benchmarks/deployment.py``), submits a CPU-bound search, optionally saturates every
core with busy loops, and polls the job row and Optuna's trial heartbeats every 0.1 s. Prints the
widest gaps between consecutive heartbeats of the job and of each trial. Run from the repository root:

    PYTHONPATH=$PWD python benchmarks/heartbeat_gaps.py --hogs 2 --trials 20
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.deployment import ADMIN_URL, Deployment, exit_on_sigterm  # noqa: E402

MODEL = ROOT / "models" / "ref-llama-13m"
TERMINAL = ("succeeded", "failed", "cancelled")


def _hog() -> None:
    while True:  # a pure-Python loop: competes for the core (and, in-process, for the GIL)
        sum(i * i for i in range(10_000))


def _gaps(stamps: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(stamps)]


def _job_row(deployment: Deployment, job_id: str) -> dict[str, Any]:
    with deployment.engine.connect() as connection:
        row = connection.execute(text("SELECT * FROM job WHERE id = :id"), {"id": job_id}).mappings().one()
    return dict(row)


def _poll(deployment: Deployment, job_id: str) -> tuple[list[float], dict[int, list[float]], dict[str, Any]]:
    """Every distinct heartbeat of the job and of each trial, until the job ends; and its last row."""
    job_beats: list[float] = []
    trial_beats: dict[int, list[float]] = {}
    while True:
        time.sleep(0.1)
        row = _job_row(deployment, job_id)
        if row["status"] in TERMINAL:
            return job_beats, trial_beats, row
        if row["heartbeat_at"] is not None:
            stamp = row["heartbeat_at"].timestamp()
            if not job_beats or stamp != job_beats[-1]:
                job_beats.append(stamp)
        with deployment.engine.connect() as connection:
            if connection.execute(text("SELECT to_regclass('trial_heartbeats')")).scalar() is None:
                continue  # Optuna creates its tables with the job's study
            for trial_id, beat in connection.execute(text("SELECT trial_id, heartbeat FROM trial_heartbeats")):
                beats = trial_beats.setdefault(trial_id, [])
                if not beats or beat.timestamp() != beats[-1]:
                    beats.append(beat.timestamp())


def _submit(deployment: Deployment, model: Path, trials: int) -> str:
    body = {
        "model": str(model),
        "target": {"param_ratio": 0.6},
        "n_trials": trials,
        "proxy": "tracenas",
        "seed": 1,
        "verify_top_k": 1,
        "calibration": {"n_samples": 32, "seq_len": 256, "heldout_samples": 4},
        "search_space": {"ffn_alignment": 8},
    }
    with httpx.Client(base_url=deployment.base_url, timeout=30) as client:
        response = client.post("/v1/jobs", json=body)
    response.raise_for_status()
    return str(response.json()["id"])


def _report(job_beats: list[float], trial_beats: dict[int, list[float]], row: dict[str, Any], hogs: int) -> None:
    job_gaps = _gaps(job_beats)[1:]  # the first gap spans the claim
    trial_gaps = [gap for beats in trial_beats.values() for gap in _gaps(beats)]
    took = (row["finished_at"] - row["started_at"]).total_seconds()
    print(f"job {row['status']} in {took:.0f}s, hogs={hogs}")
    for label, gaps in (("job heartbeat", job_gaps), ("trial heartbeat", trial_gaps)):
        if gaps:
            print(f"{label}: n={len(gaps)} median={statistics.median(gaps):.2f}s max={max(gaps):.2f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hogs", type=int, default=2, help="busy-loop processes beside the worker")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--model", type=Path, default=MODEL, help="a model folder (default: models/ref-llama-13m)")
    parser.add_argument("--admin-url", default=ADMIN_URL, help="a PostgreSQL role that may CREATE DATABASE")
    args = parser.parse_args()
    exit_on_sigterm()
    hogs = [multiprocessing.Process(target=_hog, daemon=True) for _ in range(args.hogs)]
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="prunesearch-heartbeats-")))
        deployment = Deployment(args.admin_url, work, model_roots=str(args.model.resolve().parent))
        stack.callback(deployment.close)
        stack.callback(lambda: [hog.kill() for hog in hogs if hog.is_alive()])
        deployment.start()
        job_id = _submit(deployment, args.model.resolve(), args.trials)
        for hog in hogs:
            hog.start()
        _report(*_poll(deployment, job_id), hogs=args.hogs)


if __name__ == "__main__":
    main()
