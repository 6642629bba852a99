"""What a search produces, as typed values: trials, verification figures, ladder rungs, the trust
report, the best entry, and the result that holds them; plus the pure functions over trials
(Pareto front, finalists, best).

Torch-free and Optuna-free (pydantic only), so the service's API schema, the CLI and the page can
reuse these models. Every model serialises (``model_dump(mode="json")``) to the JSON the service has
always stored: the keys below are the REST contract.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from search.arch import ArchConfig
from search.pareto import non_dominated

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

TrialStateName = Literal["complete", "failed", "pruned", "running", "waiting"]
LadderKey = int | str  # a trial number, or a name ("dense", a test's label)
# A verification's flat JSON form: metrics, "tokens", "primary". Stored, a figure that was not finite
# reads back as null (JSON has no NaN), so the stored form admits None.
Figures = dict[str, float | int | str | None]


def _absent(value: object) -> bool:
    return value is None


class _Frozen(BaseModel):
    # Forbid unknown members: a new key in a report section must be added here, where the REST
    # contract is defined, not slip through untyped.
    model_config = ConfigDict(frozen=True, extra="forbid")


VALUES_DESCRIPTION = "All objective values of a multi-objective trial, in the order of the job's objectives."


class TrialInfo(_Frozen):
    """A finished (or running) trial as the service and the CLI show it."""

    number: int
    state: TrialStateName
    origin: str = Field(description="Where the candidate came from, e.g. 'sampler' or 'seed:uniform'.")
    value: float | None = Field(description="The objective; null if the trial failed or its score was not finite.")
    values: list[float] | None = Field(description=VALUES_DESCRIPTION)
    arch: dict[str, Any] | None  # ArchConfig.to_dict()
    param_count: int | None
    param_ratio: float | None
    scores: dict[str, float]
    timings: dict[str, float]
    duration_s: float | None
    error: str | None
    tokens: int | None = Field(
        default=None,
        description="Calibration tokens that scored the trial (multi-fidelity proxies under the token schedule); "
        "null: all of them, or a proxy that counts none.",
    )
    latency_ms: float | None = Field(
        default=None,
        description="Latency jobs: the candidate's time per step predicted from the measured latency table "
        "(target.latency's setting); null for other jobs.",
    )


class Verification(_Frozen):
    """Held-out figures of one candidate (or the dense model)."""

    primary: str  # the metric finalists are ranked by (lower is better)
    metrics: dict[str, float] = Field(default_factory=dict)
    tokens: int = 0

    @property
    def value(self) -> float:
        return self.metrics[self.primary]

    def to_dict(self) -> Figures:
        """The flat form stored with trials, the best entry and the report."""
        return {**self.metrics, "tokens": self.tokens, "primary": self.primary}


class BestEntry(_Frozen):
    """The job's best trial: the proxy's favourite, or after verification the verified best."""

    trial_number: int
    origin: str
    arch: dict[str, Any] | None
    param_count: int | None
    param_ratio: float | None
    score: float | None
    scores: dict[str, float]
    verified: Figures | None


class LadderCandidate(_Frozen):
    key: LadderKey
    value: float
    baseline: bool


class LadderRung(_Frozen):
    """One rung of successive halving: its held-out prefix, every candidate's figure, the survivors."""

    rung: int
    sequences: int
    tokens: int
    primary: str
    candidates: list[LadderCandidate]
    survivors: list[LadderKey]


class ProxyAgreement(_Frozen):
    """One proxy's rank agreement with the verified metric (+1 perfect), and its biases."""

    spearman: float | None
    spearman_ci: list[float] | None
    kendall: float | None
    kendall_ci: list[float] | None
    n: int
    params_spearman: float | None
    depth_spearman: float | None
    poor: bool


class AuditSample(_Frozen):
    size: int
    sequences: int
    tokens: int
    stratified_by: str
    trials: list[int]
    verified: dict[str, float]  # trial number (as a JSON key) → verified metric
    # Present (in JSON too) only when the audited candidates went to the meta-network's store.
    stored: bool | None = Field(default=None, exclude_if=_absent)


class Spread(_Frozen):
    """The least, median and largest of a few figures."""

    min: float
    median: float
    max: float


class Neighbour(_Frozen):
    """One candidate of the neighbourhood audit: a trial of the search's top region, or a perturbation
    of the best trial's architecture."""

    trial: int | None  # the trial it is; None for a perturbation
    moves: int  # budget moves from the best trial's parameters (0 for a trial)
    distance: float  # share of the blocks' parameters that differs from the best (search.moves.arch_distance)
    param_ratio: float
    verified: float  # the verified metric on the audit's sequences


