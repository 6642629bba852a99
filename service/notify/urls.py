"""Which URLs a job may have called: scheme, no credentials, the allow-list, public addresses only.

Checked at submission (a 422 naming ``notify.url``) and again right before each delivery, since the
host's addresses may have changed since (DNS rebinding). Between that check and the connection a
rebinding window of one lookup remains; ``webhook_allow_private`` off is the defence in depth.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import SplitResult, urlsplit

from service.errors import InvalidRequest
from service.settings import Settings

__all__ = ["MAX_URL_LENGTH", "NotifyUrlRefused", "check_notify_url", "notify_target", "resolve_host"]

MAX_URL_LENGTH = 2048
Resolver = Callable[[str, int], list[str]]


class NotifyUrlRefused(InvalidRequest):
    """A ``notify.url`` this server will not call; the problem's ``errors`` name the field."""

    title = "Webhook URL refused"
    type = "notify-url-refused"

    def __init__(self, detail: str) -> None:
        error = {"loc": ["body", "notify", "url"], "msg": detail, "type": "notify_url"}
        super().__init__(f"notify.url: {detail}", extensions={"errors": [error]})


def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (IPv4 and IPv6)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def check_notify_url(url: str, settings: Settings, *, resolve: Resolver = resolve_host) -> None:
    """``NotifyUrlRefused`` unless ``url`` is one this server may POST to now."""
    parts = _parse(url, settings)
    host = (parts.hostname or "").rstrip(".")
    if settings.webhook_allowed_hosts and not _allowed(host, settings.webhook_allowed_hosts):
        raise NotifyUrlRefused(f"host {host!r} is not in this server's webhook_allowed_hosts")
    if settings.webhook_allow_private:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = [host] if _is_ip(host) else resolve(host, port)
    except (OSError, UnicodeError) as error:
        raise NotifyUrlRefused(f"host {host!r} does not resolve ({error})") from error
    for address in addresses:
        if not _public(address):
            raise NotifyUrlRefused(
                f"host {host!r} resolves to {address}, a private, loopback or link-local address "
                "(the operator allows those with webhook_allow_private)"
            )


def notify_target(
    url: str, *, key_id: str | None, settings: Settings, resolve: Resolver = resolve_host
) -> dict[str, Any]:
    """What the job row keeps (``Job.notify``): the checked URL and the key whose secret signs its events.

    A job without a key (the embedded, no-auth mode) is signed with ``webhook_secret``; with none
    set, nobody could verify its events, so it is refused now rather than at the end of the job.
    """
    check_notify_url(url, settings, resolve=resolve)
    if key_id is None and settings.webhook_secret is None:
        raise NotifyUrlRefused(
            "this server signs the webhooks of jobs without an API key with PRUNESEARCH_WEBHOOK_SECRET, which is unset"
        )
    return {"url": url, "key_id": key_id}


def _parse(url: str, settings: Settings) -> SplitResult:
    if len(url) > MAX_URL_LENGTH:
        raise NotifyUrlRefused(f"longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a port that is not a number or out of range)
    except ValueError as error:
        raise NotifyUrlRefused(f"not a URL ({error})") from error
    schemes = ("https", "http") if settings.webhook_allow_http else ("https",)
    if parts.scheme not in schemes:
        allowed = "https or http" if settings.webhook_allow_http else "https (http only with webhook_allow_http)"
        raise NotifyUrlRefused(f"scheme {parts.scheme or '(none)'!r} is not allowed: use {allowed}")
    if not parts.hostname:
        raise NotifyUrlRefused("no host")
    if parts.username is not None or parts.password is not None:
        raise NotifyUrlRefused("credentials in the URL are refused; the signature authenticates the sender")
    if any(ord(char) < 33 or ord(char) == 127 for char in url):
        raise NotifyUrlRefused("contains spaces or control characters")
    return parts


def _allowed(host: str, allowed: tuple[str, ...]) -> bool:
    host = host.lower()
    return any(host == entry or (entry.startswith("*.") and host.endswith(entry[1:])) for entry in allowed)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone id is not part of the address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast
