"""Celery tasks. They take ids, never objects: the job row is the source of truth."""

from __future__ import annotations

from service.broker import RUN_JOB_TASK
from service.settings import get_settings
from workers import runtime
from workers.celery_app import app
from workers.jobs import run_job as _run_job


@app.task(name=RUN_JOB_TASK, acks_late=True, ignore_result=True)
def run_job(job_id: str) -> str:
    return _run_job(job_id, settings=get_settings(), sessions=runtime.sessions(), models=runtime.models())
