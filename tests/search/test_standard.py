"""The standard-format search: every candidate is what the family's own config expresses, lands on
the budget, and the job's export loads with plain ``from_pretrained``."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from transformers import AutoModelForCausalLM

from search.arch import ArchConfig, LayerArch, ModelShape
from search.candidates import prepare_job
from search.errors import BudgetInfeasible
from search.export import export_model
from search.export_format import PROVENANCE_FILE
from search.families import read_shape
from search.repair import Proposal
from search.spec import JobSpec, SearchSpace, check_job
from search.standard import check_standard_budget, is_standard, repair_standard, standard_heads
from search.study import run_search
from tests.conftest import TINY_LLAMA_CONFIG

REFERENCE_MODEL = Path(__file__).resolve().parents[2] / "models" / "ref-llama-7m"
GPT2_CONFIG: dict[str, Any] = {
    "model_type": "gpt2",
    "n_embd": 64,
    "n_layer": 4,
    "n_head": 4,
    "n_inner": 128,
    "vocab_size": 512,
    "n_positions": 128,
}


def _shape(config: dict[str, Any]) -> ModelShape:
    return read_shape(config)


def _random_proposal(rng: random.Random, layers: int) -> Proposal:
    def fraction() -> float:
        draw = rng.random()
        return 0.0 if draw < 0.2 else 1.0 if draw < 0.3 else rng.random()

    return Proposal(tuple(fraction() for _ in range(layers)), tuple(fraction() for _ in range(layers)))


@pytest.mark.parametrize("config", [REFERENCE_MODEL / "config.json", "tiny-llama", "gpt2"])
@pytest.mark.parametrize(("depth", "width"), [("layer", True), ("layer", False), ("none", True)])
def test_repair_lands_every_proposal_on_the_budget_in_the_standard_format(config: Any, depth: str, width: bool) -> None:
    data = {"tiny-llama": TINY_LLAMA_CONFIG, "gpt2": GPT2_CONFIG}.get(config) or json.loads(Path(config).read_text())
    shape, alignment = _shape(data), 8
    rng = random.Random(0)
    for ratio in (0.9, 0.75, 0.6):
        try:
            check_standard_budget(shape, ratio, ratio, ffn_alignment=alignment, depth=depth, width=width)
        except BudgetInfeasible:
            continue  # the check and the repair agree: the repair refuses it as well
        for _ in range(25):
            arch = repair_standard(
                shape, _random_proposal(rng, shape.num_layers), ratio, ffn_alignment=alignment, depth=depth, width=width
            )
            assert is_standard(shape, arch), arch.summary()
            assert abs(shape.count_params(arch) / shape.dense_params() - ratio) <= 0.01 * ratio
            if depth == "none":
                assert arch.depth == shape.num_layers
            if not width:
                assert all(layer.heads in (0, shape.num_heads) for layer in arch.layers)


def test_repair_keeps_the_layers_the_proposal_ranks_highest() -> None:
    shape = _shape(json.loads((REFERENCE_MODEL / "config.json").read_text()))
    keep = (0.9, 0.1, 0.8, 0.2, 0.7, 0.6)
    arch = repair_standard(shape, Proposal.standard(keep, 2, 1.0, 1.0), 0.6, ffn_alignment=32)
    assert [layer.heads > 0 for layer in arch.layers] == [True, False, True, False, True, True]
    # Fewer heads when the proposal leans to the MLP, more when it leans to attention.
    lean_mlp = repair_standard(shape, Proposal.standard(keep, 0, 0.1, 1.0), 0.6, ffn_alignment=8)
    lean_attention = repair_standard(shape, Proposal.standard(keep, 0, 1.0, 0.1), 0.6, ffn_alignment=8)
    assert lean_mlp.layers[0].heads < lean_attention.layers[0].heads


def test_gpt2_and_bert_keep_every_head_and_llama_only_divisors_of_hidden() -> None:
    gpt2 = _shape(GPT2_CONFIG)
    assert standard_heads(gpt2) == (4,)
    arch = repair_standard(gpt2, Proposal.standard((1.0,) * 4, 0, 0.2, 1.0), 0.7, ffn_alignment=8)
    assert {layer.heads for layer in arch.layers if layer.heads} == {4} and is_standard(gpt2, arch)
    llama = _shape(TINY_LLAMA_CONFIG | {"num_attention_heads": 16, "num_key_value_heads": 4, "head_dim": 4})
    assert standard_heads(llama) == (4, 8, 16)  # 12 heads of hidden 64: transformers refuses the config
    assert not is_standard(llama, ArchConfig((LayerArch(12, 64),) * 4))
    assert not is_standard(llama, ArchConfig((LayerArch(8, 64),) * 3 + (LayerArch(8, 32),)))


def test_a_budget_no_standard_architecture_meets_is_refused_with_the_nearest_sizes() -> None:
    shape = _shape(json.loads((REFERENCE_MODEL / "config.json").read_text()))
    # Every layer kept at full heads: the FFN alone cannot shrink the model to 40%.
    with pytest.raises(BudgetInfeasible, match=r"param_ratio 0\.400 cannot be reached in the standard format"):
        check_standard_budget(shape, 0.4, 0.4, ffn_alignment=32, depth="none", width=False)
    spec = JobSpec(
        model=str(REFERENCE_MODEL),
        target={"param_ratio": 0.4},
        search_space={"export_format": "standard", "depth": "none", "width": False},
    )
    with pytest.raises(BudgetInfeasible, match=r"the nearest standard sizes keep 0\.\d+ of all parameters"):
        check_job(spec)


def test_the_spec_refuses_what_no_standard_config_expresses() -> None:
    assert SearchSpace(export_format="standard").depth == "layer"  # left out: whole layers
    assert SearchSpace(export_format="standard", depth="none", width=False).depth == "none"
    assert SearchSpace().depth == "sublayer" and SearchSpace().export_format == "per_layer"
    for fields, words in (({"depth": "sublayer"}, "depth 'sublayer'"), ({"sparsity": 0.3}, "with sparsity")):
        with pytest.raises(ValidationError) as raised:
            SearchSpace(export_format="standard", **fields)
        (error,) = raised.value.errors()
        assert error["loc"] == ("export_format",) and words in error["msg"]
    with pytest.raises(ValidationError, match="unknown export format 'onnx'"):
        SearchSpace(export_format="onnx")


def test_a_standard_job_proposes_only_standard_candidates_and_exports_one(tmp_path: Path) -> None:
    spec = JobSpec(
        model=str(REFERENCE_MODEL),
        target={"param_ratio": 0.5},
        n_trials=4,
        seed=1,
        verify_top_k=1,
        audit_size=0,
        calibration={"n_samples": 2, "seq_len": 32, "heldout_samples": 2},
        search_space={"export_format": "standard"},
    )
    context = prepare_job(spec, device="cpu")
    result = run_search(context, study_name="standard")

    shape = context.shape
    assert {t.origin for t in result.trials if t.origin.startswith("seed:")} == {
        "seed:uniform",
        "seed:block_influence",
    }
    complete = [t for t in result.trials if t.state == "complete"]
    assert len(complete) == 4
    for trial in complete:
        assert is_standard(shape, ArchConfig.from_dict(trial.arch)), trial.arch
        assert abs(trial.param_ratio - 0.5) <= 0.005
    assert result.best is not None
    best = context.selection(ArchConfig.from_dict(result.best.arch))
    info = export_model(context.loaded, best, tmp_path / "best")

    assert info.kind == "standard"
    assert json.loads((tmp_path / "best" / PROVENANCE_FILE).read_text())["kind"] == "standard"
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "best")  # plain transformers, no project code
    assert sum(p.numel() for p in model.parameters()) == shape.count_params(best.arch)
    assert model.config.num_hidden_layers == best.arch.depth
