"""The worker's Celery app: the shared broker config plus the tasks in ``workers.tasks``.

Nothing here imports torch: the prefork parent must not initialise CUDA before it forks.
"""

from __future__ import annotations

from typing import Any

from celery.signals import worker_process_init, worker_ready, worker_shutdown

from service.broker import make_celery
from workers.settings import get_worker_settings

app = make_celery(get_worker_settings(), name="prunesearch-worker")
app.conf.update(
    include=["workers.tasks"],
    worker_hijack_root_logger=False,
    # One GPU per worker process; the operator starts one worker per GPU (CUDA_VISIBLE_DEVICES).
    worker_concurrency=1,
    task_track_started=True,
    # A broker restart must not kill a running search (Celery 6 turns this on by default). The job
    # row, not the message, says whether the job is done; the reaper re-sends what was lost.
    worker_cancel_long_running_tasks_on_connection_loss=False,
)

_reaper: Any = None  # workers.reaper.Reaper in the main process, once the worker is ready


@worker_process_init.connect
def _fresh_connections_after_fork(**_kwargs: Any) -> None:
    # A pool inherited through fork shares sockets with the parent; start the child with its own.
    from workers import runtime

    runtime.reset()
    if _reaper is not None:
        _reaper.forget_after_fork()


@worker_process_init.connect
def _optuna_logs_through_logging(**_kwargs: Any) -> None:
    # Optuna's own handler writes to stderr, which Celery redirects to a logger at WARNING: every
    # trial became a WARNING/ForkPoolWorker line. Through logging, its records keep their level (INFO).
    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()


@worker_ready.connect
def _start_reaper(**_kwargs: Any) -> None:
    # In the main process only: it outlives pool children killed mid-job, whose jobs it re-sends.
    global _reaper
    from workers.reaper import Reaper

    _reaper = Reaper(get_worker_settings())
    _reaper.start()


@worker_shutdown.connect
def _stop_reaper(**_kwargs: Any) -> None:
    if _reaper is not None:
        _reaper.stop()
