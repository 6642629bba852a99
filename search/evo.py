"""The ``evo`` sampler: EvoPress-style evolutionary search (Sieberling et al., 2024) as an Optuna sampler.

EvoPress keeps the fittest candidates and mutates them by moving compression from one unit to
another, so every offspring stays on the budget. Here the population is the study itself: the
parents are its best complete feasible trials, read from storage for every trial, so a second
worker or a resumed job continues the same search and nothing lives only in one process's memory.
An offspring is a parent's parameters after a few mutations (mostly one, as in EvoPress): budget
moves between sub-blocks (``search.moves.move_budget``) for the per-layer keep fractions, and
small random steps for every other parameter (sparsity, the compact and standard-format
parameters), so it works on every parameterisation. Repair then lands it on the budget.

No candidate twice: an offspring is keyed by its repaired candidate and drawn again (mutated a
little more each time) when a complete or running trial of the study already has that candidate;
when every offspring near the parents is taken (a small space), a new candidate is drawn at random
under the same check. Several workers sample at once, so a
trial claims its candidate in its system attributes before proposing it and then checks that no
other trial claimed the same one; every claimant writes before it reads, so of two that drew the
same candidate at once at least one sees the other and draws again.

Each trial draws from its own stream, derived from (seed, trial number): two workers never draw the
same stream, and a resumed study continues as it would have. The first ``startup`` trials after
the enqueued baselines are drawn at random, under the same no-repeat claim (as TPE's startup
trials): with a hundred evaluations rather than EvoPress's thousands, a population of the baselines
alone keeps the search near them.
"""

from __future__ import annotations

import hashlib
import random
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.search_space import IntersectionSearchSpace
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from search.arch import ModelShape
from search.moves import DEFAULT_STEP, fraction_costs, move_budget, perturb

# Maps a trial's parameters to its repaired candidate's key (its architecture as JSON); raises
# ``ValueError`` when a parameter is missing (a running trial still being suggested).
CandidateKey = Callable[[Mapping[str, Any]], str]

# The trial system attribute that holds the digest of the candidate an evo trial proposed.
CLAIM_ATTR = "evo:candidate"

_MAX_MUTATIONS = 3  # EvoPress: min(randint(1, 3), randint(1, 3)) mutations, mostly one


