"""Rank and linear correlation, written once: on lists of figures (reports, ensembles; pure Python) and
on tensors (gradient sketches, all pairs of held-out embeddings), where a list would be too slow.

The tensor functions use the tensors' own methods, so this module imports no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def ranks(values: Sequence[float]) -> list[float]:
    """Average ranks from 0 (ties share the mean of their positions), as scipy's rankdata − 1."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    result = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            result[order[k]] = (i + j) / 2
        i = j + 1
    return result


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    n = len(x)
    if n < 3:
        return None
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx <= 0 or syy <= 0:
        return None  # a constant: no correlation is defined
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    return pearson(ranks(x), ranks(y))


def kendall(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's τ-b (tie-corrected), O(n²)."""
    n = len(x)
    if n < 3:
        return None
    concordant = discordant = ties_x = ties_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return (concordant - discordant) / denominator if denominator > 0 else None


def pearson_tensors(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
    """Pearson correlation of each pair of tensors' values (flattened alike); 0 where one is constant.
    All pairs are computed on their device before one read back: one wait for the device, not one per pair."""
    return pearson_stack(pairs).tolist() if pairs else []


def pearson_stack(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """``pearson_tensors`` as a float64 tensor on the pairs' device, never read back (so it can be part
    of a captured CUDA graph, ``search.replay``)."""
    values = pairs[0][0].new_empty(len(pairs)).double()
    for i, (a, b) in enumerate(pairs):
        a = a.double() - a.double().mean()
        b = b.double() - b.double().mean()
        denominator = a.norm() * b.norm()
        values[i] = ((a @ b) / denominator).where(denominator != 0, 0.0)  # NaN stays NaN: not finite
    return values


def pearson_rows(rows: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row of ``rows`` (n, k) with ``reference`` (k), as ``pearson_stack``
    computes it for one pair: float64, on the device, never read back."""
    rows = rows.double() - rows.double().mean(dim=1, keepdim=True)
    reference = reference.double() - reference.double().mean()
    denominator = rows.norm(dim=1) * reference.norm()
    return ((rows @ reference) / denominator).where(denominator != 0, 0.0)


def spearman_tensors(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman correlation of two 1-D tensors; 0 where one is constant."""
    ranks_a, ranks_b = _tensor_ranks(a.double()), _tensor_ranks(b.double())
    ranks_a, ranks_b = ranks_a - ranks_a.mean(), ranks_b - ranks_b.mean()
    denominator = ranks_a.norm() * ranks_b.norm()
    return float((ranks_a @ ranks_b) / denominator) if denominator > 0 else 0.0


def _tensor_ranks(values: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share the mean of their positions), as scipy's rankdata."""
    order = values.argsort(stable=True)
    positions = order.argsort().to(values.dtype)  # the inverse permutation: each value's place in the order
    unique, inverse = values.unique(return_inverse=True)
    sums = values.new_zeros(len(unique)).index_add_(0, inverse, positions)
    counts = values.new_zeros(len(unique)).index_add_(0, inverse, values.new_ones(len(values)))
    return (sums / counts)[inverse]
