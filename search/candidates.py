"""The candidate builder: what turns a proposal into a selection of units, shared by every trial.

``prepare`` computes it once per (model, calibration, criterion): the tokens, the dense statistics,
the units' importance, the layer signals and the search space. It builds no proxy: an export needs
only ``SearchContext.selection``; a search asks for the proxy itself (``search.trials.job_proxy``).
``prepare_job`` is the whole way from a job spec to a context: load, check, prepare.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from search import names
from search.adapters import Block
from search.arch import ArchConfig, LayerArch, ModelShape
from search.calibration import TokenSet, build_token_set
from search.criteria import IMPORTANCE, compute_importance
from search.errors import BudgetInfeasible
from search.latency import LatencyModel, device_alignment, latency_model, with_alignment
from search.loading import LoadedModel, ModelCache
from search.placement import MaxMemory
from search.precision import export_dtype
from search.repair import DEFAULT_TOLERANCE as REPAIR_TOLERANCE
from search.repair import Proposal, repair, repair_within
from search.selection import Selection, SparsityScorer, select_units
from search.space import LAYER_SIGNALS, LayerSignals, Space
from search.spec import JobSpec, check_budgets, check_job, check_latency, check_recovery, max_positions
from search.standard import repair_standard
from search.stats import DenseStats, cached_stats
from search.units import Importance

DEFAULT_BATCH_SIZE = 8
_OUTLIER_MULTIPLE = 5.0  # OWL's M: a weight is an outlier above M × its layer's mean Wanda score


@dataclass
class SearchContext:
    """Everything trials share but the proxy. Built once per (model, calibration, criterion); reused across jobs."""

    loaded: LoadedModel
    spec: JobSpec
    tokens: TokenSet
    stats: DenseStats
    importance: Importance
    space: Space
    prepare_seconds: float
    batch_size: int = DEFAULT_BATCH_SIZE
    latency: LatencyModel | None = None  # the measured latency model of a job with a latency budget or objective

    @property
    def shape(self) -> ModelShape:
        return self.loaded.adapter.shape

    def ratio_range(self) -> tuple[float, float]:
        """The budgets trials are repaired to, as fractions of all parameters."""
        return self.spec.ratio_range(self.shape)

    def candidate(self, proposal: Proposal, param_ratio: float, latency_ratio: float | None = None) -> Selection:
        return self.selection(self.arch(proposal, param_ratio, latency_ratio))

    def arch(self, proposal: Proposal, param_ratio: float, latency_ratio: float | None = None) -> ArchConfig:
        """The architecture ``proposal`` is repaired to at this budget (no units selected yet).

        With a latency budget (``latency_ratio``, default the job's highest), the parameter budget
        becomes a cap: the proposal is repaired to the parameter budget as usual, and where that
        candidate is predicted slower than the budget, scaled down until it fits both."""
        space = self.spec.search_space
        # A standard job repairs onto the standard grid: per-layer repair would break uniformity.
        snap = repair_standard if space.export_format == names.STANDARD else repair
        options = {"ffn_alignment": space.alignment, "depth": space.depth, "width": space.width}
        if self.latency is None:
            return snap(self.shape, proposal, param_ratio, **options)
        latency, bound = self.latency, latency_ratio if latency_ratio is not None else self.latency_high()
        capped = param_ratio < 1.0
        if capped:
            arch = snap(self.shape, proposal, param_ratio, **options)
            if bound is None or latency.fits(arch.layers, bound):
                return arch
        cap = param_ratio * (1 + REPAIR_TOLERANCE) * self.shape.dense_params()
        counted = self.shape

        def fits(layers: Sequence[LayerArch]) -> bool:
            within = not capped or counted.count_params(ArchConfig(tuple(layers))) <= cap
            return within and (bound is None or latency.fits(layers, bound))

        return repair_within(self.shape, proposal, fits, **options)

    def seed_ratio(self) -> float:
        """The parameter budget the baseline seeds are built for: the job's, or for a latency budget
        alone, what uniform width keeps under it (so ShortGPT's seed drops as many layers as that)."""
        high = self.ratio_range()[1]
        if self.latency is None or high < 1.0:
            return high
        try:
            uniform = self.arch(Proposal.uniform(self.shape.num_layers), high)
        except BudgetInfeasible:
            # Where a kept layer's fixed cost dominates (decoding a small model: kernel launches),
            # no uniform width is fast enough and only depth is; latency then falls with depth about
            # as parameters do, so the seeds get the latency budget's share of the parameters.
            bound = self.latency_high()
            assert bound is not None
            return min(high, bound)
        return self.shape.count_params(uniform) / self.shape.dense_params()

    def latency_range(self) -> tuple[float, float] | None:
        """The latency budgets trials are repaired to (ratios of the dense model's predicted step); None
        without a latency model."""
        if self.latency is None:
            return None
        return self.spec.latency_range(self.latency.floor_ratio())

    def latency_high(self) -> float | None:
        """The job's highest latency budget (a ratio of the dense model's predicted step), if it has one."""
        budgets = self.latency_range()
        return budgets[1] if budgets is not None else None

    def selection(self, arch: ArchConfig) -> Selection:
        """Which units and weights ``arch`` keeps, by the job's criteria."""
        scorer = SparsityScorer(self.spec.search_space.sparsity_selection, self.stats) if arch.sparse else None
        return select_units(self.importance, arch, self.shape.group_size, scorer)


def prepare_job(
    spec: JobSpec,
    *,
    models: ModelCache | None = None,
    device: str | None = None,
    max_memory: MaxMemory | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> SearchContext:
    """Load the job's model (through ``models``, which keeps it for the next job), check the job
    against it, and prepare its candidate builder. Every caller (worker, chunk, export, CLI) goes
    through here, so they all check the same things. ``max_memory`` (device -> size) splits the
    model over several devices (``search.loading.load_model``)."""
    check_job(spec)  # the calibration source; for a local model, its family and budget from its config
    models = models if models is not None else ModelCache()
    loaded = models.get(spec.model, spec.revision, device=device, max_memory=max_memory)
    check_budgets(spec, loaded.adapter.shape)  # a hub model is only known once loaded
    check_recovery(spec, loaded.adapter.shape)
    check_latency(spec, loaded.adapter.shape, max_positions(loaded.adapter.model.config.to_dict()))
    return prepare(loaded, spec, batch_size=batch_size)


def prepare(
    loaded: LoadedModel, spec: JobSpec, *, batch_size: int = DEFAULT_BATCH_SIZE, tokens: TokenSet | None = None
) -> SearchContext:
    """``tokens`` overrides the spec's calibration texts (benchmarks use random tokens)."""
    started = time.perf_counter()
    adapter = loaded.adapter
    latency = None
    if spec.uses_latency:
        dtype = export_dtype(adapter.model, loaded.source)  # timed in the export's precision
        spec = _device_alignment(spec, adapter.shape, adapter.device, dtype)
        latency = latency_model(adapter, loaded.artifacts, spec, dtype)
    if tokens is None:
        tokens = build_token_set(loaded.tokenizer, spec.calibration, causal=adapter.shape.causal)
    artifacts = loaded.artifacts
    stats = cached_stats(adapter, tokens, artifacts, batch_size=batch_size)
    importance = compute_importance(
        adapter, stats, spec.search_space.selection, seed=spec.seed or 0, artifacts=artifacts, digest=tokens.digest
    )
    signals = artifacts.get(
        LAYER_SIGNALS,
        tokens.digest,
        lambda: _layer_signals(loaded, stats, artifacts.peek(IMPORTANCE, ("wanda", tokens.digest, None))),
    )
    space = Space(adapter.shape, spec.search_space, signals)
    elapsed = time.perf_counter() - started
    return SearchContext(loaded, spec, tokens, stats, importance, space, elapsed, batch_size, latency)


def _device_alignment(spec: JobSpec, shape: ModelShape, device: torch.device, dtype: torch.dtype) -> JobSpec:
    """A latency job that names no FFN alignment gets the device's (``search.latency.device_alignment``):
    the coarsest that its budget check accepts."""
    if spec.search_space.ffn_alignment is not None:
        return spec
    for alignment in device_alignment(device, dtype, shape.intermediate_size):
        aligned = with_alignment(spec, alignment)
        try:
            check_budgets(aligned, shape)
        except BudgetInfeasible:
            continue
        return aligned
    return spec


@torch.no_grad()
def _layer_signals(loaded: LoadedModel, stats: DenseStats, wanda: Importance | None) -> LayerSignals:
    adapter = loaded.adapter
    if wanda is None:
        wanda = compute_importance(adapter, stats, "wanda")
    attention = torch.stack([groups.sum() for groups in wanda.head_groups])
    outliers = []
    for layer in range(adapter.shape.num_layers):
        above, total = 0, 0
        for block in (Block(layer, "attention"), Block(layer, "mlp")):
            for name, module in adapter.linears(block).items():
                weight = adapter.weight(module).detach()
                norms = stats.inputs[(layer, block.kind, name)].norm.to(weight.device)
                scores = weight.float().abs() * norms  # (out, in), on the model's device
                above += int((scores > _OUTLIER_MULTIPLE * scores.mean()).sum())
                total += scores.numel()
        outliers.append(above / total)
    return LayerSignals(stats.block_influence, attention / attention.mean(), torch.tensor(outliers))
