"""Trust where the search looked: rank agreement among near-equals around the job's best.

The trust audit (``search.audit.trust_audit``) verifies candidates spread over the whole range of
the proxy's scores, which any proxy ranks easily. A search needs the ranking among its own best, so
this audit draws its candidates from where the search looked:

- the **top region**: the job's proxy's best distinct trials (half the neighbourhood, the best trial
  among them), and
- **perturbations** of the best trial: 1 to ``MAX_MOVES`` budget moves of ``search.moves.DEFAULT_STEP``
  (``move_budget``) on its keep fractions, read from its realised architecture (the sampler's raw
  fractions are rescaled by repair, and may all sit at 1, where no move can add); a space whose
  parameters have no cost (compact, standard) moves 1 to ``MAX_MOVES`` of them by a small share of
  their range instead. Each goes through the job's candidate builder (``space.suggest`` on a
  ``FixedTrial``, then repair to the best trial's budget), distinct architectures only, and its
  distance from the best is measured (``search.moves.arch_distance``) and reported.

Every candidate is scored by the job's proxy (all members of an ensemble, ungated), its members'
views, and every registered proxy that needs no job-specific training (``TRAINING_FREE``), built as
the job's proxy is and so shared with it; all are verified on the trust audit's sequences. The
report gives each proxy's Spearman ρ with its bootstrap interval (``search.trust``) and names the
proxy that ranked best there, saying when its lead is uncertain.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.trial import FixedTrial, FrozenTrial

from search.arch import ArchConfig
from search.audit import audit_sequences, kept_blocks, proxy_views
from search.candidates import SearchContext
from search.errors import BudgetInfeasible, ProxyError
from search.ladder import Verifier, audit
from search.moves import DEFAULT_STEP, arch_distance, fraction_costs, move_budget, perturb
from search.names import PROXIES, proxy_names
from search.proxies import Ensemble, Proxy
from search.results import Neighbour, NeighbourhoodAudit, Spread, TrialInfo, finalists
from search.selection import Selection
from search.spec import MIN_NEIGHBOURHOOD
from search.trials import named_proxy
from search.trust import leading_proxy, trust_report, verdict

MAX_MOVES = 3
# A move of a parameter without a cost (compact and standard spaces) shifts it by up to this share
# of its range (an integer by one): their parameters act on every layer at once.
# Compared wherever registered: proxies that score a candidate without job-specific training.
TRAINING_FREE: tuple[str, ...] = ("tracenas", "prunenet", "kl")
_ATTEMPTS = 8  # draws per wanted perturbation (a move may round back onto an architecture seen)


@dataclass(frozen=True)
class Nearby:
    """A candidate near the best: a trial of the top region, or a perturbation (``trial`` None)."""

    key: Hashable  # the verifier's key: the trial's number (the trust audit may have verified it), or a label
    selection: Selection
    trial: int | None
    moves: int
    distance: float


def neighbourhood_audit(
    context: SearchContext, proxy: Proxy, verifier: Verifier, complete: Sequence[TrialInfo], best: FrozenTrial
) -> NeighbourhoodAudit | None:
    """The trust report's ``neighbourhood`` section around trial ``best`` (None when the spec turns it
    off, or fewer than ``MIN_NEIGHBOURHOOD`` distinct candidates were found)."""
    size = context.spec.neighbourhood_size
    if size == 0:
        return None
    centre = ArchConfig.from_dict(best.user_attrs["arch"])
    top = _top_region(context, complete, best.number, centre, max(1, size // 2))
    seen = {c.selection.arch.to_json() for c in top}
    rng = random.Random((context.spec.seed or 0) * 7_919 + 29)
    nearby = perturbations(context, best, centre, size - len(top), seen, rng)
    candidates = top + nearby
    if len(candidates) < MIN_NEIGHBOURHOOD:
        return None
    sequences = audit_sequences(verifier)
    figures = audit(verifier, {c.key: c.selection for c in candidates}, sequences)
    first = figures[candidates[0].key]
    verified = [figures[c.key].value for c in candidates]
    shape = context.shape
    report = trust_report(
        _scores(context, proxy, [c.selection for c in candidates]),
        verified,
        params=[float(shape.count_params(c.selection.arch)) for c in candidates],
        depth=[float(kept_blocks(c.selection.arch)) for c in candidates],
        objective=proxy.name,
        metric=first.primary,
        seed=context.spec.seed or 0,
    )
    neighbours = [
        Neighbour(
            trial=c.trial,
            moves=c.moves,
            distance=round(c.distance, 6),
            param_ratio=shape.count_params(c.selection.arch) / shape.dense_params(),
            verified=value,
        )
        for c, value in zip(candidates, verified, strict=True)
    ]
    distinct = {ArchConfig.from_dict(t.arch).to_json() for t in complete if t.arch is not None}
    drawn = {"best_trial": best.number, "top_region": [c.trial for c in top], "distinct_trials": len(distinct)}
    return _report(proxy, report, neighbours, drawn | {"sequences": sequences, "tokens": first.tokens})


def _top_region(
    context: SearchContext, complete: Sequence[TrialInfo], best: int, centre: ArchConfig, count: int
) -> list[Nearby]:
    """The best trial and the job's proxy's next best distinct architectures, ``count`` in all."""
    key = centre.to_json()
    ranked = [t for t in finalists([t for t in complete if t.arch is not None], count) if _arch(t).to_json() != key]
    chosen = [(best, centre)] + [(t.number, _arch(t)) for t in ranked[: count - 1]]
    return [
        Nearby(number, context.selection(arch), number, 0, arch_distance(context.shape, centre, arch))
        for number, arch in chosen
    ]


def _arch(trial: TrialInfo) -> ArchConfig:
    return ArchConfig.from_dict(trial.arch)  # type: ignore[arg-type]


def perturbations(
    context: SearchContext, best: FrozenTrial, centre: ArchConfig, count: int, seen: set[str], rng: random.Random
) -> list[Nearby]:
    """Up to ``count`` distinct candidates 1 to ``MAX_MOVES`` budget moves from trial ``best`` (whose
    architecture is ``centre``), repaired to its budget; architectures in ``seen`` (JSON) are skipped,
    and every one found is added to it. ``benchmarks/proxies.py`` draws its neighbourhood population
    with it."""
    params = _realised(context, best, centre)
    costs = fraction_costs(context.shape, params)
    budget = float(best.params.get("param_ratio", context.ratio_range()[1]))
    found: list[Nearby] = []
    for _ in range(count * _ATTEMPTS):
        if len(found) >= count:
            break
        moves = rng.randint(1, MAX_MOVES)
        if len(costs) >= 2:
            moved: dict[str, Any] = move_budget(params, costs, rng, moves=moves, step=DEFAULT_STEP)
        else:
            moved = _nudge(params, best.distributions, rng, moves)
        try:  # a FixedTrial answers suggest_* as a trial would: the job's own parameterisation and repair
            selection = context.candidate(context.space.suggest(FixedTrial(moved)), budget)  # type: ignore[arg-type]
        except BudgetInfeasible:
            continue
        if (key := selection.arch.to_json()) in seen:
            continue
        seen.add(key)
        distance = arch_distance(context.shape, centre, selection.arch)
        found.append(Nearby(("neighbour", len(found)), selection, None, moves, distance))
    return found


def _realised(context: SearchContext, best: FrozenTrial, centre: ArchConfig) -> dict[str, Any]:
    """``best``'s parameters (but its budget), keep fractions replaced by what its architecture keeps."""
    shape = context.shape
    params = {name: value for name, value in best.params.items() if name != "param_ratio"}
    for i, layer in enumerate(centre.layers):
        if f"attention.{i}" in params:
            params[f"attention.{i}"] = layer.heads / shape.num_heads
        if f"mlp.{i}" in params:
            params[f"mlp.{i}"] = layer.ffn_channels / shape.intermediate_size
    return params


