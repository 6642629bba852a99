"""Workers that die mid-trial, and jobs that cannot run: real processes, nothing lost.

One deployment (API + worker on PostgreSQL and Redis) serves the module; the tests run in order
and may replace its worker.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import flow
from tests.e2e.processes import wait_until
from tests.reliability.cluster import Cluster, check_exactly_n_trials, cluster_on

pytestmark = pytest.mark.e2e

N_TRIALS = 8


def slow_body(model: Path, **overrides: Any) -> dict[str, Any]:
    # More calibration tokens than flow.job_body, so a kill lands mid-trial: trials of 0.09-0.2 s on
    # an idle 2-core machine (16 sequences gave 0.04-0.07 s, shorter than catching one takes).
    return flow.job_body(
        model,
        **{
            "n_trials": N_TRIALS,
            "verify_top_k": 1,
            "calibration": {"n_samples": 48, "seq_len": 128, "heldout_samples": 4},
        }
        | overrides,
    )


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, postgres_database_factory: Callable[[], str], redis_url: str
) -> Iterator[Cluster]:
    with cluster_on(postgres_database_factory(), redis_url, tmp_path_factory.mktemp("worker-faults")) as deployment:
        deployment.start_api()
        deployment.start_worker()
        yield deployment


def kill_mid_trial(cluster: Cluster, job_id: str, kill: Callable[[], None]) -> int:
    """Wait until the job has finished a few trials, then kill as a trial has just started; returns
    that trial's number (asserting it was left RUNNING, i.e. the kill really hit it mid-trial)."""

    def a_few_done() -> bool:
        row = cluster.job_row(job_id)
        return row["status"] == "running" and row["trials_completed"] >= 2

    wait_until(a_few_done, timeout=120, interval=0.2, what="a few trials")

    def trial_just_started() -> dict[str, Any] | None:
        running = [t for t in cluster.optuna_trials(job_id) if t["state"] == "RUNNING"]
        # Optuna writes naive local times; polled every 10 ms, a trial is seen well inside 50 ms, with
        # most of its scoring still ahead of it.
        fresh = [t for t in running if datetime.now() - t["datetime_start"] < timedelta(milliseconds=50)]
        return fresh[0] if fresh else None

    trial = wait_until(trial_just_started, timeout=60, interval=0.01, what="a trial to start")
    kill()
    states = {t["number"]: t["state"] for t in cluster.optuna_trials(job_id)}
    assert states[trial["number"]] == "RUNNING", states
    return int(trial["number"])


def check_recovered(cluster: Cluster, job_id: str, killed: int) -> None:
    job = cluster.wait_for(job_id, timeout=240)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2, job  # claimed once more, and only once
    rows = check_exactly_n_trials(cluster, job_id, N_TRIALS)
    # The interrupted trial is recorded as failed, and the same configuration ran again and completed.
    assert {"number": killed, "state": "failed"}.items() <= next(r for r in rows if r["number"] == killed).items()
    retries = [t for t in cluster.optuna_trials(job_id) if t["failed_trial"] is not None]
    assert [(int(t["failed_trial"]), t["state"]) for t in retries] == [(killed, "COMPLETE")], retries


def test_a_job_that_cannot_load_its_model_and_one_whose_every_trial_fails_end_failed_and_the_worker_goes_on(
    cluster: Cluster, unloadable_model_dir: Path, nan_model_dir: Path, tiny_llama_dir: Path
) -> None:
    unloadable = flow.submit(cluster.client, flow.job_body(unloadable_model_dir))
    all_fail = flow.submit(cluster.client, flow.job_body(nan_model_dir, n_trials=4, verify_top_k=1))
    good = flow.submit(cluster.client, flow.job_body(tiny_llama_dir, n_trials=4, verify_top_k=1))

    job = cluster.wait_for(unloadable)
    assert job["status"] == "failed" and "cannot load model" in job["error"], job
    job = cluster.wait_for(all_fail)
    assert job["status"] == "failed", job
    assert "every candidate failed to score" in job["error"], job["error"]
    assert job["progress"]["trials_completed"] == 0 and job["progress"]["trials_failed"] >= 4
    failed = flow.all_trials(cluster.client, all_fail)
    assert failed and all(t["state"] == "failed" for t in failed), failed
    assert all("not finite" in t["error"] for t in failed), [t["error"] for t in failed]  # the proxy's reason
    # The same worker process serves the next job.
    job = cluster.wait_for(good)
    assert job["status"] == "succeeded", job
    assert all(process.alive for process in cluster.processes)


