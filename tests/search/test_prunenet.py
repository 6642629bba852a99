"""PruneNet's pieces: the KS statistic, the tables a trial looks up, the sparsity term, the policy."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from search.arch import ArchConfig, LayerArch
from search.criteria.prunenet import train_policy
from search.loading import LoadedModel
from search.proxies.prunenet import GRID, PruneNet
from search.selection import select_units
from search.spectra import attention_columns, ffn_matrix, ks_distance, spectrum


def test_ks_distance_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    generator = torch.Generator().manual_seed(0)
    for n, m in ((50, 50), (64, 20), (7, 90)):
        a, b = torch.randn(n, generator=generator), torch.randn(m, generator=generator) * 1.3 + 0.2
        assert ks_distance(a, b) == pytest.approx(stats.ks_2samp(a.numpy(), b.numpy()).statistic, abs=1e-12)
    assert ks_distance(a, a) == 0.0 and ks_distance(a, a[:0]) == 1.0


def test_a_trial_reads_the_spectral_distance_of_its_kept_rows(tiny_loaded: LoadedModel) -> None:
    adapter = tiny_loaded.adapter
    shape = adapter.shape
    proxy = PruneNet(adapter, seed=0)
    rows = ffn_matrix(adapter, 1)
    channels = shape.intermediate_size * 5 // GRID  # on the grid: no interpolation
    kept = proxy.order.channels[1].sort(descending=True, stable=True).indices[:channels]
    chosen = rows[kept]
    direct = ks_distance(spectrum(rows.t() @ rows, min(rows.shape)), spectrum(chosen.t() @ chosen, channels))
    full = shape.intermediate_size
    arch = ArchConfig((LayerArch(4, full), LayerArch(2, channels), LayerArch(0, full), LayerArch(4, 0)))
    terms = dict((f"{b.kind}.{b.layer}", d) for b, d in proxy.block_terms(arch))
    assert terms["mlp.1"] == pytest.approx(direct, abs=1e-9)
    assert terms["attention.2"] == terms["mlp.3"] == 1.0 and terms["mlp.0"] == terms["attention.0"] == 0.0
    columns = attention_columns(adapter, 1)  # (heads·d, H); one KV group of two heads is half of them
    width = shape.group_size * shape.head_dim
    group = int(proxy.order.head_groups[1].argmax())
    half = columns[group * width : (group + 1) * width]
    expected = ks_distance(
        spectrum(columns.t() @ columns, min(columns.shape)), spectrum(half.t() @ half, min(half.shape))
    )
    assert terms["attention.1"] == pytest.approx(expected, abs=1e-9)

    dense = proxy.score(select_units(proxy.order, shape.dense_arch(), shape.group_size))
    sparse_arch = ArchConfig(tuple(LayerArch(4, full, 0.5) for _ in range(4)))
    sparse = proxy.score(select_units(proxy.order, sparse_arch, shape.group_size))
    assert dense.value == 0.0 and -1.0 < sparse.value < 0.0


def test_policy_training_is_seeded_and_keeps_its_best_checkpoint(tiny_loaded: LoadedModel) -> None:
    first = train_policy(tiny_loaded.adapter, seed=5)
    second = train_policy(tiny_loaded.adapter, seed=5)
    assert torch.equal(first.ffn_direction, second.ffn_direction)
    assert torch.equal(first.attention_direction, second.attention_direction)
    for part in ("ffn", "attention"):
        assert first.log[f"{part}_ks_after"] <= first.log[f"{part}_ks_before"]
    importance = first.importance(tiny_loaded.adapter)
    assert [g.shape for g in importance.head_groups] == [torch.Size([2])] * 4
    assert [c.shape for c in importance.channels] == [torch.Size([tiny_loaded.adapter.shape.intermediate_size])] * 4


def test_policy_and_tables_are_kept_on_disk_for_the_next_process(
    tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second load of the same weights (another worker, a later job) reads the trained policy and the
    tables instead of training again; changed weights get their own entry; a corrupt file is recomputed."""
    from search.artifacts import model_fingerprint
    from search.loading import load_model
    from search.proxies import create_proxy

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model_dir)
    tiny_llama_dir = model_dir  # this test changes the weights' timestamps
    artifacts = tmp_path / "artifacts"
    first = load_model(str(tiny_llama_dir), artifacts=artifacts)
    trained = create_proxy("prunenet", first.adapter, None, seed=3, artifacts=first.artifacts)  # type: ignore[arg-type]
    entry = artifacts / model_fingerprint(str(tiny_llama_dir), None)
    assert sorted(p.name for p in entry.iterdir()) == ["prunenet-policy-seed3.pt", "prunenet-tables-seed3.pt"]

    def recomputed(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("trained or tabulated again")

    second = load_model(str(tiny_llama_dir), artifacts=artifacts)  # a fresh process's view: empty memory cache
    with monkeypatch.context() as patch:
        patch.setattr("search.criteria.prunenet.train_policy", recomputed)
        patch.setattr("search.proxies.prunenet.build_tables", recomputed)
        reloaded = create_proxy("prunenet", second.adapter, None, seed=3, artifacts=second.artifacts)  # type: ignore[arg-type]
    assert torch.equal(reloaded.policy.ffn_direction, trained.policy.ffn_direction)
    assert torch.equal(reloaded.tables.ffn, trained.tables.ffn)
    assert reloaded.policy.log == trained.policy.log

    (entry / "prunenet-policy-seed3.pt").write_bytes(b"truncated")
    third = load_model(str(tiny_llama_dir), artifacts=artifacts)
    recomputed = create_proxy("prunenet", third.adapter, None, seed=3, artifacts=third.artifacts)  # type: ignore[arg-type]
    assert torch.equal(recomputed.policy.ffn_direction, trained.policy.ffn_direction)  # seeded: same policy

    os.utime(tiny_llama_dir / "model.safetensors", ns=(0, 0))  # "new weights"
    assert model_fingerprint(str(tiny_llama_dir), None) != entry.name
