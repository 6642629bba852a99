from __future__ import annotations

import pytest
import torch

from search.arch import ArchConfig, LayerArch
from search.calibration import TokenSet
from search.criteria import compute_importance
from search.loading import LoadedModel
from search.proxies import ProxyScore, TraceNAS, create_proxy
from search.selection import select_units
from search.stats import collect_stats


def _selections(loaded: LoadedModel, tokens: TokenSet):
    adapter = loaded.adapter
    shape = adapter.shape
    importance = compute_importance(adapter, collect_stats(adapter, tokens, batch_size=4), "wanda")
    dense = select_units(importance, shape.dense_arch(), shape.group_size)
    half_depth = select_units(
        importance, ArchConfig((LayerArch(4, 256), LayerArch(0, 0), LayerArch(4, 256), LayerArch(0, 0))), 2
    )
    narrow = select_units(importance, ArchConfig((LayerArch(2, 128),) * 4), 2)
    return dense, half_depth, narrow


def test_unpruned_scores_highest_and_half_depth_lower(tiny_loaded: LoadedModel, tiny_tokens: TokenSet) -> None:
    dense, half_depth, narrow = _selections(tiny_loaded, tiny_tokens)
    proxy = create_proxy("tracenas", tiny_loaded.adapter, tiny_tokens, seed=0, batch_size=4)
    full = proxy.score(dense)
    assert abs(full.value - 1.0) < 1e-6
    assert full.extras["tracenas_blocks"] == 8
    halved = proxy.score(half_depth)
    assert halved.extras["tracenas_blocks"] == 4
    assert halved.value < full.value - 1e-3
    assert proxy.score(narrow).value < full.value - 1e-3


def test_scores_are_deterministic_under_a_seed(tiny_loaded: LoadedModel, tiny_tokens: TokenSet) -> None:
    _, half_depth, narrow = _selections(tiny_loaded, tiny_tokens)
    first = create_proxy("tracenas", tiny_loaded.adapter, tiny_tokens, seed=7, batch_size=4)
    second = create_proxy("tracenas", tiny_loaded.adapter, tiny_tokens, seed=7, batch_size=4)
    other = create_proxy("tracenas", tiny_loaded.adapter, tiny_tokens, seed=8, batch_size=4)
    assert first.score(narrow).value == second.score(narrow).value
    assert first.score(half_depth).value == second.score(half_depth).value
    assert first.score(narrow).value != other.score(narrow).value  # the seed does reach the sketch


def test_no_gradients_or_copies_are_left_on_the_model(tiny_loaded: LoadedModel, tiny_tokens: TokenSet) -> None:
    model = tiny_loaded.adapter.model
    pointers = [p.data_ptr() for p in model.parameters()]
    flags = [p.requires_grad for p in model.parameters()]
    _, _, narrow = _selections(tiny_loaded, tiny_tokens)
    create_proxy("tracenas", tiny_loaded.adapter, tiny_tokens, seed=0, batch_size=4).score(narrow)
    assert all(p.grad is None for p in model.parameters())
    assert [p.data_ptr() for p in model.parameters()] == pointers
    assert [p.requires_grad for p in model.parameters()] == flags


def test_a_gathered_score_times_each_part_and_a_cpu_scores_eagerly(
    tiny_loaded: LoadedModel, tiny_tokens: TokenSet
) -> None:
    """The parts of a gathered score are timed where they run (marks in the device's stream, read once
    it is done); on a CPU nothing would run while the host proposes, so the proxy does not launch."""
    _, half_depth, _ = _selections(tiny_loaded, tiny_tokens)
    proxy = TraceNAS(tiny_loaded.adapter, tiny_tokens, batch_size=4, execution="gather")
    timings = proxy.score(half_depth).timings
    assert sorted(timings) == ["apply_s", "backward_s", "correlation_s", "forward_s"]
    assert all(seconds > 0 for seconds in timings.values()), timings
    assert proxy.launch([half_depth]) is None


