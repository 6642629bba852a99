"""The Celery client side: how the API enqueues work, and the config the worker shares.

The API never imports the worker's tasks; it sends them by name with ids: ``RUN_JOB_TASK`` with the
job id, ``EXPORT_TRIAL_TASK`` with the job id and a trial number, ``EXPORT_ONNX_TASK`` with the job
id and an export's name.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from service.settings import Settings

RUN_JOB_TASK = "prunesearch.run_job"
# args [job_id, trial_number]: export that trial into {artifacts_dir}/{job_id}/trial-{number}/.
EXPORT_TRIAL_TASK = "prunesearch.export_trial"
# args [job_id, name]: convert the export {name} into an ONNX graph at {artifacts_dir}/{job_id}/{name}.onnx/.
EXPORT_ONNX_TASK = "prunesearch.export_onnx"
# args [job_id]: run up to ``chunk_trials`` trials of a job another worker is running (idle workers help).
EVALUATE_CHUNK_TASK = "prunesearch.evaluate_chunk"
# args [delivery_id]: POST a job's webhook event (service.notify), retried with Celery's countdown.
DELIVER_WEBHOOK_TASK = "prunesearch.deliver_webhook"
# Deliveries have their own queue, so a worker dedicated to it (`prunesearch worker --queues
# prunesearch.notify`) never waits behind a search; `prunesearch worker` consumes both by default.
JOB_QUEUE = "celery"
NOTIFY_QUEUE = "prunesearch.notify"

# Publishing to a dead broker should fail within a second or two (the API answers 503), not hang.
_PUBLISH_RETRY_POLICY: dict[str, Any] = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings shared by the API (producer) and the worker (consumer)."""
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        # JSON only: tasks carry ids, and pickle from a broker is remote code execution.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        # Long GPU tasks: ack after the work, one task at a time, requeue if the worker dies.
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
        "task_reject_on_worker_lost": True,
        "broker_connection_retry_on_startup": True,
        # Results live in the job tables, not in Celery.
        "task_ignore_result": True,
        "result_backend": None,
        "task_publish_retry_policy": _PUBLISH_RETRY_POLICY,
        "broker_connection_timeout": 2.0,
        "broker_transport_options": _transport_options(settings),
        "task_routes": {DELIVER_WEBHOOK_TASK: {"queue": NOTIFY_QUEUE}},
    }
    return config


def _transport_options(settings: Settings) -> dict[str, Any]:
    if settings.uses_filesystem_broker:
        # Producer and consumer share one folder: messages are written to and read from "out".
        # kombu's defaults are relative to the CWD; pin every folder under the data directory.
        out, processed, control = (settings.broker_dir / name for name in ("out", "processed", "control"))
        for folder in (out, processed, control):
            folder.mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(out),
            "data_folder_out": str(out),
            "processed_folder": str(processed),
            "control_folder": str(control),
            "store_processed": False,
        }
    if settings.broker_url.startswith(("redis://", "rediss://", "redis+socket://")):
        # Unacked tasks are redelivered after this; it must outlast the longest job.
        return {"visibility_timeout": settings.visibility_timeout_s}
    return {}


def make_celery(settings: Settings, name: str = "prunesearch") -> Celery:
    """A Celery app with the shared config; the worker registers its tasks on the one it builds."""
    app = Celery(name, set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def enqueue_job(celery_app: Celery, job_id: str) -> None:
    """Send the run-job task; raises (kombu / redis errors) if the broker cannot take it."""
    celery_app.send_task(RUN_JOB_TASK, args=[job_id])


def enqueue_export(celery_app: Celery, job_id: str, number: int) -> None:
    """Send the export-trial task; raises (kombu / redis errors) if the broker cannot take it."""
    celery_app.send_task(EXPORT_TRIAL_TASK, args=[job_id, number])


def enqueue_onnx_export(celery_app: Celery, job_id: str, name: str) -> None:
    """Send the ONNX conversion task; raises (kombu / redis errors) if the broker cannot take it."""
    celery_app.send_task(EXPORT_ONNX_TASK, args=[job_id, name])


def enqueue_delivery(celery_app: Celery, delivery_id: int, countdown: float | None = None) -> None:
    """Send a webhook delivery task to the notify queue; raises if the broker cannot take it."""
    celery_app.send_task(DELIVER_WEBHOOK_TASK, args=[delivery_id], queue=NOTIFY_QUEUE, countdown=countdown)


def broker_reachable(celery_app: Celery, timeout: float = 2.0) -> bool:
    """Whether a connection to the broker can be opened now (for ``/readyz``)."""
    try:
        with celery_app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=timeout)
            return True
    except Exception:  # any failure to connect means "not ready"; the reason is not the caller's concern
        return False
