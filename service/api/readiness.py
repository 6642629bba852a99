"""Readiness: can this process serve requests that touch the database and the broker?"""

from __future__ import annotations

import logging

from celery import Celery
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from service.api.schemas import Readiness
from service.broker import broker_reachable
from service.errors import Unavailable

logger = logging.getLogger(__name__)


def database_reachable(session: Session) -> bool:
    try:
        session.execute(text("SELECT 1"))
    except SQLAlchemyError as error:
        logger.warning("readiness: database unreachable: %s", error)
        return False
    return True


def check_readiness(session: Session, celery_app: Celery) -> Readiness:
    """``Readiness`` when both are up, else ``Unavailable`` naming what failed."""
    checks = {
        "database": "ok" if database_reachable(session) else "unreachable",
        "broker": "ok" if broker_reachable(celery_app) else "unreachable",
    }
    failed = [name for name, state in checks.items() if state != "ok"]
    if failed:
        raise Unavailable(f"not ready: {' and '.join(failed)} unreachable", extensions={"checks": checks})
    return Readiness(status="ready", **checks)