def test_physically_sliced_width_scores_as_masked_width(
    tiny_loaded: LoadedModel, tiny_tokens: TokenSet, monkeypatch
) -> None:
    """Candidates run on gathers of the kept heads and channels; the sketches are mapped back to full
    width, so the score equals the full-width masked evaluation's."""
    _, _, narrow = _selections(tiny_loaded, tiny_tokens)
    mixed = select_units(
        compute_importance(tiny_loaded.adapter, collect_stats(tiny_loaded.adapter, tiny_tokens, batch_size=4), "wanda"),
        ArchConfig((LayerArch(2, 64), LayerArch(0, 192), LayerArch(4, 0), LayerArch(0, 0))),
        2,
    )
    before = {name: p.shape for name, p in tiny_loaded.adapter.model.named_parameters()}
    # A fresh proxy for each mode: a proxy remembers its last candidate's terms.
    physical_proxy = create_proxy("tracenas", tiny_loaded.adapter, tiny_tokens, seed=0, batch_size=4)
    physical = [physical_proxy.score(s) for s in (narrow, mixed)]
    assert {name: p.shape for name, p in tiny_loaded.adapter.model.named_parameters()} == before  # restored
    monkeypatch.setattr(tiny_loaded.adapter, "slices_width", False)
    masked_proxy = create_proxy("tracenas", tiny_loaded.adapter, tiny_tokens, seed=0, batch_size=4)
    masked = [masked_proxy.score(s) for s in (narrow, mixed)]
    for a, b in zip(physical, masked, strict=True):
        assert a.value < 0.999  # a real difference from the dense model to reproduce
        assert abs(a.value - b.value) < 1e-5, (a.value, b.value)
        assert abs(a.extras["tracenas_sum"] - b.extras["tracenas_sum"]) < 1e-5


def test_replayed_masks_score_as_gathered_widths(tiny_loaded: LoadedModel, tiny_tokens: TokenSet) -> None:
    """``execution="replay"`` keeps the model at full width with the candidate as masks (on a GPU, one
    captured graph; here the same computation runs eagerly): every term equals the gathered one, for
    narrow, dropped and sparse sub-blocks, and the model is left as it was."""
    from search.replay import REPLAY
    from tests.search.selections import random_selection

    adapter = tiny_loaded.adapter
    sparse = random_selection(
        tiny_loaded, ArchConfig((LayerArch(2, 64, 0.5), LayerArch(0, 192), LayerArch(4, 0, 0.3), LayerArch(0, 0)))
    )
    _, half_depth, narrow = _selections(tiny_loaded, tiny_tokens)
    weights = {name: p.detach().clone() for name, p in adapter.model.named_parameters()}
    gathered = TraceNAS(adapter, tiny_tokens, batch_size=4, execution="gather")
    replayed = TraceNAS(adapter, tiny_tokens, batch_size=4, execution="replay")
    assert replayed.execution.mode == REPLAY
    for selection in (narrow, half_depth, sparse):
        expected, actual = gathered.block_terms(selection), replayed.block_terms(selection)
        assert actual.keys() == expected.keys()
        assert min(expected.values()) < 0.99  # a real difference from the dense model to reproduce
        for block, value in expected.items():
            assert abs(actual[block] - value) < 1e-5, (block, actual[block], value)
    assert all(torch.equal(p, weights[name]) for name, p in adapter.model.named_parameters())
    assert all(p.grad is None for p in adapter.model.parameters())


def test_candidates_replayed_together_score_as_each_alone(tiny_loaded: LoadedModel, tiny_tokens: TokenSet) -> None:
    """``score_many`` replays several candidates in one pass (a mask slot and a copy of the batch each):
    every candidate scores what it scores alone, a smaller round reuses the slots, and a sparse
    candidate (whose zeros would reach every slot's weights) is scored alone."""
    from tests.search.selections import random_selection

    _, half_depth, narrow = _selections(tiny_loaded, tiny_tokens)
    mixed = random_selection(
        tiny_loaded, ArchConfig((LayerArch(2, 64), LayerArch(0, 192), LayerArch(4, 0), LayerArch(2, 96)))
    )
    sparse = random_selection(tiny_loaded, ArchConfig((LayerArch(2, 64, 0.5),) * 4))
    alone = TraceNAS(tiny_loaded.adapter, tiny_tokens, batch_size=4, execution="replay")
    together = TraceNAS(tiny_loaded.adapter, tiny_tokens, batch_size=4, execution="replay")
    for round_ in ([narrow, half_depth, mixed], [mixed, narrow], [narrow, sparse]):
        scores = together.score_many(round_)
        for selection, score in zip(round_, scores, strict=True):
            assert isinstance(score, ProxyScore)
            expected = alone.score(selection)
            assert abs(score.value - expected.value) < 1e-5, (score.value, expected.value)
            assert score.extras == pytest.approx(expected.extras, abs=1e-5)
    # Distinct scores: a slot that read another's mask would not match its candidate alone.
    assert len({round(alone.score(s).value, 4) for s in (narrow, half_depth, mixed)}) == 3
