"""Model adapters: where a family keeps its layers, attention, MLP and projections, and what its
training signal is.

Every adapter exposes the same vocabulary, so masking, statistics, proxies, verification and
export are written once:
- ``linears(block)``: the weight matrices of a sub-block, by name;
- ``matrices(block, kept)``: those matrices in ``nn.Linear`` orientation with the rows / columns a
  selection keeps (what unstructured sparsity scores and what export slices);
- ``attention_output`` / ``mlp_output``: the projections whose *inputs* carry heads and channels;
- ``drop_attention`` / ``drop_mlp`` / ``skip_layer``: replacement modules for dropped parts;
- ``forward`` and ``loss``: logits and LM loss for decoders; pooled embeddings and a contrastive
  distillation loss against the dense model's embeddings for encoders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from search.arch import ModelShape
from search.errors import UnsupportedModel

if TYPE_CHECKING:
    from search.selection import LayerSelection

Batch = dict[str, torch.Tensor]  # input_ids (B, T), attention_mask (B, T)
Swap = tuple[nn.Module, str, nn.Module]  # (parent, attribute, replacement)

# Temperature of the encoders' contrastive distillation loss (in-batch negatives).
_DISTILLATION_TEMPERATURE = 0.05


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


class _Zero(nn.Module):
    """A dropped pre-norm sub-block: contributes nothing to the residual stream."""

    def __init__(self, returns_tuple: bool) -> None:
        super().__init__()
        self.returns_tuple = returns_tuple

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        zeros = torch.zeros_like(hidden_states)
        return (zeros, None) if self.returns_tuple else zeros


class _Identity(nn.Module):
    """A dropped post-norm sub-block (BERT) or a whole dropped layer: the input passes unchanged."""

    def __init__(self, returns_tuple: bool = False) -> None:
        super().__init__()
        self.returns_tuple = returns_tuple

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return (hidden_states, None) if self.returns_tuple else hidden_states


class _ResidualOnly(nn.Module):
    """BERT's ``output`` module of a dropped MLP: ``LayerNorm(dense(x) + input)`` becomes ``input``."""

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return input_tensor


class Adapter:
    """Base class; see the module docstring for the vocabulary."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.shape = ModelShape.from_config(model.config.to_dict())

    # --- structure ------------------------------------------------------------------------------
    layers: nn.ModuleList
    output_names: tuple[str, str]  # names (in ``linears``) of the attention and MLP output projections
    # Whether the family's modules run with fewer heads / channels in the same module objects
    # (the attention reshapes by head size): then candidates are sliced physically (search.masking).
    slices_width = False

    def blocks(self) -> list[Block]:
        return [Block(i, kind) for i in range(self.shape.num_layers) for kind in ("attention", "mlp")]

    def linears(self, block: Block) -> dict[str, nn.Module]:
        raise NotImplementedError

    def matrices(self, block: Block, kept: LayerSelection) -> list[Matrix]:
        raise NotImplementedError

    def attention_output(self, layer: int) -> nn.Module:
        raise NotImplementedError

    def mlp_output(self, layer: int) -> nn.Module:
        raise NotImplementedError

    def weight(self, module: nn.Module) -> torch.Tensor:
        """A weight matrix as (out, in), whatever the layer type stores."""
        return module.weight

    def embeddings(self) -> nn.Module:
        raise NotImplementedError

    def drop_attention(self, layer: int) -> list[Swap]:
        """(parent, attribute, replacement) to swap when the attention of ``layer`` is dropped,
        its norm included (the norm belongs to the sub-block and is counted and exported with it)."""
        raise NotImplementedError

    def drop_mlp(self, layer: int) -> list[Swap]:
        raise NotImplementedError

    def resize(self, layer: int, heads: int, channels: int) -> None:
        """Give the modules of ``layer`` the shapes of a candidate (export of per-layer widths).

        New parameters are uninitialised; the caller loads sliced weights into them.
        """
        raise NotImplementedError

    def skip_layer(self, layer: int) -> tuple[nn.Module, str, nn.Module]:
        return self.layers, str(layer), _Identity()

    # --- objective ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, batch: Batch) -> torch.Tensor:
        """Decoders: logits (B, T, V). Encoders: mean-pooled embeddings (B, H)."""
        raise NotImplementedError

    def loss(self, batch: Batch, reference: torch.Tensor | None) -> torch.Tensor:
        """The training signal the proxies differentiate; ``reference`` is the dense model's output."""
        raise NotImplementedError


