"""A SIGKILLed worker's job runs again within a minute with the shipped settings, none tuned down.

The other fault tests shorten every period (``cluster.FAST_RECOVERY``) to stay quick; this one
starts its worker on the defaults of ``workers.settings``, so it checks what an operator gets.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e import flow
from tests.e2e.processes import wait_until
from tests.reliability.cluster import Cluster, cluster_on
from tests.reliability.test_worker_faults import check_recovered, kill_mid_trial, slow_body
from workers.settings import WorkerSettings

pytestmark = pytest.mark.e2e

RECOVERY_BOUND_S = 60.0


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, postgres_database_factory: Callable[[], str], redis_url: str
) -> Iterator[Cluster]:
    work_dir = tmp_path_factory.mktemp("default-recovery")
    with cluster_on(postgres_database_factory(), redis_url, work_dir, fast_recovery=False) as deployment:
        deployment.start_api()
        deployment.start_worker()
        yield deployment


def test_the_cluster_runs_on_the_shipped_reliability_defaults(cluster: Cluster) -> None:
    names = ("job_heartbeat_s", "job_stale_after_s", "reaper_interval_s", "trial_heartbeat_s", "trial_grace_s")
    assert not [name for name in names if f"PRUNESEARCH_{name.upper()}" in cluster.env]
    defaults = WorkerSettings.model_fields
    # What the bound below rests on: a dead job is stale, then seen by the next reaper pass.
    assert defaults["job_stale_after_s"].default + defaults["reaper_interval_s"].default < RECOVERY_BOUND_S


def test_a_worker_killed_mid_trial_runs_again_on_a_new_worker_within_a_minute(
    cluster: Cluster, tiny_llama_dir: Path
) -> None:
    # Enough trials that the job is still mid-search when the kill lands.
    job_id = flow.submit(cluster.client, slow_body(tiny_llama_dir))
    (old,) = [p for p in cluster.processes if p.name.startswith("worker") and p.alive]
    killed_worker = cluster.job_row(job_id)["worker"]
    killed = kill_mid_trial(cluster, job_id, old.kill_group)
    killed_at = time.monotonic()
    assert cluster.job_row(job_id)["status"] == "running"  # nobody told the database
    cluster.start_worker()

    def taken_over() -> bool:
        row = cluster.job_row(job_id)
        return row["status"] == "running" and row["worker"] != killed_worker and row["attempts"] == 2

    wait_until(taken_over, timeout=RECOVERY_BOUND_S - (time.monotonic() - killed_at), interval=0.2, what="takeover")
    took = time.monotonic() - killed_at
    print(f"worker killed at trial {killed}; job running again on a new worker {took:.1f}s later")
    assert took < RECOVERY_BOUND_S
    check_recovered(cluster, job_id, killed)
