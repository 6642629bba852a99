"""FastAPI dependencies: what a route gets from the app's state (set up in ``service.api.app``).

They are ``async`` although they do no awaiting: FastAPI runs a plain ``def`` dependency (and the
exit of a ``def`` generator) in its thread pool, one thread hop each, per request. In the event loop
they cost nothing, and a session's exit, which hands its connection back to the pool, never waits
for a thread (see ``service.api.middleware.install_limits``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, TypeVar

from celery import Celery
from fastapi import Depends, Request
from sqlalchemy.orm import Session

from service.settings import Settings


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _session(request: Request) -> AsyncIterator[Session]:
    # One session per request; routes commit what they change. Closing rolls back the rest. Creating
    # a session does no I/O: it takes a connection when a route or dependency first queries.
    with request.app.state.sessionmaker() as session:
        yield session


async def _celery(request: Request) -> Celery:
    celery_app: Celery = request.app.state.celery
    return celery_app


T = TypeVar("T")


def released(session: Session, response: T) -> T:
    """``response``, once the session has handed its connection back to the pool.

    A ``def`` route's response is validated in the thread pool after the route returns; a
    connection kept until then is held by a request waiting for a thread. Return built response
    models (not ORM rows) through this, so no request holds a connection while it waits.
    """
    session.close()
    return response


SettingsDep = Annotated[Settings, Depends(_settings)]
SessionDep = Annotated[Session, Depends(_session)]
CeleryDep = Annotated[Celery, Depends(_celery)]
