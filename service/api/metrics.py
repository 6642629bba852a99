"""``GET /metrics`` in Prometheus text format, and the HTTP latency histogram behind it.

Each app has its own registry (tests build many apps in one process; the global registry would
refuse the second). It holds the request histogram, filled by ``HttpMetrics``, and
``service.metrics.ServiceCollector``, which reads jobs, trials, heartbeats and the queue at scrape
time. Who may read it: ``service.api.auth.authorize_metrics``.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.auth import authorize_metrics
from service.metrics import ServiceCollector, broker_queue_depth

__all__ = ["HttpMetrics", "install_metrics"]

# Anything else a client sends is counted as "other": a label value must not be the client's to invent.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # no route: a 404 for an unknown path, or a body refused before routing

router = APIRouter()


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(authorize_metrics)])
def metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


class HttpMetrics:
    """ASGI middleware: each request's latency, labelled by method, route template and status.

    The route is the matched template (``/v1/jobs/{job_id}``), never the path, so job ids never
    become label values; the router leaves the matched route in the scope it was handed.
    """

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the server answers if the app raises before starting a response
        started = time.perf_counter()

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            method = scope.get("method", "")
            self.histogram.labels(
                method=method if method in _METHODS else "other", route=_route(scope), status=str(status)
            ).observe(time.perf_counter() - started)


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED


def install_metrics(app: FastAPI) -> None:
    """The registry, the request histogram (outermost middleware: it sees every answer), the route."""
    registry = CollectorRegistry(auto_describe=True)
    histogram = Histogram(
        "prunesearch_http_request_duration_seconds",
        "Latency of HTTP requests, by method, route template and status.",
        labelnames=("method", "route", "status"),
        registry=registry,
    )
    state = app.state
    registry.register(ServiceCollector(state.engine, lambda: broker_queue_depth(state.celery)))
    state.metrics_registry = registry
    app.add_middleware(HttpMetrics, histogram=histogram)
    app.include_router(router)
