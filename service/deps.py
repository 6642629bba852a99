"""FastAPI dependencies: what a route gets from the app's state (set up in ``service.app``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, Request
from sqlalchemy.orm import Session

from service.settings import Settings


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _session(request: Request) -> Iterator[Session]:
    # One session per request; routes commit what they change. Closing rolls back the rest.
    with request.app.state.sessionmaker() as session:
        yield session


def _celery(request: Request) -> Celery:
    celery_app: Celery = request.app.state.celery
    return celery_app


SettingsDep = Annotated[Settings, Depends(_settings)]
SessionDep = Annotated[Session, Depends(_session)]
CeleryDep = Annotated[Celery, Depends(_celery)]
