"""The body of a job's webhook event, built from its row (terminal, so it no longer changes).

The same bytes go out on every attempt of a delivery; only the timestamp header changes.
"""

from __future__ import annotations

import json
from typing import Any

from service.models import Job, WebhookDelivery
from service.settings import Settings
from service.states import JobStatus

__all__ = ["DELIVERY_HEADER", "EVENT_HEADER", "event_body", "event_name"]

EVENT_HEADER = "X-PruneSearch-Event"
DELIVERY_HEADER = "X-PruneSearch-Delivery"
# service.api.schemas.API_PREFIX; the core does not import the HTTP edge (tests/service/test_webhooks.py checks).
JOBS_PATH = "/v1/jobs"


def event_name(status: JobStatus) -> str:
    """``job.succeeded``, ``job.failed`` or ``job.cancelled``."""
    if not status.terminal:
        raise ValueError(f"no event for a {status.value} job")
    return f"job.{status.value}"


def event_body(job: Job, delivery: WebhookDelivery, settings: Settings) -> bytes:
    """Compact JSON, keys sorted: what is signed is exactly what is sent."""
    base = f"{settings.public_url or ''}{JOBS_PATH}/{job.id}"
    event: dict[str, Any] = {
        "id": str(delivery.id),
        "event": delivery.event,
        "created_at": delivery.created_at.isoformat(),
        "job": {
            "id": job.id,
            "status": job.status,
            "model": job.model,
            "finished_at": job.finished_at.isoformat() if job.finished_at else None,
            "error": job.error,
        },
        "links": {"job": base, "report": f"{base}/report", "trials": f"{base}/trials"},
        "best": _best(job.best),
    }
    return json.dumps(event, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _best(best: dict[str, Any] | None) -> dict[str, Any] | None:
    # The job's best trial, with its verified figures (KL, perplexity) when it was verified.
    if not best:
        return None
    fields = ("trial_number", "param_count", "param_ratio", "score", "verified")
    return {name: best.get(name) for name in fields}
