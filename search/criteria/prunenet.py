"""``prunenet``: the PruneNet policy, a selection criterion from the model's own weights (calibration-free).

The authors' policy (``SparsityPredictor``) scores FFN row i of a layer as α_i = σ(⟨w_i, u⟩ + c)
with one direction u in hidden space shared by every layer (methods.md §2.1). Here, row logits
s_i = ⟨w_i/‖w_i‖, u⟩ + b·log‖w_i‖: the authors' direction u on the row's direction, plus a norm term
(our addition: a direction alone cannot prefer large rows, and large rows carry the large singular
values; u = 0, b = 1 starts as magnitude ranking). c is dropped: a shift changes no ranking.

Trained by REINFORCE on the weights only: a sample keeps k rows drawn without replacement by
Gumbel-top-k, whose ordered Plackett-Luce log-probability is exact (the authors' Σ log keep_prob
is not); the reward depends on the kept set only, so the ordered-sample gradient is unbiased for
it. Reward: −KS(σ(W), σ(W[S])); baseline: the mean reward of the other samples of the same
(layer, ratio). Like the authors, the best checkpoint is kept (here by the mean KS of
deterministic top-k at three keep ratios over all layers). Rows are kept by deterministic top-k of
s (not the authors' noisy multinomial).

FFN rows are scored on the first FFN matrix (Llama ``gate_proj``, GPT-2 ``c_fc``, BERT
``intermediate``), as the authors score only W_gate; KV groups (our extension) on the columns of
the attention output projection, a group's logit being the mean of its columns'. The PruneNet
proxy (``search.proxies.prunenet``) tabulates spectral distances in this policy's order.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import torch

from search.adapters import Adapter
from search.artifacts import Artifact, ModelArtifacts
from search.criteria.base import Criterion
from search.spectra import (
    attention_columns,
    ffn_matrix,
    kept_spectrum,
    ks_distance,
    linear_algebra,
    spectrum,
    unit_rows,
)
from search.stats import DenseStats
from search.units import Importance

_EVALUATION_RATIOS = (0.35, 0.5, 0.7)  # keep ratios at which training checkpoints are compared
_EVALUATE_EVERY = 8


@dataclass(frozen=True)
class SpectralPolicy:
    """The trained policy: one direction and one norm weight for FFN rows, the same for head groups."""

    ffn_direction: torch.Tensor  # (H,)
    ffn_norm_weight: float
    attention_direction: torch.Tensor  # (H,)
    attention_norm_weight: float
    seed: int
    log: dict[str, float] = field(default_factory=dict)  # training figures, for reports

    def row_scores(self, adapter: Adapter, layer: int) -> torch.Tensor:
        """(I,) logits of the FFN rows of ``layer``; higher = kept first."""
        return _logits(ffn_matrix(adapter, layer), self.ffn_direction, self.ffn_norm_weight)

    def group_scores(self, adapter: Adapter, layer: int) -> torch.Tensor:
        """(KV,) logits of the KV groups of ``layer`` (mean over the group's output-projection columns)."""
        columns = attention_columns(adapter, layer)  # (heads·d, H)
        logits = _logits(columns, self.attention_direction, self.attention_norm_weight)
        return logits.view(adapter.shape.num_kv_heads, -1).mean(1)

    def importance(self, adapter: Adapter) -> Importance:
        """The policy as a structured selection criterion (``search_space.selection: "prunenet"``)."""
        layers = range(adapter.shape.num_layers)
        return Importance(
            tuple(self.group_scores(adapter, i) for i in layers), tuple(self.row_scores(adapter, i) for i in layers)
        )


# The trained policy per seed: it depends on the weights only, and costs minutes on large models.
POLICY: Artifact[int, SpectralPolicy] = Artifact(
    "prunenet-policy",
    file=lambda seed: f"prunenet-policy-seed{seed}",
    encode=dataclasses.asdict,
    decode=lambda state: SpectralPolicy(**state),
)


def policy_for(adapter: Adapter, artifacts: ModelArtifacts, seed: int) -> SpectralPolicy:
    """The policy trained once per (model, seed)."""
    return artifacts.get(POLICY, seed, lambda: train_policy(adapter, seed=seed))


class PolicyCriterion(Criterion):
    name = "prunenet"
    seeded = True

    def importance(self, adapter: Adapter, stats: DenseStats, *, seed: int, artifacts: ModelArtifacts) -> Importance:
        return policy_for(adapter, artifacts, seed).importance(adapter)


def _logits(rows: torch.Tensor, direction: torch.Tensor, norm_weight: float | torch.Tensor) -> torch.Tensor:
    """s_i = ⟨w_i/‖w_i‖, u⟩ + b·log‖w_i‖ for every row w_i of ``rows`` (N, H)."""
    norms = rows.norm(dim=1).clamp(min=1e-12)
    return rows @ direction.to(rows.dtype) / norms + norm_weight * norms.log()


@dataclass(frozen=True)
class _Settings:
    steps: int
    layers_per_step: int
    samples: int
    lr: float
    ratios: tuple[float, float]


def train_policy(
    adapter: Adapter,
    *,
    seed: int = 0,
    steps: int = 16,
    layers_per_step: int = 2,
    samples: int = 4,
    lr: float = 0.03,
    ratios: tuple[float, float] = (0.3, 0.9),
    max_seconds: float = 30.0,
) -> SpectralPolicy:
    """REINFORCE on the weights alone (module docstring). Deterministic under ``seed``.

    Each step draws ``layers_per_step`` layers, a keep ratio for each, and ``samples`` kept sets;
    ``max_seconds`` bounds the FFN and the attention policy's training together.
    """
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    shape = adapter.shape
    settings = _Settings(steps, layers_per_step, samples, lr, ratios)
    with linear_algebra(adapter.device) as device:
        ffn = [ffn_matrix(adapter, i).to(device) for i in range(shape.num_layers)]
        columns = [attention_columns(adapter, i).to(device) for i in range(shape.num_layers)]
        group = shape.group_size * shape.head_dim
        ffn_policy, ffn_log = _Reinforce(ffn, 1, generator, settings).run(started + max_seconds * 0.7)
        attention_policy, attention_log = _Reinforce(columns, group, generator, settings).run(started + max_seconds)
    log = {f"ffn_{k}": v for k, v in ffn_log.items()} | {f"attention_{k}": v for k, v in attention_log.items()}
    log["seconds"] = time.perf_counter() - started
    return SpectralPolicy(ffn_policy[0], ffn_policy[1], attention_policy[0], attention_policy[1], seed, log)


class _Reinforce:
    """Train (u, b) so that the top-k units of s = ⟨ŵ, u⟩ + b·log‖w‖ preserve each matrix's spectrum.

    ``unit`` rows form one selectable unit (1 for FFN rows, g·d columns for a KV group); a unit's
    logit is the mean of its rows'. The log holds the mean KS distance of deterministic top-k at a
    few keep ratios, before and after training.
    """

    def __init__(
        self, matrices: list[torch.Tensor], unit: int, generator: torch.Generator, settings: _Settings
    ) -> None:
        self.matrices, self.unit, self.generator, self.settings = matrices, unit, generator, settings
        self.device = matrices[0].device
        self.units = matrices[0].shape[0] // unit
        self.direction = torch.zeros(matrices[0].shape[1], dtype=torch.float64, device=self.device, requires_grad=True)
        self.norm_weight = torch.ones((), dtype=torch.float64, device=self.device, requires_grad=True)
        self.grams = [m.t() @ m for m in matrices]
        self.spectra = [spectrum(g, min(m.shape)) for g, m in zip(self.grams, matrices, strict=True)]

    def run(self, deadline: float) -> tuple[tuple[torch.Tensor, float], dict[str, float]]:
        log = {"steps": 0.0, "ks_before": math.nan, "ks_after": math.nan}
        if self.units < 2:  # one KV group: nothing to choose between
            return (self.direction.detach().cpu(), float(self.norm_weight.detach())), log
        best = (self._evaluate(), self.direction.detach().clone(), float(self.norm_weight.detach()))
        log["ks_before"] = best[0]
        optimizer = torch.optim.Adam([self.direction, self.norm_weight], lr=self.settings.lr)
        steps = self.settings.steps
        for step in range(steps):
            if time.perf_counter() > deadline:
                break
            optimizer.zero_grad()
            self._loss().backward()
            optimizer.step()
            log["steps"] = float(step + 1)
            if (step + 1) % _EVALUATE_EVERY == 0 or step + 1 == steps:
                # Like the authors, keep the best checkpoint (here by a deterministic evaluation).
                current = self._evaluate()
                if current < best[0]:
                    best = (current, self.direction.detach().clone(), float(self.norm_weight.detach()))
        log["ks_after"] = best[0]
        return (best[1].cpu(), best[2]), log

    def _unit_logits(self, rows: torch.Tensor) -> torch.Tensor:
        return _logits(rows, self.direction, self.norm_weight).view(self.units, self.unit).mean(1)  # (U,)

    def _distance(self, index: int, order: torch.Tensor) -> float:
        rows = self.matrices[index]
        return ks_distance(self.spectra[index], kept_spectrum(rows, self.grams[index], unit_rows(order, self.unit)))

    def _keep(self, ratio: float) -> int:
        return min(self.units - 1, max(1, round(ratio * self.units)))

    def _evaluate(self) -> float:
        """Mean KS distance of deterministic top-k at a few keep ratios (lower is better)."""
        with torch.no_grad():
            distances = []
            for index, rows in enumerate(self.matrices):
                ranked = torch.sort(self._unit_logits(rows), descending=True, stable=True).indices
                distances += [self._distance(index, ranked[: self._keep(r)]) for r in _EVALUATION_RATIOS]
            return sum(distances) / len(distances)

    def _loss(self) -> torch.Tensor:
        """One REINFORCE step's loss over a few layers, each at a random keep ratio."""
        settings, generator = self.settings, self.generator
        loss = torch.zeros((), dtype=torch.float64, device=self.device)
        chosen = torch.randperm(len(self.matrices), generator=generator)[: settings.layers_per_step].tolist()
        for index in chosen:
            low, high = settings.ratios
            k = self._keep(low + (high - low) * float(torch.rand((), generator=generator)))
            logits = self._unit_logits(self.matrices[index])
            noise = torch.rand(settings.samples, self.units, generator=generator, dtype=torch.float64).to(self.device)
            gumbel = -torch.log(-torch.log(noise.clamp(min=1e-300)))
            orders = torch.argsort(logits.detach() + gumbel, dim=1, descending=True)[:, :k]  # (S, k)
            log_probs = torch.stack([_plackett_luce(logits, order) for order in orders])
            rewards = torch.tensor(
                [-self._distance(index, order) for order in orders], dtype=torch.float64, device=self.device
            )
            baseline = (rewards.sum() - rewards) / max(settings.samples - 1, 1)  # leave-one-out
            loss = loss - ((rewards - baseline) * log_probs).mean()
        return loss / len(chosen)


def _plackett_luce(logits: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """log P(the first len(order) picks are ``order``, in that order) under Plackett-Luce(logits)."""
    shifted = logits - logits.max().detach()
    weights = shifted.exp()
    picked = weights[order]
    before = torch.cumsum(picked, 0) - picked  # mass already drawn before each pick
    remaining = (weights.sum() - before).clamp(min=1e-300)
    return (shifted[order] - remaining.log()).sum()