class NeighbourhoodAudit(_Frozen):
    """Rank agreement where the search looked (search.neighbourhood): the best distinct trials by the
    job's proxy and perturbations of the best trial, every proxy scoring all of them."""

    best_trial: int  # the trial whose neighbourhood this is (the job's best)
    size: int  # candidates verified
    top_region: list[int]  # trials: the job's proxy's best distinct architectures (the best trial among them)
    distinct_trials: int  # distinct architectures the search completed (the top region's population)
    perturbations: int  # candidates moved from the best trial's parameters
    max_moves: int  # each perturbation makes 1 to max_moves moves
    step: float  # a move's size, as a share of the blocks' parameters
    distance: Spread | None  # of the perturbations from the best (None without perturbations)
    top_distance: Spread | None  # of the top region's other trials from the best (None: the best alone)
    sequences: int
    tokens: int
    metric: str
    candidates: list[Neighbour]
    proxies: dict[str, ProxyAgreement]  # every proxy's agreement on these candidates
    best_proxy: str | None  # the selectable proxy that ranked them best (highest Spearman)
    uncertain: bool  # its interval reaches below the threshold, or overlaps the runner-up's
    summary: str  # the finding in one sentence


class TrustReport(_Frozen):
    """The report's ``trust`` section (search.trust.trust_report plus the audit that fed it)."""

    metric: str
    sign: str
    objective: str
    threshold: float
    proxies: dict[str, ProxyAgreement]
    flagged: bool
    flags: list[str]
    audit: AuditSample
    # What priming the proxy returned; present only when the proxy needed priming.
    proxy_state: dict[str, Any] | None = Field(default=None, exclude_if=_absent)
    # Present only when the job audited its neighbourhood (JobSpec.neighbourhood_size, search.neighbourhood).
    neighbourhood: NeighbourhoodAudit | None = Field(default=None, exclude_if=_absent)


class Finalist(BaseModel):
    """A verified finalist in the report: its trial, its proxy score and its held-out figures, flat."""

    # The metrics ("kl", "ppl", ...) are members named after themselves, as Verification.to_dict() has them.
    model_config = ConfigDict(frozen=True, extra="allow")

    trial_number: int
    origin: str | None
    proxy_score: float | None
    primary: str
    tokens: int


class VerificationReport(_Frozen):
    """The report's ``verification`` section: the dense model's figures, the finalists by verified
    metric (best first) and the successive-halving ladder."""

    primary: str
    dense: Figures
    finalists: list[Finalist]
    ladder: list[LadderRung]


class Latency(_Frozen):
    """One forward of batch 1 × 128 tokens, exported beside dense: what reports written before the
    speed report hold (read back from stored jobs only; new exports have ``speed``)."""

    device: str
    tokens: int
    pruned_latency_s: float
    dense_latency_s: float
    pruned_tokens_per_s: float
    dense_tokens_per_s: float
    speedup: float


class SpeedWorkload(_Frozen):
    """What the speed report runs (the worker's settings; the report holds the sizes actually used,
    clamped to the model's context)."""

    prefill_batches: list[PositiveInt] = Field(default=[1, 8], min_length=1)
    prefill_tokens: int = Field(default=512, ge=1)
    decode_batches: list[PositiveInt] = Field(default=[1, 16])  # empty: no decode figures
    prompt_tokens: int = Field(default=32, ge=1, description="Prompt before the decoded tokens.")
    new_tokens: int = Field(default=128, ge=1, description="Tokens each decode generates (greedy, fixed length).")
    warmup: int = Field(default=1, ge=0, description="Untimed runs of each model before the timed ones.")
    repeats: int = Field(default=5, ge=1, description="Timed runs of each model; the report gives medians.")


class PrefillSpeed(_Frozen):
    """Median latency of one forward over ``batch`` × ``tokens``, dense and exported."""

    batch: int
    tokens: int
    dense_s: float
    pruned_s: float
    speedup: float  # dense_s / pruned_s


class DecodeSpeed(_Frozen):
    """Greedy ``generate`` with the KV cache: ``batch`` sequences × ``new_tokens`` after a prompt of
    ``prompt_tokens``; tokens/s counts generated tokens over the whole call (prompt included)."""

    batch: int
    prompt_tokens: int
    new_tokens: int
    dense_tokens_per_s: float
    pruned_tokens_per_s: float
    speedup: float


