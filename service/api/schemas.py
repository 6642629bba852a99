"""Response bodies of the REST API. Rows are shaped here, so routes stay one call long."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from search import names
from search.arch import ModelShape
from search.pareto import job_front
from search.results import VALUES_DESCRIPTION, BestEntry, Figures, TrialInfo
from search.spec import MAX_TRIALS_HARD_LIMIT, JobSpec, SearchSpace
from service.api.exports import Export
from service.models import Job, TrialResult, WebhookDelivery
from service.notify.urls import MAX_URL_LENGTH
from service.states import JobStatus, TrialState

API_PREFIX = "/v1"


def job_path(job_id: str) -> str:
    return f"{API_PREFIX}/jobs/{job_id}"


def artifacts_path(job_id: str) -> str:
    return f"{job_path(job_id)}/artifacts"


class Phase(BaseModel):
    """What a running job does after its trials, and how far it is."""

    name: Literal["recovery"] = Field(description="'recovery': distilling the dense model into the finalists.")
    done: int = Field(description="Optimizer steps done, over all finalists.")
    total: int


class Progress(BaseModel):
    trials_completed: int = Field(description="Trials finished without error (complete or pruned).")
    trials_failed: int
    trials_total: int
    fraction: float = Field(description="Finished trials (completed + failed) over the total, in [0, 1].")
    eta_seconds: float | None = Field(
        description="Estimated seconds left as of the job's updated_at (its last change; subtract the time "
        "since then for now), so an unchanged job reads the same; null unless it is running and has "
        "finished a trial."
    )
    phase: Phase | None = Field(
        default=None, description="The job's phase after its trials (recovery), once it has reached one."
    )


class BestOut(BestEntry):
    """The job's best trial so far (``search.results.BestEntry``) as stored: a figure or score that was
    not finite reads back as null."""

    scores: dict[str, float | None]  # type: ignore[assignment]


class JobLinks(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    self_: str = Field(alias="self")
    spec: str = Field(description="The whole specification, inline calibration texts included.")
    trials: str
    cancel: str
    resume: str


class ResumeIn(BaseModel):
    """The body of ``POST /v1/jobs/{id}/resume`` (optional)."""

    model_config = ConfigDict(extra="forbid")

    n_trials: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TRIALS_HARD_LIMIT,
        description="Complete trials the study should hold when the job ends (default: the job's n_trials); "
        "not below the complete trials it already holds.",
    )


class NotifyIn(BaseModel):
    """Where to POST the job's event when it ends (README "Webhooks")."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        max_length=MAX_URL_LENGTH,
        description="https URL on a host the server allows; the event is signed (X-PruneSearch-Signature).",
    )


class JobSubmission(JobSpec):
    """The body of ``POST /v1/jobs``: a job specification, plus service metadata the search never sees."""

    notify: NotifyIn | None = Field(default=None, description="A webhook called once when the job ends.")

    def job_spec(self) -> JobSpec:
        """The specification alone, as the library and the stored job know it."""
        return JobSpec.model_validate(self.model_dump(exclude={"notify"}))


class DeliveryOut(BaseModel):
    """One webhook event of the job and how its delivery went."""

    event: str = Field(description="job.succeeded, job.failed or job.cancelled.")
    status: Literal["pending", "delivered", "failed"] = Field(
        description="'pending' until a 2xx answer ('delivered') or the last retry ('failed')."
    )
    attempts: int
    last_status_code: int | None = Field(description="HTTP status of the last attempt; null if none answered.")
    last_error: str | None = Field(description="Why the last attempt failed (timeout, refused address, ...).")
    created_at: datetime
    last_attempt_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, delivery: WebhookDelivery) -> DeliveryOut:
        return cls.model_validate(delivery, from_attributes=True)


class NotifyOut(BaseModel):
    url: str
    deliveries: list[DeliveryOut] = Field(description="One per time the job ended, oldest first.")


# Parts of a stored spec that a poll does not carry: (path, what to say instead). Inline calibration
# texts can be megabytes, and a client polling a job every few seconds needs them never.
OMITTED_SPEC_PARTS: tuple[tuple[str, ...], ...] = (("calibration", "texts"),)


