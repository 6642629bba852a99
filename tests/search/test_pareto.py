"""search.pareto: dominance, the front (ties, duplicates, one point, none), a job's front, the search result's front."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from search.pareto import dominates, job_front, non_dominated
from search.results import TrialInfo, pareto_front, proxy_score

MAX_MIN = ("maximize", "minimize")


def _brute_force(points: list[list[float]], directions: tuple[str, ...]) -> list[int]:
    return [
        i
        for i, point in enumerate(points)
        if not any(dominates(other, point, directions) for j, other in enumerate(points) if j != i)  # type: ignore[arg-type]
    ]


def test_dominates_needs_one_strictly_better_objective() -> None:
    assert dominates([0.9, 0.5], [0.8, 0.5], MAX_MIN)
    assert dominates([0.8, 0.4], [0.8, 0.5], MAX_MIN)
    assert not dominates([0.8, 0.5], [0.8, 0.5], MAX_MIN)  # equal points
    assert not dominates([0.9, 0.6], [0.8, 0.5], MAX_MIN)  # a trade-off


def test_empty_and_single_point() -> None:
    assert non_dominated([], MAX_MIN) == []
    assert non_dominated([[0.1, 0.9]], MAX_MIN) == [0]


def test_trade_offs_stay_and_dominated_points_go() -> None:
    points = [[0.5, 0.5], [0.7, 0.6], [0.4, 0.6], [0.9, 0.9], [0.6, 0.9]]
    # (0.4, 0.6) loses to (0.7, 0.6); (0.6, 0.9) loses to (0.9, 0.9).
    assert non_dominated(points, MAX_MIN) == [0, 1, 3]


def test_duplicates_are_all_kept_and_ties_on_one_objective_decide_by_the_other() -> None:
    points = [[0.8, 0.5], [0.8, 0.5], [0.8, 0.6], [0.7, 0.5]]
    assert non_dominated(points, MAX_MIN) == [0, 1]


def test_directions_are_honoured() -> None:
    points = [[1.0, 1.0], [2.0, 2.0]]
    assert non_dominated(points, ("minimize", "minimize")) == [0]
    assert non_dominated(points, ("maximize", "maximize")) == [1]
    assert non_dominated(points, ("maximize", "minimize")) == [0, 1]


@pytest.mark.parametrize("objectives", [1, 2, 3])
def test_sweep_agrees_with_brute_force(objectives: int) -> None:
    rng = random.Random(objectives)
    directions = tuple(rng.choice(MAX_MIN) for _ in range(objectives))
    for _ in range(30):
        # Few distinct values, so ties and duplicates are common.
        points = [[float(rng.randint(0, 4)) for _ in range(objectives)] for _ in range(rng.randint(0, 25))]
        assert non_dominated(points, directions) == _brute_force(points, directions)  # type: ignore[arg-type]


def test_wrong_arity_and_unknown_objective_are_errors() -> None:
    with pytest.raises(ValueError, match="point 0 has 1 values for 2 objectives"):
        non_dominated([[1.0]], MAX_MIN)
    with pytest.raises(ValueError, match="unknown objective 'bleu'"):
        job_front(["score", "bleu"], [])


@dataclass
class _Trial:
    number: int
    value: float | None
    param_ratio: float | None
    values: list[float | None] | None = None


def test_single_objective_front_trades_score_for_size_and_sorts_by_param_ratio() -> None:
    trials = [
        _Trial(0, 0.9, 0.8),
        _Trial(1, 0.5, 0.4),
        _Trial(2, 0.4, 0.5),  # dominated by 1
        _Trial(3, None, 0.3),  # no score: left out
        _Trial(4, 0.7, 0.6),
    ]
    objectives, front = job_front(["score"], trials)
    assert objectives == [("score", "maximize"), ("params", "minimize")]
    assert [trial.number for trial in front] == [1, 4, 0]


def test_multi_objective_front_reads_values_in_spec_order() -> None:
    trials = [
        _Trial(0, None, 0.9, values=[0.9, 0.9, 5.0]),
        _Trial(1, None, 0.5, values=[0.6, 0.5, 9.0]),
        _Trial(2, None, 0.5, values=[0.6, 0.5, 9.5]),  # slower twin of 1
        _Trial(3, None, 0.2, values=[0.6, None, 1.0]),  # NaN scrubbed: left out
        _Trial(4, None, 0.2, values=[0.6, 0.2]),  # wrong length: left out
        _Trial(5, None, 0.3, values=None),
    ]
    objectives, front = job_front(["score", "params", "latency"], trials)
    assert objectives == [("score", "maximize"), ("params", "minimize"), ("latency", "minimize")]
    assert [trial.number for trial in front] == [1, 0]


def _quadratic_front(points: list[tuple[int, float, float]]) -> list[int]:
    # The pairwise definition search.results.pareto_front used before it shared non_dominated.
    return sorted(
        number
        for number, score, ratio in points
        if not any(s >= score and r <= ratio and (s > score or r < ratio) for n, s, r in points if n != number)
    )


def test_search_result_front_matches_the_pairwise_definition() -> None:
    rng = random.Random(13)
    for size in (0, 1, 2, 9, 60):
        trials = [
            _trial_info(number, rng.choice([None, *(v / 10 for v in range(5))]), rng.choice([None, 0.3, 0.5, 0.7]))
            for number in range(size)
        ]
        points = [(t.number, proxy_score(t), t.param_ratio or 0.0) for t in trials]
        assert pareto_front(trials) == _quadratic_front(points), size


def _trial_info(number: int, value: float | None, param_ratio: float | None) -> TrialInfo:
    return TrialInfo(
        number=number,
        state="complete",
        origin="sampler",
        value=value,
        values=None,
        arch=None,
        param_count=None,
        param_ratio=param_ratio,
        scores={},
        timings={},
        duration_s=None,
        error=None,
    )