def _nudge(
    params: Mapping[str, Any], distributions: Mapping[str, BaseDistribution], rng: random.Random, moves: int
) -> dict[str, Any]:
    """``params`` after ``moves`` small steps of parameters that have no cost (``search.moves.perturb``)."""
    result = dict(params)
    names = sorted(n for n in result if isinstance(distributions.get(n), FloatDistribution | IntDistribution))
    for _ in range(moves if names else 0):
        name = rng.choice(names)
        result[name] = perturb(result[name], distributions[name], rng)
    return result


def _scores(context: SearchContext, proxy: Proxy, selections: Sequence[Selection]) -> dict[str, list[float | None]]:
    """Every view the report correlates, per candidate: the job's proxy, its composite members, and
    the views of every plain proxy compared (its members and the training-free ones)."""
    leaves = _compared(context, proxy)
    names = [proxy.name, *(m.name for m in proxy.members if m.members)]
    names = list(dict.fromkeys(names + [view for leaf in leaves for view in proxy_views(leaf.name)]))
    table: dict[str, list[float | None]] = {name: [] for name in names}
    for selection in selections:
        figures = _figures(proxy, selection)
        for leaf in leaves:  # scored apart only where the job's proxy did not report its views
            if any(view not in figures for view in proxy_views(leaf.name)):
                figures = _figures(leaf, selection) | figures
        for name in names:
            table[name].append(figures.get(name))
    return table


