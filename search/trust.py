"""How far a job can trust its proxies: rank correlation with the verified metric on an audit sample.

Pure Python (no torch, no numpy): the statistics run wherever a report is built.

- The **audit sample** is stratified over the quantiles of the job's proxy score: the distinct
  candidates are sorted by score and cut into ``k`` equal strata, one candidate drawn (seeded) per
  stratum, so good, middling and bad candidates are all verified, not only the proxy's favourites
  (whose narrow score range would understate any proxy's correlation).
- **Agreement** of a proxy (higher = better) with the verified metric (lower = better) is reported
  with the sign that makes +1 perfect: Spearman's ρ and Kendall's τ-b between the proxy score and
  minus the metric, each with a percentile bootstrap confidence interval (resampling candidates).
- **Bias**: each proxy's Spearman correlation with the candidate's parameter count and with its
  depth (kept sub-blocks). TraceNAS's sum over sub-blocks correlates with depth by construction;
  ``tracenas_sum`` and the mean ``tracenas`` are reported separately to show it.
- The **leading proxy** of a report (``leading_proxy``) is the one with the highest ρ; its lead is
  *uncertain* when its interval reaches below ``threshold`` or overlaps the runner-up's interval,
  worded as the page words a single proxy's ρ (``verdict``).
- A job is **flagged** when the proxy it optimised has ρ below ``threshold`` (default 0.3), or when
  the upper end of ρ's interval is below it as well (its correlation is poor beyond doubt).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from typing import Any, NamedTuple

from search.correlation import kendall, spearman

Statistic = Callable[[Sequence[float], Sequence[float]], float | None]

DEFAULT_THRESHOLD = 0.3
BOOTSTRAP_SAMPLES = 1000


def bootstrap_interval(
    x: Sequence[float],
    y: Sequence[float],
    statistic: Statistic,
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``statistic`` over resampled (x, y) pairs."""
    n = len(x)
    if n < 3:
        return None
    rng = random.Random(seed)
    values = []
    for _ in range(samples):
        picks = [rng.randrange(n) for _ in range(n)]
        value = statistic([x[i] for i in picks], [y[i] for i in picks])
        if value is not None:
            values.append(value)
    if len(values) < samples // 2:
        return None
    values.sort()
    tail = (1 - level) / 2
    return values[int(tail * (len(values) - 1))], values[math.ceil((1 - tail) * (len(values) - 1))]


def stratified_sample(items: Sequence[tuple[Hashable, float]], k: int, *, seed: int = 0) -> list[Hashable]:
    """Keys of ``k`` items, one per equal-count stratum of their values (all items when ``k ≥ n``)."""
    ordered = sorted(items, key=lambda item: (item[1], str(item[0])))
    if k >= len(ordered):
        return [key for key, _ in ordered]
    if k <= 0:
        return []
    rng = random.Random(seed)
    chosen = []
    for stratum in range(k):
        lo = stratum * len(ordered) // k
        hi = (stratum + 1) * len(ordered) // k
        chosen.append(ordered[rng.randrange(lo, hi)][0])
    return chosen


def correlations(
    proxy: Sequence[float], target: Sequence[float], *, seed: int = 0, samples: int = BOOTSTRAP_SAMPLES
) -> dict[str, Any]:
    """ρ and τ of ``proxy`` with ``target`` (both as given), with bootstrap intervals."""
    return {
        "spearman": _round(spearman(proxy, target)),
        "spearman_ci": _round_pair(bootstrap_interval(proxy, target, spearman, seed=seed, samples=samples)),
        "kendall": _round(kendall(proxy, target)),
        "kendall_ci": _round_pair(bootstrap_interval(proxy, target, kendall, seed=seed + 1, samples=samples)),
        "n": len(proxy),
    }