class OmittedPart(BaseModel):
    items: int = Field(description="Entries of the list left out.")
    chars: int = Field(description="Characters of text left out.")


class JobOut(BaseModel):
    id: str
    status: JobStatus
    model: str
    spec: dict[str, Any] = Field(
        description="The accepted job specification, with defaults filled in, less its large parts "
        "(inline calibration texts; see spec_omitted): links.spec returns the whole."
    )
    spec_omitted: dict[str, OmittedPart] = Field(
        default_factory=dict,
        description="What spec leaves out, by dotted path (e.g. 'calibration.texts'); empty when nothing.",
    )
    progress: Progress
    best: BestOut | None
    error: str | None
    cancel_requested: bool
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    links: JobLinks
    notify: NotifyOut | None = Field(default=None, description="The job's webhook and its deliveries, if it has one.")

    @classmethod
    def from_row(cls, job: Job) -> JobOut:
        """The job as polls see it: a pure function of the row, so one stored version has one body."""
        path = job_path(job.id)
        spec, omitted = _poll_spec(job.spec)
        return cls(
            id=job.id,
            status=JobStatus(job.status),
            model=job.model,
            spec=spec,
            spec_omitted=omitted,
            progress=_progress(job),
            best=BestOut.model_validate(job.best) if job.best is not None else None,
            error=job.error,
            cancel_requested=job.cancel_requested,
            attempts=job.attempts,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            updated_at=job.updated_at,
            links=JobLinks(
                self_=path,
                spec=f"{path}/spec",
                trials=f"{path}/trials",
                cancel=f"{path}/cancel",
                resume=f"{path}/resume",
            ),
            notify=_notify(job),
        )


def _notify(job: Job) -> NotifyOut | None:
    if not job.notify:
        return None
    return NotifyOut(url=job.notify["url"], deliveries=[DeliveryOut.from_row(d) for d in job.deliveries])


def _poll_spec(spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, OmittedPart]]:
    """``spec`` less ``OMITTED_SPEC_PARTS`` (copied only where something is left out), and what was."""
    omitted: dict[str, OmittedPart] = {}
    for parent_key, key in OMITTED_SPEC_PARTS:
        parent = spec.get(parent_key)
        if not isinstance(parent, dict) or parent.get(key) is None:
            continue
        value = parent[key]
        texts = value if isinstance(value, list) else [value]
        omitted[f"{parent_key}.{key}"] = OmittedPart(items=len(texts), chars=sum(len(str(text)) for text in texts))
        spec = {**spec, parent_key: {name: item for name, item in parent.items() if name != key}}
    return spec, omitted


def _progress(job: Job) -> Progress:
    finished = job.trials_completed + job.trials_failed
    total = job.trials_total
    eta: float | None = None
    if job.status == JobStatus.RUNNING and finished > 0 and job.started_at is not None:
        # Linear extrapolation from the average time per finished trial, as of the job's last change
        # (not the clock), so that the body of an unchanged job, and its ETag, stay the same.
        elapsed = max((job.updated_at - job.started_at).total_seconds(), 0.0)
        eta = elapsed / finished * max(total - finished, 0)
    return Progress(
        trials_completed=job.trials_completed,
        trials_failed=job.trials_failed,
        trials_total=total,
        fraction=min(finished / total, 1.0) if total > 0 else 0.0,
        eta_seconds=eta,
        phase=Phase.model_validate(job.phase) if job.phase else None,
    )


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= to get the next page; null on the last page.")
    next: str | None = Field(description="Link to the next page; null on the last page.")


class TrialOut(TrialInfo):
    """A recorded trial: the search's ``TrialInfo`` with its verified figures and times.

    Fields are declared once, in ``TrialInfo``; the ones re-declared here are read back as stored,
    where a number that was not finite became null (``service.jsonsafe``).
    """

    state: TrialState  # type: ignore[assignment]  # the states the table keeps
    values: list[float | None] | None = Field(default=None, description=VALUES_DESCRIPTION)  # type: ignore[assignment]
    scores: dict[str, Any] | None  # type: ignore[assignment]
    timings: dict[str, Any] | None  # type: ignore[assignment]
    verified: Figures | None
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def from_row(cls, trial: TrialResult) -> TrialOut:
        return cls.model_validate(trial, from_attributes=True)