class SpeedReport(_Frozen):
    """The exported model beside the dense one on the worker's device, both in the export's
    precision: medians of interleaved runs after warm-up (search.speed)."""

    device: str
    dtype: str
    workload: SpeedWorkload  # as run: context clamped to the model's maximum positions
    prefill: list[PrefillSpeed]
    decode: list[DecodeSpeed]  # empty for an encoder
    dense_peak_bytes: int | None
    pruned_peak_bytes: int | None
    peak_memory: str = Field(description="How the peak memory figures were obtained.")
    dense_size_bytes: int  # the dense checkpoint's weights on disk
    pruned_size_bytes: int  # the export's weights on disk


class ExportReport(_Frozen):
    """The report's ``export`` section: the best architecture as written to the job's artifacts."""

    name: str
    kind: str  # "standard" | "per_layer"
    param_count: int  # parameters stored
    nonzero_params: int
    dense_params: int
    size_bytes: int  # every file of the export
    # Absent (None) in reports stored before exports kept the checkpoint's precision.
    dtype: str | None = Field(default=None, exclude_if=_absent, description="The weights' precision.")
    weights_bytes: int | None = Field(default=None, exclude_if=_absent)
    dense_weights_bytes: int | None = Field(default=None, exclude_if=_absent)
    speed: SpeedReport | None = Field(default=None, exclude_if=_absent)
    latency: Latency | None = Field(default=None, exclude_if=_absent)  # reports stored before ``speed``


class RecoveredFinalist(_Frozen):
    """One finalist of the recovery: its held-out figures before and after distillation."""

    trial_number: int
    origin: str | None
    param_count: int | None
    before: Figures  # as Verification.to_dict(): the same figures, tokens and primary as verification
    after: Figures | None  # None when the job was cancelled before this finalist finished
    steps: int  # optimizer steps run
    seconds: float  # training and both verifications
    loss_first: float | None = None  # the distillation loss of the first and the last step
    loss_last: float | None = None


class RecoveryReport(_Frozen):
    """The report's ``recovery`` section (search.recovery): every finalist before and after, the winner."""

    method: str
    steps: int  # asked per finalist
    lora_rank: int | None
    learning_rate: float
    batch_size: int
    training_sequences: int  # sequences trained on (held-out ones excluded)
    device: str
    precision: str  # how the student was trained, e.g. "float32 weights, bfloat16 autocast"
    primary: str  # the metric the winner is chosen by, lower is better
    finalists: list[RecoveredFinalist]  # in order of their figure before recovery
    winner: int | None  # trial number of the exported model; None if cancelled before one finished
    seconds: float


class LatencyCheck(_Frozen):
    """One candidate's latency: predicted from the table, and measured on its exported model."""

    trial_number: int | None  # None: the dense model
    origin: str | None
    predicted_ms: float
    measured_ms: float
    error: float  # predicted / measured − 1


class LatencyReport(_Frozen):
    """The report's ``latency`` section (search.latency_check): how the latency table was obtained,
    and predicted against measured latency of the dense model and of every verified candidate,
    each materialised as exported and timed in the job's setting on the worker's device."""

    phase: str
    batch: int
    context: int
    device: str
    dtype: str
    ffn_alignment: int
    table: str = Field(
        description="'measured' by this job, 'stored' (read from the artifact store), or 're-timed' (stored, but its "
        "probe model no longer stepped as long: timed again by this job)."
    )
    table_seconds: float = Field(description="What timing the table took (when it was measured).")
    table_fit_error: float | None = Field(
        default=None,
        description="Median |error| of the table's fit to the whole models it was calibrated on at build "
        "(null: not calibrated).",
    )
    budget_ratio: float | None = Field(description="target.latency_ratio; null without a latency budget.")
    dense: LatencyCheck
    finalists: list[LatencyCheck]
    median_abs_error: float | None = Field(description="Median of |error| over the finalists (goal: within 0.10).")


class JobReport(_Frozen):
    """What a job reports when its search ends: the worker writes it, ``GET /v1/jobs/{id}/report``
    serves it, the page shows it."""

    verification: VerificationReport | None  # None without held-out verification
    export: ExportReport | None  # None when no trial completed
    pareto: list[int]  # trial numbers of the non-dominated trials
    trust: TrustReport | None  # the proxy trust report, when an audit ran
    # Present (in JSON too) only for a job that asked for recovery (JobSpec.recovery).
    recovery: RecoveryReport | None = Field(default=None, exclude_if=_absent)
    # Present only for a job with a latency budget or objective (JobSpec.uses_latency).
    latency: LatencyReport | None = Field(default=None, exclude_if=_absent)


