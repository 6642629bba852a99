"""The candidate as data for a replayed graph (``search.slots``): a narrow graph's width, and that a
candidate held in narrow slots computes what the physically pruned model computes."""

from __future__ import annotations

import torch

from search.arch import ArchConfig, LayerArch
from search.calibration import TokenSet
from search.loading import LoadedModel
from search.masking import apply_arch
from search.slots import CHANNEL_PARTS, GROUP_PARTS, NarrowSlots, NarrowWeights, capacity
from tests.search.selections import random_selection


def test_a_narrow_width_holds_the_widest_kept_sub_block_rounded_up(tiny_loaded: LoadedModel) -> None:
    shape = tiny_loaded.adapter.shape
    group_step = -(-shape.num_kv_heads // GROUP_PARTS)
    channel_step = -(-shape.intermediate_size // CHANNEL_PARTS)
    narrow = random_selection(
        tiny_loaded, ArchConfig((LayerArch(2, 40), LayerArch(0, 0), LayerArch(4, 8), LayerArch(0, 8)))
    )
    widest_groups = -(-(4 // shape.group_size) // group_step) * group_step
    assert capacity(shape, narrow) == (widest_groups, -(-40 // channel_step) * channel_step)
    # A dropped sub-block's units are no width; a candidate that drops everything still gets the least.
    dropped = random_selection(tiny_loaded, ArchConfig((LayerArch(0, 0),) * 4))
    assert capacity(shape, dropped) == (group_step, channel_step)
    dense = random_selection(tiny_loaded, shape.dense_arch())
    assert capacity(shape, dense) == (shape.num_kv_heads, shape.intermediate_size)


def test_narrow_slots_compute_what_the_pruned_model_computes(tiny_loaded: LoadedModel, tiny_tokens: TokenSet) -> None:
    """Narrow, full-width, dropped and sparse sub-blocks, at the candidate's own width and at the
    widest: the logits equal those of the gathered model, and every weight is restored."""
    adapter = tiny_loaded.adapter
    shape = adapter.shape
    batch = {"input_ids": tiny_tokens.calibration[:2]}
    weights = {name: p.detach().clone() for name, p in adapter.model.named_parameters()}
    buffers = NarrowWeights()
    archs = [
        ArchConfig((LayerArch(2, 64), LayerArch(0, 192), LayerArch(4, 0), LayerArch(0, 0))),
        ArchConfig((LayerArch(2, 64, 0.5), LayerArch(4, 256), LayerArch(2, 32, 0.3), LayerArch(2, 96))),
    ]
    for arch in archs:
        selection = random_selection(tiny_loaded, arch)
        with torch.no_grad(), apply_arch(adapter, selection):
            expected = adapter.model(**batch).logits
        for width in (capacity(shape, selection), (shape.num_kv_heads, shape.intermediate_size)):
            slots = NarrowSlots(adapter, *width, buffers)
            with torch.no_grad(), slots.realised([selection]), slots.installed() as slices:
                assert {tuple(m.weight.shape) for m in slices} <= {
                    (width[0] * shape.group_size * shape.head_dim, shape.hidden_size),
                    (width[0] * shape.head_dim, shape.hidden_size),
                    (shape.hidden_size, width[0] * shape.group_size * shape.head_dim),
                    (width[1], shape.hidden_size),
                    (shape.hidden_size, width[1]),
                }
                actual = adapter.model(**batch).logits
            assert torch.allclose(actual, expected, atol=1e-4), (arch, width, (actual - expected).abs().max())
    assert all(torch.equal(p, weights[name]) for name, p in adapter.model.named_parameters())
