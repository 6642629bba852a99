"""``prunesearch keys create|list|revoke``: API keys, managed on the database the service uses.

``create`` prints the key alone on stdout (so ``KEY=$(prunesearch keys create alice)`` works) and
the advice on stderr; the key is never shown again, only its id. The embedded database is
migrated first (``prunesearch.database``), so the commands work on a fresh data directory.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker


def _sessions() -> sessionmaker[Session]:
    from prunesearch.database import open_sessions
    from service.settings import get_settings

    return open_sessions(get_settings())


@click.group()
def keys() -> None:
    """Manage API keys (Authorization: Bearer <key>). Each key belongs to an OWNER, who sees only their jobs."""


@keys.command("create")
@click.argument("owner")
def create(owner: str) -> None:
    """Create a key for OWNER. Several keys may share an owner (rotation: create, switch, revoke the old)."""
    from service.apikeys import create_key
    from service.errors import ServiceError

    with _sessions()() as session:
        try:
            issued = create_key(session, owner)
        except ServiceError as error:
            raise click.BadParameter(error.detail, param_hint="OWNER") from error
        session.commit()
    click.echo(issued.key)
    click.echo(f"key {issued.id} for {issued.owner}: store it now, it cannot be shown again", err=True)
    click.echo(
        f"webhook signing secret of {issued.id}: {issued.webhook_secret} "
        f"(again: prunesearch keys webhook-secret {issued.id})",
        err=True,
    )


@keys.command("list")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per key.")
def list_(include_revoked: bool, as_json: bool) -> None:
    """List keys: id, owner, created, revoked. Secrets are not stored, so they cannot be listed."""
    from service.apikeys import list_keys

    with _sessions()() as session:
        rows = list_keys(session, include_revoked=include_revoked)
    for row in rows:
        if as_json:
            revoked = row.revoked_at.isoformat() if row.revoked_at else None
            record = {"id": row.id, "owner": row.owner, "created_at": row.created_at.isoformat(), "revoked_at": revoked}
            click.echo(json.dumps(record))
            continue
        line = f"{row.id}  {row.owner:<24}  created {row.created_at:%Y-%m-%d %H:%M}"
        if row.revoked_at is not None:
            line += f"  revoked {row.revoked_at:%Y-%m-%d %H:%M}"
        click.echo(line)
    if not rows and not as_json:
        click.echo("no keys: the API serves anonymous requests on loopback only", err=True)


@keys.command("revoke")
@click.argument("key_id")
def revoke(key_id: str) -> None:
    """Revoke the key KEY_ID (from `keys list`); requests with it get 401 at once."""
    from service.apikeys import revoke_key
    from service.errors import NotFound

    with _sessions()() as session:
        try:
            row = revoke_key(session, key_id)
        except NotFound as error:
            raise click.ClickException(error.detail) from error
        session.commit()
    click.echo(f"revoked {row.id} ({row.owner})")


@keys.command("webhook-secret")
@click.argument("key_id")
@click.option(
    "--rotate", is_flag=True, help="Replace it with a new one; events not yet sent are signed with the new one."
)
def webhook_secret(key_id: str, rotate: bool) -> None:
    """Print the secret that signs the webhook events of KEY_ID's jobs (X-PruneSearch-Signature)."""
    from service.apikeys import rotate_webhook_secret
    from service.apikeys import webhook_secret as current_secret
    from service.errors import NotFound

    with _sessions()() as session:
        try:
            secret = rotate_webhook_secret(session, key_id) if rotate else current_secret(session, key_id)
        except NotFound as error:
            raise click.ClickException(error.detail) from error
        session.commit()
    click.echo(secret)
