from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

from search.arch import ArchConfig, LayerArch
from search.errors import InvalidArchConfig, UnsupportedModel
from search.families import read_shape

_DIMS = dict(
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=96,
    vocab_size=256,
)


@pytest.mark.parametrize(
    "config",
    [
        LlamaConfig(**_DIMS),
        LlamaConfig(**_DIMS, attention_bias=True, mlp_bias=True, tie_word_embeddings=True),
        MistralConfig(**_DIMS),
        Qwen2Config(**_DIMS),
        Qwen3Config(**_DIMS, head_dim=32),
    ],
    ids=["llama", "llama-bias-tied", "mistral", "qwen2", "qwen3"],
)
def test_dense_param_count_matches_the_real_model(config: object) -> None:
    model = AutoModelForCausalLM.from_config(config)
    shape = read_shape(config.to_dict())
    assert shape.dense_params() == sum(p.numel() for p in model.parameters())


def test_count_follows_dropped_and_narrowed_blocks() -> None:
    shape = read_shape(LlamaConfig(**_DIMS).to_dict())
    dense = shape.dense_params()
    no_mlp = ArchConfig((LayerArch(4, 0), LayerArch(4, 96), LayerArch(4, 96)))
    assert dense - shape.count_params(no_mlp) == 3 * 64 * 96 + 64  # gate, up, down and the norm
    half_heads = ArchConfig((LayerArch(2, 96), LayerArch(4, 96), LayerArch(4, 96)))
    head_dim = 16
    assert dense - shape.count_params(half_heads) == 2 * 64 * 2 * head_dim + 2 * 64 * head_dim  # q+o, k+v of one group


def test_heads_must_be_whole_kv_groups() -> None:
    shape = read_shape(LlamaConfig(**_DIMS).to_dict())
    with pytest.raises(InvalidArchConfig, match="KV groups"):
        shape.count_params(ArchConfig((LayerArch(3, 96),) * 3))
    with pytest.raises(InvalidArchConfig, match="layers"):
        shape.count_params(ArchConfig((LayerArch(4, 96),) * 2))


def test_unsupported_family_names_the_supported_ones() -> None:
    with pytest.raises(UnsupportedModel, match="llama, mistral, qwen2, qwen3, gpt2, bert"):
        read_shape({"model_type": "t5"})
    with pytest.raises(UnsupportedModel, match="incomplete"):
        read_shape({"model_type": "gpt2"})


def test_arch_round_trips_through_json() -> None:
    arch = ArchConfig((LayerArch(2, 32), LayerArch(0, 0)))
    assert ArchConfig.from_dict(arch.to_dict()) == arch
    assert arch.depth == 1
