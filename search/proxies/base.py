"""The interface every proxy implements: score a candidate; higher is better.

Proxies that need a look at the job before scoring (the ensemble's reference population, the
meta-network's training data) also implement ``prime``; ``run_search`` calls it once before the
first trial, with a seeded population of candidates at the job's budget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from search.selection import Selection

if TYPE_CHECKING:
    from search.proxies.metanet import MetaNetStore


@dataclass(frozen=True)
class ProxyScore:
    value: float
    extras: dict[str, float] = field(default_factory=dict)  # other views of the same score, for reports
    timings: dict[str, float] = field(default_factory=dict)  # seconds spent per stage, for the breakdown


class Proxy(Protocol):
    name: str

    def score(self, selection: Selection) -> ProxyScore: ...


# How expensive a proxy is per candidate; the ensemble runs cheap ones first and gates the rest.
COST_LOOKUP, COST_FORWARD, COST_BACKWARD = 0, 1, 2


@dataclass
class Priming:
    """What ``prime`` receives: a reference population at the job's budget, and the means to audit.

    ``audit`` returns the cheap verified metric (lower is better) of each selection; ``store`` keeps
    the meta-network's training data across jobs; ``previous`` is what ``prime`` returned the first
    time this job ran (a resumed job primes the same way).
    """

    population: Sequence[Selection]
    audit: Callable[[Sequence[Selection]], list[float]] | None = None
    store: MetaNetStore | None = None
    job: str = ""
    model: str = ""
    previous: dict[str, Any] | None = None


def members(proxy: Any) -> list[Any]:
    """The proxies a composite proxy consults (itself excluded); empty for a plain proxy."""
    return list(getattr(proxy, "members", ()))
