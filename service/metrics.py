"""What ``GET /metrics`` reports about jobs, trials, workers and the queue, read at scrape time.

Every figure here is an aggregate query over the job tables (or one broker call), run when
Prometheus scrapes: the database is the source of truth, so the numbers are right whichever
process (API, any worker, a worker since restarted) wrote the rows, and workers need no port of
their own. Label values come from small closed sets (job states, trial states, proxy names,
worker names of running jobs): never a job id or an owner, so the series count stays bounded.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from celery import Celery
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, case, func, select
from sqlalchemy.exc import SQLAlchemyError

from service.models import Job, TrialResult
from service.states import JobStatus, TrialState

logger = logging.getLogger(__name__)

__all__ = ["TRIAL_DURATION_BUCKETS", "ServiceCollector", "broker_queue_depth"]

# Seconds. A tiny CPU trial takes a fraction of a second, a 7B trial on a GPU minutes.
TRIAL_DURATION_BUCKETS: tuple[float, ...] = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
QUEUE_NAME = "celery"  # the default queue every task is sent to (service.broker)
_PROXY_NAME = re.compile(r"[a-z][a-z0-9_\-]{0,31}")


def proxy_label(raw: str | None) -> str:
    """A job spec's ``proxy`` as a bounded label: a name, "ensemble" for a list, "other" for the rest."""
    if raw is None:
        return "other"
    text = raw.strip()
    if text.startswith("["):  # a list of proxies is scored as their ensemble (JobSpec.proxy_label)
        return "ensemble"
    return text if _PROXY_NAME.fullmatch(text) else "other"


def broker_queue_depth(celery_app: Celery, timeout: float = 2.0) -> int | None:
    """Messages waiting in the default queue, or ``None`` if the broker cannot be asked now."""
    try:
        with celery_app.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=timeout)
            declared = connection.default_channel.queue_declare(queue=QUEUE_NAME, passive=True)
            return int(declared.message_count)
    except Exception as error:  # a missing queue (nothing sent yet) or an unreachable broker
        if "NOT_FOUND" in str(error) or "no queue" in str(error).lower():
            return 0
        logger.warning("metrics: cannot read the queue depth (%s)", error)
        return None


class ServiceCollector(Collector):
    """A custom collector: each scrape runs a handful of ``GROUP BY`` queries and one broker call."""

    def __init__(self, engine: Engine, queue_depth: Callable[[], int | None]) -> None:
        self._engine = engine
        self._queue_depth = queue_depth

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("prunesearch_database_up", "Whether the scrape could read the job tables.")
        try:
            families = [self._jobs(), self._trials(), self._durations(), self._heartbeats()]
        except SQLAlchemyError as error:
            logger.warning("metrics: cannot read the job tables (%s)", error)
            up.add_metric([], 0)
            families = []
        else:
            up.add_metric([], 1)
        yield up
        yield from families
        depth = self._queue_depth()
        if depth is not None:
            queue = GaugeMetricFamily("prunesearch_queue_depth", "Tasks waiting in the broker queue.", labels=["queue"])
            queue.add_metric([QUEUE_NAME], depth)
            yield queue

    def _jobs(self) -> Metric:
        with self._engine.connect() as connection:
            rows = dict(connection.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        family = GaugeMetricFamily("prunesearch_jobs", "Jobs in the database, by status.", labels=["status"])
        for status in JobStatus:  # every status, zeros included, so a query never sees a gap
            family.add_metric([status.value], int(rows.get(status.value, 0)))
        return family

    def _trials(self) -> Metric:
        stmt = select(TrialResult.state, func.count()).group_by(TrialResult.state)
        with self._engine.connect() as connection:
            rows = dict(connection.execute(stmt).all())
        # A gauge, not a counter: deleting a job deletes its trials, so the count can go down.
        family = GaugeMetricFamily(
            "prunesearch_trials",
            "Trial rows in the database, by state (complete, pruned, failed, running).",
            labels=["state"],
        )
        for state in TrialState:
            family.add_metric([state.value], int(rows.get(state.value, 0)))
        return family

    def _durations(self) -> Metric:
        proxy = Job.spec["proxy"].as_string()
        duration = TrialResult.duration_s
        buckets = [func.sum(case((duration <= bound, 1), else_=0)) for bound in TRIAL_DURATION_BUCKETS]
        stmt = (
            select(proxy, func.count(), func.coalesce(func.sum(duration), 0.0), *buckets)
            .join(Job, Job.id == TrialResult.job_id)
            .where(duration.is_not(None))
            .group_by(proxy)
        )
        with self._engine.connect() as connection:
            rows = connection.execute(stmt).all()
        merged: dict[str, list[float]] = {}
        for raw, count, total, *cumulative in rows:  # two raw values can map to one label ("other")
            values = [float(count), float(total), *(float(c or 0) for c in cumulative)]
            previous = merged.get(proxy_label(raw))
            merged[proxy_label(raw)] = (
                values if previous is None else [a + b for a, b in zip(previous, values, strict=True)]
            )
        family = HistogramMetricFamily(
            "prunesearch_trial_duration_seconds", "Wall time of finished trials, by the job's proxy.", labels=["proxy"]
        )
        for label, (count, total, *cumulative) in sorted(merged.items()):
            pairs = [(_bound(b), c) for b, c in zip(TRIAL_DURATION_BUCKETS, cumulative, strict=True)]
            family.add_metric([label], [*pairs, ("+Inf", count)], sum_value=total)
        return family

    def _heartbeats(self) -> Metric:
        stmt = (
            select(Job.worker, func.max(Job.heartbeat_at))
            .where(Job.status == JobStatus.RUNNING.value, Job.worker.is_not(None), Job.heartbeat_at.is_not(None))
            .group_by(Job.worker)
        )
        with self._engine.connect() as connection:
            rows = connection.execute(stmt).all()
        # Workers heartbeat into the rows of the jobs they run; a worker with no running job has
        # nothing to report. Alert on `time() - this` against PRUNESEARCH_JOB_STALE_AFTER_S.
        family = GaugeMetricFamily(
            "prunesearch_worker_last_heartbeat_timestamp_seconds",
            "Unix time of the latest heartbeat of each worker running a job.",
            labels=["worker"],
        )
        for worker, beat in rows:
            family.add_metric([str(worker)], _timestamp(beat))
        return family


def _bound(value: float) -> str:
    return repr(float(value))


def _timestamp(value: datetime) -> float:
    # Stored as UTC; SQLite can hand back a naive value, which .timestamp() would take as local time.
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