def _compared(context: SearchContext, proxy: Proxy) -> list[Proxy]:
    """The plain proxies compared: the job's (or its ready members), then the training-free ones."""
    leaves = [p for p in [proxy, *proxy.members] if not p.members and p.ready]
    for name in TRAINING_FREE:
        if name in PROXIES and all(leaf.name != name for leaf in leaves):
            other = named_proxy(context, name)
            if other.ready:
                leaves.append(other)
    return leaves


def _figures(proxy: Proxy, selection: Selection) -> dict[str, float]:
    """A proxy's score and its other views of one candidate; an ensemble runs every member (no gate)."""
    try:
        scored = proxy.score(selection, gate=False) if isinstance(proxy, Ensemble) else proxy.score(selection)
    except ProxyError:
        return {}
    return {proxy.name: scored.value, **scored.extras}


def _report(
    proxy: Proxy, report: dict[str, Any], neighbours: list[Neighbour], drawn: dict[str, Any]
) -> NeighbourhoodAudit:
    moved = [n.distance for n in neighbours if n.trial is None]
    top = [n.distance for n in neighbours[1:] if n.trial is not None]  # the best itself (first) is at 0
    leader = leading_proxy(report["proxies"], {*proxy_names(), proxy.name}, threshold=report["threshold"])
    fields = drawn | {
        "size": len(neighbours),
        "perturbations": len(moved),
        "max_moves": MAX_MOVES,
        "step": DEFAULT_STEP,
        "distance": _spread(moved) if moved else None,
        "top_distance": _spread(top) if top else None,
        "metric": report["metric"],
        "candidates": neighbours,
        "proxies": report["proxies"],
        "best_proxy": leader.name if leader is not None else None,
        "uncertain": leader is None or bool(leader.doubts),
    }
    return NeighbourhoodAudit.model_validate(fields | {"summary": _summary(proxy.name, fields, report, leader)})


def _spread(values: Sequence[float]) -> Spread:
    return Spread(min=min(values), median=statistics.median(values), max=max(values))


def _summary(objective: str, fields: Mapping[str, Any], report: Mapping[str, Any], leader: Any) -> str:
    """The finding in one sentence, in the words of the job page's trust sentence."""
    distance: Spread | None = fields["distance"]
    moved = (
        f", {distance.min:.1%} to {distance.max:.1%} (median {distance.median:.1%}) of the blocks' parameters moved"
        if distance is not None
        else ""
    )
    where = (
        f"Near the best trial {fields['best_trial']} ({fields['size']} candidates: {len(fields['top_region'])} of "
        f"{objective}'s best distinct trials and {fields['perturbations']} perturbations{moved})"
    )
    if leader is None:
        return f"{where}, no proxy could be compared with the verified {report['metric']}."
    entry = report["proxies"][leader.name]
    word = verdict(entry, report["threshold"], doubtful=bool(leader.doubts))
    low, high = entry["spearman_ci"] or (None, None)
    interval = f" [{low:.2f}, {high:.2f}]" if low is not None else ""
    doubts = f" ({'; '.join(leader.doubts)})" if leader.doubts else ""
    return (
        f"{where}, {leader.name} ranked best: Spearman {entry['spearman']:.2f}{interval} against the verified "
        f"{report['metric']}: {word}{doubts}."
    )