class TrialPage(BaseModel):
    items: list[TrialOut]
    next_cursor: str | None
    next: str | None


class Objective(BaseModel):
    name: str = Field(description="'score', 'params' or 'latency'.")
    direction: Literal["maximize", "minimize"]


class ParetoPoint(TrialOut):
    """A trial on the front; a latency job's point says its predicted and (verified) measured latency."""

    measured_latency_ms: float | None = Field(
        default=None,
        description="Latency jobs: the time per step measured on the candidate's exported model (verified "
        "candidates only; also verified.latency_ms); latency_ms is the prediction.",
    )

    @classmethod
    def from_row(cls, trial: TrialResult) -> ParetoPoint:
        point = cls.model_validate(trial, from_attributes=True)
        measured = (trial.verified or {}).get("latency_ms")
        number = isinstance(measured, int | float) and not isinstance(measured, bool)
        return point.model_copy(update={"measured_latency_ms": float(measured) if number else None})


class ParetoFront(BaseModel):
    objectives: list[Objective] = Field(description="What the front trades off, in the order of a trial's values.")
    items: list[ParetoPoint] = Field(description="The non-dominated complete trials, by param_ratio ascending.")

    @classmethod
    def of_job(cls, job: Job, complete_trials: Sequence[TrialResult]) -> ParetoFront:
        """The front of ``job`` over its complete trials (``search.pareto.job_front``)."""
        objectives, front = job_front(job.spec.get("objectives") or ["score"], complete_trials)
        return cls(
            objectives=[Objective(name=name, direction=direction) for name, direction in objectives],
            items=[ParetoPoint.from_row(trial) for trial in front],
        )


class ModelWidths(BaseModel):
    """The dense model a job prunes: what the widths of its candidates are measured against."""

    num_layers: int
    num_heads: int = Field(description="Attention heads per layer.")
    num_kv_heads: int
    intermediate_size: int = Field(description="FFN channels per layer.")
    hidden_size: int
    dense_params: int = Field(description="Parameters of the dense model, as the search counts them.")

    @classmethod
    def from_shape(cls, shape: ModelShape) -> ModelWidths:
        return cls(
            num_layers=shape.num_layers,
            num_heads=shape.num_heads,
            num_kv_heads=shape.num_kv_heads,
            intermediate_size=shape.intermediate_size,
            hidden_size=shape.hidden_size,
            dense_params=shape.dense_params(),
        )


# GET /v1/compare: how many jobs one comparison may hold (a plot of more fronts is unreadable).
MAX_COMPARED_JOBS = 8


class SpecSummary(BaseModel):
    """The choices that set jobs of one model apart: what a comparison shows beside their results."""

    proxy: str | list[str] | None
    sampler: str | None
    objectives: list[str] = Field(description="'score' alone for a single-objective job.")
    target: dict[str, Any] | None = Field(description="The job's target (param_ratio, scope, ...).")
    n_trials: int | None

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> SpecSummary:
        # Read with .get: a stored spec keeps the fields of the version that accepted it.
        return cls(
            proxy=spec.get("proxy"),
            sampler=spec.get("sampler"),
            objectives=spec.get("objectives") or ["score"],
            target=spec.get("target"),
            n_trials=spec.get("n_trials"),
        )


class VerifiedFigures(BaseModel):
    """A job's held-out figures: its best architecture's and the dense model's, on the same tokens."""

    primary: str | None = Field(description="The metric the finalists were ranked by, lower is better ('kl').")
    best: Figures | None = Field(
        description="The best architecture's figures (e.g. kl, ppl, tokens); null if unverified."
    )
    dense: Figures | None = Field(description="The dense model's figures, from the job's report; null before it.")

    @classmethod
    def of_job(cls, job: Job) -> VerifiedFigures:
        verification = (job.report or {}).get("verification") or {}
        best = (job.best or {}).get("verified")
        primary = verification.get("primary") or (best or {}).get("primary")
        return cls(primary=primary, best=best, dense=verification.get("dense"))


