"""What every proxy is: it scores a candidate, higher is better (after Optuna's ``BaseSampler``: an
abstract core, and optional parts that do nothing by default).

Proxies that need a look at the job before scoring (the ensemble's reference population, the
meta-network's training data) override ``prime``; ``run_search`` calls it once before the first
trial, with a seeded population of candidates at the job's budget. A proxy is registered by one line
in ``search.names.PROXIES``; ``create`` builds it for a model, reusing the model's artifacts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, ClassVar, TypeVar, cast

from search.adapters import Adapter
from search.artifacts import Artifact, ModelArtifacts
from search.calibration import TokenSet
from search.errors import ProxyError
from search.names import PROXIES, proxy_names, resolve
from search.proxies.metanet_store import MetaNetStore
from search.selection import Selection
from search.stats import DenseStats, cached_stats

# How expensive a proxy is per candidate; the ensemble runs cheap ones first and gates the rest.
COST_LOOKUP, COST_FORWARD, COST_BACKWARD = 0, 1, 2


@dataclass(frozen=True)
class ProxyScore:
    value: float
    extras: dict[str, float] = field(default_factory=dict)  # other views of the same score, for reports
    timings: dict[str, float] = field(default_factory=dict)  # seconds spent per stage, for the breakdown
    tokens: int | None = None  # calibration tokens that scored it (multi-fidelity proxies); None: all of them


Scores = list[ProxyScore | ProxyError]  # candidates' scores, in order, or why each has none


@dataclass
class Priming:
    """What ``prime`` receives: a reference population at the job's budget, and the means to audit.

    ``draw`` makes the population on first use of ``population``, so a proxy that needs none (the
    default ``prime``) costs the job nothing. ``audit`` returns the cheap verified metric (lower is
    better) of each selection; ``store`` keeps the meta-network's training data across jobs;
    ``previous`` is what ``prime`` returned the first time this job ran (a resumed job primes the
    same way).
    """

    draw: Callable[[], Sequence[Selection]]
    audit: Callable[[Sequence[Selection]], list[float]] | None = None
    store: MetaNetStore | None = None
    job: str = ""
    model: str = ""
    previous: dict[str, Any] | None = None

    @cached_property
    def population(self) -> Sequence[Selection]:
        return self.draw()


class Proxy(ABC):
    name: ClassVar[str]
    cost: int = COST_BACKWARD  # COST_LOOKUP, COST_FORWARD or COST_BACKWARD

    @classmethod
    def create(cls, build: ProxyBuild) -> Proxy:
        """The proxy for ``build``'s model, calibration and options, as a job names it. By default
        built without arguments; proxies that need the model override it (and reuse themselves
        through ``build.reuse``)."""
        return cls()

    @abstractmethod
    def score(self, selection: Selection) -> ProxyScore: ...

    def score_many(self, selections: Sequence[Selection]) -> Scores:
        """Each candidate's score, or why it has none. One after another by default; a proxy that can
        score several candidates in one pass over the model (TraceNAS, replaying) overrides it."""
        return [or_error(lambda s=selection: self.score(s)) for selection in selections]

    def launch(self, selections: Sequence[Selection]) -> Callable[[], Scores] | None:
        """``score_many``, started on the device and returned from at once, with the call that waits
        for the scores; None (the default) where the proxy scores only in the caller's time. Between
        the two the host is free: the study loop proposes the next round then (``search.loop``)."""
        return None

    def prime(self, priming: Priming) -> dict[str, Any] | None:
        """Look at the job before its first trial; returns the state the report shows (None: nothing)."""
        return None

    @property
    def ready(self) -> bool:
        """Whether it can score; one that cannot sits out of an ensemble."""
        return True

    @property
    def rungs(self) -> tuple[int, ...]:
        """A multi-fidelity proxy's default token schedule: the calibration sequences each rung scores on,
        increasing, the first being the fewest a score needs and the last all of them; ``()`` for a
        proxy with one fidelity. ``score_on`` accepts any count in between, so a job's schedule
        (``search.fidelity``) may choose its own rungs within these bounds. A multi-fidelity proxy
        scores minus a loss that is 0 for the dense model (−KL), so that a lower rung's score can be
        put on the full scale by a ratio."""
        return ()

    def score_on(self, selection: Selection, sequences: int) -> ProxyScore:
        """The score on the first ``sequences`` calibration sequences (within ``rungs``); a later rung
        for the same selection extends the earlier one's work instead of repeating it."""
        raise NotImplementedError(f"the {self.name} proxy has a single fidelity")

    def hold(self, selection: Selection) -> AbstractContextManager[None]:
        """Keep ``selection`` realised while a trial scores it rung after rung (``score_on``), so a
        multi-fidelity proxy swaps the candidate in once per trial, not once per rung."""
        return nullcontext()

    @property
    def members(self) -> list[Proxy]:
        """The proxies a composite proxy consults (itself excluded); empty for a plain proxy."""
        return []


def or_error(score: Callable[[], ProxyScore]) -> ProxyScore | ProxyError:
    """``score()``, or the ``ProxyError`` that says why the candidate has no score (a round of
    candidates goes on without it)."""
    try:
        return score()
    except ProxyError as error:
        return error


P = TypeVar("P", bound=Proxy)

# A proxy per configuration (its name and what it depends on): shared by ensembles and later jobs.
PROXY: Artifact[tuple[Hashable, ...], Proxy] = Artifact("proxy")


@dataclass
class ProxyBuild:
    """What a proxy is built from: the model, its calibration tokens and artifacts, and the job's
    options (``attention_weight`` and ``order`` for PruneNet, ``top_fraction`` and
    ``ensemble_weighting`` for ensembles, ``min_records``, ``metanet_epochs`` and
    ``metanet_tracenas`` for the meta-network, ``kl_top_k`` for KL, ``execution`` for TraceNAS and KL)."""

    adapter: Adapter
    tokens: TokenSet
    artifacts: ModelArtifacts
    seed: int = 0
    batch_size: int = 8
    options: Mapping[str, Any] = field(default_factory=dict)
    dense_stats: DenseStats | None = None

    def stats(self) -> DenseStats:
        if self.dense_stats is None:
            self.dense_stats = cached_stats(self.adapter, self.tokens, self.artifacts, batch_size=self.batch_size)
        return self.dense_stats

    def member(self, name: str) -> Proxy:
        """The registered proxy ``name``."""
        if name not in PROXIES:
            raise ValueError(f"unknown proxy {name!r}; available: {', '.join(proxy_names())}")
        implementation: type[Proxy] = resolve(PROXIES[name])
        return implementation.create(self)

    def without_options(self) -> ProxyBuild:
        return replace(self, options={})

    def reuse(self, key: tuple[Hashable, ...], make: Callable[[], P]) -> P:
        """``make()`` once per ``key`` (a proxy's name and configuration) for this model."""
        return cast(P, self.artifacts.get(PROXY, key, make))
