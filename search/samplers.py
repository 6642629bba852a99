"""The sampler registry: a job spec names a sampler; ``SAMPLERS`` maps each name to its factory.

The keys are the names the spec accepts (``search.names.SAMPLERS``); a new sampler is one
entry here plus its name there. A factory receives a ``SamplerBuild``: the seed, and what a
sampler that knows the space needs (the ``evo`` sampler moves budget between sub-blocks and
keys its offspring by their repaired candidate); Optuna's own samplers read only the seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import optuna

from search.arch import ModelShape
from search.errors import SearchError
from search.evo import CandidateKey, EvoSampler
from search.names import SAMPLERS as SAMPLER_NAMES


@dataclass(frozen=True)
class SamplerBuild:
    """What a sampler is built from: the seed, the model's shape and the budget (a share of all
    parameters), and ``candidate_key``: a trial's parameters → its repaired candidate's key
    (``search.trials.job_sampler`` builds it from the job's context)."""

    seed: int | None
    shape: ModelShape
    param_ratio: float
    candidate_key: CandidateKey
    trials_done: int = 0  # trials the study already holds when this sampler joins it (a resumed study)

    @property
    def stream_seed(self) -> int | None:
        """The seed of an Optuna sampler, which draws one sequence per seed: seeded as at the start, a
        resumed study's sampler would propose the study's first candidates again, so the seed moves on
        with the study's progress (``evo`` needs none of this: its streams are per trial number)."""
        if self.seed is None or self.trials_done == 0:
            return self.seed
        return (self.seed * 1_000_003 + self.trials_done) % 2**32


SamplerFactory = Callable[[SamplerBuild], optuna.samplers.BaseSampler]

SAMPLERS: dict[str, SamplerFactory] = {
    # constant_liar: several workers of one job do not all propose the same candidate.
    "tpe": lambda build: optuna.samplers.TPESampler(seed=build.stream_seed, multivariate=True, constant_liar=True),
    "random": lambda build: optuna.samplers.RandomSampler(seed=build.stream_seed),
    "nsga2": lambda build: optuna.samplers.NSGAIISampler(seed=build.stream_seed),
    "cmaes": lambda build: optuna.samplers.CmaEsSampler(seed=build.stream_seed, warn_independent_sampling=False),
    "evo": lambda build: EvoSampler(
        build.seed, shape=build.shape, param_ratio=build.param_ratio, candidate_key=build.candidate_key
    ),
}
assert set(SAMPLERS) == set(SAMPLER_NAMES), "search.names.SAMPLERS and the sampler registry disagree"


def create_sampler(name: str, build: SamplerBuild) -> optuna.samplers.BaseSampler:
    if name not in SAMPLERS:
        raise SearchError(f"unknown sampler {name!r}; available: {', '.join(SAMPLERS)}")
    return SAMPLERS[name](build)
