"""The FastAPI application factory. ``uvicorn service.api.app:create_app --factory`` serves it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from service.api.auth import API_GUARDS, GUARDED_RESPONSES, install_auth
from service.api.conditional import RenderedBodies
from service.api.metrics import install_metrics
from service.api.middleware import install_limits
from service.api.openapi import install_openapi
from service.api.problems import install_problem_handlers
from service.api.routes import compare, health, jobs, options, results
from service.api.web import install_web
from service.api.web.router import STATIC_PREFIX
from service.broker import make_celery
from service.db import AsyncReads, make_engine, make_sessionmaker
from service.settings import Settings, get_settings

API_VERSION = "0.1.0"
# Rendered poll bodies kept per process (service.api.conditional): a few hundred jobs' pages.
RENDERED_BODIES_BYTES = 32 * 2**20
# Connections per API process for the guard's reads in the event loop, beside the engine's pool: a
# read takes well under a millisecond of the database, so a few serve hundreds of concurrent polls.
GUARD_READ_CONNECTIONS = 8


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app: engine, sessions and the Celery client live on ``app.state``."""
    settings = settings or get_settings()
    engine = make_engine(settings.database_url)
    # The guard's per-request read in the event loop (PostgreSQL; None on SQLite: the thread pool).
    async_reads = AsyncReads.for_engine(engine, size=GUARD_READ_CONNECTIONS)
    celery_app = make_celery(settings, "prunesearch-api")

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        # Return pooled connections (database and broker) on shutdown.
        celery_app.close()
        if async_reads is not None:
            await async_reads.close()
        engine.dispose()

    # /docs and /redoc load Swagger UI and ReDoc from the installed package, not a CDN: they work offline.
    app = FastAPIOffline(
        title="PruneSearch",
        version=API_VERSION,
        description="Search pruned LLM architectures: submit a job, poll its progress, read its trials.",
        lifespan=lifespan,
        favicon_url=f"{STATIC_PREFIX}/favicon.svg",
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessionmaker = make_sessionmaker(engine)
    app.state.async_reads = async_reads
    app.state.celery = celery_app
    app.state.rendered_bodies = RenderedBodies(RENDERED_BODIES_BYTES)
    install_problem_handlers(app)
    install_openapi(app)
    install_auth(app)
    install_limits(app, settings)
    # After the limits: added last, its middleware is outermost and times every answer, 413s too.
    install_metrics(app)
    # Every /v1 router: authenticated, and a {job_id} in the path must be the caller's job.
    app.include_router(jobs.router, dependencies=API_GUARDS, responses=GUARDED_RESPONSES)
    app.include_router(results.router, dependencies=API_GUARDS, responses=GUARDED_RESPONSES)
    app.include_router(options.router, dependencies=API_GUARDS, responses=GUARDED_RESPONSES)
    app.include_router(compare.router, dependencies=API_GUARDS, responses=GUARDED_RESPONSES)
    app.include_router(health.router)
    install_web(app)
    return app
