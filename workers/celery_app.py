"""The worker's Celery app: the shared broker config plus the tasks in ``workers.tasks``.

Nothing here imports torch: the prefork parent must not initialise CUDA before it forks.
"""

from __future__ import annotations

from typing import Any

from celery.signals import worker_process_init

from service.broker import make_celery
from service.settings import get_settings

app = make_celery(get_settings(), name="prunesearch-worker")
app.conf.update(
    include=["workers.tasks"],
    worker_hijack_root_logger=False,
    # One GPU per worker process; the operator starts one worker per GPU (CUDA_VISIBLE_DEVICES).
    worker_concurrency=1,
    task_track_started=True,
)


@worker_process_init.connect
def _fresh_connections_after_fork(**_kwargs: Any) -> None:
    # A pool inherited through fork shares sockets with the parent; start the child with its own.
    from workers import runtime

    runtime.reset()
