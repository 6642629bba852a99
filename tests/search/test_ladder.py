"""Verification at increasing fidelity: nested held-out prefixes, halving, baselines on every rung."""

from __future__ import annotations

import pytest

from search.arch import ArchConfig, LayerArch
from search.calibration import TokenSet
from search.ladder import Verifier, rung_sizes, successive_halving
from search.loading import LoadedModel
from search.selection import compute_importance, select_units
from search.stats import collect_stats
from search.verify import verify


def test_rung_sizes_halve_towards_the_whole_split() -> None:
    assert rung_sizes(16, 5, 1) == [4, 8, 16]  # 5 → 3 → 2 survivors
    assert rung_sizes(16, 2, 1) == [16]
    assert rung_sizes(16, 3, 1) == [8, 16]
    assert rung_sizes(16, 32, 1) == [1, 2, 4, 8, 16]
    assert rung_sizes(16, 32, 8) == [8, 16]  # encoders need enough sentences per rung
    assert rung_sizes(3, 8, 1) == [1, 3]


@pytest.fixture(scope="module")
def selections(tiny_loaded: LoadedModel, tiny_tokens: TokenSet):
    adapter = tiny_loaded.adapter
    importance = compute_importance(adapter, collect_stats(adapter, tiny_tokens, batch_size=4), "wanda")
    archs = [
        ArchConfig((LayerArch(4, 128), LayerArch(4, 64), LayerArch(2, 128), LayerArch(4, 96))),
        ArchConfig((LayerArch(2, 64),) * 4),
        ArchConfig((LayerArch(4, 128), LayerArch(0, 0), LayerArch(4, 128), LayerArch(0, 0))),
        ArchConfig((LayerArch(2, 32),) * 4),
        ArchConfig((LayerArch(0, 128), LayerArch(4, 128), LayerArch(0, 128), LayerArch(4, 32))),
    ]
    return [select_units(importance, arch, 2) for arch in archs]


def test_incremental_figures_equal_a_fresh_verification(
    tiny_loaded: LoadedModel, tiny_tokens: TokenSet, selections
) -> None:
    verifier = Verifier(tiny_loaded.adapter, tiny_tokens, batch_size=3)
    verifier.evaluate({0: selections[0]}, 2)  # a prefix first, then the rest: batches of 3 straddle it
    figures = verifier.evaluate(dict(enumerate(selections)), verifier.available)
    dense, fresh = verify(tiny_loaded.adapter, tiny_tokens, selections)
    for i, check in enumerate(fresh):
        assert figures[i].metrics["kl"] == pytest.approx(check.metrics["kl"], rel=1e-5)
        assert figures[i].metrics["ppl"] == pytest.approx(check.metrics["ppl"], rel=1e-5)
        assert figures[i].tokens == check.tokens
    assert verifier.evaluate({"dense": None}, verifier.available)["dense"].metrics["ppl"] == pytest.approx(
        dense.metrics["ppl"], rel=1e-5
    )


def test_successive_halving_keeps_the_baselines_and_ends_on_every_sequence(
    tiny_loaded: LoadedModel, tiny_tokens: TokenSet, selections
) -> None:
    verifier = Verifier(tiny_loaded.adapter, tiny_tokens, batch_size=4)
    progress: list[tuple[int, int]] = []
    result = successive_halving(
        verifier,
        [(n, s) for n, s in enumerate(selections[:4])],
        [("seed", selections[4])],
        on_batch=lambda done, total: progress.append((done, total)),
    )
    rungs = result.rungs
    assert [r.sequences for r in rungs] == [4, 8]  # 8 held-out sequences; 4 finalists → 2
    assert [len(r.candidates) for r in rungs] == [5, 3]
    assert all(any(c.key == "seed" and c.baseline for c in r.candidates) for r in rungs)
    first = {c.key: c.value for c in rungs[0].candidates if not c.baseline}
    assert set(rungs[0].survivors) == set(sorted(first, key=first.get)[:2])  # the better half climbs
    assert set(result.final) == {*rungs[0].survivors, "seed"}
    assert all(v.tokens == result.dense.tokens for v in result.final.values())
    assert progress[-1][0] == progress[-1][1]
