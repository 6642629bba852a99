"""Candidates for tests: random unit importance, and the units an architecture keeps under it."""

from __future__ import annotations

import torch

from search.arch import ArchConfig, ModelShape
from search.loading import LoadedModel
from search.selection import Selection, SparsityScorer, select_units
from search.units import Importance


def random_importance(shape: ModelShape, seed: int = 1) -> Importance:
    """Seeded random scores for every KV group and FFN channel of ``shape``."""
    g = torch.Generator().manual_seed(seed)
    return Importance(
        tuple(torch.rand(shape.num_kv_heads, generator=g) for _ in range(shape.num_layers)),
        tuple(torch.rand(shape.intermediate_size, generator=g) for _ in range(shape.num_layers)),
    )


def random_selection(loaded: LoadedModel, arch: ArchConfig, seed: int = 1) -> Selection:
    """The units ``arch`` keeps under ``random_importance`` (magnitude sparsity when it is sparse)."""
    shape = loaded.adapter.shape
    scorer = SparsityScorer("magnitude", None) if arch.sparse else None
    return select_units(random_importance(shape, seed), arch, shape.group_size, scorer)
