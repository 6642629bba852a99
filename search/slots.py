"""The candidate as data on the device, for a captured CUDA graph that scores every candidate
(``search.replay``): the graph's shapes never change, and what it reads per candidate is a few
device tensors, written by one copy.

Two ways to hold candidates:
- ``MaskSlots``: the model at full width, and per slot and layer a mask on the inputs of the output
  projections (zero for pruned heads and channels, all zero for a dropped sub-block). Several slots
  put several candidates in one forward, each on its own copy of the batch.
- ``NarrowSlots``: one candidate, its kept heads and channels gathered into narrower weights of a
  fixed width (``capacity``), filled up with pruned units that are masked out. Where candidates keep
  a quarter of the blocks' parameters, it multiplies matrices about half as wide as the masks do.

Both compute what the physically pruned model computes, for families whose output projections have
no bias (``search.replay.unsupported``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from search.adapters import Adapter, Batch, Block, Matrix, head_rows
from search.arch import ModelShape
from search.masking import Slice, Slices, sparsified
from search.selection import Selection
from search.units import LayerSelection

# The widths of the narrow graphs: in quarters of the KV groups and eighths of the FFN channels, so
# a search's candidates share a few graphs (each is captured once, when first needed).
GROUP_PARTS, CHANNEL_PARTS = 4, 8


class MaskSlots:
    """Candidates as one device tensor: per slot and layer, the kept inputs of the attention's and the
    MLP's output projections. Written once per candidate (one copy); read by forward pre-hooks, so a
    graph captured with the hooks installed sees every later candidate. With ``slots`` > 1 the model
    runs ``slots`` copies of its batch, one behind another, and each copy is masked by its own slot:
    several candidates in one forward (``TraceNAS.score_many``)."""

    def __init__(self, adapter: Adapter, slots: int = 1) -> None:
        shape = self.shape = adapter.shape
        self.adapter = adapter
        self.slots = slots
        self.attention_width = shape.num_heads * shape.head_dim
        dtype = next(adapter.model.parameters()).dtype
        self.device_masks = torch.ones(
            slots, shape.num_layers, self.attention_width + shape.intermediate_size, device=adapter.device, dtype=dtype
        )
        # Built as booleans in page-locked memory, so the copy does not wait for the device. Reusing it is
        # safe: every candidate's score is read back (a wait for the device) before the next one is loaded.
        pinned = adapter.device.type == "cuda"
        self._host = torch.empty(self.device_masks.shape, dtype=torch.bool, pin_memory=pinned)
        self._staged = torch.empty(self.device_masks.shape, dtype=torch.bool, device=adapter.device)

    def load(self, selections: Sequence[Selection]) -> None:
        """One candidate per slot; slots beyond ``selections`` repeat the last one."""
        host = self._host
        host.zero_()
        for slot in range(self.slots):
            selection = selections[min(slot, len(selections) - 1)]
            for i, (layer, kept) in enumerate(zip(selection.arch.layers, selection.layers, strict=True)):
                # index_fill_, not an indexed assignment: ~100x faster on the host (3.6 ms against 0.03 for a row).
                if layer.attention_kept:
                    host[slot, i].index_fill_(0, head_rows(self.shape, kept.kv_groups)[0], True)
                if layer.mlp_kept:
                    host[slot, i].index_fill_(0, self.attention_width + kept.channels, True)
        self._staged.copy_(host, non_blocking=True)
        self.device_masks.copy_(self._staged)

    @contextmanager
    def realised(self, selections: Sequence[Selection]) -> Iterator[None]:
        """``selections`` in the slots, and a lone candidate's unstructured sparsity zeroed in the
        weights until exit (candidates that share a forward have none: ``shared_weights``)."""
        if len(selections) > 1 and not shared_weights(selections):
            raise ValueError("candidates with unstructured sparsity cannot share one forward")
        self.load(selections)
        with sparsified(self.adapter, selections[0]):
            yield

    @contextmanager
    def installed(self) -> Iterator[Slices]:
        """The masks on the model until exit; no projection is sliced (the slices are empty)."""
        attention, mlp = self.device_masks.split([self.attention_width, self.shape.intermediate_size], dim=2)
        with ExitStack() as stack:
            for i in range(self.shape.num_layers):
                stack.enter_context(_masked_input(self.adapter.attention_output(i), attention[:, i]))
                stack.enter_context(_masked_input(self.adapter.mlp_output(i), mlp[:, i]))
            yield {}


def shared_weights(selections: Sequence[Selection]) -> bool:
    """Whether candidates can share one forward (``MaskSlots`` with several slots): none zeroes
    unstructured sparsity, which changes the weights every slot reads."""
    return all(selection.sparsity is None for selection in selections)


def repeated(batch: Batch, times: int) -> Batch:
    """``batch`` with its sequences ``times`` over, one copy per mask slot."""
    return {name: value.repeat(times, *[1] * (value.dim() - 1)) for name, value in batch.items()}


@contextmanager
def _masked_input(module: torch.nn.Module, masks: torch.Tensor) -> Iterator[None]:
    """``masks``: (slots, width); the input's sequences are the slots' copies, one after another."""

    def mask(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = args[0]
        per_slot = x.unflatten(0, (len(masks), -1)) * masks.view(len(masks), *[1] * (x.dim() - 1), -1)
        return (per_slot.flatten(0, 1), *args[1:])

    handle = module.register_forward_pre_hook(mask)
    try:
        yield
    finally:
        handle.remove()


def slots_for(adapter: Adapter, selections: Sequence[Selection], weights: NarrowWeights) -> Slots:
    """What a graph that scores ``selections`` at once reads: a lone candidate narrowed to its
    ``capacity``, several candidates in mask slots (one each)."""
    if len(selections) == 1:
        return NarrowSlots(adapter, *capacity(adapter.shape, selections[0]), weights)
    return MaskSlots(adapter, len(selections))


def capacity(shape: ModelShape, selection: Selection) -> tuple[int, int]:
    """The (KV groups, FFN channels) a ``NarrowSlots`` needs for ``selection``: its widest kept
    attention's and MLP's, rounded up to a quarter of the groups and an eighth of the channels."""
    kept = list(zip(selection.arch.layers, selection.layers, strict=True))
    groups = max((len(units.kv_groups) for layer, units in kept if layer.attention_kept), default=0)
    channels = max((len(units.channels) for layer, units in kept if layer.mlp_kept), default=0)
    return _rounded_up(groups, shape.num_kv_heads, GROUP_PARTS), _rounded_up(
        channels, shape.intermediate_size, CHANNEL_PARTS
    )


def _rounded_up(count: int, whole: int, parts: int) -> int:
    step = -(-whole // parts)
    return min(whole, max(step, -(-count // step) * step))


class NarrowWeights:
    """A buffer per projection, as large as its weight, shared by a proxy's narrow graphs: a graph
    gathers its candidate's rows or columns into the buffer's start, viewed at the graph's width."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[nn.Module, str], torch.Tensor] = {}

    def _buffer(self, module: nn.Module, name: str, like: torch.Tensor, numel: int) -> torch.Tensor:
        key = (module, name)
        if key not in self._buffers:
            self._buffers[key] = torch.empty(like.numel(), dtype=like.dtype, device=like.device)
        return self._buffers[key][:numel]

    @contextmanager
    def narrowed(self, matrix: Matrix, slices: Slices) -> Iterator[None]:
        """``matrix``'s kept rows or columns gathered into its buffer, which is its weight until exit."""
        module = matrix.module
        weight, bias = module.weight, module.bias
        rows, cols = matrix.rows, matrix.cols
        out_features = weight.shape[0] if rows is None else len(rows)
        in_features = weight.shape[1] if cols is None else len(cols)
        narrow = self._buffer(module, "weight", weight, out_features * in_features).view(out_features, in_features)
        narrow_bias = None if bias is None else self._buffer(module, "bias", bias, out_features)
        with torch.no_grad():
            if rows is not None:
                torch.index_select(weight, 0, rows, out=narrow)
            elif cols is not None:
                torch.index_select(weight, 1, cols, out=narrow)
            else:
                narrow.copy_(weight)
            if narrow_bias is not None and bias is not None:
                torch.index_select(bias, 0, rows, out=narrow_bias) if rows is not None else narrow_bias.copy_(bias)
        module._parameters["weight"] = nn.Parameter(narrow, requires_grad=False)
        if narrow_bias is not None:
            module._parameters["bias"] = nn.Parameter(narrow_bias, requires_grad=False)
        slices[module] = Slice(rows, cols, weight.shape[0], weight.shape[1])
        try:
            yield
        finally:
            module._parameters["weight"] = weight
            module._parameters["bias"] = bias
            slices.pop(module, None)


