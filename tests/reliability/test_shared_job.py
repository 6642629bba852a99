"""Two worker processes serve one job: the claiming worker offers chunks of trials, the idle one
takes them, and the job ends with its trials, verified, with nothing counted twice."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e import flow
from tests.reliability.cluster import cluster_on

pytestmark = pytest.mark.e2e

N_TRIALS = 48


def test_an_idle_worker_takes_chunks_of_a_running_job(
    tmp_path: Path, postgres_database_factory: Callable[[], str], redis_url: str, tiny_llama_dir: Path
) -> None:
    with cluster_on(postgres_database_factory(), redis_url, tmp_path, chunk_trials="6") as cluster:
        cluster.start_api()
        workers = [cluster.start_worker(), cluster.start_worker()]
        body = flow.job_body(
            tiny_llama_dir,
            n_trials=N_TRIALS,
            verify_top_k=2,
            # Enough calibration that the coordinator's trials outlast the idle worker's start (loading,
            # priming): with the study's writes batched, 48 trials on 16 sequences sometimes did not.
            calibration={"n_samples": 32, "seq_len": 128, "heldout_samples": 4},
        )
        job_id = flow.submit(cluster.client, body)
        job = cluster.wait_for(job_id, timeout=300)
        assert job["status"] == "succeeded", job

        coordinator = cluster.job_row(job_id)["worker"]
        helped = [
            sum(int(n) for n in re.findall(rb"this worker ran (\d+) trials of a chunk", w.log_path.read_bytes()))
            for w in workers
        ]
        assert sum(helped) > 0, (coordinator, helped)

        rows = cluster.trial_rows(job_id)
        numbers = [row["number"] for row in rows]
        assert len(numbers) == len(set(numbers)), numbers
        complete = sum(row["state"] == "complete" for row in rows)
        # Each worker stops after the trial that reaches n_trials; the other's trial in flight still
        # finishes, so a job may end one trial over per extra worker, never under.
        assert N_TRIALS <= complete <= N_TRIALS + 1, rows
        optuna_trials = cluster.optuna_trials(job_id)
        assert not [t for t in optuna_trials if t["state"] == "RUNNING"], optuna_trials
        assert {t["number"] for t in optuna_trials if t["state"] == "COMPLETE"} == {
            row["number"] for row in rows if row["state"] == "complete"
        }
        assert job["progress"]["trials_completed"] == complete
        # Verified after every worker's trials were in: the best is a verified trial of this job.
        assert job["best"]["verified"] is not None and job["best"]["trial_number"] in numbers
        # Chunks offered after the job ended find nothing to do, and both workers stay up.
        assert all(worker.alive for worker in workers)
