"""Scoring by replaying a captured graph of the masked model (``search.replay``): where it applies, what
``auto`` settles on, and on a GPU that the captured graphs score what gathering scores."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from search.arch import ArchConfig, LayerArch
from search.calibration import TokenSet, tokenize_windows
from search.calibration_texts import default_texts
from search.loading import LoadedModel, load_model
from search.proxies.kl import KL
from search.proxies.tracenas import TraceNAS
from search.replay import GATHER, REPLAY, TIMED_CANDIDATES, CompiledLayers, Execution, unsupported
from tests.search.selections import random_selection

REFERENCE = Path(__file__).resolve().parents[2] / "models" / "ref-llama-13m"


def test_execution_is_checked_and_auto_gathers_without_a_gpu(tiny_loaded: LoadedModel) -> None:
    with pytest.raises(ValueError, match="execution must be one of auto, gather, replay"):
        Execution("graph", tiny_loaded.adapter, "kl")
    assert Execution("auto", tiny_loaded.adapter, "kl").mode == GATHER  # no GPU: nothing to replay for
    assert Execution("replay", tiny_loaded.adapter, "kl").mode == REPLAY


def test_models_whose_masks_are_not_their_pruning_are_refused(tiny_loaded: LoadedModel, monkeypatch) -> None:
    monkeypatch.setattr(tiny_loaded.adapter, "shape", dataclasses.replace(tiny_loaded.adapter.shape, o_bias=True))
    assert "bias" in (unsupported(tiny_loaded.adapter) or "")
    with pytest.raises(ValueError, match="tracenas cannot replay this model: an output projection has a bias"):
        Execution("replay", tiny_loaded.adapter, "tracenas")
    monkeypatch.undo()
    monkeypatch.setattr(tiny_loaded.adapter.model.config, "_attn_implementation", "eager")
    assert "SDPA" in (unsupported(tiny_loaded.adapter) or "")


def test_auto_keeps_the_faster_way_and_never_a_way_that_disagrees(tiny_loaded: LoadedModel) -> None:
    execution = Execution("replay", tiny_loaded.adapter, "kl")
    execution.mode = "auto"  # as on a GPU
    for _ in range(TIMED_CANDIDATES):
        assert execution.timing
        execution.record(0.030, 0.010, agree=True)
    assert execution.mode == REPLAY
    execution.mode = "auto"
    execution.record(0.030, 0.010, agree=False)
    assert execution.mode == GATHER


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_captured_graphs_score_what_gathering_scores() -> None:
    loaded = load_model(str(REFERENCE), device="cuda")
    tokens: TokenSet = tokenize_windows(loaded.tokenizer, default_texts(), seq_len=128, n_calibration=16, n_heldout=4)
    layers = loaded.adapter.shape.num_layers
    archs = [
        ArchConfig(tuple(LayerArch(5 + 5 * (i % 2), 256 + 128 * (i % 3), 0.3 * (i == 1)) for i in range(layers))),
        ArchConfig(tuple(LayerArch(0 if i % 3 == 0 else 5, 0 if i % 4 == 1 else 512) for i in range(layers))),
    ]
    selections = [random_selection(loaded, arch, seed=i) for i, arch in enumerate(archs)]
    for proxy in (TraceNAS, KL):
        gathered = proxy(loaded.adapter, tokens, batch_size=8, execution="gather")
        replayed = proxy(loaded.adapter, tokens, batch_size=8, execution="replay")
        auto = proxy(loaded.adapter, tokens, batch_size=8)
        for selection in selections * 2:  # the second round replays graphs captured in the first
            expected, actual = gathered.score(selection).value, replayed.score(selection).value
            assert actual == pytest.approx(expected, rel=0.02, abs=5e-3), (proxy.name, expected, actual)
        for selection in selections * TIMED_CANDIDATES:
            auto.score(selection)
        assert auto.execution.mode in (GATHER, REPLAY)  # settled, by timing both
    # Several candidates in one graph (a mask slot each), captured once and replayed for a smaller round too.
    replayed = TraceNAS(loaded.adapter, tokens, batch_size=8, execution="replay")
    gathered = TraceNAS(loaded.adapter, tokens, batch_size=8, execution="gather")
    plain = [
        random_selection(
            loaded,
            dataclasses.replace(arch, layers=tuple(dataclasses.replace(layer, sparsity=0.0) for layer in arch.layers)),
        )
        for arch in archs
    ]
    for round_ in (plain * 2, plain):
        for selection, score in zip(round_, replayed.score_many(round_), strict=True):
            expected = gathered.score(selection).value
            assert score.value == pytest.approx(expected, rel=0.02, abs=5e-3), (expected, score.value)
    # Gathering on a GPU queues candidate after candidate (each one's weights gathered, sparsified and
    # restored in the stream's order) and waits once: each scores what it scores alone, the model unchanged.
    weights = [p.detach().clone() for p in loaded.adapter.model.parameters()]
    waiting = gathered.launch(selections * 2)
    assert waiting is not None
    launched = [score.value for score in waiting()]
    assert launched == pytest.approx([gathered.score(s).value for s in selections * 2], abs=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(weights, loaded.adapter.model.parameters(), strict=True))


def test_a_model_that_cannot_be_captured_is_gathered_and_its_graphs_released(tiny_loaded: LoadedModel) -> None:
    execution = Execution("replay", tiny_loaded.adapter, "kl")
    execution.mode = "auto"  # as on a GPU
    released: list[bool] = []

    def replay() -> float:
        raise RuntimeError("operation not permitted when stream is capturing")

    assert execution.compare(lambda: 0.5, replay, lambda a, b: a == b, lambda: released.append(True)) == 0.5
    assert execution.mode == GATHER and released == [True]


def test_compiled_layers_stand_in_only_while_a_graph_is_built(tiny_loaded: LoadedModel) -> None:
    """The compiled wrappers replace the layers inside ``installed`` only (a gathered candidate never
    runs them), the same wrappers each time (compiled code is reused), and the layers come back even
    when the run fails. On a CPU nothing is compiled."""
    adapter = tiny_loaded.adapter
    originals = list(adapter.layers)
    assert CompiledLayers(adapter).enabled is False  # no GPU here: graphs are not captured, nothing compiles
    layers = CompiledLayers(adapter)
    layers.enabled = True  # as on a GPU; compiling itself waits for a first call, which this test never makes
    seen = []
    for _ in range(2):
        with pytest.raises(ValueError), layers.installed():
            seen.append(list(adapter.layers))
            raise ValueError("a failed run")
        assert list(adapter.layers) == originals
    assert seen[0] == seen[1]
    assert [getattr(layer, "_orig_mod", None) for layer in seen[0]] == originals
