"""Adding a selection criterion or a proxy is one module plus one registration line: a toy criterion
(seeded random ranks) and a toy proxy (minus the FFN channels a candidate keeps), registered in
``search.names`` for one test, drive a real search job through ``prepare`` and ``run_search``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from search import names
from search.adapters import Adapter
from search.arch import ArchConfig
from search.artifacts import ModelArtifacts
from search.candidates import prepare
from search.criteria.base import Criterion
from search.loading import LoadedModel
from search.proxies.base import COST_LOOKUP, Proxy, ProxyScore
from search.selection import Selection
from search.stats import DenseStats
from search.study import run_search
from search.trials import job_proxy
from search.units import Importance
from tests.conftest import tiny_job_spec

_CRITERION, _PROXY = "random-ranks", "minus-kept-channels"


class RandomRanks(Criterion):
    name = _CRITERION
    seeded = True

    def importance(self, adapter: Adapter, stats: DenseStats, *, seed: int, artifacts: ModelArtifacts) -> Importance:
        generator = torch.Generator().manual_seed(seed)
        shape = adapter.shape
        layers = range(shape.num_layers)
        groups = tuple(torch.rand(shape.num_kv_heads, generator=generator) for _ in layers)
        return Importance(groups, tuple(torch.rand(shape.intermediate_size, generator=generator) for _ in layers))


class MinusKeptChannels(Proxy):
    name = _PROXY
    cost = COST_LOOKUP

    def score(self, selection: Selection) -> ProxyScore:
        return ProxyScore(-float(sum(layer.ffn_channels for layer in selection.arch.layers)))


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The two registration lines, undone when the test ends."""
    monkeypatch.setitem(names.CRITERIA, _CRITERION, f"{__name__}:RandomRanks")
    monkeypatch.setitem(names.PROXIES, _PROXY, f"{__name__}:MinusKeptChannels")
    yield


def test_a_registered_criterion_and_proxy_run_a_search(
    registered: None, tiny_loaded: LoadedModel, tiny_llama_dir: Path
) -> None:
    spec = tiny_job_spec(
        tiny_llama_dir,
        n_trials=6,
        seed=5,
        verify_top_k=0,
        proxy=_PROXY,
        search_space={"ffn_alignment": 8, "selection": _CRITERION},
    )
    context = prepare(tiny_loaded, spec)
    assert isinstance(job_proxy(context), MinusKeptChannels)
    ranks = RandomRanks().importance(tiny_loaded.adapter, context.stats, seed=5, artifacts=ModelArtifacts())
    assert all(torch.equal(a, b) for a, b in zip(context.importance.channels, ranks.channels, strict=True))

    result = run_search(context, study_name="registries")
    complete = [t for t in result.trials if t.state == "complete"]
    assert len(complete) == 6
    for trial in complete:
        assert trial.arch is not None
        kept = sum(layer["ffn_channels"] for layer in trial.arch["layers"])
        assert trial.value == trial.scores[_PROXY] == -kept
        selection = context.selection(ArchConfig.from_dict(trial.arch))
        for layer, scores in zip(selection.layers, ranks.channels, strict=True):
            # the kept channels are the random ranking's best ones
            assert torch.equal(layer.channels, torch.sort(torch.topk(scores, len(layer.channels)).indices).values)
    assert result.trust is not None and _PROXY in result.trust.proxies


def test_a_name_is_refused_until_it_is_registered(monkeypatch: pytest.MonkeyPatch, tiny_llama_dir: Path) -> None:
    with pytest.raises(ValidationError, match="unknown proxy"):
        tiny_job_spec(tiny_llama_dir, proxy=_PROXY)
    with pytest.raises(ValidationError, match="unknown selection criterion"):
        tiny_job_spec(tiny_llama_dir, search_space={"selection": _CRITERION})
    monkeypatch.setitem(names.PROXIES, _PROXY, f"{__name__}:MinusKeptChannels")
    monkeypatch.setitem(names.CRITERIA, _CRITERION, f"{__name__}:RandomRanks")
    assert tiny_job_spec(tiny_llama_dir, proxy=_PROXY, search_space={"selection": _CRITERION}).proxy == _PROXY
