"""PruneNet: a calibration-free proxy from the model's own weights.

The policy that orders the units (``search.criteria.prunenet``) is a selection criterion; this
proxy scores a candidate by how much of each matrix's spectrum the kept units preserve:

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
from dataclasses import dataclass

import torch

from search.adapters import Adapter, Block
from search.arch import ArchConfig
from search.artifacts import Artifact, ModelArtifacts
from search.criteria.prunenet import SpectralPolicy, policy_for
from search.errors import ProxyError
from search.proxies.base import COST_LOOKUP, Proxy, ProxyBuild, ProxyScore
from search.selection import Selection
from search.spectra import attention_columns, ffn_matrix, ks_distance, linear_algebra, spectrum, unit_rows
from search.units import Importance

GRID = 16  # keep fractions j/GRID, j = 0..GRID, for the FFN table
SPARSITY_GRID = tuple(i / 20 for i in range(20))  # 0.00 .. 0.95 for the sparsity table


@dataclass(frozen=True)
class SpectralTables:
    """D[layer][j]: KS distance when keeping the top ``j/GRID`` of FFN rows (ffn) or ``j`` KV groups
    (attention), ranked by ``order``; sparsity tables are filled lazily."""

    ffn: torch.Tensor  # (L, GRID+1)
    attention: torch.Tensor  # (L, KV+1)
    seconds: float


# The tables in the policy's own order, per policy seed: a function of the weights, kept on disk.
TABLES: Artifact[int, SpectralTables] = Artifact(
    "prunenet-tables",
    file=lambda seed: f"prunenet-tables-seed{seed}",
    encode=dataclasses.asdict,
    decode=lambda state: SpectralTables(**state),
)


def build_tables(adapter: Adapter, order: Importance) -> SpectralTables:
    started = time.perf_counter()
    shape = adapter.shape
    ffn_rows = torch.zeros(shape.num_layers, GRID + 1)
    attention = torch.zeros(shape.num_layers, shape.num_kv_heads + 1)
    group = shape.group_size * shape.head_dim
    with linear_algebra(adapter.device) as device:
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
    full = spectrum(rows.t() @ rows, min(rows.shape))
    ranked = torch.sort(scores.double(), descending=True, stable=True).indices.to(rows.device)
    gram = torch.zeros(rows.shape[1], rows.shape[1], dtype=torch.float64, device=rows.device)
    done, distances = 0, []
    for count in counts:
        if count > done:
            chosen = rows[unit_rows(ranked[done:count], unit)]
            gram += chosen.t() @ chosen
            done = count
        kept = count * unit
        if kept == 0:
            distances.append(1.0)
        elif kept >= rows.shape[0]:
            distances.append(0.0)
        else:
            distances.append(ks_distance(full, spectrum(gram, min(kept, rows.shape[1]))))
    return distances


class PruneNet(Proxy):
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
        artifacts: ModelArtifacts | None = None,
    ) -> None:
        """``order`` ranks the units the tables keep; default: the policy's own (calibration-free)."""
        self.adapter = adapter
        self.attention_weight = attention_weight
        artifacts = artifacts if artifacts is not None else ModelArtifacts()
        self.policy = policy if policy is not None else policy_for(adapter, artifacts, seed)
        if order is None:  # the policy's own order: a function of the weights and the seed
            self.order = self.policy.importance(adapter)
            self.tables = artifacts.get(TABLES, self.policy.seed, lambda: build_tables(adapter, self.order))
        else:
            self.order = order
            self.tables = build_tables(adapter, order)
        self._sparsity: dict[tuple[int, str], list[float]] = {}

    @classmethod
    def create(cls, build: ProxyBuild) -> PruneNet:
        weight = float(build.options.get("attention_weight", 1.0))
        order: Importance | None = build.options.get("order")
        key = ("prunenet", build.seed, weight, id(order) if order is not None else None)
        return build.reuse(
            key,
            lambda: cls(
                build.adapter,
                policy=policy_for(build.adapter, build.artifacts, build.seed),
                order=order,
                attention_weight=weight,
                artifacts=build.artifacts,
            ),
        )

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
            with linear_algebra(self.adapter.device) as device:
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
    return ks_distance(spectrum(rows.t() @ rows, min(rows.shape)), spectrum(sparse.t() @ sparse, min(rows.shape)))


def _interpolate(table: torch.Tensor, fraction: float) -> float:
    """Linear interpolation of ``table``, whose n values sit at fractions 0, 1/(n−1), ..., 1."""
    position = min(max(fraction, 0.0), 1.0) * (len(table) - 1)
    low = min(math.floor(position), len(table) - 2)
    share = position - low
    return float(table[low] * (1 - share) + table[low + 1] * share)