class DecoderAdapter(Adapter):
    """Llama, Mistral, Qwen2, Qwen3: ``model.model.layers[i].{self_attn, mlp}``."""

    output_names = ("o_proj", "down_proj")
    slices_width = True

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.layers = model.model.layers

    def linears(self, block: Block) -> dict[str, nn.Module]:
        layer = self.layers[block.layer]
        if block.kind == "attention":
            attention = layer.self_attn
            return {name: getattr(attention, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj")}
        return {name: getattr(layer.mlp, name) for name in ("gate_proj", "up_proj", "down_proj")}

    def matrices(self, block: Block, kept: LayerSelection) -> list[Matrix]:
        linears = self.linears(block)
        if block.kind == "attention":
            q_rows, kv_rows = _head_rows(self.shape, kept.kv_groups)
            return [
                Matrix("q_proj", linears["q_proj"], q_rows, None, False),
                Matrix("k_proj", linears["k_proj"], kv_rows, None, False),
                Matrix("v_proj", linears["v_proj"], kv_rows, None, False),
                Matrix("o_proj", linears["o_proj"], None, q_rows, False),
            ]
        return [
            Matrix("gate_proj", linears["gate_proj"], kept.channels, None, False),
            Matrix("up_proj", linears["up_proj"], kept.channels, None, False),
            Matrix("down_proj", linears["down_proj"], None, kept.channels, False),
        ]

    def attention_output(self, layer: int) -> nn.Module:
        return self.layers[layer].self_attn.o_proj

    def mlp_output(self, layer: int) -> nn.Module:
        return self.layers[layer].mlp.down_proj

    def embeddings(self) -> nn.Module:
        return self.model.model.embed_tokens

    def drop_attention(self, layer: int) -> list[Swap]:
        module = self.layers[layer]
        return [(module, "self_attn", _Zero(returns_tuple=True)), (module, "input_layernorm", nn.Identity())]

    def drop_mlp(self, layer: int) -> list[Swap]:
        module = self.layers[layer]
        return [(module, "mlp", _Zero(returns_tuple=False)), (module, "post_attention_layernorm", nn.Identity())]

    def resize(self, layer: int, heads: int, channels: int) -> None:
        attention, mlp = self.layers[layer].self_attn, self.layers[layer].mlp
        shape, hidden = self.shape, self.shape.hidden_size
        if heads:
            q, kv = heads * shape.head_dim, heads // shape.group_size * shape.head_dim
            attention.q_proj = _linear(hidden, q, shape.qkv_bias)
            attention.k_proj = _linear(hidden, kv, shape.qkv_bias)
            attention.v_proj = _linear(hidden, kv, shape.qkv_bias)
            attention.o_proj = _linear(q, hidden, shape.o_bias)
        if channels:
            mlp.gate_proj = _linear(hidden, channels, shape.mlp_bias)
            mlp.up_proj = _linear(hidden, channels, shape.mlp_bias)
            mlp.down_proj = _linear(channels, hidden, shape.mlp_bias)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.model(**batch, use_cache=False).logits

    def loss(self, batch: Batch, reference: torch.Tensor | None) -> torch.Tensor:
        return self.model(**batch, labels=batch["input_ids"], use_cache=False).loss


class GPT2Adapter(Adapter):
    """GPT-2: ``transformer.h[i].{attn.c_attn (fused q|k|v), attn.c_proj, mlp.c_fc, mlp.c_proj}``, Conv1D."""

    output_names = ("c_proj", "c_proj")

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.layers = model.transformer.h

    def linears(self, block: Block) -> dict[str, nn.Module]:
        layer = self.layers[block.layer]
        if block.kind == "attention":
            return {"c_attn": layer.attn.c_attn, "c_proj": layer.attn.c_proj}
        return {"c_fc": layer.mlp.c_fc, "c_proj": layer.mlp.c_proj}

    def matrices(self, block: Block, kept: LayerSelection) -> list[Matrix]:
        linears = self.linears(block)
        if block.kind == "attention":
            q_rows, _ = _head_rows(self.shape, kept.kv_groups)
            hidden = self.shape.hidden_size
            qkv_rows = torch.cat([q_rows, q_rows + hidden, q_rows + 2 * hidden])
            return [
                Matrix("c_attn", linears["c_attn"], qkv_rows, None, True),
                Matrix("c_proj", linears["c_proj"], None, q_rows, True),
            ]
        return [
            Matrix("c_fc", linears["c_fc"], kept.channels, None, True),
            Matrix("c_proj", linears["c_proj"], None, kept.channels, True),
        ]

    def attention_output(self, layer: int) -> nn.Module:
        return self.layers[layer].attn.c_proj

    def mlp_output(self, layer: int) -> nn.Module:
        return self.layers[layer].mlp.c_proj

    def weight(self, module: nn.Module) -> torch.Tensor:
        return module.weight.t()  # Conv1D stores (in, out)

    def embeddings(self) -> nn.Module:
        return self.model.transformer.wte

    def drop_attention(self, layer: int) -> list[Swap]:
        module = self.layers[layer]
        return [(module, "attn", _Zero(returns_tuple=True)), (module, "ln_1", nn.Identity())]

    def drop_mlp(self, layer: int) -> list[Swap]:
        module = self.layers[layer]
        return [(module, "mlp", _Zero(returns_tuple=False)), (module, "ln_2", nn.Identity())]

    def resize(self, layer: int, heads: int, channels: int) -> None:
        from transformers.pytorch_utils import Conv1D

        attention, mlp = self.layers[layer].attn, self.layers[layer].mlp
        hidden, width = self.shape.hidden_size, heads * self.shape.head_dim
        if heads:
            attention.c_attn = Conv1D(3 * width, hidden)
            attention.c_proj = Conv1D(hidden, width)
            attention.split_size = width  # c_attn's output splits into q | k | v of this width
            attention.num_heads = heads
        if channels:
            mlp.c_fc = Conv1D(channels, hidden)
            mlp.c_proj = Conv1D(hidden, channels)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.model(**batch, use_cache=False).logits

    def loss(self, batch: Batch, reference: torch.Tensor | None) -> torch.Tensor:
        return self.model(**batch, labels=batch["input_ids"], use_cache=False).loss


class EncoderAdapter(Adapter):
    """BERT-style encoders (``BertModel``): post-norm blocks, sentence embeddings by mean pooling."""

    output_names = ("output", "output")

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.layers = model.encoder.layer

    def linears(self, block: Block) -> dict[str, nn.Module]:
        layer = self.layers[block.layer]
        if block.kind == "attention":
            attention = layer.attention
            return {
                "query": attention.self.query,
                "key": attention.self.key,
                "value": attention.self.value,
                "output": attention.output.dense,
            }
        return {"intermediate": layer.intermediate.dense, "output": layer.output.dense}

    def matrices(self, block: Block, kept: LayerSelection) -> list[Matrix]:
        linears = self.linears(block)
        if block.kind == "attention":
            rows, _ = _head_rows(self.shape, kept.kv_groups)
            return [
                Matrix("query", linears["query"], rows, None, False),
                Matrix("key", linears["key"], rows, None, False),
                Matrix("value", linears["value"], rows, None, False),
                Matrix("output", linears["output"], None, rows, False),
            ]
        return [
            Matrix("intermediate", linears["intermediate"], kept.channels, None, False),
            Matrix("output", linears["output"], None, kept.channels, False),
        ]

    def attention_output(self, layer: int) -> nn.Module:
        return self.layers[layer].attention.output.dense

    def mlp_output(self, layer: int) -> nn.Module:
        return self.layers[layer].output.dense

    def embeddings(self) -> nn.Module:
        return self.model.embeddings

    def drop_attention(self, layer: int) -> list[Swap]:
        # Post-norm: the sub-block is LayerNorm(x + Attn(x)); removing it leaves x.
        return [(self.layers[layer], "attention", _Identity(returns_tuple=True))]

    def drop_mlp(self, layer: int) -> list[Swap]:
        layer_module = self.layers[layer]
        return [(layer_module, "intermediate", _Identity()), (layer_module, "output", _ResidualOnly())]

    def resize(self, layer: int, heads: int, channels: int) -> None:
        module = self.layers[layer]
        hidden, width = self.shape.hidden_size, heads * self.shape.head_dim
        if heads:
            attention = module.attention.self
            attention.query = _linear(hidden, width, True)
            attention.key = _linear(hidden, width, True)
            attention.value = _linear(hidden, width, True)
            attention.num_attention_heads = heads
            attention.all_head_size = width
            module.attention.output.dense = _linear(width, hidden, True)
        if channels:
            module.intermediate.dense = _linear(hidden, channels, True)
            module.output.dense = _linear(channels, hidden, True)

    def forward(self, batch: Batch) -> torch.Tensor:
        hidden = self.model(**batch).last_hidden_state  # (B, T, H)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, H)

    def loss(self, batch: Batch, reference: torch.Tensor | None) -> torch.Tensor:
        """InfoNCE of the candidate's embeddings against the dense model's (in-batch negatives).

        At the dense model itself this is not zero (unlike MSE or cosine), so it has a gradient
        trace for TraceNAS to correlate with.
        """
        embeddings = F.normalize(self.forward(batch).float(), dim=-1)
        if reference is None:
            reference = embeddings.detach()
        targets = F.normalize(reference.float(), dim=-1)
        logits = embeddings @ targets.t() / _DISTILLATION_TEMPERATURE  # (B, B)
        return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


def _linear(fan_in: int, fan_out: int, bias: bool) -> nn.Linear:
    return nn.Linear(fan_in, fan_out, bias=bias)


def _head_rows(shape: ModelShape, kv_groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices of the kept query heads and of the kept KV heads (group k: query heads k·g..k·g+g-1)."""
    d, g = shape.head_dim, shape.group_size
    q_heads = (kv_groups.unsqueeze(1) * g + torch.arange(g)).flatten()
    q_rows = (q_heads.unsqueeze(1) * d + torch.arange(d)).flatten()
    kv_rows = (kv_groups.unsqueeze(1) * d + torch.arange(d)).flatten()
    return q_rows, kv_rows


_ADAPTERS: dict[str, type[Adapter]] = {"llama": DecoderAdapter, "gpt2": GPT2Adapter, "bert": EncoderAdapter}


def adapter_for(model: nn.Module) -> Adapter:
    shape = ModelShape.from_config(model.config.to_dict())  # raises UnsupportedModel with the list
    adapter = _ADAPTERS[shape.family](model)
    if shape.family == "bert" and not hasattr(model, "encoder"):
        raise UnsupportedModel("BERT models are searched as encoders: load them with AutoModel, not a task head")
    return adapter
