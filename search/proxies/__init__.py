"""Proxy registry: job specs name a proxy; this maps the name to its class."""

from __future__ import annotations

from typing import Any

from search.adapters import Adapter
from search.calibration import TokenSet
from search.proxies.base import Proxy, ProxyScore
from search.proxies.tracenas import TraceNAS
from search.spec import PROXY_NAMES

__all__ = ["Proxy", "ProxyScore", "TraceNAS", "create_proxy"]

_REGISTRY: dict[str, type] = {"tracenas": TraceNAS}
assert set(_REGISTRY) == set(PROXY_NAMES), "search.spec.PROXY_NAMES and the proxy registry disagree"


def create_proxy(name: str, adapter: Adapter, tokens: TokenSet, **options: Any) -> Proxy:
    return _REGISTRY[name](adapter, tokens, **options)
