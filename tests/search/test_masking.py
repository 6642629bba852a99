"""Masked evaluation must compute exactly what the physically pruned model computes."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from search.arch import ArchConfig, LayerArch
from search.calibration import TokenSet
from search.loading import LoadedModel
from search.masking import apply_arch
from search.selection import select_units
from tests.search.selections import random_importance


def _loss(model: torch.nn.Module, batch: torch.Tensor) -> float:
    with torch.no_grad():
        return float(model(input_ids=batch, labels=batch).loss)


def test_unpruned_config_equals_the_dense_model(tiny_loaded: LoadedModel, tiny_tokens: TokenSet) -> None:
    adapter = tiny_loaded.adapter
    batch = tiny_tokens.calibration[:4]
    dense = _loss(adapter.model, batch)
    selection = select_units(random_importance(adapter.shape, 0), adapter.shape.dense_arch(), adapter.shape.group_size)
    with apply_arch(adapter, selection):
        assert _loss(adapter.model, batch) == dense


def test_masks_equal_physical_slicing(tiny_loaded: LoadedModel, tiny_tokens: TokenSet) -> None:
    """Keep one KV group and 96 channels in layers 0 and 2, drop layers 1 and 3: the masked model
    must match a smaller Llama built from the sliced weights."""
    adapter = tiny_loaded.adapter
    shape = adapter.shape
    arch = ArchConfig((LayerArch(2, 96), LayerArch(0, 0), LayerArch(2, 96), LayerArch(0, 0)))
    selection = select_units(random_importance(shape, 1), arch, shape.group_size)

    config = LlamaConfig(
        **{
            **adapter.model.config.to_dict(),
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "intermediate_size": 96,
            "head_dim": shape.head_dim,
        }
    )
    small = LlamaForCausalLM(config).eval()
    source = adapter.model.state_dict()
    sliced = {k: v for k, v in source.items() if not k.startswith("model.layers.")}
    d = shape.head_dim
    for new, old in enumerate((0, 2)):
        kept = selection.layers[old]
        group = int(kept.kv_groups[0])
        q_rows = torch.arange(group * shape.group_size * d, (group + 1) * shape.group_size * d)
        kv_rows = torch.arange(group * d, (group + 1) * d)
        p, n = f"model.layers.{old}.", f"model.layers.{new}."
        sliced[n + "self_attn.q_proj.weight"] = source[p + "self_attn.q_proj.weight"][q_rows]
        sliced[n + "self_attn.k_proj.weight"] = source[p + "self_attn.k_proj.weight"][kv_rows]
        sliced[n + "self_attn.v_proj.weight"] = source[p + "self_attn.v_proj.weight"][kv_rows]
        sliced[n + "self_attn.o_proj.weight"] = source[p + "self_attn.o_proj.weight"][:, q_rows]
        sliced[n + "mlp.gate_proj.weight"] = source[p + "mlp.gate_proj.weight"][kept.channels]
        sliced[n + "mlp.up_proj.weight"] = source[p + "mlp.up_proj.weight"][kept.channels]
        sliced[n + "mlp.down_proj.weight"] = source[p + "mlp.down_proj.weight"][:, kept.channels]
        for norm in ("input_layernorm.weight", "post_attention_layernorm.weight"):
            sliced[n + norm] = source[p + norm]
    small.load_state_dict(sliced, strict=True)
    assert sum(p.numel() for p in small.parameters()) == shape.count_params(arch)

    batch = tiny_tokens.calibration[:4]
    with torch.no_grad(), apply_arch(adapter, selection):
        masked = adapter.model(input_ids=batch).logits
    with torch.no_grad():
        physical = small(input_ids=batch).logits
    torch.testing.assert_close(masked, physical, rtol=1e-4, atol=1e-4)


def test_model_is_restored_after_the_context(tiny_loaded: LoadedModel, tiny_tokens: TokenSet) -> None:
    adapter = tiny_loaded.adapter
    modules_before = list(adapter.model.modules())
    arch = ArchConfig((LayerArch(0, 64), LayerArch(2, 0), LayerArch(0, 0), LayerArch(4, 256)))
    selection = select_units(random_importance(adapter.shape, 2), arch, adapter.shape.group_size)
    try:
        with apply_arch(adapter, selection):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert list(adapter.model.modules()) == modules_before
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in adapter.model.modules())
