"""Rank aggregation of several proxies, cheap ones prefiltering expensive ones.

``"proxy": ["tracenas", "prunenet"]`` (or ``"ensemble"``, which means exactly that pair).

**Ranks.** Proxies live on different scales, so each is turned into a rank against a fixed
reference population: the seeded candidates ``run_search`` primes the ensemble with (random
allocations at the job's budget, scored by every member once). A member's rank of a value x is
the smoothed empirical CDF p(x) = mean_r Φ((x − r)/h) over the reference scores r (Silverman's
bandwidth h), strictly increasing, in (0, 1), and the same for a trial whatever ran before it, so
trial values never drift.

**Weights.** ``weighting="audit"`` (the default): when priming can audit (``run_search`` verifies
the reference population cheaply, on the first held-out sequences), each member's weight comes from
its Spearman correlation ρ with the audited metric on the reference population. If each member's
rank were the truth plus independent noise, the best linear combination would weigh a member by
ρ / (1 − ρ²) (signal over noise variance), so a proxy at ρ 0.95 counts about fourteen times one at
0.6; averaging the two with equal say would pull the ensemble below its better member. A member
that is significantly worse than the best one (it correlates lower in at least 95% of paired
bootstrap resamples of the audit) or disagrees with verification (ρ ≤ 0) gets no say at all; if no
member agrees, all weigh the same. The score is the weighted mean rank (higher is better).
``weighting="equal"``, or no audit, gives plain mean-rank aggregation (Borda-like).

**Prefilter rule.** Members are run from cheap to expensive (PruneNet's lookups, the
meta-network's forward pass, then TraceNAS's forward+backward). The expensive members run only
when the cheap members' weighted mean rank is in the top ``top_fraction`` (default ½) of the cheap
ranks of the reference population and every candidate scored so far in this process, and only if
the cheap signal is worth trusting: with an audit, its correlation with the audited metric on the
reference population must reach ``gate_threshold`` (default 0.3, the trust report's threshold);
otherwise every member runs on every candidate. A gated trial is not pruned: each skipped member's
rank is imputed from the cheap rank by the linear regression fitted on the reference population
(its best guess given the cheap signal; it tends to the middle rank ½ when the members disagree),
and ``ensemble_gated`` = 1 says so in the trial's scores.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from search.correlation import spearman
from search.errors import ProxyError
from search.names import DEFAULT_ENSEMBLE
from search.proxies.base import COST_BACKWARD, Priming, Proxy, ProxyBuild, ProxyScore
from search.selection import Selection
from search.trust import BOOTSTRAP_SAMPLES


class Ensemble(Proxy):
    name = "ensemble"

    def __init__(
        self,
        members: Sequence[Proxy],
        *,
        top_fraction: float = 0.5,
        weighting: str = "audit",
        gate_threshold: float = 0.3,
    ) -> None:
        if not members:
            raise ProxyError("an ensemble needs at least one member")
        if not 0.0 < top_fraction <= 1.0:
            raise ProxyError("top_fraction must be in (0, 1]")
        self._members = sorted(members, key=_cost)  # stable: the spec's order among equals
        self.top_fraction = top_fraction
        if weighting not in ("audit", "equal"):
            raise ProxyError(f"unknown ensemble weighting {weighting!r}; use 'audit' or 'equal'")
        self.weighting = weighting
        self.gate_threshold = gate_threshold
        self._weights: dict[str, float] = {}
        self._gating = True
        self.cost = max(m.cost for m in self._members)
        self._reference: dict[str, list[float]] | None = None
        self._bandwidth: dict[str, float] = {}
        self._imputation: dict[str, tuple[float, float]] = {}
        self._history: list[float] = []
        self._active: list[Proxy] = list(self._members)

    @classmethod
    def create(cls, build: ProxyBuild) -> Ensemble:
        """``"proxy": "ensemble"``: the default ensemble."""
        return cls.of(build, DEFAULT_ENSEMBLE)

    @classmethod
    def of(cls, build: ProxyBuild, names: Sequence[str]) -> Ensemble:
        """An ensemble of the registered proxies ``names``."""
        return cls(
            [build.member(name) for name in names],
            top_fraction=float(build.options.get("top_fraction", 0.5)),
            weighting=str(build.options.get("ensemble_weighting", "audit")),
        )

    @property
    def members(self) -> list[Proxy]:
        return list(self._members)

    @property
    def cheap(self) -> list[Proxy]:
        cheap = [m for m in self._active if m.cost < COST_BACKWARD]
        return cheap or self._active  # all expensive: no gating

    @property
    def expensive(self) -> list[Proxy]:
        cheap = self.cheap
        return [m for m in self._active if m not in cheap]

    def prime(self, priming: Priming) -> dict[str, Any]:
        previous = priming.previous or {}
        state: dict[str, Any] = {}
        for member in self._members:
            sub = replace(priming, previous=previous.get(member.name))
            if (member_state := member.prime(sub)) is not None:
                state[member.name] = member_state
        # A member that is not ready (the meta-network without data) sits this job out.
        self._active = [m for m in self._members if m.ready]
        if not self._active:
            raise ProxyError("no member of the ensemble can score")
        if len(priming.population) < 2:
            raise ProxyError("the ensemble needs a reference population of at least two candidates")
        reference = {m.name: [m.score(s).value for s in priming.population] for m in self._active}
        self._reference = {name: sorted(values) for name, values in reference.items()}
        self._bandwidth = {name: _bandwidth(values) for name, values in reference.items()}
        ranks = {name: [self._rank(name, v) for v in values] for name, values in reference.items()}
        audited: list[float] | None = None
        agreement: dict[str, float | None] = {}
        if self.weighting == "audit" and priming.audit is not None and len(priming.population) >= 4:
            audited = [-m for m in priming.audit(priming.population)]  # higher is better, like the ranks
            agreement = {name: spearman(values, audited) for name, values in reference.items()}
        self._weights = {m.name: 1.0 for m in self._active}
        if audited is not None:
            self._weights = audit_weights(reference, audited) or self._weights
        cheap_ranks = [self._mean_rank(ranks, self.cheap, i) for i in range(len(priming.population))]
        self._imputation = {m.name: _regression(cheap_ranks, ranks[m.name]) for m in self.expensive}
        self._history = list(cheap_ranks)
        cheap_agreement = spearman(cheap_ranks, audited) if audited is not None else None
        cheap_weight = sum(self._weights[m.name] for m in self.cheap)
        self._gating = bool(self.expensive) and cheap_weight > 0
        if audited is not None:
            self._gating = self._gating and (cheap_agreement or 0.0) >= self.gate_threshold
        return state | {
            "members": [m.name for m in self._members],
            "active": [m.name for m in self._active],
            "cheap": [m.name for m in self.cheap],
            "expensive": [m.name for m in self.expensive],
            "reference_size": len(priming.population),
            "top_fraction": self.top_fraction,
            "weighting": self.weighting if audited is not None else "equal",
            "weights": self._weights,
            "audit_spearman": agreement,
            "cheap_audit_spearman": cheap_agreement,
            "gating": self._gating,
            "imputation": {name: {"slope": a, "intercept": b} for name, (a, b) in self._imputation.items()},
        }

    def _mean_rank(self, ranks: dict[str, list[float]], proxies: list[Proxy], index: int) -> float:
        weights = [self._weights[m.name] for m in proxies]
        if sum(weights) == 0:
            weights = [1.0] * len(proxies)
        return sum(w * ranks[m.name][index] for w, m in zip(weights, proxies, strict=True)) / sum(weights)

    def score(self, selection: Selection, *, gate: bool = True) -> ProxyScore:
        """``gate=False`` runs every member (audits) and leaves the prefilter's history alone."""
        if self._reference is None:
            raise ProxyError("the ensemble was not primed with a reference population (run_search does this)")
        started = time.perf_counter()
        extras: dict[str, float] = {}
        timings: dict[str, float] = {}
        ranks: dict[str, float] = {}

        def run(member: Proxy) -> None:
            scored = member.score(selection)
            extras[member.name] = scored.value
            extras.update(scored.extras)
            timings.update({f"{member.name}.{k}": v for k, v in scored.timings.items()})
            ranks[member.name] = self._rank(member.name, scored.value)

        for member in self.cheap:
            run(member)
        cheap_rank = self._mean_rank({k: [v] for k, v in ranks.items()}, self.cheap, 0)
        passed = not gate or not self._gating or cheap_rank >= _quantile(self._history, 1.0 - self.top_fraction)
        if gate:
            self._history.append(cheap_rank)
        for member in self.expensive:
            if passed:
                run(member)
            else:
                slope, intercept = self._imputation[member.name]
                ranks[member.name] = min(1.0, max(0.0, slope * cheap_rank + intercept))
        value = self._mean_rank({k: [v] for k, v in ranks.items()}, self._active, 0)
        extras |= {f"rank.{name}": rank for name, rank in ranks.items()}
        extras["ensemble_gated"] = 0.0 if passed or not self.expensive else 1.0
        timings["ensemble_s"] = time.perf_counter() - started
        return ProxyScore(value, extras, timings)

    def _rank(self, name: str, value: float) -> float:
        assert self._reference is not None
        reference, h = self._reference[name], self._bandwidth[name]
        return _mean([_phi((value - r) / h) for r in reference])


