"""The sampler registry: a job spec names a sampler; ``SAMPLERS`` maps each name to its factory.

The keys are the names the spec accepts (``search.names.SAMPLERS``); a new sampler is one
entry here plus its name there.
"""

from __future__ import annotations

from collections.abc import Callable

import optuna

from search.errors import SearchError
from search.names import SAMPLERS as SAMPLER_NAMES

SamplerFactory = Callable[[int | None], optuna.samplers.BaseSampler]

SAMPLERS: dict[str, SamplerFactory] = {
    # constant_liar: several workers of one job do not all propose the same candidate.
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
    "nsga2": lambda seed: optuna.samplers.NSGAIISampler(seed=seed),
    "cmaes": lambda seed: optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False),
}
assert set(SAMPLERS) == set(SAMPLER_NAMES), "search.names.SAMPLERS and the sampler registry disagree"


def create_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    if name not in SAMPLERS:
        raise SearchError(f"unknown sampler {name!r}; available: {', '.join(SAMPLERS)}")
    return SAMPLERS[name](seed)
