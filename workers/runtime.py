"""Per-process resources of a worker: database sessions and the loaded model."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from service.db import make_engine, make_sessionmaker
from service.settings import get_settings

if TYPE_CHECKING:
    from search.loading import ModelCache


@lru_cache(maxsize=1)
def sessions() -> sessionmaker[Session]:
    return make_sessionmaker(make_engine(get_settings().database_url))


@lru_cache(maxsize=1)
def models() -> ModelCache:
    from search.loading import ModelCache  # torch is imported here, in the worker child, not before fork

    return ModelCache()


def reset() -> None:
    if sessions.cache_info().currsize:
        sessions().kw["bind"].dispose(close=False)
    sessions.cache_clear()
