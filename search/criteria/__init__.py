"""Structured selection criteria, by name: which heads (in whole KV groups) and FFN channels a
candidate keeps, given how many it keeps.

A criterion is one module with a ``search.criteria.base.Criterion`` subclass, registered by one line
in ``search.names.CRITERIA``. The built-in ones: ``magnitude``, ``wanda``, ``flap`` (from the dense
statistics) and ``prunenet`` (the PruneNet policy, from the weights alone).
"""

from __future__ import annotations

from search.adapters import Adapter
from search.artifacts import Artifact, ModelArtifacts
from search.criteria.base import Criterion
from search.names import CRITERIA, resolve
from search.stats import DenseStats
from search.units import Importance

# (criterion, calibration digest, seed for seeded criteria else None) -> importance
IMPORTANCE: Artifact[tuple[str, str, int | None], Importance] = Artifact("importance")


def criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise ValueError(f"unknown selection criterion {name!r}; available: {', '.join(CRITERIA)}")
    implementation: type[Criterion] = resolve(CRITERIA[name])
    return implementation()


def compute_importance(
    adapter: Adapter,
    stats: DenseStats,
    name: str,
    *,
    seed: int = 0,
    artifacts: ModelArtifacts | None = None,
    digest: str | None = None,
) -> Importance:
    """The criterion's importance; cached in ``artifacts`` when ``digest`` (of the calibration tokens
    ``stats`` come from) is given."""
    chosen = criterion(name)
    model_artifacts = artifacts if artifacts is not None else ModelArtifacts()

    def compute() -> Importance:
        return chosen.importance(adapter, stats, seed=seed, artifacts=model_artifacts)

    if digest is None:
        return compute()
    return model_artifacts.get(IMPORTANCE, (name, digest, seed if chosen.seeded else None), compute)
