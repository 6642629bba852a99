"""The Llama-style decoders' adapter: ``model.model.layers[i].{self_attn, mlp}``; widths are sliced physically."""

from __future__ import annotations

import torch
from torch import nn

from search.adapters import Adapter, Batch, Block, Matrix, Swap, Zero, head_rows, linear
from search.arch import ModelShape
from search.units import LayerSelection


class DecoderAdapter(Adapter):
    """Llama, Mistral, Qwen2, Qwen3: ``model.model.layers[i].{self_attn, mlp}``."""

    output_names = ("o_proj", "down_proj")
    slices_width = True

    def __init__(self, model: nn.Module, shape: ModelShape) -> None:
        super().__init__(model, shape)
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
            q_rows, kv_rows = head_rows(self.shape, kept.kv_groups)
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

    def after_layers(self) -> list[nn.Module]:
        return [self.model.model.norm]

    def drop_attention(self, layer: int) -> list[Swap]:
        module = self.layers[layer]
        return [(module, "self_attn", Zero(returns_tuple=True)), (module, "input_layernorm", nn.Identity())]

    def drop_mlp(self, layer: int) -> list[Swap]:
        module = self.layers[layer]
        return [(module, "mlp", Zero(returns_tuple=False)), (module, "post_attention_layernorm", nn.Identity())]

    def resize(self, layer: int, heads: int, channels: int) -> None:
        attention, mlp = self.layers[layer].self_attn, self.layers[layer].mlp
        shape, hidden = self.shape, self.shape.hidden_size
        if heads:
            q, kv = heads * shape.head_dim, heads // shape.group_size * shape.head_dim
            attention.q_proj = linear(hidden, q, shape.qkv_bias)
            attention.k_proj = linear(hidden, kv, shape.qkv_bias)
            attention.v_proj = linear(hidden, kv, shape.qkv_bias)
            attention.o_proj = linear(q, hidden, shape.o_bias)
        if channels:
            mlp.gate_proj = linear(hidden, channels, shape.mlp_bias)
            mlp.up_proj = linear(hidden, channels, shape.mlp_bias)
            mlp.down_proj = linear(channels, hidden, shape.mlp_bias)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.model(**batch, use_cache=False).logits

    def loss(self, batch: Batch, reference: torch.Tensor | None) -> torch.Tensor:
        return self.model(**batch, labels=batch["input_ids"], use_cache=False).loss
