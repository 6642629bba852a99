"""The candidate builder: what turns a proposal into a selection of units, shared by every trial.

``prepare`` computes it once per (model, calibration, criterion): the tokens, the dense statistics,
the units' importance, the layer signals and the search space. It builds no proxy: an export needs
only ``SearchContext.selection``; a search asks for the proxy itself (``search.trials.job_proxy``).
``prepare_job`` is the whole way from a job spec to a context: load, check, prepare.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from search import names
from search.adapters import Block
from search.arch import ArchConfig, ModelShape
from search.calibration import TokenSet, build_token_set
from search.criteria import IMPORTANCE, compute_importance
from search.loading import LoadedModel, ModelCache
from search.placement import MaxMemory
from search.repair import Proposal, repair
from search.selection import Selection, SparsityScorer, select_units
from search.space import LAYER_SIGNALS, LayerSignals, Space
from search.spec import JobSpec, check_budgets, check_job, check_recovery
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

    @property
    def shape(self) -> ModelShape:
        return self.loaded.adapter.shape

    def ratio_range(self) -> tuple[float, float]:
        """The budgets trials are repaired to, as fractions of all parameters."""
        return self.spec.ratio_range(self.shape)

    def candidate(self, proposal: Proposal, param_ratio: float) -> Selection:
        return self.selection(self.arch(proposal, param_ratio))

    def arch(self, proposal: Proposal, param_ratio: float) -> ArchConfig:
        """The architecture ``proposal`` is repaired to at this budget (no units selected yet)."""
        space = self.spec.search_space
        # A standard job repairs onto the standard grid: per-layer repair would break uniformity.
        snap = repair_standard if space.export_format == names.STANDARD else repair
        return snap(
            self.shape,
            proposal,
            param_ratio,
            ffn_alignment=space.ffn_alignment,
            depth=space.depth,
            width=space.width,
        )

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
    return prepare(loaded, spec, batch_size=batch_size)


def prepare(
    loaded: LoadedModel, spec: JobSpec, *, batch_size: int = DEFAULT_BATCH_SIZE, tokens: TokenSet | None = None
) -> SearchContext:
    """``tokens`` overrides the spec's calibration texts (benchmarks use random tokens)."""
    started = time.perf_counter()
    adapter = loaded.adapter
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
    return SearchContext(loaded, spec, tokens, stats, importance, space, elapsed, batch_size)


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