def test_a_pool_child_killed_mid_trial_is_resumed_by_the_same_worker(cluster: Cluster, tiny_llama_dir: Path) -> None:
    # The OOM killer's way: the process running the job dies, Celery's main process survives.
    job_id = flow.submit(cluster.client, slow_body(tiny_llama_dir))

    def kill_the_child() -> None:
        pid = int(cluster.job_row(job_id)["worker"].rsplit(":", 1)[1])
        os.kill(pid, signal.SIGKILL)

    started = time.monotonic()
    killed = kill_mid_trial(cluster, job_id, kill_the_child)
    check_recovered(cluster, job_id, killed)
    print(f"child killed at trial {killed}; recovered in {time.monotonic() - started:.0f}s")
    assert all(process.alive for process in cluster.processes)


def test_a_worker_killed_mid_trial_is_resumed_by_a_new_worker(cluster: Cluster, tiny_llama_dir: Path) -> None:
    # A preempted machine: the whole worker (main process and pool child) vanishes at once.
    job_id = flow.submit(cluster.client, slow_body(tiny_llama_dir))
    (worker,) = [p for p in cluster.processes if p.name.startswith("worker") and p.alive]
    killed = kill_mid_trial(cluster, job_id, worker.kill_group)
    assert cluster.job_row(job_id)["status"] == "running"  # nobody told the database
    cluster.start_worker()
    check_recovered(cluster, job_id, killed)


def test_a_worker_killed_during_recovery_is_resumed_and_exports_one_recovered_model(
    cluster: Cluster, tiny_llama_dir: Path
) -> None:
    # The search's trials are kept; recovery restarts from the verified finalists on the new worker.
    # 200 steps a finalist (~50 ms each on a busy 2-core CPU): the phase, written once a second, shows
    # the recovery under way seconds before it ends; the new worker runs all 400 steps again.
    recovery = {"steps": 200, "finalists": 2, "batch_size": 4}
    total = recovery["steps"] * recovery["finalists"]
    job_id = flow.submit(cluster.client, slow_body(tiny_llama_dir, verify_top_k=2, recovery=recovery))
    (worker,) = [p for p in cluster.processes if p.name.startswith("worker") and p.alive]

    def recovering() -> bool:
        phase = cluster.job_row(job_id)["phase"]
        return phase is not None and phase["name"] == "recovery" and 0 < phase["done"] < phase["total"]

    wait_until(recovering, timeout=180, interval=0.1, what="the recovery phase")
    worker.kill_group()
    cluster.start_worker()
    job = cluster.wait_for(job_id, timeout=300)
    assert job["status"] == "succeeded" and job["attempts"] == 2, job
    check_exactly_n_trials(cluster, job_id, N_TRIALS)  # no trial ran twice
    assert job["progress"]["phase"] == {"name": "recovery", "done": total, "total": total}

    report = cluster.client.get(f"/v1/jobs/{job_id}/report").json()["recovery"]
    assert [f["steps"] for f in report["finalists"]] == [recovery["steps"]] * recovery["finalists"]
    assert job["best"]["trial_number"] == report["winner"]
    items = cluster.client.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]
    assert [item["name"] for item in items] == ["best"]  # one export, no half-written one left
    assert items[0]["provenance"]["recovery"]["after"] == job["best"]["verified"]
