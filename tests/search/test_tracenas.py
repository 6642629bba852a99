from __future__ import annotations

from search.arch import ArchConfig, LayerArch
from search.calibration import TokenSet
from search.loading import LoadedModel
from search.proxies import create_proxy
from search.selection import compute_importance, select_units
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
