"""Evaluate a candidate in place: swapped modules, input masks and zeroed weights, never a copy of
the model.

Inside ``apply_arch`` the model computes exactly what the physically pruned model computes:
- a dropped sub-block is swapped for a module that contributes nothing, and a wholly dropped layer
  for an identity, so it costs nothing;
- kept heads / channels are realised physically where the family allows it (decoders): the
  projections' weights are swapped for gathers of the kept rows / columns, so a candidate at half
  width multiplies half-width matrices. Elsewhere (GPT-2's fused QKV, BERT), and when
  ``physical=False``, the inputs of the output projections that belong to pruned units are zeroed,
  which computes the same values at full width;
- unstructured sparsity zeroes the selected weights in place; only the zeroed values are saved, and
  they are written back on exit.
Everything is restored on exit, also when the body raises.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from search.adapters import Adapter, Block
from search.arch import LayerArch
from search.selection import Selection, SparsityScorer, sparse_positions
from search.units import LayerSelection


@dataclass(frozen=True)
class Slice:
    """A projection whose weight ``apply_arch`` swapped for a gather: the kept rows (outputs) and
    columns (inputs) of the original, None where all are kept, and the original shape."""

    rows: torch.Tensor | None
    cols: torch.Tensor | None
    out_features: int
    in_features: int


Slices = dict[nn.Module, Slice]


@contextmanager
def apply_arch(adapter: Adapter, selection: Selection, *, physical: bool = True) -> Iterator[Slices]:
    """Yields the projections it sliced, so hooks can map their activations back to full width."""
    shape = adapter.shape
    slices: Slices = {}
    physical = physical and adapter.slices_width
    with ExitStack() as stack:
        # Before any slicing: the sparsity scores and positions are in the full matrices' coordinates.
        stack.enter_context(sparsified(adapter, selection))
        for i, (layer, kept) in enumerate(zip(selection.arch.layers, selection.layers, strict=True)):
            if not layer.attention_kept and not layer.mlp_kept:
                stack.enter_context(_swap(*adapter.skip_layer(i)))
                continue
            for swap in (adapter.drop_attention(i) if not layer.attention_kept else []) + (
                adapter.drop_mlp(i) if not layer.mlp_kept else []
            ):
                stack.enter_context(_swap(*swap))
            narrow_attention = layer.attention_kept and layer.heads < shape.num_heads
            narrow_mlp = layer.mlp_kept and layer.ffn_channels < shape.intermediate_size
            if physical:
                for kind, narrow in (("attention", narrow_attention), ("mlp", narrow_mlp)):
                    if narrow:
                        stack.enter_context(_gather(adapter, Block(i, kind), kept, slices))
                continue
            if narrow_attention:
                mask = torch.zeros(shape.num_kv_heads, shape.group_size * shape.head_dim)
                mask[kept.kv_groups] = 1.0  # group k covers query heads k*g .. k*g+g-1
                stack.enter_context(_mask_input(adapter.attention_output(i), mask.flatten()))
            if narrow_mlp:
                mask = torch.zeros(shape.intermediate_size)
                mask[kept.channels] = 1.0
                stack.enter_context(_mask_input(adapter.mlp_output(i), mask))
        yield slices


@contextmanager
def sparsified(adapter: Adapter, selection: Selection) -> Iterator[None]:
    """Only the candidate's unstructured sparsity, zeroed in place and restored on exit (``apply_arch``
    starts with it; ``search.replay`` masks the rest)."""
    with ExitStack() as stack:
        if selection.sparsity is not None:
            for i, (layer, kept) in enumerate(zip(selection.arch.layers, selection.layers, strict=True)):
                if layer.sparsity > 0 and (layer.attention_kept or layer.mlp_kept):
                    stack.enter_context(
                        _sparsify(adapter, selection.sparsity, kept_blocks(i, layer), layer.sparsity, kept)
                    )
        yield


def kept_blocks(layer: int, arch: LayerArch) -> list[Block]:
    """The sub-blocks of layer ``layer`` that ``arch`` keeps."""
    return [Block(layer, kind) for kind, on in (("attention", arch.attention_kept), ("mlp", arch.mlp_kept)) if on]


@contextmanager
def _gather(adapter: Adapter, block: Block, kept: LayerSelection, slices: Slices) -> Iterator[None]:
    """Swap the sub-block's projections for copies of their kept rows / columns (restored on exit)."""
    saved: list[tuple[nn.Module, nn.Parameter, nn.Parameter | None]] = []
    try:
        with torch.no_grad():
            for matrix in adapter.matrices(block, kept):
                module = matrix.module
                weight, bias = module.weight, module.bias
                # non_blocking: a plain copy waits for the device to finish what it was queued (a
                # stall per matrix); the indices are staged from host memory at once either way.
                rows = None if matrix.rows is None else matrix.rows.to(weight.device, non_blocking=True)
                cols = None if matrix.cols is None else matrix.cols.to(weight.device, non_blocking=True)
                sliced = weight if rows is None else weight.index_select(0, rows)
                sliced = sliced if cols is None else sliced.index_select(1, cols)
                saved.append((module, weight, bias))
                module._parameters["weight"] = nn.Parameter(sliced, requires_grad=weight.requires_grad)
                if bias is not None and rows is not None:
                    kept_bias = bias.index_select(0, rows)
                    module._parameters["bias"] = nn.Parameter(kept_bias, requires_grad=bias.requires_grad)
                slices[module] = Slice(rows, cols, weight.shape[0], weight.shape[1])
        yield
    finally:
        for module, weight, bias in reversed(saved):
            module._parameters["weight"] = weight
            module._parameters["bias"] = bias
            slices.pop(module, None)


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
        # An offloaded layer (search.dispatch) runs away from where its weights are stored.
        return (args[0] * mask.to(args[0].device), *args[1:])

    handle = module.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()
