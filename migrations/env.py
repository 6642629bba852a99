"""Alembic environment for the service's tables only.

Optuna keeps its tables (``studies``, ``trials``, ...) and its own ``alembic_version`` in the same
database. So: our revisions are stamped in ``prunesearch_alembic_version``, and autogenerate looks
only at tables our metadata defines, so it never proposes to drop Optuna's.
"""

from __future__ import annotations

from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import Connection, TypeDecorator

from service.db import make_engine
from service.models import VERSION_TABLE, Base
from service.settings import get_settings

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata
OUR_TABLES = frozenset(target_metadata.tables)


def _database_url() -> str:
    # Set programmatically by service.migrate and the tests; else the service's own setting.
    return config.get_main_option("sqlalchemy.url") or get_settings().database_url


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    if type_ == "table":
        return name in OUR_TABLES
    return True


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    if type_ == "table":
        return name in OUR_TABLES
    return True


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    # Render our Python-side type decorators (UTCDateTime) as their plain SQL type, so revisions
    # never import service.models and stay valid when the models change.
    if type_ == "type" and isinstance(obj, TypeDecorator):
        return f"sa.{obj.impl!r}"
    return False


def _configure(**kwargs: Any) -> None:
    context.configure(
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        include_name=include_name,
        include_object=include_object,
        compare_type=True,
        render_item=render_item,
        **kwargs,
    )


def run_migrations_offline() -> None:
    url = _database_url()
    _configure(
        url=url, literal_binds=True, dialect_opts={"paramstyle": "named"}, render_as_batch=url.startswith("sqlite")
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_with(connection: Connection) -> None:
    # SQLite cannot ALTER most things; batch mode rebuilds tables (copy, drop, rename) instead.
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection: Connection | None = config.attributes.get("connection")
    if connection is not None:
        _run_with(connection)
        return
    # Foreign keys off for SQLite migrations: a batch rebuild of `job` must not cascade-delete trials.
    engine = make_engine(_database_url(), sqlite_foreign_keys=False)
    try:
        with engine.connect() as connection:
            _run_with(connection)
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
