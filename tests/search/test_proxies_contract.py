"""One contract for every proxy (Optuna's storage-suite habit): each implementation, single or
composite, must be finite, deterministic under a seed, score the unpruned model above heavily pruned
ones, and leave the model as it found it (no gradients, no copies, same weights)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from search.arch import ArchConfig, LayerArch
from search.audit import population
from search.calibration import TokenSet
from search.candidates import SearchContext, prepare
from search.ladder import Verifier
from search.loading import LoadedModel
from search.proxies import MetaNetStore, Priming, create_proxy
from search.selection import Selection
from search.spec import JobSpec

# "ensemble" is prunenet + tracenas (the expensive member gated by the cheap one); the list form
# also puts the meta-network, and KL (a forward, so a cheap member), inside an ensemble.
PROXIES: list[Any] = ["tracenas", "prunenet", "metanet", "kl", "ensemble", ["metanet", "prunenet"], ["kl", "prunenet"]]
IDS = ["tracenas", "prunenet", "metanet", "kl", "ensemble", "metanet+prunenet", "kl+prunenet"]


@pytest.fixture(scope="module")
def context(tiny_loaded: LoadedModel, tiny_llama_dir: Path) -> SearchContext:
    spec = JobSpec(
        model=str(tiny_llama_dir),
        target={"param_ratio": 0.6},
        proxy="prunenet",
        calibration={"n_samples": 4, "seq_len": 64, "heldout_samples": 4},
        search_space={"ffn_alignment": 8},
    )
    return prepare(tiny_loaded, spec)


@pytest.fixture(scope="module")
def candidates(context: SearchContext) -> dict[str, Selection]:
    shape = context.shape
    arch = {
        "dense": shape.dense_arch(),
        "narrow": ArchConfig((LayerArch(2, 16),) * 4),  # half the heads, an eighth of the FFN channels
        "half_depth": ArchConfig((LayerArch(4, 128), LayerArch(0, 0), LayerArch(4, 128), LayerArch(0, 0))),
        "attention_only": ArchConfig((LayerArch(2, 0),) * 4),
    }
    return {name: context.selection(a) for name, a in arch.items()}


def _make(name: Any, context: SearchContext, tokens: TokenSet, seed: int, store: MetaNetStore | None) -> Any:
    adapter = context.loaded.adapter
    # Fresh artifacts: nothing is shared between the instances a test compares.
    proxy = create_proxy(name, adapter, tokens, seed=seed, batch_size=4, min_records=4, metanet_epochs=60)
    if hasattr(proxy, "prime"):
        verifier = Verifier(adapter, tokens)

        def audit(selections: list[Selection]) -> list[float]:
            figures = verifier.evaluate(dict(enumerate(selections)), 2)
            return [figures[i].value for i in range(len(selections))]

        proxy.prime(
            Priming(lambda: population(context, 6, seed=seed), audit=audit, store=store, job="contract", model="t")
        )
    return proxy


@pytest.mark.parametrize("name", PROXIES, ids=IDS)
def test_finite_and_deterministic_under_a_seed(
    name: Any, context: SearchContext, candidates: dict[str, Selection], tmp_path: Path
) -> None:
    first = _make(name, context, context.tokens, 3, MetaNetStore(tmp_path / "a"))
    second = _make(name, context, context.tokens, 3, MetaNetStore(tmp_path / "b"))
    for selection in candidates.values():
        a, b = first.score(selection), second.score(selection)
        assert torch.isfinite(torch.tensor(a.value)), a
        assert all(torch.isfinite(torch.tensor(v)) for v in a.extras.values()), a.extras
        assert a.value == b.value and a.extras == b.extras


@pytest.mark.parametrize("name", PROXIES, ids=IDS)
def test_unpruned_scores_above_heavily_pruned(
    name: Any, context: SearchContext, candidates: dict[str, Selection]
) -> None:
    proxy = _make(name, context, context.tokens, 0, None)
    dense = proxy.score(candidates["dense"]).value
    for pruned in ("narrow", "half_depth", "attention_only"):
        assert dense > proxy.score(candidates[pruned]).value, pruned


@pytest.mark.parametrize("name", PROXIES, ids=IDS)
def test_leaves_no_gradients_and_makes_no_copies(
    name: Any, context: SearchContext, candidates: dict[str, Selection], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = context.loaded.adapter.model
    proxy = _make(name, context, context.tokens, 0, None)
    parameters = list(model.parameters())
    pointers = [p.data_ptr() for p in parameters]
    flags = [p.requires_grad for p in parameters]
    checksums = [float(p.detach().double().sum()) for p in parameters]

    def no_copies(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a proxy copied something while scoring a trial")

    monkeypatch.setattr(copy, "deepcopy", no_copies)
    for selection in candidates.values():
        proxy.score(selection)
    assert all(p.grad is None for p in model.parameters())
    assert [p.data_ptr() for p in model.parameters()] == pointers
    assert [p.requires_grad for p in model.parameters()] == flags
    assert [float(p.detach().double().sum()) for p in model.parameters()] == checksums
    assert len(list(model.parameters())) == len(parameters)
