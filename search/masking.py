"""Evaluate a candidate in place: skipped modules and input masks, never a copy of the model.

Inside ``apply_arch`` the model computes exactly what the physically pruned model would:
- a dropped sub-block is swapped for a module that contributes nothing (a whole dropped layer is
  swapped for an identity, so it costs nothing);
- kept heads / channels are realised by zeroing the inputs of ``o_proj`` / ``down_proj`` that
  belong to pruned units, which equals slicing q/k/v/o rows and gate/up/down rows.
Everything is restored on exit, also when the body raises.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from search.adapters import DecoderAdapter
from search.selection import Selection


class _DroppedAttention(nn.Module):
    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> tuple[torch.Tensor, None]:
        return torch.zeros_like(hidden_states), None


class _DroppedMLP(nn.Module):
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


class _SkippedLayer(nn.Module):
    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return hidden_states


@contextmanager
def apply_arch(adapter: DecoderAdapter, selection: Selection) -> Iterator[None]:
    shape = adapter.shape
    with ExitStack() as stack:
        for i, (layer, kept) in enumerate(zip(selection.arch.layers, selection.layers, strict=True)):
            if not layer.attention_kept and not layer.mlp_kept:
                stack.enter_context(_swap(adapter.layers, str(i), _SkippedLayer()))
                continue
            decoder_layer = adapter.layers[i]
            if not layer.attention_kept:
                stack.enter_context(_swap(decoder_layer, "self_attn", _DroppedAttention()))
            elif layer.heads < shape.num_heads:
                mask = _group_mask(kept.kv_groups, shape.num_kv_heads, shape.group_size * shape.head_dim)
                stack.enter_context(_mask_input(adapter.o_proj(i), mask))
            if not layer.mlp_kept:
                stack.enter_context(_swap(decoder_layer, "mlp", _DroppedMLP()))
            elif layer.ffn_channels < shape.intermediate_size:
                mask = torch.zeros(shape.intermediate_size)
                mask[kept.channels] = 1.0
                stack.enter_context(_mask_input(adapter.down_proj(i), mask))
        yield


def _group_mask(kept_groups: torch.Tensor, num_groups: int, width: int) -> torch.Tensor:
    mask = torch.zeros(num_groups, width)
    mask[kept_groups] = 1.0
    return mask.flatten()  # (H*D,): group k covers query heads k*g .. k*g+g-1


@contextmanager
def _swap(parent: nn.Module, name: str, replacement: nn.Module) -> Iterator[None]:
    original = parent._modules[name]
    parent._modules[name] = replacement
    try:
        yield
    finally:
        parent._modules[name] = original


@contextmanager
def _mask_input(linear: nn.Linear, mask: torch.Tensor) -> Iterator[None]:
    mask = mask.to(device=linear.weight.device, dtype=linear.weight.dtype)

    def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (args[0] * mask, *args[1:])

    handle = linear.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()
