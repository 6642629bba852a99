"""The neighbourhood audit end to end on the tiny Llama: candidates drawn near the job's best (their
distance stated and bounded), every training-free proxy's rank agreement with intervals, the proxy
that ranked them best named; off when the spec says 0."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from pydantic import ValidationError

from search.candidates import prepare
from search.loading import LoadedModel
from search.moves import DEFAULT_STEP
from search.names import PROXIES, proxy_names
from search.neighbourhood import MAX_MOVES
from search.results import NeighbourhoodAudit, TrustReport
from search.spec import JobSpec
from search.study import run_search
from tests.conftest import tiny_job_spec


def _spec(model: Path, **overrides: object) -> JobSpec:
    defaults = {"n_trials": 8, "seed": 3, "verify_top_k": 2, "audit_size": 6, "neighbourhood_size": 8}
    return tiny_job_spec(model, **(defaults | overrides))


def _neighbourhood(loaded: LoadedModel, spec: JobSpec, name: str) -> tuple[TrustReport, NeighbourhoodAudit]:
    result = run_search(prepare(loaded, spec), study_name=name)
    assert result.trust is not None and result.best is not None
    nearby = result.trust.neighbourhood
    assert nearby is not None and nearby.best_trial == result.best.trial_number
    return result.trust, nearby


def test_candidates_are_drawn_near_the_best_and_every_proxy_is_compared(
    tiny_loaded: LoadedModel, tiny_llama_dir: Path
) -> None:
    trust, nearby = _neighbourhood(tiny_loaded, _spec(tiny_llama_dir), "neighbourhood")
    shape = tiny_loaded.adapter.shape
    # Half from the top region (the best first, at distance 0), half perturbations of the best.
    assert nearby.size == len(nearby.candidates) == 8 and nearby.top_region[0] == nearby.best_trial
    top = [c for c in nearby.candidates if c.trial is not None]
    moved = [c for c in nearby.candidates if c.trial is None]
    assert [c.trial for c in top] == nearby.top_region and len(top) == 4
    assert top[0].distance == 0 and len(moved) == nearby.perturbations == 4
    # A perturbation is 1 to 3 moves of 2% of the blocks' parameters; repair then rounds every
    # sub-block to whole KV groups, which on this model can add up to a group at the donor and one at
    # the receiver: at most 3 × 2% + 2 × 4.2% of the blocks' parameters from the best, never 0.
    group = shape.attention_params(shape.group_size) / (shape.dense_params() - shape.fixed)
    bound = MAX_MOVES * DEFAULT_STEP + 2 * group
    assert all(0 < c.distance <= bound and 1 <= c.moves <= MAX_MOVES for c in moved)
    assert nearby.distance is not None and nearby.distance.max == max(c.distance for c in moved)
    assert nearby.distance.min <= nearby.distance.median <= nearby.distance.max
    # Nearer the best than the rest of the search's top region is.
    assert nearby.top_distance is not None and nearby.top_distance.min > 0
    assert statistics.median(c.distance for c in moved) < nearby.top_distance.median
    assert all(abs(c.param_ratio - 0.6) <= 0.01 * 0.6 for c in nearby.candidates)  # repaired to the budget

    # The job's proxy and the training-free ones, each with an interval, every candidate scored.
    compared = {"tracenas", "prunenet"} | ({"kl"} & set(PROXIES))
    assert compared <= set(nearby.proxies) and nearby.metric == trust.metric == "kl"
    for entry in nearby.proxies.values():
        assert entry.n == 8 and entry.spearman_ci is not None
        assert entry.spearman_ci[0] <= entry.spearman <= entry.spearman_ci[1]  # type: ignore[operator]
    leader = nearby.best_proxy
    assert leader in set(proxy_names()) and leader in nearby.summary
    best_rho = max(e.spearman for n, e in nearby.proxies.items() if n in proxy_names())  # type: ignore[type-var]
    assert nearby.proxies[leader].spearman == best_rho
    assert f"Spearman {best_rho:.2f}" in nearby.summary and ("uncertain" in nearby.summary) == nearby.uncertain
    stored = json.loads(json.dumps(trust.model_dump(mode="json"), allow_nan=False))
    assert TrustReport.model_validate(stored) == trust


def test_a_space_without_costs_moves_its_own_parameters(tiny_loaded: LoadedModel, tiny_llama_dir: Path) -> None:
    """Compact parameters act on every layer at once: small random moves of them, repaired alike."""
    space = {"ffn_alignment": 8, "parameterization": "compact"}
    _, nearby = _neighbourhood(tiny_loaded, _spec(tiny_llama_dir, search_space=space, seed=6), "compact")
    moved = [c for c in nearby.candidates if c.trial is None]
    assert moved and all(c.distance > 0 for c in moved) and nearby.distance is not None


def test_zero_turns_it_off_and_too_few_is_refused(tiny_loaded: LoadedModel, tiny_llama_dir: Path) -> None:
    result = run_search(prepare(tiny_loaded, _spec(tiny_llama_dir, neighbourhood_size=0)), study_name="off")
    assert result.trust is not None and result.trust.neighbourhood is None
    assert "neighbourhood" not in result.trust.model_dump(mode="json")
    with pytest.raises(ValidationError, match="neighbourhood_size must be 0"):
        _spec(tiny_llama_dir, neighbourhood_size=2)
