"""The service's database as the commands see it: found, migrated or checked, and its errors in one line.

An embedded (SQLite) database belongs to this machine's user, so every command migrates it the
way ``serve`` does. An external one (PostgreSQL) is shared and migrated on purpose, by
``prunesearch db upgrade``: a command finding it behind says so instead of failing on a missing
table. ``CommandLine`` is the command group's single choke point that turns a user's
environment error (no such file, database unreachable, a bad setting) into one line, not a
traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from service.settings import Settings


def shown_url(url: str) -> str:
    """``url`` with its password masked: safe to print."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def is_embedded(url: str) -> bool:
    from sqlalchemy.engine import make_url

    return make_url(url).get_backend_name() == "sqlite"


def where(settings: Settings) -> str:
    """One line saying where this process's data and database are."""
    return f"Data in {settings.data_dir} (PRUNESEARCH_DATA_DIR); database {shown_url(settings.database_url)}"


def ready_database(settings: Settings) -> None:
    """Migrate an embedded database to the newest revision; refuse an external one that is not there."""
    from service import migrate

    url = settings.database_url
    if is_embedded(url):
        migrate.upgrade(url)
        return
    current, head = migrate.current(url), migrate.head()
    if current != head:
        raise click.ClickException(
            f"the database {shown_url(url)} is at revision {current or 'none (no tables)'}, "
            f"this prunesearch needs {head}: run `prunesearch db upgrade`"
        )


def open_sessions(settings: Settings) -> sessionmaker[Session]:
    """Sessions on the settings' database, once it is ready; says on stderr where it is."""
    from service.db import make_engine, make_sessionmaker

    click.echo(where(settings), err=True)
    ready_database(settings)
    return make_sessionmaker(make_engine(settings.database_url))


class CommandLine(click.Group):
    """The ``prunesearch`` group: a user's environment error leaves every command as one line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as error:
            message = user_error(error)
            if message is None:
                raise
            raise click.ClickException(message) from error


def user_error(error: Exception) -> str | None:
    """The one-line message for an error of the user's environment, or ``None`` for a bug."""
    # Imported here: only on the error path, so `--help` stays instant.
    from alembic.util import CommandError
    from pydantic import ValidationError
    from sqlalchemy.exc import SQLAlchemyError

    if isinstance(error, SQLAlchemyError):
        cause = getattr(error, "orig", None) or error
        return f"database error: {_first_line(cause)}"
    if isinstance(error, CommandError):  # e.g. a database migrated by a newer prunesearch
        return f"database migration: {_first_line(error)}"
    if isinstance(error, ValidationError) and error.title in ("Settings", "WorkerSettings"):
        problems = "; ".join(f"PRUNESEARCH_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in error.errors())
        return f"invalid setting: {problems}"
    if isinstance(error, OSError):
        return f"{error.strerror or error}: {error.filename}" if error.filename else _first_line(error)
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