class EvoSampler(BaseSampler):
    """Offspring of the study's best ``population`` trials, on the budget and never a repeated candidate.

    ``param_ratio`` is the budget (a share of all parameters); ``candidate_key`` maps parameters to the
    candidate that repair makes of them. ``attempts`` bounds the redraws of an offspring whose
    candidate is taken (each redraw mutates a little more), and then as many draws at random.
    """

    def __init__(
        self,
        seed: int | None,
        *,
        shape: ModelShape,
        param_ratio: float,
        candidate_key: CandidateKey,
        population: int = 4,
        attempts: int = 16,
        startup: int = 10,
        step: float = DEFAULT_STEP,
    ) -> None:
        self._seed = seed if seed is not None else secrets.randbits(32)
        self._shape = shape
        self._share = kept_share(shape, param_ratio)
        self._candidate_key = candidate_key
        self._population, self._attempts, self._step, self._startup = population, attempts, step, startup
        self._search_space = IntersectionSearchSpace()
        self._keys: dict[tuple[str, int], str | None] = {}  # complete trials' candidates, which never change
        self._independent: dict[int, RandomSampler] = {}

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._search_space.calculate(study)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        drawn = [t for t in trials if t.number < trial.number and not _seed(t)]
        parents = self._parents(study, [t for t in trials if t.state == TrialState.COMPLETE])
        if not parents:
            return {}
        exploring = len(drawn) < self._startup
        rng = self._rng(trial.number, "relative")
        uniform = RandomSampler(seed=rng.getrandbits(32))
        taken = self._taken(study, trials, trial)
        for attempt in range(2 * self._attempts):
            if attempt < self._attempts and not exploring:
                parent = parents[_rank_weighted(len(parents), rng)]
                params = self._offspring(parent.params, search_space, rng, extra=attempt // 4)
            else:  # startup, or every offspring near the parents is taken (a small space): anywhere
                params = {n: uniform.sample_independent(study, trial, n, d) for n, d in search_space.items()}
            key = _digest(self._candidate_key(params))
            if key in taken:
                continue
            if _claim(study, trial, key):
                return params
            taken.add(key)
        _write_claim(study, trial, None)  # the space is all but exhausted: a repeat is unavoidable
        return {}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        sampler = self._independent.get(trial.number)
        if sampler is None:
            seed = self._rng(trial.number, "independent").getrandbits(32)
            sampler = self._independent[trial.number] = RandomSampler(seed=seed)
        return sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self._independent.pop(trial.number, None)

    def _rng(self, number: int, stream: str) -> random.Random:
        # Seeding with a string hashes it (SHA-512): the same stream in every process and Python run.
        return random.Random(f"evo:{self._seed}:{number}:{stream}")

    def _parents(self, study: optuna.Study, complete: Sequence[FrozenTrial]) -> list[FrozenTrial]:
        """The best ``population`` complete trials within the budget, best first."""
        sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
        ranked = [
            (sign * t.value, t.number, t)
            for t in complete
            if t.value is not None and all(v <= 0 for v in t.constraints.values())
        ]
        ranked.sort(key=lambda entry: entry[:2])
        return [t for _, _, t in ranked[: self._population]]

    def _taken(self, study: optuna.Study, trials: Sequence[FrozenTrial], current: FrozenTrial) -> set[str | None]:
        """The candidates of the other trials: an evo trial's claim, else the key of its parameters
        (an enqueued baseline, a trial drawn at random; a running one still being suggested has none
        yet). A complete trial's never changes, so it is computed once."""
        keys: set[str | None] = set()
        for trial in trials:
            claim = trial.system_attrs.get(CLAIM_ATTR)
            if claim:
                keys.add(claim)
            elif trial.state == TrialState.COMPLETE:
                index = (study.study_name, trial.number)
                if index not in self._keys:
                    self._keys[index] = self._key_of(trial.params)
                keys.add(self._keys[index])
            elif trial.number != current.number:
                keys.add(self._key_of(trial.params))
        return keys

    def _key_of(self, params: Mapping[str, Any]) -> str | None:
        try:
            return _digest(self._candidate_key(params))
        except ValueError:  # not every parameter is there (yet)
            return None

    def _offspring(
        self, parent: Mapping[str, Any], search_space: Mapping[str, BaseDistribution], rng: random.Random, *, extra: int
    ) -> dict[str, Any]:
        """``parent`` after 1..3 mutations (mostly one), plus ``extra``: each either a budget move between
        two costed sub-blocks or a random step of one other parameter, in proportion to their numbers."""
        costs = fraction_costs(self._shape, search_space)
        others = sorted(name for name in search_space if name not in costs)
        movable = len(costs) >= 2
        mutations = min(rng.randint(1, _MAX_MUTATIONS), rng.randint(1, _MAX_MUTATIONS)) + extra
        moves, stepped = 0, []
        for _ in range(mutations):
            if movable and (not others or rng.random() < len(costs) / (len(costs) + len(others))):
                moves += 1
            elif others:
                stepped.append(rng.choice(others))
        params = {name: parent[name] for name in search_space}
        if moves:
            # Repair scales every keep fraction by one factor, so scaling the parent to the budget's
            # share leaves its candidate (all but) unchanged and gives receivers room: a parent at
            # 1.0 everywhere (the uniform baseline) has none.
            values = rescale({name: float(params[name]) for name in costs}, costs, self._share)
            params |= move_budget(values, costs, rng, moves=moves, step=self._step)
        for name in stepped:
            params[name] = perturb(params[name], search_space[name], rng)
        return params


def kept_share(shape: ModelShape, param_ratio: float) -> float:
    """The share of the blocks' parameters a candidate at ``param_ratio`` keeps (embeddings and head stay)."""
    dense = shape.dense_params()
    blocks = dense - shape.fixed
    if blocks <= 0:
        return 1.0
    return min(1.0, max(0.0, (param_ratio * dense - shape.fixed) / blocks))


def rescale(values: Mapping[str, float], costs: Mapping[str, float], share: float) -> dict[str, float]:
    """``values`` times the one factor that makes Σ min(1, factor·value)·cost the ``share`` of Σ cost
    (as close as clipping at 1 allows); all zero stays all zero."""
    positive = [v for v in values.values() if v > 0]
    if not positive:
        return dict(values)
    total = sum(costs[name] for name in values)

    def kept(factor: float) -> float:
        return sum(min(1.0, factor * v) * costs[name] for name, v in values.items()) / total

    low, high = 0.0, 1.0 / min(positive)
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if kept(middle) < share else (low, middle)
    return {name: min(1.0, high * v) for name, v in values.items()}


def _seed(trial: FrozenTrial) -> bool:
    """An enqueued baseline (``search.trials.open_study``)."""
    return str(trial.user_attrs.get("origin", "")).startswith("seed:")


def _rank_weighted(count: int, rng: random.Random) -> int:
    """An index in 0..count-1, the best (0) most likely: weights count, count-1, ..., 1."""
    return rng.choices(range(count), weights=range(count, 0, -1))[0]


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _claim(study: optuna.Study, trial: FrozenTrial, key: str) -> bool:
    """Claim ``key`` for ``trial``, then whether no other trial claimed it too (read after the write)."""
    _write_claim(study, trial, key)
    others = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE))
    return not any(t.number != trial.number and t.system_attrs.get(CLAIM_ATTR) == key for t in others)


def _write_claim(study: optuna.Study, trial: FrozenTrial, key: str | None) -> None:
    """A sampler is handed the trial frozen, before its first parameter is written; Optuna has no
    public setter for it (its own GridSampler writes the same way): this is the one place that uses
    the study's storage and the trial's private id."""
    study._storage.set_trial_system_attr(trial._trial_id, CLAIM_ATTR, key)
