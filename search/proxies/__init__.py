"""Proxies by name: a job spec names one (``search.names.PROXIES``), ``"ensemble"`` or a list of them.

A proxy is one module with a ``search.proxies.base.Proxy`` subclass, registered by one line in
``search.names.PROXIES``. Proxies are kept in the model's artifacts, keyed by what they depend on, so
an ensemble and a later single-proxy job share TraceNAS's dense sketch and PruneNet's policy and
tables.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from search.adapters import Adapter
from search.artifacts import ModelArtifacts
from search.calibration import TokenSet
from search.names import DEFAULT_ENSEMBLE, ENSEMBLE
from search.proxies.base import Priming, Proxy, ProxyBuild, ProxyScore
from search.proxies.ensemble import Ensemble
from search.proxies.kl import KL
from search.proxies.metanet import MetaNet, feature_builder
from search.proxies.metanet_store import MetaNetStore
from search.proxies.prunenet import PruneNet
from search.proxies.tracenas import TraceNAS
from search.stats import DenseStats

__all__ = [
    "KL",
    "Ensemble",
    "MetaNet",
    "MetaNetStore",
    "Priming",
    "Proxy",
    "ProxyBuild",
    "ProxyScore",
    "PruneNet",
    "TraceNAS",
    "create_proxy",
    "feature_builder",
]


def create_proxy(
    name: str | Sequence[str],
    adapter: Adapter,
    tokens: TokenSet,
    *,
    seed: int = 0,
    batch_size: int = 8,
    stats: DenseStats | None = None,
    artifacts: ModelArtifacts | None = None,
    **options: Any,
) -> Proxy:
    """``name``: a proxy name, "ensemble" (= DEFAULT_ENSEMBLE), or a list of names (an ensemble).

    ``stats`` (the dense statistics) avoids recomputing them; ``options`` go to the proxies that take
    them (``ProxyBuild``). The proxy is kept in ``artifacts``, so a later job reuses it.
    """
    build = ProxyBuild(adapter, tokens, artifacts or ModelArtifacts(), seed, batch_size, options, stats)
    if isinstance(name, str) and name != ENSEMBLE:
        return build.member(name)
    names = DEFAULT_ENSEMBLE if name == ENSEMBLE else tuple(name)
    if len(names) == 1:
        return build.member(names[0])
    key = ("ensemble", names, tokens.digest, seed, batch_size, _options_key(options))
    if name == ENSEMBLE:
        return build.reuse(key, lambda: Ensemble.create(build))
    return build.reuse(key, lambda: Ensemble.of(build, names))


def _options_key(options: Mapping[str, Any]) -> tuple[Hashable, ...]:
    """Options as a key: plain values as they are, objects (a selection order) by identity."""
    return tuple(
        sorted((k, v if isinstance(v, (str, int, float, bool, type(None))) else id(v)) for k, v in options.items())
    )
