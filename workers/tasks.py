"""Celery tasks. They take ids, never objects: the job row is the source of truth."""

from __future__ import annotations

from celery import Task

from service.broker import (
    DELIVER_WEBHOOK_TASK,
    EVALUATE_CHUNK_TASK,
    EXPORT_ONNX_TASK,
    EXPORT_TRIAL_TASK,
    RUN_JOB_TASK,
)
from workers import runtime
from workers.celery_app import app
from workers.exports import export_onnx as _export_onnx
from workers.exports import export_trial as _export_trial
from workers.jobs import evaluate_chunk as _evaluate_chunk
from workers.jobs import run_job as _run_job
from workers.notify import deliver
from workers.settings import get_worker_settings


@app.task(name=RUN_JOB_TASK, acks_late=True, ignore_result=True)
def run_job(job_id: str) -> str:
    return _run_job(job_id, settings=get_worker_settings(), sessions=runtime.sessions(), models=runtime.models())


@app.task(name=EXPORT_TRIAL_TASK, acks_late=True, ignore_result=True)
def export_trial(job_id: str, number: int) -> str:
    return _export_trial(
        job_id, number, settings=get_worker_settings(), sessions=runtime.sessions(), models=runtime.models()
    )


@app.task(name=EXPORT_ONNX_TASK, acks_late=True, ignore_result=True)
def export_onnx(job_id: str, name: str) -> str:
    return _export_onnx(job_id, name, settings=get_worker_settings())


@app.task(name=EVALUATE_CHUNK_TASK, acks_late=True, ignore_result=True)
def evaluate_chunk(job_id: str) -> str:
    return _evaluate_chunk(job_id, settings=get_worker_settings(), sessions=runtime.sessions(), models=runtime.models())


@app.task(name=DELIVER_WEBHOOK_TASK, bind=True, acks_late=True, ignore_result=True)
def deliver_webhook(self: Task, delivery_id: int) -> str:
    settings = get_worker_settings()
    attempt = deliver(delivery_id, attempts_before=self.request.retries, settings=settings, sessions=runtime.sessions())
    if attempt.retry_in is not None:
        # Celery's retry: the same task id, re-sent with a countdown; max_retries is a backstop,
        # deliver() already decides when the last retry has failed.
        raise self.retry(countdown=attempt.retry_in, max_retries=settings.webhook_retries)
    return attempt.outcome
