"""A small PruneSearch deployment made of real processes, for fault tests: API and workers on a fresh
PostgreSQL database and a Redis broker, with settings that notice a dead worker within seconds.

Each process runs in its own session (process group), so a test can SIGKILL a whole worker (Celery's
main process and its pool child) the way a preempted machine loses it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import Engine, create_engine, text

from service import migrate
from tests.e2e import flow
from tests.e2e.processes import PRUNESEARCH, TERMINAL, base_env, free_port, wait_until

# Fast failure detection: a job silent for 4 s is an orphan; each worker looks every second; a
# trial silent for 3 s is failed and retried. The shipped defaults are 3 s / 30 s / 5 s / 20 s; a
# cluster made with ``fast_recovery=False`` runs on them (tests/reliability/test_default_recovery.py).
FAST_RECOVERY: dict[str, str] = {
    "job_heartbeat_s": "1",
    "job_stale_after_s": "4",
    "reaper_interval_s": "1",
    "requeue_queued_after_s": "6",
    "trial_heartbeat_s": "1",
    "trial_grace_s": "3",
    "db_retry_attempts": "5",
}


class Proc:
    """A child process in its own process group, logging to a file that failing tests print."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen(args, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill_group(self) -> None:
        """SIGKILL the process and every child it started: nothing gets to clean up."""
        if self.alive:
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def stop(self, timeout: float = 30) -> None:
        if self.alive:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill_group()
        self._log.close()

    def tail(self, lines: int = 40) -> str:
        text_lines = self.log_path.read_text(errors="replace").splitlines()
        return f"--- {self.name} (exit {self.popen.poll()}) ---\n" + "\n".join(text_lines[-lines:])


class Cluster:
    """API and workers sharing one database and broker; ``client`` talks to the API."""

    def __init__(
        self, database_url: str, broker_url: str, work_dir: Path, *, fast_recovery: bool = True, **settings: str
    ) -> None:
        self.database_url = database_url
        self.port = free_port()
        self.logs = work_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = base_env(
            work_dir / "data",
            database_url=database_url,
            broker_url=broker_url,
            port=str(self.port),
            **((FAST_RECOVERY if fast_recovery else {}) | settings),
        )
        self.processes: list[Proc] = []
        self.api: Proc | None = None
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        self.engine: Engine = create_engine(database_url, pool_pre_ping=True)
        self._started = 0

    def _start(self, kind: str) -> Proc:
        self._started += 1
        process = Proc(f"{kind}-{self._started}", [*PRUNESEARCH, kind], self.env, self.logs)
        self.processes.append(process)
        return process

    def start_api(self) -> Proc:
        self.api = self._start("api")
        self.wait_ready()
        return self.api

    def start_worker(self) -> Proc:
        worker = self._start("worker")
        # Ready when Celery says so in its log: tasks sent earlier wait in the broker anyway.
        wait_until(lambda: b"ready." in worker.log_path.read_bytes() or self._died(worker), timeout=90, what="worker")
        return worker

    def _died(self, process: Proc) -> bool:
        if not process.alive:
            raise AssertionError(f"{process.name} exited early\n{process.tail()}")
        return False

    def wait_ready(self, timeout: float = 90) -> None:
        def ready() -> bool:
            if self.api is not None:
                self._died(self.api)
            try:
                return self.client.get("/readyz").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, timeout=timeout, what="/readyz")

    def close(self) -> None:
        self.client.close()
        for process in self.processes:
            process.stop()
        self.engine.dispose()

    def print_logs(self) -> None:
        for process in self.processes:
            print(process.tail())

    # --- reading the truth from the database -------------------------------------------------

    def job_row(self, job_id: str) -> dict[str, Any]:
        with self.engine.connect() as connection:
            row = connection.execute(text("SELECT * FROM job WHERE id = :id"), {"id": job_id}).mappings().one()
        return dict(row)

    def trial_rows(self, job_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                text("SELECT number, state, error FROM trial_result WHERE job_id = :id ORDER BY number"), {"id": job_id}
            ).mappings()
            return [dict(row) for row in rows]

    def optuna_trials(self, job_id: str) -> list[dict[str, Any]]:
        """Optuna's own view of the job's study: number, state, start time, retry attributes."""
        query = text(
            "SELECT t.trial_id, t.number, t.state, t.datetime_start, "
            "(SELECT a.value_json FROM trial_system_attributes a "
            " WHERE a.trial_id = t.trial_id AND a.key = 'failed_trial') AS failed_trial "
            "FROM trials t JOIN studies s ON s.study_id = t.study_id WHERE s.study_name = :name ORDER BY t.number"
        )
        with self.engine.connect() as connection:
            return [dict(row) for row in connection.execute(query, {"name": f"job-{job_id}"}).mappings()]

    def wait_for(self, job_id: str, statuses: set[str] = TERMINAL, timeout: float = 180) -> dict[str, Any]:
        """Poll over HTTP like a user; a refused connection (API restarting) is retried."""

        def reached() -> dict[str, Any] | None:
            try:
                response = self.client.get(f"/v1/jobs/{job_id}")
            except httpx.TransportError:
                return None
            if response.status_code != 200:
                return None
            job = response.json()
            return job if job["status"] in statuses else None

        return wait_until(reached, timeout=timeout, interval=0.5, what=f"job {job_id} to reach {sorted(statuses)}")


def check_exactly_n_trials(cluster: Cluster, job_id: str, n_trials: int) -> list[dict[str, Any]]:
    """The job has exactly ``n_trials`` complete trials, each Optuna trial is one row, no duplicates,
    no zombie left running. Returns the trial rows."""
    rows = cluster.trial_rows(job_id)
    numbers = [row["number"] for row in rows]
    assert len(numbers) == len(set(numbers)), numbers
    assert sum(row["state"] == "complete" for row in rows) == n_trials, rows
    optuna_trials = cluster.optuna_trials(job_id)
    assert not [t for t in optuna_trials if t["state"] == "RUNNING"], optuna_trials
    recorded = {t["number"] for t in optuna_trials if t["state"] in ("COMPLETE", "FAIL", "PRUNED")}
    assert recorded == set(numbers), (recorded, numbers)
    job = cluster.client.get(f"/v1/jobs/{job_id}").json()
    assert job["progress"]["trials_completed"] == n_trials
    all_via_api = flow.all_trials(cluster.client, job_id)
    assert [t["number"] for t in all_via_api] == numbers
    return rows


@contextmanager
def cluster_on(
    database_url: str, broker_url: str, work_dir: Path, *, fast_recovery: bool = True, **settings: str
) -> Iterator[Cluster]:
    migrate.upgrade(database_url)
    cluster = Cluster(database_url, broker_url, work_dir, fast_recovery=fast_recovery, **settings)
    try:
        yield cluster
    except BaseException:
        cluster.print_logs()
        raise
    finally:
        cluster.close()


class PrivateRedis:
    """A redis-server of our own on a free port, so a test may restart it (never the shared one)."""

    def __init__(self, work_dir: Path) -> None:
        executable = shutil.which("redis-server")
        assert executable is not None, "redis-server is not installed"
        self.executable = executable
        self.port = free_port()
        self.dir = work_dir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # No persistence: a restart loses every message, the worst case for the broker.
        self.process = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log")],
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=1)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_until(up, timeout=20, interval=0.1, what="private redis-server")
        client.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self, down_for: float = 1.0) -> None:
        self.kill()
        time.sleep(down_for)
        self.start()
