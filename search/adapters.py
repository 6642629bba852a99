"""The adapter vocabulary: where a family keeps its layers, attention, MLP and projections, and what its
training signal is.

Every adapter exposes the same vocabulary, so masking, statistics, proxies, verification and
export are written once (each family's adapter is in ``search.families.<family>.adapter``):
- ``linears(block)``: the weight matrices of a sub-block, by name;
- ``matrices(block, kept)``: those matrices in ``nn.Linear`` orientation with the rows / columns a
  selection keeps (what unstructured sparsity scores and what export slices);
- ``attention_output`` / ``mlp_output``: the projections whose *inputs* carry heads and channels;
- ``drop_attention`` / ``drop_mlp`` / ``skip_layer``: replacement modules for dropped parts;
- ``forward`` and ``loss``: logits and LM loss for decoders; pooled embeddings and a contrastive
  distillation loss against the dense model's embeddings for encoders.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from search.arch import ModelShape
from search.units import LayerSelection

Batch = dict[str, torch.Tensor]  # input_ids (B, T), attention_mask (B, T)
Swap = tuple[nn.Module, str, nn.Module]  # (parent, attribute, replacement)


@dataclass(frozen=True)
class Block:
    """One prunable sub-block: the attention or the MLP of one layer."""

    layer: int
    kind: str  # "attention" | "mlp"

    @property
    def name(self) -> str:
        return f"{self.kind}.{self.layer}"


@dataclass(frozen=True)
class Matrix:
    """A weight matrix as (out, in), with the rows and columns a candidate keeps (None = all)."""

    name: str
    module: nn.Module
    rows: torch.Tensor | None
    cols: torch.Tensor | None
    transposed: bool  # Conv1D stores (in, out)

    def weight(self) -> torch.Tensor:
        weight = self.module.weight
        return weight.t() if self.transposed else weight


class Zero(nn.Module):
    """A dropped pre-norm sub-block: contributes nothing to the residual stream."""

    def __init__(self, returns_tuple: bool) -> None:
        super().__init__()
        self.returns_tuple = returns_tuple

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        zeros = torch.zeros_like(hidden_states)
        return (zeros, None) if self.returns_tuple else zeros


class Identity(nn.Module):
    """A dropped post-norm sub-block (BERT) or a whole dropped layer: the input passes unchanged."""

    def __init__(self, returns_tuple: bool = False) -> None:
        super().__init__()
        self.returns_tuple = returns_tuple

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return (hidden_states, None) if self.returns_tuple else hidden_states


class Adapter(ABC):
    """Base class; see the module docstring for the vocabulary."""

    def __init__(self, model: nn.Module, shape: ModelShape) -> None:
        """``shape``: the model's, as its family reads it (``search.loading.adapter_for``)."""
        self.model = model
        self.shape = shape

    # --- structure ------------------------------------------------------------------------------
    layers: nn.ModuleList
    output_names: tuple[str, str]  # names (in ``linears``) of the attention and MLP output projections
    # Whether the family's modules run with fewer heads / channels in the same module objects
    # (the attention reshapes by head size): then candidates are sliced physically (search.masking).
    slices_width = False

    def blocks(self) -> list[Block]:
        return [Block(i, kind) for i in range(self.shape.num_layers) for kind in ("attention", "mlp")]

    @abstractmethod
    def linears(self, block: Block) -> dict[str, nn.Module]: ...

    @abstractmethod
    def matrices(self, block: Block, kept: LayerSelection) -> list[Matrix]: ...

    @abstractmethod
    def attention_output(self, layer: int) -> nn.Module: ...

    @abstractmethod
    def mlp_output(self, layer: int) -> nn.Module: ...

    def weight(self, module: nn.Module) -> torch.Tensor:
        """A weight matrix as (out, in), whatever the layer type stores."""
        return module.weight

    @abstractmethod
    def embeddings(self) -> nn.Module: ...

    @abstractmethod
    def drop_attention(self, layer: int) -> list[Swap]:
        """(parent, attribute, replacement) to swap when the attention of ``layer`` is dropped,
        its norm included (the norm belongs to the sub-block and is counted and exported with it)."""

    @abstractmethod
    def drop_mlp(self, layer: int) -> list[Swap]: ...

    @abstractmethod
    def resize(self, layer: int, heads: int, channels: int) -> None:
        """Give the modules of ``layer`` the shapes of a candidate (export of per-layer widths).

        New parameters are uninitialised; the caller loads sliced weights into them.
        """

    def skip_layer(self, layer: int) -> tuple[nn.Module, str, nn.Module]:
        return self.layers, str(layer), Identity()

    def after_layers(self) -> list[nn.Module] | None:
        """The modules that take the last decoder layer's output (the final norm): a model split over
        devices (``search.dispatch``) moves their inputs back to the main device. None: the family
        cannot be split."""
        return None

    # --- objective ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where token batches go in: the embeddings' device (the main one of a split model)."""
        return next(self.embeddings().parameters()).device

    @abstractmethod
    def forward(self, batch: Batch) -> torch.Tensor:
        """Decoders: logits (B, T, V). Encoders: mean-pooled embeddings (B, H)."""

    @abstractmethod
    def loss(self, batch: Batch, reference: torch.Tensor | None) -> torch.Tensor:
        """The training signal the proxies differentiate; ``reference`` is the dense model's output."""


def linear(fan_in: int, fan_out: int, bias: bool) -> nn.Linear:
    return nn.Linear(fan_in, fan_out, bias=bias)


def head_rows(shape: ModelShape, kv_groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices of the kept query heads and of the kept KV heads (group k: query heads k·g..k·g+g-1)."""
    d, g = shape.head_dim, shape.group_size
    q_heads = (kv_groups.unsqueeze(1) * g + torch.arange(g)).flatten()
    q_rows = (q_heads.unsqueeze(1) * d + torch.arange(d)).flatten()
    kv_rows = (kv_groups.unsqueeze(1) * d + torch.arange(d)).flatten()
    return q_rows, kv_rows
