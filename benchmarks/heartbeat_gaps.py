"""How far apart a busy worker's heartbeats land, to choose the stale limits (docs/reliability.md).

Starts an API and one worker on the shipped reliability defaults (PostgreSQL and Redis from the
test settings), submits a CPU-bound search, optionally saturates every core with busy loops, and
polls the job row and Optuna's trial heartbeats every 0.1 s. Prints the widest gaps between
consecutive heartbeats of the job and of each trial. Run from the repository root:

    PYTHONPATH=$PWD python benchmarks/heartbeat_gaps.py --hogs 2 --trials 20
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.e2e import flow
from tests.reliability.cluster import Cluster, cluster_on

ADMIN_URL = os.environ.get("PRUNESEARCH_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("PRUNESEARCH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
MODEL = Path(__file__).resolve().parents[1] / "models" / "ref-llama-13m"


def _hog() -> None:
    while True:  # a pure-Python loop: competes for the core (and, in-process, for the GIL)
        sum(i * i for i in range(10_000))


def _gaps(stamps: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(stamps)]


def _poll(c: Cluster, job_id: str) -> tuple[list[float], dict[int, list[float]], dict[str, Any]]:
    """Every distinct heartbeat of the job and of each trial, until the job ends; and its last row."""
    job_beats: list[float] = []
    trial_beats: dict[int, list[float]] = {}
    while True:
        time.sleep(0.1)
        row = c.job_row(job_id)
        if row["status"] in ("succeeded", "failed", "cancelled"):
            return job_beats, trial_beats, row
        if row["heartbeat_at"] is not None:
            stamp = row["heartbeat_at"].timestamp()
            if not job_beats or stamp != job_beats[-1]:
                job_beats.append(stamp)
        with c.engine.connect() as connection:
            if connection.execute(text("SELECT to_regclass('trial_heartbeats')")).scalar() is None:
                continue  # Optuna creates its tables with the job's study
            for trial_id, beat in connection.execute(text("SELECT trial_id, heartbeat FROM trial_heartbeats")):
                beats = trial_beats.setdefault(trial_id, [])
                if not beats or beat.timestamp() != beats[-1]:
                    beats.append(beat.timestamp())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hogs", type=int, default=2, help="busy-loop processes beside the worker")
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"prunesearch_bench_{secrets.token_hex(4)}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    hogs = [multiprocessing.Process(target=_hog, daemon=True) for _ in range(args.hogs)]
    try:
        with tempfile.TemporaryDirectory() as work, cluster_on(url, REDIS_URL, Path(work), fast_recovery=False) as c:
            c.start_api()
            c.start_worker()
            body = flow.job_body(
                MODEL, n_trials=args.trials, verify_top_k=1,
                calibration={"n_samples": 32, "seq_len": 256, "heldout_samples": 4},
            )  # fmt: skip
            job_id = flow.submit(c.client, body)
            for hog in hogs:
                hog.start()
            job_beats, trial_beats, row = _poll(c, job_id)
            job_gaps = _gaps(job_beats)[1:]  # the first gap spans the claim
            trial_gaps = [gap for beats in trial_beats.values() for gap in _gaps(beats)]
            took = (row["finished_at"] - row["started_at"]).total_seconds()
            print(f"job {row['status']} in {took:.0f}s, hogs={args.hogs}")
            for label, gaps in (("job heartbeat", job_gaps), ("trial heartbeat", trial_gaps)):
                if gaps:
                    print(f"{label}: n={len(gaps)} median={statistics.median(gaps):.2f}s max={max(gaps):.2f}s")
    finally:
        for hog in hogs:
            if hog.is_alive():
                hog.kill()
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


if __name__ == "__main__":
    main()
