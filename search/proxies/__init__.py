"""Proxy registry: job specs name a proxy (or a list of them); this maps names to instances.

Single proxies are cached in the ``cache`` dict the caller passes (``LoadedModel.cache``), keyed by
what they depend on, so an ensemble and a later single-proxy job share TraceNAS's dense sketch and
PruneNet's policy and tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from search.adapters import Adapter
from search.calibration import TokenSet
from search.proxies.base import Priming, Proxy, ProxyScore, members
from search.proxies.ensemble import Ensemble
from search.proxies.metanet import FeatureBuilder, MetaNet, MetaNetStore
from search.proxies.prunenet import PruneNet, cached_policy
from search.proxies.tracenas import TraceNAS
from search.selection import Importance
from search.spec import DEFAULT_ENSEMBLE, MEMBER_PROXY_NAMES, PROXY_NAMES
from search.stats import DenseStats, cached_stats

__all__ = [
    "Ensemble",
    "MetaNet",
    "MetaNetStore",
    "Priming",
    "Proxy",
    "ProxyScore",
    "PruneNet",
    "TraceNAS",
    "create_proxy",
    "feature_builder",
    "members",
]

_MEMBERS = ("tracenas", "prunenet", "metanet")
assert set(_MEMBERS) == set(MEMBER_PROXY_NAMES), "search.spec.MEMBER_PROXY_NAMES and the registry disagree"
assert set(PROXY_NAMES) == {*_MEMBERS, "ensemble"}, "search.spec.PROXY_NAMES and the registry disagree"


def create_proxy(
    name: str | Sequence[str],
    adapter: Adapter,
    tokens: TokenSet,
    *,
    seed: int = 0,
    batch_size: int = 8,
    stats: DenseStats | None = None,
    cache: dict[Any, Any] | None = None,
    **options: Any,
) -> Proxy:
    """``name``: a proxy name, "ensemble" (= DEFAULT_ENSEMBLE), or a list of names (an ensemble).

    ``stats`` (the dense statistics) avoids recomputing them; ``options`` go to the proxies that take
    them (``attention_weight`` and ``order`` for PruneNet, ``top_fraction`` and ``ensemble_weighting``
    ("audit" or "equal") for ensembles,
    ``min_records``, ``metanet_epochs`` and ``metanet_tracenas`` for the meta-network).
    """
    cache = cache if cache is not None else {}
    factory = _Factory(adapter, tokens, seed, batch_size, stats, cache, options)
    if isinstance(name, str) and name != "ensemble":
        return factory.single(name)
    names = DEFAULT_ENSEMBLE if name == "ensemble" else tuple(name)
    if len(names) == 1:
        return factory.single(names[0])
    return factory.ensemble(names)


def feature_builder(
    adapter: Adapter, tokens: TokenSet, *, seed: int = 0, stats: DenseStats | None = None, cache: dict | None = None
) -> FeatureBuilder:
    """The meta-network's node features for this model and calibration (cached)."""
    cache = cache if cache is not None else {}
    return _Factory(adapter, tokens, seed, 8, stats, cache, {}).features()


class _Factory:
    def __init__(
        self,
        adapter: Adapter,
        tokens: TokenSet,
        seed: int,
        batch_size: int,
        stats: DenseStats | None,
        cache: dict[Any, Any],
        options: dict[str, Any],
    ) -> None:
        self.adapter, self.tokens, self.seed, self.batch_size = adapter, tokens, seed, batch_size
        self._stats, self.cache, self.options = stats, cache, options

    def stats(self) -> DenseStats:
        if self._stats is None:
            self._stats = cached_stats(self.adapter, self.tokens, self.cache, batch_size=self.batch_size)
        return self._stats

    def single(self, name: str) -> Proxy:
        if name == "tracenas":
            key: tuple[Any, ...] = ("proxy-member", "tracenas", self.tokens.digest, self.seed, self.batch_size)
            if key not in self.cache:
                self.cache[key] = TraceNAS(
                    self.adapter, self.tokens, seed=self.seed, batch_size=self.batch_size, cache=self.cache
                )
            return self.cache[key]
        if name == "prunenet":
            return self.prunenet()
        if name == "metanet":
            return self.metanet()
        raise ValueError(f"unknown proxy {name!r}; available: {', '.join(PROXY_NAMES)}")

    def ensemble(self, names: Sequence[str]) -> Ensemble:
        return Ensemble(
            [self.single(n) for n in names],
            top_fraction=float(self.options.get("top_fraction", 0.5)),
            weighting=str(self.options.get("ensemble_weighting", "audit")),
        )

    def prunenet(self) -> PruneNet:
        weight = float(self.options.get("attention_weight", 1.0))
        order: Importance | None = self.options.get("order")
        key = ("proxy-member", "prunenet", self.seed, weight, id(order) if order is not None else None)
        if key not in self.cache:
            self.cache[key] = PruneNet(
                self.adapter,
                seed=self.seed,
                policy=cached_policy(self.adapter, self.cache, self.seed),
                order=order,
                attention_weight=weight,
                cache=self.cache,
            )
        return self.cache[key]

    def features(self) -> FeatureBuilder:
        key = ("metanet-features", self.tokens.digest, self.seed)
        if key not in self.cache:
            # The spectral features use the calibration-free policy's tables, whatever the job selects.
            base = _Factory(self.adapter, self.tokens, self.seed, self.batch_size, self._stats, self.cache, {})
            self.cache[key] = FeatureBuilder(self.adapter, self.stats(), base.prunenet())
        return self.cache[key]

    def metanet(self) -> MetaNet:
        use_tracenas = bool(self.options.get("metanet_tracenas", False))
        min_records = int(self.options.get("min_records", 24))
        epochs = int(self.options.get("metanet_epochs", 200))
        key = ("proxy-member", "metanet", self.tokens.digest, self.seed, use_tracenas, min_records, epochs)
        if key not in self.cache:
            self.cache[key] = MetaNet(
                self.features(),
                lambda: self.ensemble(DEFAULT_ENSEMBLE),
                metric="kl" if self.adapter.shape.causal else "similarity_gap",
                seed=self.seed,
                min_records=min_records,
                tracenas=self.single("tracenas") if use_tracenas else None,
                epochs=epochs,
            )
        return self.cache[key]