class SearchResult(BaseModel):
    study_name: str
    trials: list[TrialInfo]
    dense: Verification | None
    verified: dict[int, Verification] = Field(default_factory=dict)
    pareto: list[int] = Field(default_factory=list)  # trial numbers of the non-dominated trials
    best: BestEntry | None = None
    stopped: bool = False
    ladder: list[LadderRung] = Field(default_factory=list)  # verification rungs (search.ladder)
    trust: TrustReport | None = None  # the proxy trust report (search.audit)
    latency: LatencyReport | None = None  # predicted against measured latency (search.latency_check)


# Optuna's TrialState by name, so this module needs no Optuna at import.
_STATE_NAMES: dict[str, TrialStateName] = {
    "COMPLETE": "complete",
    "FAIL": "failed",
    "PRUNED": "pruned",
    "RUNNING": "running",
    "WAITING": "waiting",
}


def describe_trial(trial: FrozenTrial) -> TrialInfo:
    attrs = trial.user_attrs
    state = _STATE_NAMES[trial.state.name]
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    values = list(trial.values) if state == "complete" and trial.values is not None else None
    value = values[0] if values else None
    return TrialInfo(
        number=trial.number,
        state=state,
        origin=str(attrs.get("origin", "sampler")),
        value=value if value is None or math.isfinite(value) else None,
        values=values if values is not None and len(values) > 1 else None,
        arch=attrs.get("arch"),
        param_count=attrs.get("param_count"),
        param_ratio=attrs.get("param_ratio"),
        scores=dict(attrs.get("scores", {})),
        timings=dict(attrs.get("timings", {})),
        duration_s=duration,
        error=_failure(trial) if state == "failed" else None,
        tokens=attrs.get("tokens"),
        latency_ms=attrs.get("latency_ms"),
    )


def _failure(trial: FrozenTrial) -> str:
    if "error" in trial.user_attrs:  # set by the objective for a candidate its proxy could not score
        return str(trial.user_attrs["error"])
    # Any other failure ends the job; a failed trial in a running job lost its worker's heartbeat.
    return "the worker running this trial stopped; its configuration is retried"


def proxy_score(trial: TrialInfo) -> float:
    """The trial's objective for ranking: its proxy score, −∞ when it has none."""
    return trial.value if trial.value is not None else -math.inf


def pareto_front(trials: Sequence[TrialInfo], second: str = "params") -> list[int]:
    """Numbers of the trials no other trial beats on both score (higher) and parameter ratio (lower),
    or predicted latency (lower) when ``second`` is "latency".

    A trial without a score counts as scoring −∞, one without a ratio (latency) as 0.
    """
    if second == "latency":
        points = [(proxy_score(t), t.latency_ms or 0.0) for t in trials]
    else:
        points = [(proxy_score(t), t.param_ratio or 0.0) for t in trials]
    return sorted(trials[index].number for index in non_dominated(points, ("maximize", "minimize")))


def finalists(complete: Sequence[TrialInfo], k: int) -> list[TrialInfo]:
    """The k best distinct architectures by proxy score."""
    chosen: list[TrialInfo] = []
    seen: set[str] = set()
    for trial in sorted(complete, key=lambda t: (-proxy_score(t), t.number)):
        key = ArchConfig.from_dict(trial.arch).to_json()  # type: ignore[arg-type]
        if key not in seen:
            seen.add(key)
            chosen.append(trial)
        if len(chosen) == k:
            break
    return chosen


def best_entry(trial: TrialInfo, *, verified: Verification | None) -> BestEntry:
    return BestEntry(
        trial_number=trial.number,
        origin=trial.origin,
        arch=trial.arch,
        param_count=trial.param_count,
        param_ratio=trial.param_ratio,
        score=trial.value,
        scores=trial.scores,
        verified=verified.to_dict() if verified is not None else None,
    )


def verification_report(result: SearchResult) -> VerificationReport | None:
    """The report's verification section of a search's result; None if nothing was verified."""
    if result.dense is None:
        return None
    trials = {trial.number: trial for trial in result.trials}
    finalists = [
        Finalist(
            trial_number=number,
            origin=trials[number].origin if number in trials else None,
            proxy_score=trials[number].value if number in trials else None,
            **check.to_dict(),
        )
        for number, check in sorted(result.verified.items(), key=lambda item: item[1].value)
    ]
    return VerificationReport(
        primary=result.dense.primary, dense=result.dense.to_dict(), finalists=finalists, ladder=result.ladder
    )
