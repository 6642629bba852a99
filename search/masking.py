"""Evaluate a candidate in place: swapped modules, input masks and zeroed weights, never a copy of
the model.

Inside ``apply_arch`` the model computes exactly what the physically pruned model computes:
- a dropped sub-block is swapped for a module that contributes nothing, and a wholly dropped layer
  for an identity, so it costs nothing;
- kept heads / channels are realised by zeroing the inputs of the output projections that belong
  to pruned units, which equals slicing the q/k/v/o rows and up/gate/down rows;
- unstructured sparsity zeroes the selected weights in place; only the zeroed values are saved, and
  they are written back on exit.
Everything is restored on exit, also when the body raises.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from search.adapters import Adapter, Block
from search.selection import LayerSelection, Selection, SparsityScorer, sparse_positions


@contextmanager
def apply_arch(adapter: Adapter, selection: Selection) -> Iterator[None]:
    shape = adapter.shape
    with ExitStack() as stack:
        for i, (layer, kept) in enumerate(zip(selection.arch.layers, selection.layers, strict=True)):
            if not layer.attention_kept and not layer.mlp_kept:
                stack.enter_context(_swap(*adapter.skip_layer(i)))
                continue
            if not layer.attention_kept:
                for swap in adapter.drop_attention(i):
                    stack.enter_context(_swap(*swap))
            elif layer.heads < shape.num_heads:
                mask = torch.zeros(shape.num_kv_heads, shape.group_size * shape.head_dim)
                mask[kept.kv_groups] = 1.0  # group k covers query heads k*g .. k*g+g-1
                stack.enter_context(_mask_input(adapter.attention_output(i), mask.flatten()))
            if not layer.mlp_kept:
                for swap in adapter.drop_mlp(i):
                    stack.enter_context(_swap(*swap))
            elif layer.ffn_channels < shape.intermediate_size:
                mask = torch.zeros(shape.intermediate_size)
                mask[kept.channels] = 1.0
                stack.enter_context(_mask_input(adapter.mlp_output(i), mask))
            if layer.sparsity > 0 and selection.sparsity is not None:
                blocks = [
                    Block(i, kind) for kind, on in (("attention", layer.attention_kept), ("mlp", layer.mlp_kept)) if on
                ]
                stack.enter_context(_sparsify(adapter, selection.sparsity, blocks, layer.sparsity, kept))
        yield


@contextmanager
def _sparsify(
    adapter: Adapter, scorer: SparsityScorer, blocks: list[Block], sparsity: float, kept: LayerSelection
) -> Iterator[None]:
    saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for block in blocks:
                for matrix in adapter.matrices(block, kept):
                    rows, cols = sparse_positions(scorer, block, matrix, sparsity)
                    weight = matrix.weight()  # a view of the parameter, (out, in)
                    saved.append((weight, rows, cols, weight[rows, cols].clone()))
                    weight[rows, cols] = 0
        yield
    finally:
        with torch.no_grad():
            for weight, rows, cols, values in reversed(saved):
                weight[rows, cols] = values


@contextmanager
def _swap(parent: nn.Module, name: str, replacement: nn.Module) -> Iterator[None]:
    original = parent._modules[name]
    parent._modules[name] = replacement
    try:
        yield
    finally:
        parent._modules[name] = original


@contextmanager
def _mask_input(module: nn.Module, mask: torch.Tensor) -> Iterator[None]:
    mask = mask.to(device=module.weight.device, dtype=module.weight.dtype)

    def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (args[0] * mask, *args[1:])

    handle = module.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()
