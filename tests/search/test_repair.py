from __future__ import annotations

import random

import pytest
from transformers import LlamaConfig

from search.errors import BudgetInfeasible
from search.families import read_shape
from search.repair import Proposal, repair
from search.spec import check_budget

SHAPE = read_shape(
    LlamaConfig(
        hidden_size=256,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=2,
        intermediate_size=768,
        vocab_size=4096,
    ).to_dict()
)


def _random_proposal(rng: random.Random) -> Proposal:
    def value() -> float:
        return rng.choice([0.0, 1.0, rng.random(), rng.random() ** 3])

    return Proposal(tuple(value() for _ in range(8)), tuple(value() for _ in range(8)))


@pytest.mark.parametrize("ratio", [0.35, 0.5, 0.7, 0.9, 1.0])
def test_repair_always_lands_within_one_percent_of_the_budget(ratio: float) -> None:
    rng = random.Random(ratio)
    budget = ratio * SHAPE.dense_params()
    for _ in range(200):
        arch = repair(SHAPE, _random_proposal(rng), ratio, ffn_alignment=32)
        assert abs(SHAPE.count_params(arch) - budget) <= 0.01 * budget
        for layer in arch.layers:
            assert layer.heads % SHAPE.group_size == 0
            assert layer.ffn_channels % 32 == 0 or layer.ffn_channels == SHAPE.intermediate_size


def test_repair_keeps_the_shape_of_the_proposal() -> None:
    proposal = Proposal((1.0,) * 8, (1.0, 1.0, 1.0, 1.0, 0.2, 0.2, 0.2, 0.2))
    arch = repair(SHAPE, proposal, 0.6, ffn_alignment=32)
    first, last = arch.layers[0].ffn_channels, arch.layers[-1].ffn_channels
    assert first > last


def test_full_budget_gives_the_dense_model() -> None:
    assert repair(SHAPE, Proposal.uniform(8, 0.3), 1.0, ffn_alignment=32) == SHAPE.dense_arch()


def test_unreachable_budgets_are_refused_up_front() -> None:
    with pytest.raises(BudgetInfeasible, match="embeddings"):
        check_budget(SHAPE, SHAPE.min_param_ratio(), ffn_alignment=32)
    tiny = read_shape(
        LlamaConfig(
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
            vocab_size=512,
        ).to_dict()
    )
    with pytest.raises(BudgetInfeasible, match="ffn_alignment=32 is too coarse"):
        check_budget(tiny, 0.5, ffn_alignment=32)
    check_budget(tiny, 0.5, ffn_alignment=8)
