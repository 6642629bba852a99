"""The job specification: what a user asks for, validated without torch.

The API validates submissions with ``JobSpec`` and ``check_model``; the worker and the CLI read
the same object, so a job that was accepted is a job the search library can run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from search import names
from search.arch import ModelShape
from search.calibration_count import check_calibration_size
from search.calibration_texts import iter_texts
from search.errors import BudgetInfeasible, InvalidJobSpec
from search.families import read_shape
from search.hub import check_hub_model
from search.repair import DEFAULT_TOLERANCE as REPAIR_TOLERANCE
from search.standard import check_standard_budget

MAX_TRIALS_HARD_LIMIT = 100_000
MAX_RECOVERY_STEPS_HARD_LIMIT = 1_000_000  # the server's own limit (max_recovery_steps) is usually far lower
# Defaults of the learning rate: full fine-tuning moves every weight, LoRA only small adapters, which
# need a larger step to move as far in a short run (the usual LoRA rates are 10x full fine-tuning's).
FULL_LEARNING_RATE = 1e-4
LORA_LEARNING_RATE = 1e-3
MIN_NEIGHBOURHOOD = 4  # candidates a neighbourhood audit needs for a rank correlation worth stating

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")


def _name_of(kind: str, registry: Callable[[], Collection[str]]) -> Any:
    """A string that must be a registered name of ``kind`` (``search.names``), read when a spec is
    validated, so a name registered later (a plug-in, a test) is accepted; the JSON schema lists them."""

    def check(value: str) -> str:
        if value not in registry():
            raise ValueError(f"unknown {kind} {value!r}; available: {', '.join(registry())}")
        return value

    def schema(field_schema: dict[str, Any]) -> None:
        field_schema["enum"] = list(registry())

    return Annotated[str, AfterValidator(check), Field(json_schema_extra=schema)]


DepthMode = _name_of("depth mode", lambda: names.DEPTH_MODES)
Parameterization = _name_of("parameterization", lambda: names.PARAMETERIZATIONS)
SelectionCriterion = _name_of("selection criterion", lambda: names.CRITERIA)
SparsityCriterion = _name_of("sparsity criterion", lambda: names.SPARSITY_CRITERIA)
SamplerName = _name_of("sampler", lambda: names.SAMPLERS)
RecoveryMethod = _name_of("recovery method", lambda: names.RECOVERY_METHODS)
ExportFormat = _name_of("export format", lambda: names.EXPORT_FORMATS)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


MAX_LATENCY_BATCH = 4096  # the spec's own bound; a server's limit (max_latency_batch) is usually lower
MAX_LATENCY_CONTEXT = 131_072


class LatencySetting(_Strict):
    """Where a latency target or objective is measured: one step of the model in this setting, on the
    worker's device, in the export's precision (``search.latency``)."""

    phase: Literal["decode", "prefill"] = Field(
        default="decode",
        description="'decode': one new token per sequence against a KV cache of 'context' tokens; "
        "'prefill': one forward over batch × context tokens.",
    )
    batch: Annotated[int, Field(ge=1, le=MAX_LATENCY_BATCH, description="Sequences per step.")] = 1
    context: Annotated[
        int,
        Field(ge=1, le=MAX_LATENCY_CONTEXT, description="Tokens in the KV cache (decode) or per sequence (prefill)."),
    ] = 512


class Target(_Strict):
    param_ratio: Annotated[
        float | None,
        Field(
            gt=0.0,
            le=1.0,
            allow_inf_nan=False,
            description="Fraction of the dense model's parameters to keep; may be left out with latency_ratio.",
        ),
    ] = None
    latency_ratio: Annotated[
        float | None,
        Field(
            gt=0.0,
            le=1.0,
            allow_inf_nan=False,
            description="Keep at most this fraction of the dense model's time per step in the 'latency' setting, "
            "predicted from a table measured on the worker's device; with param_ratio, both hold.",
        ),
    ] = None
    latency: LatencySetting = Field(
        default_factory=LatencySetting,
        description="Where latency_ratio and the 'latency' objective are measured (phase, batch, context).",
    )
    min_param_ratio: Annotated[
        float | None,
        Field(
            gt=0.0,
            le=1.0,
            allow_inf_nan=False,
            description="Multi-objective jobs only: the smallest size explored (default: half of param_ratio).",
        ),
    ] = None

    scope: Literal["total", "blocks"] = Field(
        default="total",
        description="What the ratios count: 'total' = all parameters (embeddings included); 'blocks' = only "
        "the transformer blocks', which pruning can remove (embeddings are kept whole either way).",
    )

    @property
    def latency_bound(self) -> bool:
        """Whether the job keeps a latency budget (``latency_ratio``)."""
        return self.latency_ratio is not None

    def total_ratio(self, shape: ModelShape, ratio: float) -> float:
        """``ratio`` expressed as a fraction of all parameters."""
        if self.scope == "total":
            return ratio
        dense = shape.dense_params()
        return (shape.fixed + ratio * (dense - shape.fixed)) / dense

    @model_validator(mode="after")
    def _ordered(self) -> Target:
        if self.min_param_ratio is not None and self.param_ratio is None:
            raise ValueError("min_param_ratio needs param_ratio")
        if (
            self.min_param_ratio is not None
            and self.param_ratio is not None
            and self.min_param_ratio > self.param_ratio
        ):
            raise ValueError("min_param_ratio must not exceed param_ratio")
        return self


class Calibration(_Strict):
    """Where calibration and held-out tokens come from.

    ``source`` is a text file or a directory of ``.txt``/``.md``/``.rst`` files; ``texts`` gives them
    inline. With neither, the Python documentation's topic reference bundled with CPython is used,
    so a job runs offline out of the box.
    """

    source: str | None = None
    texts: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    n_samples: Annotated[int, Field(ge=1, le=4096, description="Calibration sequences.")] = 16
    seq_len: Annotated[int, Field(ge=16, le=8192, description="Tokens per sequence.")] = 256
    heldout_samples: Annotated[int, Field(ge=1, le=4096, description="Held-out sequences for verification.")] = 16

    @model_validator(mode="after")
    def _one_source(self) -> Calibration:
        if self.source is not None and self.texts is not None:
            raise ValueError("give either 'source' or 'texts', not both")
        return self


DEFAULT_FFN_ALIGNMENT = 32


class SearchSpace(_Strict):
    """Which dimensions the search explores, and how candidates are realised."""

    depth: DepthMode = Field(
        default="sublayer",
        description="'sublayer': attention and MLP are dropped separately (FinerCut); 'layer': whole layers; "
        "'none': every sub-block keeps at least one unit.",
    )
    width: bool = Field(default=True, description="Search per-layer heads (whole KV groups) and FFN channels.")
    sparsity: Annotated[
        float, Field(ge=0.0, le=0.95, description="Largest per-layer unstructured sparsity explored; 0 disables.")
    ] = 0.0
    parameterization: Parameterization = Field(
        default="per_layer",
        description="'per_layer': a keep fraction per sub-block; 'compact': a few global shape parameters "
        "(slope over depth, attention/MLP balance, layers dropped by Block Influence, global sparsity).",
    )
    selection: SelectionCriterion = Field(
        default="wanda",
        description="Which heads and FFN channels a candidate keeps: Wanda |W|·‖X‖, magnitude, FLAP fluctuation, "
        "or the PruneNet policy trained on the weights alone (calibration-free).",
    )
    sparsity_selection: SparsityCriterion = "wanda"
    ffn_alignment: Annotated[
        int | None,
        Field(
            ge=1,
            le=4096,
            description=f"FFN channels are kept in multiples of this; null: {DEFAULT_FFN_ALIGNMENT}, or for a "
            "latency job the worker device's (128 on a GPU in 16-bit, falling back to 64 and 32 where the budget "
            "needs a finer grid).",
        ),
    ] = None
    export_format: ExportFormat = Field(
        default="per_layer",
        description="'per_layer': any architecture (loaded with prunesearch.load_pruned when layers differ); "
        "'standard': only what the family's own config expresses (whole layers dropped, one head count and one "
        "FFN width for all kept layers), so the export loads with plain from_pretrained; depth defaults to 'layer'.",
    )

    @property
    def alignment(self) -> int:
        """The FFN alignment in force: the one given, else the default (a latency job's worker sets the
        device's before it searches: ``search.candidates.prepare``)."""
        return self.ffn_alignment if self.ffn_alignment is not None else DEFAULT_FFN_ALIGNMENT

    @model_validator(mode="before")
    @classmethod
    def _standard_depth(cls, data: Any) -> Any:
        # The standard format cannot drop sub-blocks, so a standard search that leaves depth out
        # drops whole layers; one that asks for 'sublayer' is refused below.
        if isinstance(data, dict) and data.get("export_format") == names.STANDARD and "depth" not in data:
            return data | {"depth": "layer"}
        return data

    @field_validator("export_format")
    @classmethod
    def _expressible(cls, value: str, info: ValidationInfo) -> str:
        # Declared after depth and sparsity, so both are validated (and in info.data) by now.
        if value != names.STANDARD:
            return value
        if info.data.get("depth") == "sublayer":
            raise ValueError(
                "'standard' cannot be searched with depth 'sublayer': no standard config drops attention or MLP "
                "alone; use depth 'layer' (the default with 'standard') or 'none'"
            )
        if info.data.get("sparsity", 0.0) > 0:
            raise ValueError(
                "'standard' cannot be searched with sparsity: a standard config holds no unstructured sparsity "
                "(zeros in dense tensors save neither size nor time); set sparsity 0 or use 'per_layer'"
            )
        return value


class Recovery(_Strict):
    """A short distillation from the dense model into the best verified candidates, after the search.

    The winner is chosen after recovery (lowest verified metric on the held-out tokens); the exported
    model is the recovered one. Training texts come from ``source`` (default: the calibration texts);
    the held-out sequences are never trained on.
    """

    method: RecoveryMethod = Field(
        default="distill",
        description="'distill': KL(dense ‖ student) on the logits for decoders (temperature 1); for encoders "
        "the dense embeddings' cosine and pairwise similarities.",
    )
    steps: Annotated[
        int, Field(ge=1, le=MAX_RECOVERY_STEPS_HARD_LIMIT, description="Optimizer steps per finalist.")
    ] = 200
    finalists: Annotated[
        int,
        Field(ge=1, le=100, description="Best verified candidates recovered; the winner is picked after recovery."),
    ] = 2
    lora_rank: Annotated[
        int | None,
        Field(
            ge=1,
            description="Train LoRA adapters of this rank (merged into the weights before export) instead of "
            "every weight; at most the model's head size.",
        ),
    ] = None
    source: str | None = Field(
        default=None,
        description="Text file or directory to distil on (default: the calibration texts); held-out text is "
        "never trained on.",
    )
    learning_rate: Annotated[
        float | None,
        Field(
            gt=0.0,
            le=1.0,
            allow_inf_nan=False,
            description=f"AdamW's peak rate, cosine-decayed (default {FULL_LEARNING_RATE} full, "
            f"{LORA_LEARNING_RATE} with LoRA).",
        ),
    ] = None
    batch_size: Annotated[int, Field(ge=1, le=1024, description="Sequences per optimizer step.")] = 8

    @property
    def rate(self) -> float:
        """The learning rate used: the given one, else the default of full or LoRA training."""
        if self.learning_rate is not None:
            return self.learning_rate
        return LORA_LEARNING_RATE if self.lora_rank is not None else FULL_LEARNING_RATE


class TokenSchedule(_Strict):
    """Multi-fidelity scoring inside the search, for proxies that have it (``kl``; ``search.fidelity``).

    Every trial is scored on the first calibration sequences; a trial whose score is in the top
    ``promote`` share of the study's trials scored on that rung goes on to ``growth`` times as many,
    up to all of them. Seeds and the study's first ``full_trials`` trials are scored on all of them.
    Single-objective jobs only (a Pareto search scores every trial in full).
    """

    enabled: bool = Field(
        default=True, description="Score trials on a few calibration sequences first; off: every trial on all."
    )
    first_sequences: Annotated[
        int | None,
        Field(
            ge=1,
            le=4096,
            description="Calibration sequences of the first rung (default: a quarter of them; never fewer than "
            "the proxy needs, 8 for encoders).",
        ),
    ] = None
    growth: Annotated[int, Field(ge=2, le=64, description="Sequences multiply by this from one rung to the next.")] = 2
    promote: Annotated[
        float,
        Field(
            gt=0.0,
            le=1.0,
            allow_inf_nan=False,
            description="Share of the study's trials scored on a rung that go on to the next one (the best ones).",
        ),
        # 0.25: on ref-llama-7m at 50%, 60 TPE trials found the same best as with 0.5 (both seeds)
        # on 25% fewer tokens; an improving sampler's new trials mostly beat the median of older ones.
    ] = 0.25
    full_trials: Annotated[
        int,
        Field(
            ge=1,
            le=MAX_TRIALS_HARD_LIMIT,
            description="The study's first trials (seeds included) scored on every rung: what lower rungs are "
            "compared with and scaled by.",
        ),
    ] = 8


class JobSpec(_Strict):
    """A compression job. Every field except ``model`` and ``target`` has a default."""

    model: Annotated[str, Field(min_length=1, max_length=4096, description="Local model directory or hub id.")]
    revision: Annotated[str | None, Field(max_length=256)] = None
    target: Target
    n_trials: Annotated[int, Field(ge=1, le=MAX_TRIALS_HARD_LIMIT)] = 100
    proxy: str | list[str] = Field(
        # The default and the sampler's: the best verified result per GPU-second on the reference
        # models at 70% and 50% (docs/benchmarks.md, "The defaults, from these figures").
        default="kl",
        description="A proxy name (kl, tracenas, prunenet, metanet, ensemble), or a list of them whose ranks are "
        "aggregated, cheap ones prefiltering expensive ones.",
    )
    sampler: SamplerName = Field(
        default="evo",
        description="evo (EvoPress-style, the default), tpe, random, nsga2 or cmaes; a Pareto search "
        "(objectives with 'params') defaults to tpe, evo and cmaes being single-objective.",
    )
    seed: Annotated[int | None, Field(ge=0, le=2**32 - 1)] = None
    calibration: Calibration = Calibration()
    search_space: SearchSpace = SearchSpace()
    verify_top_k: Annotated[int, Field(ge=0, le=100)] = 5
    audit_size: Annotated[
        int,
        Field(
            ge=0,
            le=512,
            description="Candidates verified cheaply, stratified over proxy quantiles, for the proxy trust report "
            "(and the meta-network's training data); 0 disables the audit.",
        ),
    ] = 24
    neighbourhood_size: Annotated[
        int,
        Field(
            ge=0,
            le=64,
            description="Candidates verified where the search looked, beside the audit and only with it (the "
            "best distinct trials and perturbations of the best), every training-free proxy ranking them; 0 "
            f"disables it, otherwise at least {MIN_NEIGHBOURHOOD}.",
        ),
    ] = 12
    objectives: list[str] = Field(
        default_factory=lambda: ["score"],
        description="['score'] keeps the budget as a constraint; ['score', 'params'] searches the Pareto front "
        "between min_param_ratio and param_ratio; ['score', 'latency'] the front of score against the latency "
        "predicted in target.latency's setting, from half of latency_ratio (default 1) up to it.",
    )
    token_schedule: TokenSchedule = Field(
        default_factory=TokenSchedule,
        description="Multi-fidelity proxies (kl): a few calibration sequences for every trial, more for the "
        "promising ones.",
    )
    recovery: Recovery | None = Field(
        default=None,
        description="Distil the dense model into the best verified candidates after the search, pick the "
        "winner after recovery and export it recovered; null: export the verified best as sliced.",
    )

    @field_validator("neighbourhood_size")
    @classmethod
    def _enough_neighbours(cls, value: int) -> int:
        if 0 < value < MIN_NEIGHBOURHOOD:
            raise ValueError(
                f"neighbourhood_size must be 0 (no neighbourhood audit) or at least {MIN_NEIGHBOURHOOD}: "
                "a rank correlation needs several candidates"
            )
        return value

    @field_validator("recovery")
    @classmethod
    def _enough_finalists(cls, value: Recovery | None, info: ValidationInfo) -> Recovery | None:
        # verify_top_k is declared above, so it is validated first (absent from info.data if it was invalid).
        top_k = info.data.get("verify_top_k")
        if value is not None and top_k is not None and top_k < value.finalists:
            raise ValueError(
                f"recovery.finalists={value.finalists} needs at least as many verified candidates; "
                f"verify_top_k is {top_k} (raise it, or lower finalists)"
            )
        return value

    @field_validator("objectives")
    @classmethod
    def _known_objectives(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in names.OBJECTIVES]
        if unknown:
            raise ValueError(f"unknown objectives {unknown}; available: {', '.join(names.OBJECTIVES)}")
        if not value or value[0] != "score" or len(set(value)) != len(value):
            raise ValueError("objectives must start with 'score' and name each objective once")
        if len(value) > 2:
            raise ValueError("a Pareto search trades the score off against one objective: 'params' or 'latency'")
        return value

    @model_validator(mode="before")
    @classmethod
    def _pareto_sampler(cls, data: Any) -> Any:
        # The default sampler (evo) is single-objective: a Pareto search that names none gets TPE.
        if isinstance(data, dict) and "sampler" not in data and len(data.get("objectives") or ()) > 1:
            return data | {"sampler": "tpe"}
        return data

    @model_validator(mode="after")
    def _sampler_supports_objectives(self) -> JobSpec:
        if self.multi_objective and self.sampler in names.SINGLE_OBJECTIVE_SAMPLERS:
            raise ValueError(f"the {self.sampler} sampler is single-objective; use nsga2 or tpe for a Pareto front")
        return self

    @model_validator(mode="after")
    def _some_budget(self) -> JobSpec:
        if self.target.param_ratio is None and self.target.latency_ratio is None and not self.latency_objective:
            raise ValueError(
                "target needs param_ratio, latency_ratio or both (only objectives ['score', 'latency'] may leave "
                "both out)"
            )
        return self

    @model_validator(mode="after")
    def _latency_expressible(self) -> JobSpec:
        if self.uses_latency and self.search_space.export_format == names.STANDARD:
            raise ValueError(
                "a latency target or objective needs export_format 'per_layer': the standard grid leaves too few "
                "sizes to meet a latency budget"
            )
        return self

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def latency_objective(self) -> bool:
        """Whether the job searches the front of score against latency (``objectives`` names it)."""
        return "latency" in self.objectives

    @property
    def uses_latency(self) -> bool:
        """Whether trials need the latency model: a latency budget, or latency as an objective."""
        return self.target.latency_bound or self.latency_objective

    def latency_range(self, floor: float = 0.0) -> tuple[float, float] | None:
        """The latency budgets trials are repaired to, as fractions of the dense model's predicted
        latency; None when the job has no latency budget. A latency front samples from half the
        highest (``latency_ratio``, default 1), or just above ``floor`` (what the embeddings and LM head
        alone cost), up to the highest."""
        high = self.target.latency_ratio
        if not self.latency_objective:
            return None if high is None else (high, high)
        high = 1.0 if high is None else high
        return min(max(high / 2, floor * 1.05), high), high

    def ratio_range(self, shape: ModelShape) -> tuple[float, float]:
        """The budgets trials are repaired to, as fractions of all parameters (1.0: no parameter budget)."""
        target = self.target
        high = 1.0 if target.param_ratio is None else target.total_ratio(shape, target.param_ratio)
        if not self.multi_objective or self.latency_objective:
            return high, high
        if target.min_param_ratio is not None:
            return target.total_ratio(shape, target.min_param_ratio), high
        return max(high / 2, shape.min_param_ratio() * 1.05), high

    @field_validator("proxy")
    @classmethod
    def _known_proxy(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, str):
            if value not in names.proxy_names():
                raise ValueError(f"unknown proxy {value!r}; available: {', '.join(names.proxy_names())}")
            return value
        if not value:
            raise ValueError("a proxy list needs at least one name")
        unknown = [name for name in value if name not in names.PROXIES]
        if unknown:
            raise ValueError(f"unknown proxies {unknown} in the list; a list combines {', '.join(names.PROXIES)}")
        if len(set(value)) != len(value):
            raise ValueError("a proxy list names each proxy once")
        return value[0] if len(value) == 1 else value

    @property
    def proxy_members(self) -> tuple[str, ...]:
        """The single proxies this job's proxy consists of."""
        if isinstance(self.proxy, list):
            return tuple(self.proxy)
        return names.DEFAULT_ENSEMBLE if self.proxy == names.ENSEMBLE else (self.proxy,)

    @property
    def proxy_label(self) -> str:
        """The name the job's score is recorded under: the proxy's, or "ensemble" for a list."""
        return self.proxy if isinstance(self.proxy, str) else names.ENSEMBLE


ModelKind = Literal["local", "hub"]


def model_kind(model: str) -> ModelKind:
    """A path that exists, or that looks like one (absolute, ``./``, ``~``), is local; else a hub id."""
    if model.startswith(("/", ".", "~")) or Path(model).exists():
        return "local"
    if _HUB_ID.match(model):
        return "hub"
    raise InvalidJobSpec(f"model {model!r} is neither an existing directory nor a valid hub id (owner/name)")


def read_local_config(model: str) -> dict[str, Any]:
    """Read ``config.json`` of a local model directory, with an error message a user can act on."""
    path = Path(model).expanduser()
    if path.is_file():
        raise InvalidJobSpec(f"model {model!r} is a file; give the directory that holds its config.json")
    if not path.is_dir():
        raise InvalidJobSpec(f"model directory {model!r} does not exist")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise InvalidJobSpec(f"model directory {model!r} has no config.json")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as error:
        raise InvalidJobSpec(f"cannot read {config_file}: {error}") from error
    if not isinstance(config, dict):
        raise InvalidJobSpec(f"{config_file} is not a JSON object")
    return config


def check_job(spec: JobSpec) -> ModelShape | None:
    """Check what can be checked before a worker loads the model.

    The calibration source exists. For a local model directory: it exists, its family is supported,
    the budget is reachable and the calibration texts give enough samples; returns its shape. A hub
    id must be cached or the hub reachable; the rest is checked by the worker that downloads it;
    returns ``None``.
    """
    source = spec.calibration.source
    if source is not None and not Path(source).expanduser().exists():
        raise InvalidJobSpec(f"calibration source {source!r} does not exist", field="calibration.source")
    recovery_source = spec.recovery.source if spec.recovery is not None else None
    if recovery_source is not None and not Path(recovery_source).expanduser().exists():
        raise InvalidJobSpec(f"recovery source {recovery_source!r} does not exist", field="recovery.source")
    if model_kind(spec.model) == "hub":
        check_hub_model(spec.model, spec.revision)
        return None
    config = read_local_config(spec.model)
    shape = read_shape(config)
    check_budgets(spec, shape)
    check_latency(spec, shape, max_positions(config))
    check_recovery(spec, shape)
    calibration = spec.calibration
    check_calibration_size(
        iter_texts(calibration.source, calibration.texts),
        Path(spec.model).expanduser(),
        causal=shape.causal,
        seq_len=calibration.seq_len,
        n_calibration=calibration.n_samples,
        n_heldout=calibration.heldout_samples,
    )
    return shape


def max_positions(config: dict[str, Any]) -> int | None:
    """The longest sequence a model's config allows, where it states one."""
    value = config.get("max_position_embeddings") or config.get("n_positions")
    return int(value) if isinstance(value, int) and value > 0 else None


def check_latency(spec: JobSpec, shape: ModelShape, positions: int | None) -> None:
    """Refuse a latency setting this model cannot run: decoding an encoder, or a context longer than
    the model's positions (decode's new token needs one more)."""
    if not spec.uses_latency:
        return
    setting = spec.target.latency
    if setting.phase == "decode" and not shape.causal:
        raise InvalidJobSpec(
            "target.latency.phase 'decode' needs a decoder; this model is an encoder: use 'prefill'",
            field="target.latency.phase",
        )
    needed = setting.context + (1 if setting.phase == "decode" else 0)
    if positions is not None and needed > positions:
        raise InvalidJobSpec(
            f"target.latency.context {setting.context} is beyond this model's {positions} positions",
            field="target.latency.context",
        )


def check_recovery(spec: JobSpec, shape: ModelShape) -> None:
    """Refuse a LoRA rank above the model's head size: the smallest width a kept matrix can have is
    one head (a key or value projection of one KV group, or a head's slice of GPT-2's fused matrix),
    and a rank above a matrix's smaller side adds parameters that cannot add rank."""
    recovery = spec.recovery
    if recovery is None or recovery.lora_rank is None:
        return
    limit = min(shape.head_dim, shape.hidden_size)
    if recovery.lora_rank > limit:
        raise InvalidJobSpec(
            f"recovery.lora_rank={recovery.lora_rank} is larger than this model allows: at most {limit}, "
            "its head size (the smallest width a kept matrix can have)",
            field="recovery.lora_rank",
        )


def check_budgets(spec: JobSpec, shape: ModelShape) -> None:
    """Refuse a job whose budget (or lowest budget, for a Pareto search) repair cannot meet on ``shape``."""
    lowest = spec.target.min_param_ratio if spec.multi_objective and spec.target.min_param_ratio else None
    space = spec.search_space
    if space.export_format == names.STANDARD:
        # Standard sizes leave gaps: a Pareto search samples every budget in between, so check them all.
        low, high = spec.ratio_range(shape)
        check_standard_budget(shape, low, high, ffn_alignment=space.alignment, depth=space.depth, width=space.width)
        return
    for ratio in (spec.target.param_ratio, lowest):
        if ratio is not None:
            check_budget(shape, spec.target.total_ratio(shape, ratio), ffn_alignment=spec.search_space.alignment)


def check_budget(shape: ModelShape, param_ratio: float, *, ffn_alignment: int) -> None:
    """Refuse budgets that repair cannot meet within its tolerance."""
    floor = shape.min_param_ratio()
    if param_ratio <= floor * (1 + REPAIR_TOLERANCE):
        raise BudgetInfeasible(
            f"param_ratio {param_ratio} is unreachable: embeddings alone are {floor:.3f} of this model's parameters"
        )
    window = 2 * REPAIR_TOLERANCE * param_ratio * shape.dense_params()
    unit = sum(rows * cols for rows, cols in shape.mlp_matrices(min(ffn_alignment, shape.intermediate_size)))
    if unit > window:
        finest = max(1, int(window // (unit / min(ffn_alignment, shape.intermediate_size))))
        raise BudgetInfeasible(
            f"search_space.ffn_alignment={ffn_alignment} is too coarse to land within ±{REPAIR_TOLERANCE:.0%} "
            f"of the budget on this model; use {finest} or less"
        )