class ComparedJob(BaseModel):
    """One job of a comparison: enough to draw its front, its best architecture and its figures."""

    id: str
    status: JobStatus
    spec: SpecSummary
    progress: Progress
    pareto: ParetoFront = Field(description="As GET /v1/jobs/{id}/pareto answers.")
    best: BestOut | None = Field(description="The best architecture (arch.layers: one entry per layer).")
    verified: VerifiedFigures
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def from_row(cls, job: Job, complete_trials: Sequence[TrialResult]) -> ComparedJob:
        return cls(
            id=job.id,
            status=JobStatus(job.status),
            spec=SpecSummary.from_spec(job.spec),
            progress=_progress(job),
            pareto=ParetoFront.of_job(job, complete_trials),
            best=BestOut.model_validate(job.best) if job.best is not None else None,
            verified=VerifiedFigures.of_job(job),
            created_at=job.created_at,
            finished_at=job.finished_at,
        )


class Comparison(BaseModel):
    """The body of ``GET /v1/compare``: jobs of one model side by side, in the order asked."""

    model: str
    widths: ModelWidths | None = Field(
        description="The dense model's widths (what the architectures are drawn against); null when this "
        "server cannot read its config (a hub id)."
    )
    jobs: list[ComparedJob]


class ArtifactFile(BaseModel):
    path: str = Field(description="Path inside the export, '/'-separated.")
    size: int = Field(description="Bytes.")
    url: str


class Artifact(BaseModel):
    name: str = Field(description="'best', 'trial-<number>', or '<name>.onnx' for the ONNX graph of an export.")
    status: Literal["ready", "pending"] = Field(description="'pending' while the worker is still writing it.")
    files: list[ArtifactFile] = Field(description="Empty while pending.")
    size: int = Field(description="Total bytes of the files; for a pending export, bytes written so far.")
    archive_url: str | None = Field(description="The whole export as an uncompressed tar; null while pending.")
    provenance: dict[str, Any] | None = Field(description="The export's provenance.json, if present and readable.")

    @classmethod
    def from_export(cls, job_id: str, export: Export) -> Artifact:
        base = f"{artifacts_path(job_id)}/{quote(export.name)}"
        return cls(
            name=export.name,
            status=export.status,
            files=[
                ArtifactFile(path=item.path, size=item.size, url=f"{base}/{quote(item.path)}") for item in export.files
            ],
            size=export.size,
            archive_url=f"{base}.tar" if export.status == "ready" else None,
            provenance=export.provenance,
        )


class ArtifactList(BaseModel):
    items: list[Artifact]


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="Where the error is, e.g. ['body', 'target', 'param_ratio'].")
    msg: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem detail, served as ``application/problem+json``."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="A URI naming the kind of problem.")
    title: str
    status: int
    detail: str
    instance: str = Field(description="The request path that caused the problem.")
    errors: list[FieldError] | None = Field(default=None, description="Per-field errors of a rejected request.")


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    database: str
    broker: str


class SpecDefaults(BaseModel):
    proxy: str
    sampler: str
    selection: str
    export_format: str


class SpecOptions(BaseModel):
    """The names a job spec accepts, so a form or a client need not repeat them."""

    proxies: list[str] = Field(description="Values of 'proxy' as a single name.")
    member_proxies: list[str] = Field(description="Names a 'proxy' list may combine (their ranks are aggregated).")
    samplers: list[str] = Field(description="Values of 'sampler'.")
    selections: list[str] = Field(description="Values of 'search_space.selection'.")
    objectives: list[str] = Field(description="Names 'objectives' may list ('score' first).")
    export_formats: list[str] = Field(
        description="Values of 'search_space.export_format': 'standard' searches only what plain from_pretrained loads."
    )
    defaults: SpecDefaults = Field(description="What a spec that leaves the field out gets.")

    @classmethod
    def from_spec(cls) -> SpecOptions:
        selection = SearchSpace.model_fields["selection"]
        return cls(
            proxies=list(names.proxy_names()),
            member_proxies=list(names.PROXIES),
            samplers=list(names.SAMPLERS),
            selections=list(names.CRITERIA),
            objectives=list(names.OBJECTIVES),
            export_formats=list(names.EXPORT_FORMATS),
            defaults=SpecDefaults(
                proxy=JobSpec.model_fields["proxy"].default,
                sampler=JobSpec.model_fields["sampler"].default,
                selection=selection.default,
                export_format=SearchSpace.model_fields["export_format"].default,
            ),
        )