class NarrowSlots:
    """One candidate at ``groups`` KV groups and ``channels`` FFN channels in every layer: per layer,
    the kept units first, then pruned ones to fill the width, masked at the output projections'
    inputs (so they add nothing and get no gradient). A candidate costs one copy of its units' order;
    the gathers into the narrow weights (``NarrowWeights``) happen in the graph."""

    slots = 1

    def __init__(self, adapter: Adapter, groups: int, channels: int, weights: NarrowWeights) -> None:
        if any(matrix.rows is not None and matrix.cols is not None for matrix in _matrices(adapter, 0, 1, 1)):
            raise ValueError(f"{type(adapter).__name__} slices a projection both ways; it cannot be narrowed")
        self.adapter, self.shape, self.weights = adapter, adapter.shape, weights
        self.groups, self.channels = groups, channels
        # Per layer: the order of the KV groups, of the FFN channels, and how many of each are kept.
        pinned = adapter.device.type == "cuda"
        self._host = torch.zeros(self.shape.num_layers, groups + channels + 2, dtype=torch.long, pin_memory=pinned)
        self._order = torch.zeros(self._host.shape, dtype=torch.long, device=adapter.device)

    def fits(self, selection: Selection) -> bool:
        groups, channels = capacity(self.shape, selection)
        return groups <= self.groups and channels <= self.channels

    def load(self, selection: Selection) -> None:
        host, shape = self._host, self.shape
        for i, (layer, kept) in enumerate(zip(selection.arch.layers, selection.layers, strict=True)):
            groups = kept.kv_groups if layer.attention_kept else kept.kv_groups[:0]
            channels = kept.channels if layer.mlp_kept else kept.channels[:0]
            host[i, : self.groups] = _kept_first(groups, shape.num_kv_heads)[: self.groups]
            host[i, self.groups : -2] = _kept_first(channels, shape.intermediate_size)[: self.channels]
            host[i, -2], host[i, -1] = len(groups), len(channels)
        # Safe to reuse the page-locked buffer: a candidate's score is read back before the next is loaded.
        self._order.copy_(host, non_blocking=True)

    @contextmanager
    def realised(self, selections: Sequence[Selection]) -> Iterator[None]:
        """The candidate loaded, and its unstructured sparsity zeroed in the full weights until exit."""
        (selection,) = selections
        self.load(selection)
        with sparsified(self.adapter, selection):
            yield

    @contextmanager
    def installed(self) -> Iterator[Slices]:
        """The loaded candidate's narrow weights and masks on the model until exit; yields the sliced
        projections, for hooks that map them back to full width. Run inside the graph: the gathers
        and masks are computed on the device from the loaded order."""
        shape, device = self.shape, self.adapter.device
        dtype = next(self.adapter.model.parameters()).dtype
        groups, channels, counts = self._order.split([self.groups, self.channels, 2], dim=1)
        span = shape.group_size * shape.head_dim
        group_positions = torch.arange(self.groups, device=device)
        channel_positions = torch.arange(self.channels, device=device)
        slices: Slices = {}
        with ExitStack() as stack:
            for i in range(shape.num_layers):
                for matrix in _matrices(self.adapter, i, groups[i], channels[i]):
                    stack.enter_context(self.weights.narrowed(matrix, slices))
                kept_groups = (group_positions < counts[i, 0]).unsqueeze(1).expand(self.groups, span).flatten()
                kept_channels = channel_positions < counts[i, 1]
                stack.enter_context(_masked_input(self.adapter.attention_output(i), kept_groups.to(dtype)[None]))
                stack.enter_context(_masked_input(self.adapter.mlp_output(i), kept_channels.to(dtype)[None]))
            yield slices


def _matrices(adapter: Adapter, layer: int, groups: torch.Tensor | int, channels: torch.Tensor | int) -> list[Matrix]:
    if isinstance(groups, int):  # a look at the family's projections (which way each is sliced)
        groups, channels = torch.arange(groups), torch.arange(channels)
    assert isinstance(channels, torch.Tensor)
    kept = LayerSelection(groups, channels)
    return [m for kind in ("attention", "mlp") for m in adapter.matrices(Block(layer, kind), kept)]


def _kept_first(kept: torch.Tensor, whole: int) -> torch.Tensor:
    """All ``whole`` unit indices: ``kept`` (sorted) first, then the pruned ones, each in order."""
    keep = torch.zeros(whole, dtype=torch.int8).index_fill_(0, kept, 1)
    return torch.argsort(keep, descending=True, stable=True)


Slots = MaskSlots | NarrowSlots