def trust_report(
    scores: dict[str, Sequence[float | None]],
    verified: Sequence[float],
    *,
    params: Sequence[float],
    depth: Sequence[float],
    objective: str,
    metric: str,
    threshold: float = DEFAULT_THRESHOLD,
    seed: int = 0,
    samples: int = BOOTSTRAP_SAMPLES,
) -> dict[str, Any]:
    """The report's ``trust`` section for an audit sample.

    ``scores[name][i]`` is proxy ``name``'s score of audited candidate i (None where it has none);
    ``verified[i]`` its verified metric (lower is better).
    """
    proxies: dict[str, Any] = {}
    for name, values in scores.items():
        pairs = [(v, -t, p, d) for v, t, p, d in zip(values, verified, params, depth, strict=True) if _finite(v)]
        x = [p[0] for p in pairs]
        entry = correlations(x, [p[1] for p in pairs], seed=seed, samples=samples)
        entry["params_spearman"] = _round(spearman(x, [p[2] for p in pairs]))
        entry["depth_spearman"] = _round(spearman(x, [p[3] for p in pairs]))
        rho = entry["spearman"]
        entry["poor"] = rho is None or rho < threshold
        proxies[name] = entry
    flags = []
    main = proxies.get(objective)
    if main is None or main["spearman"] is None:
        flags.append(f"the job's proxy {objective!r} could not be checked against the verified {metric}")
    elif main["spearman"] < threshold:
        interval = main["spearman_ci"]
        certain = interval is not None and interval[1] < threshold
        flags.append(
            f"the job's proxy {objective!r} ranks candidates poorly against the verified {metric}: "
            f"Spearman {main['spearman']:.2f} < {threshold}"
            + (" (the whole 95% interval is below)" if certain else "")
            + "; prefer the verified figures, a larger audit, or another proxy"
        )
    return {
        "metric": metric,
        "sign": f"+1 = the proxy orders candidates exactly as minus the verified {metric} does",
        "objective": objective,
        "threshold": threshold,
        "proxies": proxies,
        "flagged": bool(flags),
        "flags": flags,
    }


class Leader(NamedTuple):
    """The proxy that ranked a population best, and why its lead is uncertain (empty: it is not)."""

    name: str
    doubts: list[str]


def leading_proxy(
    proxies: Mapping[str, Mapping[str, Any]], eligible: Collection[str], *, threshold: float = DEFAULT_THRESHOLD
) -> Leader | None:
    """The proxy among ``eligible`` with the highest Spearman ρ in a report's ``proxies`` (None if no
    eligible proxy has one). Its lead is doubtful when its interval reaches below ``threshold`` (too
    few candidates to call it good) or overlaps the runner-up's (the two are not told apart)."""
    ranked = sorted(
        (
            (entry["spearman"], name)
            for name, entry in proxies.items()
            if name in eligible and entry["spearman"] is not None
        ),
        key=lambda item: (-item[0], item[1]),
    )
    if not ranked:
        return None
    name = ranked[0][1]
    interval = proxies[name]["spearman_ci"]
    doubts = []
    if interval is None or interval[0] < threshold:
        doubts.append(f"its interval reaches below {threshold}" if interval is not None else "it has no interval")
    if len(ranked) > 1:
        runner_up = ranked[1][1]
        other = proxies[runner_up]["spearman_ci"]
        if interval is None or other is None or interval[0] <= other[1]:
            doubts.append(f"its interval overlaps {runner_up}'s: Spearman {ranked[1][0]:.2f}{_interval(other)}")
    return Leader(name, doubts)


def verdict(entry: Mapping[str, Any], threshold: float = DEFAULT_THRESHOLD, *, doubtful: bool = False) -> str:
    """One word for a proxy's ρ, as the job page's trust sentence has it: poor (below ``threshold``),
    weak (below 0.5), uncertain (its interval reaches below ``threshold``, or ``doubtful``), moderate
    (below 0.7) or strong."""
    rho, interval = entry.get("spearman"), entry.get("spearman_ci")
    if rho is None or entry.get("poor") or rho < threshold:
        return "poor"
    if rho < 0.5:
        return "weak"
    if doubtful or (interval is not None and interval[0] < threshold):
        return "uncertain"
    return "moderate" if rho < 0.7 else "strong"


def _interval(pair: Sequence[float] | None) -> str:
    return f" [{pair[0]:.2f}, {pair[1]:.2f}]" if pair is not None else ""


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _round_pair(pair: tuple[float, float] | None) -> list[float] | None:
    return None if pair is None else [round(pair[0], 4), round(pair[1], 4)]
