"""Verification at increasing fidelity: nested held-out prefixes, halving, baselines on every rung."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from search.arch import ArchConfig, LayerArch
from search.calibration import TokenSet
from search.criteria import compute_importance
from search.ladder import Verifier, rung_sizes, successive_halving
from search.loading import LoadedModel
from search.masking import apply_arch
from search.selection import Selection, select_units
from search.stats import collect_stats


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
    for i, selection in enumerate(selections):
        kl, ppl, tokens = _one_pass(tiny_loaded, tiny_tokens, selection)
        assert figures[i].metrics["kl"] == pytest.approx(kl, rel=1e-5)
        assert figures[i].metrics["ppl"] == pytest.approx(ppl, rel=1e-5)
        assert figures[i].tokens == tokens
    assert verifier.evaluate({"dense": None}, verifier.available)["dense"].metrics["ppl"] == pytest.approx(
        _one_pass(tiny_loaded, tiny_tokens, None)[1], rel=1e-5
    )


@torch.no_grad()
def _one_pass(loaded: LoadedModel, tokens: TokenSet, selection: Selection | None) -> tuple[float, float, int]:
    """The reference: KL to the dense model and perplexity over the whole held-out split in one
    pass, summed over every token (the tiny split has no padding)."""
    adapter = loaded.adapter
    kl = nll = 0.0
    count = 0
    for batch in tokens.batches("heldout", 8, adapter.device):
        targets = batch["input_ids"][:, 1:]
        dense = F.log_softmax(adapter.forward(batch)[:, :-1].float(), dim=-1)  # (B, T-1, V)
        candidate = dense
        if selection is not None:
            with apply_arch(adapter, selection):
                candidate = F.log_softmax(adapter.forward(batch)[:, :-1].float(), dim=-1)
        kl += float(F.kl_div(candidate, dense, log_target=True, reduction="sum"))
        nll += float(-candidate.gather(-1, targets.unsqueeze(-1)).sum())
        count += targets.numel()
    return kl / count, math.exp(nll / count), count


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
