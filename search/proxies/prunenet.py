"""PruneNet: a calibration-free proxy and selection criterion from the model's own weights.

The authors' policy (``SparsityPredictor``) scores FFN row i of a layer as α_i = σ(⟨w_i, u⟩ + c)
with one direction u in hidden space shared by every layer (methods.md §2.1). Here:

- **Policy.** Row logits s_i = ⟨w_i/‖w_i‖, u⟩ + b·log‖w_i‖: the authors' direction u on the row's
  direction, plus a norm term (our addition: a direction alone cannot prefer large rows, and large
  rows carry the large singular values; u = 0, b = 1 starts as magnitude ranking). c is dropped:
  a shift changes no ranking. Trained by REINFORCE on the weights only: a sample keeps k rows
  drawn without replacement by Gumbel-top-k, whose ordered Plackett-Luce log-probability is exact
  (the authors' Σ log keep_prob is not); the reward depends on the kept set only, so the
  ordered-sample gradient is unbiased for it. Reward: −KS(σ(W), σ(W[S])); baseline: the mean
  reward of the other samples of the same (layer, ratio). Like the authors, the best checkpoint is
  kept (here by the mean KS of deterministic top-k at three keep ratios over all layers).
  Rows are kept by deterministic top-k of s (not the authors' noisy multinomial).
- **Score.** −mean over sub-blocks of w_b · D_b, where D_b is the Kolmogorov-Smirnov distance
  between the singular-value spectra of the full and the kept matrix (−KS, not the authors' 1/KS,
  which is unbounded). A dropped sub-block has D = 1. D comes from a table over (layer, keep
  fraction on a grid), built once with one incremental Gram matrix per layer, and interpolated
  linearly between grid points, so a trial costs O(L) lookups and no SVD.
- **Attention** (our extension): the same construction on the columns of the attention output
  projection, grouped into whole KV groups (one table entry per group count, no interpolation).
  Whether it helps is measured in ``docs/proxies.md``; ``attention_weight=0`` switches it off.
- **Sparsity** (our extension): a second table per layer over unstructured row-wise magnitude
  sparsity of the full matrix, combined as D = 1 − (1 − D_width)(1 − D_sparsity), an
  independence approximation.

The FFN matrix is the first one of the MLP (Llama ``gate_proj``, GPT-2 ``c_fc``, BERT
``intermediate``), as the authors score only W_gate.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from search.adapters import Adapter, Block
from search.arch import ArchConfig
from search.artifacts import persisted
from search.errors import ProxyError
from search.proxies.base import COST_LOOKUP, ProxyScore
from search.selection import Importance, Selection

GRID = 16  # keep fractions j/GRID, j = 0..GRID, for the FFN table
SPARSITY_GRID = tuple(i / 20 for i in range(20))  # 0.00 .. 0.95 for the sparsity table
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


def ffn_matrix(adapter: Adapter, layer: int) -> torch.Tensor:
    """The first FFN matrix of ``layer`` as (I, H), float64 on the CPU."""
    first = next(iter(adapter.linears(Block(layer, "mlp")).values()))
    return adapter.weight(first).detach().to("cpu", torch.float64)


def attention_columns(adapter: Adapter, layer: int) -> torch.Tensor:
    """The attention output projection's input columns as rows: (heads·d, H), float64 on the CPU."""
    return adapter.weight(adapter.attention_output(layer)).detach().to("cpu", torch.float64).t()


def _logits(rows: torch.Tensor, direction: torch.Tensor, norm_weight: float | torch.Tensor) -> torch.Tensor:
    """s_i = ⟨w_i/‖w_i‖, u⟩ + b·log‖w_i‖ for every row w_i of ``rows`` (N, H)."""
    norms = rows.norm(dim=1).clamp(min=1e-12)
    return rows @ direction.to(rows.dtype) / norms + norm_weight * norms.log()


def ks_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov-Smirnov statistic sup_x |F_a(x) − F_b(x)| (as scipy's ks_2samp)."""
    if a.numel() == 0 or b.numel() == 0:
        return 1.0
    a, b = torch.sort(a.double()).values, torch.sort(b.double()).values
    points = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, points, right=True).double() / a.numel()
    cdf_b = torch.searchsorted(b, points, right=True).double() / b.numel()
    return float((cdf_a - cdf_b).abs().max())


