"""Pareto fronts: which points no other point beats on every objective. Pure, no I/O, torch-free.

The one implementation: the search's result (``search.results.pareto_front``) and the service's
``GET /v1/jobs/{id}/pareto`` (``job_front`` over the stored trials) both use it.

A point dominates another when it is at least as good on every objective and strictly better on
one. Equal points do not dominate each other, so duplicates on the front are all kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, Protocol, TypeVar

__all__ = ["OBJECTIVE_DIRECTIONS", "Direction", "direction_of", "dominates", "job_front", "non_dominated"]

Direction = Literal["maximize", "minimize"]

# How each objective name of a job spec is optimised: a higher proxy score is better, fewer
# parameters and lower latency are better.
OBJECTIVE_DIRECTIONS: Mapping[str, Direction] = {"score": "maximize", "params": "minimize", "latency": "minimize"}


def direction_of(name: str) -> Direction:
    """The direction of a named objective; ``ValueError`` for a name not in ``OBJECTIVE_DIRECTIONS``."""
    try:
        return OBJECTIVE_DIRECTIONS[name]
    except KeyError:
        known = ", ".join(sorted(OBJECTIVE_DIRECTIONS))
        raise ValueError(f"unknown objective {name!r} (known: {known})") from None


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[Direction]) -> bool:
    """Whether ``a`` is no worse than ``b`` on every objective and better on at least one."""
    return _dominates(_as_minimized(a, directions), _as_minimized(b, directions))


def non_dominated(points: Sequence[Sequence[float]], directions: Sequence[Direction]) -> list[int]:
    """Indices (ascending) of the points on the Pareto front.

    Every point must have one value per direction. Sort-and-sweep: after sorting the minimised
    vectors lexicographically, a point can only be dominated by one sorted before it, and if any
    earlier point dominates it, a point already on the front does (dominance is transitive). So
    each point is compared with the front only: O(n log n + n * front size).
    """
    for index, point in enumerate(points):
        if len(point) != len(directions):
            raise ValueError(f"point {index} has {len(point)} values for {len(directions)} objectives")
    minimized = [_as_minimized(point, directions) for point in points]
    order = sorted(range(len(points)), key=lambda index: minimized[index])
    front: list[int] = []
    for index in order:
        if not any(_dominates(minimized[member], minimized[index]) for member in front):
            front.append(index)
    return sorted(front)


def _as_minimized(point: Sequence[float], directions: Sequence[Direction]) -> tuple[float, ...]:
    return tuple(
        -float(value) if direction == "maximize" else float(value)
        for value, direction in zip(point, directions, strict=True)
    )


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and a != b


class TrialLike(Protocol):
    """What ``job_front`` reads of a trial (``search.results.TrialInfo`` and the service's stored row have it)."""

    @property
    def number(self) -> int: ...
    @property
    def value(self) -> float | None: ...
    @property
    def values(self) -> Sequence[float | None] | None: ...
    @property
    def param_ratio(self) -> float | None: ...


TrialT = TypeVar("TrialT", bound=TrialLike)


def job_front(objectives: Sequence[str], trials: Sequence[TrialT]) -> tuple[list[tuple[str, Direction]], list[TrialT]]:
    """The objectives a job's front trades off, and its non-dominated trials by ``param_ratio``.

    ``objectives`` are the job spec's names. With two or more, objective i of a trial is
    ``values[i]``. With one (a single-objective study), the front is drawn over the pair
    (``value`` maximised, ``param_ratio`` minimised), so the size / quality trade-off still shows.
    Trials lacking a needed number (failed proxy, NaN scrubbed to null) are left out.
    """
    if len(objectives) >= 2:
        names = list(objectives)

        def vector(trial: TrialLike) -> list[float | None] | None:
            values = trial.values
            return list(values) if values is not None and len(values) == len(names) else None
    else:
        names = ["score", "params"]

        def vector(trial: TrialLike) -> list[float | None] | None:
            return [trial.value, trial.param_ratio]

    directions = [direction_of(name) for name in names]
    candidates: list[TrialT] = []
    points: list[list[float]] = []
    for trial in trials:
        point = vector(trial)
        if point is not None and all(value is not None for value in point):
            candidates.append(trial)
            points.append([float(value) for value in point if value is not None])
    front = [candidates[index] for index in non_dominated(points, directions)]
    front.sort(key=lambda trial: (trial.param_ratio is None, trial.param_ratio or 0.0, trial.number))
    return list(zip(names, directions, strict=True)), front
