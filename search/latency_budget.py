"""What a trial of a latency job records: its predicted latency, the ``latency`` constraint, and the
latency budget a Pareto search over latency samples (``objectives: ["score", "latency"]``).

The latency budget is Optuna's second named constraint beside ``budget`` (parameters), so samplers
and optuna-dashboard see a candidate's feasibility on both. Repair keeps every candidate within the
budget (``SearchContext.arch``), so the constraint holds for every trial; it is recorded all the same,
as the parameter budget is.
"""

from __future__ import annotations

from typing import Any

import optuna

from search.arch import ArchConfig
from search.candidates import SearchContext
from search.latency import LatencyModel
from search.spec import JobSpec


def second_objective(spec: JobSpec) -> str:
    """The metric name of a Pareto search's second objective."""
    return "latency_ms" if spec.latency_objective else "param_ratio"


def sampled_budget(context: SearchContext) -> dict[str, Any]:
    """The budget parameter a Pareto search samples, at its highest (what seeds are enqueued with)."""
    if context.spec.latency_objective:
        return {"latency_ratio": context.latency_high()}
    return {"param_ratio": context.ratio_range()[1]}


class TrialLatency:
    """A trial's latency: the budget it samples or is given, its prediction, its constraint."""

    def __init__(self, context: SearchContext) -> None:
        assert context.latency is not None
        self.model: LatencyModel = context.latency
        budgets = context.latency_range()
        self.low, self.high = budgets if budgets is not None else (None, None)
        self.sampled = context.spec.latency_objective

    def suggest(self, trial: optuna.Trial) -> float | None:
        """The trial's latency budget (a ratio of the dense model's predicted step)."""
        if self.sampled and self.low is not None and self.high is not None:
            return trial.suggest_float("latency_ratio", self.low, self.high)
        return self.high

    def record(self, trial: optuna.Trial, arch: ArchConfig, budget: float | None) -> dict[str, float]:
        """Write the candidate's predicted latency; returns its ``latency`` constraint (≤ 0: feasible)."""
        predicted = self.model.predict_ms(arch.layers)
        ratio = predicted / self.model.dense_ms
        trial.set_user_attr("latency_ms", predicted)
        trial.set_user_attr("latency_ratio", ratio)
        return {} if budget is None else {"latency": ratio / budget - 1.0}