def _spectrum(gram: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` singular values of a matrix with this Gram matrix (its top eigenvalues' roots)."""
    values = torch.linalg.eigvalsh(gram)  # ascending
    return values[-count:].clamp(min=0).sqrt() if count > 0 else values[:0]


# --- training ---------------------------------------------------------------------------------


@contextmanager
def one_cpu_thread() -> Iterator[None]:
    """Small CPU tensor work (H × H spectra, the meta-network's training) on one thread.

    On a shared CPU, several threads per small operation were measured 2-25× slower than one.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextmanager
def _linear_algebra(device: torch.device) -> Iterator[torch.device]:
    """Where the spectra are computed: the model's GPU, or one CPU thread."""
    if device.type == "cuda":
        yield device
        return
    with one_cpu_thread():
        yield torch.device("cpu")


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
    with _linear_algebra(adapter.device) as device:
        ffn = [ffn_matrix(adapter, i).to(device) for i in range(shape.num_layers)]
        columns = [attention_columns(adapter, i).to(device) for i in range(shape.num_layers)]
        group = shape.group_size * shape.head_dim
        settings = dict(
            generator=generator, steps=steps, layers_per_step=layers_per_step, samples=samples, lr=lr, ratios=ratios
        )
        ffn_policy, ffn_log = _reinforce(ffn, 1, deadline=started + max_seconds * 0.7, **settings)
        attention_policy, attention_log = _reinforce(columns, group, deadline=started + max_seconds, **settings)
    log = {f"ffn_{k}": v for k, v in ffn_log.items()} | {f"attention_{k}": v for k, v in attention_log.items()}
    log["seconds"] = time.perf_counter() - started
    return SpectralPolicy(ffn_policy[0], ffn_policy[1], attention_policy[0], attention_policy[1], seed, log)


def _reinforce(
    matrices: list[torch.Tensor],
    unit: int,
    *,
    generator: torch.Generator,
    steps: int,
    layers_per_step: int,
    samples: int,
    lr: float,
    ratios: tuple[float, float],
    deadline: float,
) -> tuple[tuple[torch.Tensor, float], dict[str, float]]:
    """Train (u, b) so that the top-k units of s = ⟨ŵ, u⟩ + b·log‖w‖ preserve each matrix's spectrum.

    ``unit`` rows form one selectable unit (1 for FFN rows, g·d columns for a KV group); a unit's
    logit is the mean of its rows'. The log holds the mean KS distance of deterministic top-k at
    half the units, before and after training.
    """
    device = matrices[0].device
    hidden = matrices[0].shape[1]
    units = matrices[0].shape[0] // unit
    direction = torch.zeros(hidden, dtype=torch.float64, device=device, requires_grad=True)
    norm_weight = torch.ones((), dtype=torch.float64, device=device, requires_grad=True)
    grams = [m.t() @ m for m in matrices]
    spectra = [_spectrum(g, min(m.shape)) for g, m in zip(grams, matrices, strict=True)]

    def evaluate() -> float:
        """Mean KS distance of deterministic top-k at a few keep ratios (lower is better)."""
        with torch.no_grad():
            distances = []
            for rows, gram, spectrum in zip(matrices, grams, spectra, strict=True):
                logits = _logits(rows, direction, norm_weight).view(units, unit).mean(1)
                ranked = torch.sort(logits, descending=True, stable=True).indices
                for ratio in _EVALUATION_RATIOS:
                    order = ranked[: min(units - 1, max(1, round(ratio * units)))]
                    distances.append(ks_distance(spectrum, _kept_spectrum(rows, gram, _unit_rows(order, unit))))
            return sum(distances) / len(distances)

    log = {"steps": 0.0, "ks_before": math.nan, "ks_after": math.nan}
    if units < 2:  # one KV group: nothing to choose between
        return (direction.detach().cpu(), float(norm_weight.detach())), log
    best = (evaluate(), direction.detach().clone(), float(norm_weight.detach()))
    log["ks_before"] = best[0]
    optimizer = torch.optim.Adam([direction, norm_weight], lr=lr)
    for step in range(steps):
        if time.perf_counter() > deadline:
            break
        optimizer.zero_grad()
        loss = torch.zeros((), dtype=torch.float64, device=device)
        chosen = torch.randperm(len(matrices), generator=generator)[:layers_per_step].tolist()
        for index in chosen:
            rows = matrices[index]
            ratio = ratios[0] + (ratios[1] - ratios[0]) * float(torch.rand((), generator=generator))
            k = min(units - 1, max(1, round(ratio * units)))
            logits = _logits(rows, direction, norm_weight).view(units, unit).mean(1)  # (U,)
            noise = torch.rand(samples, units, generator=generator, dtype=torch.float64).to(device)
            gumbel = -torch.log(-torch.log(noise.clamp(min=1e-300)))
            orders = torch.argsort(logits.detach() + gumbel, dim=1, descending=True)[:, :k]  # (S, k)
            log_probs = torch.stack([_plackett_luce(logits, order) for order in orders])
            rewards = torch.tensor(
                [
                    -ks_distance(spectra[index], _kept_spectrum(rows, grams[index], _unit_rows(order, unit)))
                    for order in orders
                ],
                dtype=torch.float64,
                device=device,
            )
            baseline = (rewards.sum() - rewards) / max(samples - 1, 1)  # leave-one-out
            loss = loss - ((rewards - baseline) * log_probs).mean()
        (loss / len(chosen)).backward()
        optimizer.step()
        log["steps"] = float(step + 1)
        if (step + 1) % _EVALUATE_EVERY == 0 or step + 1 == steps:
            # Like the authors, keep the best checkpoint (here by a deterministic evaluation).
            current = evaluate()
            if current < best[0]:
                best = (current, direction.detach().clone(), float(norm_weight.detach()))
    log["ks_after"] = best[0]
    return (best[1].cpu(), best[2]), log


def _kept_spectrum(rows: torch.Tensor, gram: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Singular values of ``rows[kept]`` from the full Gram matrix, subtracting whichever side is smaller."""
    count = min(len(kept), rows.shape[1])
    if len(kept) <= rows.shape[0] // 2:
        chosen = rows[kept]
        return _spectrum(chosen.t() @ chosen, count)
    mask = torch.ones(rows.shape[0], dtype=torch.bool, device=rows.device)
    mask[kept] = False
    dropped = rows[mask]
    return _spectrum(gram - dropped.t() @ dropped, count)


def _unit_rows(order: torch.Tensor, unit: int) -> torch.Tensor:
    return (order.unsqueeze(1) * unit + torch.arange(unit, device=order.device)).flatten()


def _plackett_luce(logits: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """log P(the first len(order) picks are ``order``, in that order) under Plackett-Luce(logits)."""
    shifted = logits - logits.max().detach()
    weights = shifted.exp()
    picked = weights[order]
    before = torch.cumsum(picked, 0) - picked  # mass already drawn before each pick
    remaining = (weights.sum() - before).clamp(min=1e-300)
    return (shifted[order] - remaining.log()).sum()


# --- tables and the proxy ---------------------------------------------------------------------


@dataclass(frozen=True)
class SpectralTables:
    """D[layer][j]: KS distance when keeping the top ``j/GRID`` of FFN rows (ffn) or ``j`` KV groups
    (attention), ranked by ``order``; sparsity tables are filled lazily."""

    ffn: torch.Tensor  # (L, GRID+1)
    attention: torch.Tensor  # (L, KV+1)
    seconds: float


def build_tables(adapter: Adapter, order: Importance) -> SpectralTables:
    started = time.perf_counter()
    shape = adapter.shape
    ffn_rows = torch.zeros(shape.num_layers, GRID + 1)
    attention = torch.zeros(shape.num_layers, shape.num_kv_heads + 1)
    group = shape.group_size * shape.head_dim
    with _linear_algebra(adapter.device) as device:
        for layer in range(shape.num_layers):
            rows = ffn_matrix(adapter, layer).to(device)
            counts = [round(j / GRID * rows.shape[0]) for j in range(GRID + 1)]
            ffn_rows[layer] = torch.tensor(_nested_distances(rows, order.channels[layer], counts, 1))
            columns = attention_columns(adapter, layer).to(device)
            attention[layer] = torch.tensor(
                _nested_distances(columns, order.head_groups[layer], list(range(shape.num_kv_heads + 1)), group)
            )
    return SpectralTables(ffn_rows, attention, time.perf_counter() - started)


def _nested_distances(rows: torch.Tensor, scores: torch.Tensor, counts: list[int], unit: int) -> list[float]:
    """KS distance of keeping the top-c units by ``scores``, for every c in ``counts`` (ascending).

    Top-k sets are nested, so one running Gram matrix serves all counts.
    """
    full = _spectrum(rows.t() @ rows, min(rows.shape))
    ranked = torch.sort(scores.double(), descending=True, stable=True).indices.to(rows.device)
    gram = torch.zeros(rows.shape[1], rows.shape[1], dtype=torch.float64, device=rows.device)
    done, distances = 0, []
    for count in counts:
        if count > done:
            chosen = rows[_unit_rows(ranked[done:count], unit)]
            gram += chosen.t() @ chosen
            done = count
        kept = count * unit
        if kept == 0:
            distances.append(1.0)
        elif kept >= rows.shape[0]:
            distances.append(0.0)
        else:
            distances.append(ks_distance(full, _spectrum(gram, min(kept, rows.shape[1]))))
    return distances


class PruneNet:
    """``"proxy": "prunenet"``: −mean_b w_b·D_b by table lookups (module docstring)."""

    name = "prunenet"
    cost = COST_LOOKUP

    def __init__(
        self,
        adapter: Adapter,
        *,
        seed: int = 0,
        policy: SpectralPolicy | None = None,
        order: Importance | None = None,
        attention_weight: float = 1.0,
        cache: dict[Any, Any] | None = None,
    ) -> None:
        """``order`` ranks the units the tables keep; default: the policy's own (calibration-free)."""
        self.adapter = adapter
        self.attention_weight = attention_weight
        cache = cache if cache is not None else {}
        self.policy = policy if policy is not None else cached_policy(adapter, cache, seed)
        if order is None:  # the policy's own order: a function of the weights and the seed, kept on disk
            self.order = self.policy.importance(adapter)
            self.tables = persisted(
                cache,
                f"prunenet-tables-seed{self.policy.seed}",
                lambda: build_tables(adapter, self.order),
                dataclasses.asdict,
                lambda state: SpectralTables(**state),
            )
        else:
            self.order = order
            self.tables = build_tables(adapter, order)
        self._sparsity: dict[tuple[int, str], list[float]] = {}

    def block_terms(self, arch: ArchConfig) -> list[tuple[Block, float]]:
        """D_b for every sub-block, in residual order (attention.0, mlp.0, attention.1, ...)."""
        shape = self.adapter.shape
        terms = []
        for i, layer in enumerate(arch.layers):
            attention = float(self.tables.attention[i, layer.heads // shape.group_size])
            mlp = _interpolate(self.tables.ffn[i], layer.ffn_channels / shape.intermediate_size)
            if layer.sparsity > 0:
                if layer.attention_kept:
                    attention = 1 - (1 - attention) * (1 - self._sparse(i, "attention", layer.sparsity))
                if layer.mlp_kept:
                    mlp = 1 - (1 - mlp) * (1 - self._sparse(i, "mlp", layer.sparsity))
            terms += [(Block(i, "attention"), attention), (Block(i, "mlp"), mlp)]
        return terms

    def score(self, selection: Selection) -> ProxyScore:
        started = time.perf_counter()
        terms = self.block_terms(selection.arch)
        attention = [d for block, d in terms if block.kind == "attention"]
        mlp = [d for block, d in terms if block.kind == "mlp"]
        weight = self.attention_weight
        value = -(weight * sum(attention) + sum(mlp)) / (weight * len(attention) + len(mlp))
        if not math.isfinite(value):
            raise ProxyError("PruneNet score is not finite")
        extras = {
            "prunenet_mlp": -sum(mlp) / len(mlp),
            "prunenet_attention": -sum(attention) / len(attention),
        }
        return ProxyScore(value, extras, {"lookup_s": time.perf_counter() - started})

    def _sparse(self, layer: int, kind: str, sparsity: float) -> float:
        key = (layer, kind)
        if key not in self._sparsity:
            with _linear_algebra(self.adapter.device) as device:
                rows = ffn_matrix(self.adapter, layer) if kind == "mlp" else attention_columns(self.adapter, layer)
                self._sparsity[key] = [_sparse_distance(rows.to(device), s) for s in SPARSITY_GRID]
        return _interpolate(torch.tensor(self._sparsity[key]), sparsity / SPARSITY_GRID[-1])


def _sparse_distance(rows: torch.Tensor, sparsity: float) -> float:
    """KS distance after removing the ``sparsity`` fraction of smallest-magnitude weights of every row."""
    zeros = round(sparsity * rows.shape[1])
    if zeros == 0:
        return 0.0
    lowest = rows.abs().topk(zeros, dim=1, largest=False).indices
    sparse = rows.clone().scatter_(1, lowest, 0.0)
    return ks_distance(_spectrum(rows.t() @ rows, min(rows.shape)), _spectrum(sparse.t() @ sparse, min(rows.shape)))


def _interpolate(table: torch.Tensor, fraction: float) -> float:
    """Linear interpolation of ``table``, whose n values sit at fractions 0, 1/(n−1), ..., 1."""
    position = min(max(fraction, 0.0), 1.0) * (len(table) - 1)
    low = min(math.floor(position), len(table) - 2)
    share = position - low
    return float(table[low] * (1 - share) + table[low + 1] * share)


def cached_policy(adapter: Adapter, cache: dict[Any, Any], seed: int) -> SpectralPolicy:
    """Train the policy once per (model, seed): it depends on the weights only."""
    key = ("prunenet", "policy", seed)
    if key not in cache:
        cache[key] = persisted(
            cache,
            f"prunenet-policy-seed{seed}",
            lambda: train_policy(adapter, seed=seed),
            dataclasses.asdict,
            lambda state: SpectralPolicy(**state),
        )
    return cache[key]