def audit_weights(
    scores: dict[str, list[float]],
    audited: list[float],
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float] | None:
    """Each member's weight from its audit: ρ / (1 − ρ²), zero where ρ ≤ 0 or where the member is
    significantly worse than the best one; None when no member agrees with the audit."""
    rho = {name: spearman(values, audited) or 0.0 for name, values in scores.items()}
    best = max(rho, key=rho.__getitem__)
    if rho[best] <= 0:
        return None
    rng = random.Random(seed)
    n = len(audited)
    worse = dict.fromkeys(rho, 0)
    for _ in range(samples):
        picks = [rng.randrange(n) for _ in range(n)]
        target = [audited[i] for i in picks]
        best_rho = spearman([scores[best][i] for i in picks], target)
        for name, values in scores.items():
            member_rho = spearman([values[i] for i in picks], target)
            if best_rho is not None and member_rho is not None and member_rho < best_rho:
                worse[name] += 1
    clipped = {name: min(max(r, 0.0), 0.99) for name, r in rho.items()}
    return {name: 0.0 if worse[name] >= level * samples else r / (1 - r * r) for name, r in clipped.items()}


def _cost(proxy: Proxy) -> int:
    return proxy.cost


def _phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def _bandwidth(values: list[float]) -> float:
    """Silverman's rule; a tiny positive floor when every reference value is equal."""
    mean = _mean(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1))
    return max(1.06 * std * len(values) ** -0.2, 1e-9 * (abs(mean) + 1.0))


def _regression(x: list[float], y: list[float]) -> tuple[float, float]:
    """Least-squares (slope, intercept) of y on x."""
    mx, my = _mean(x), _mean(y)
    sxx = sum((a - mx) ** 2 for a in x)
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sxx if sxx > 0 else 0.0
    return slope, my - slope * mx


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
