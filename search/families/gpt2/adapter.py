"""GPT-2's adapter: Conv1D projections (stored (in, out)) and a fused q|k|v matrix."""

from __future__ import annotations

import torch
from torch import nn

from search.adapters import Adapter, Batch, Block, Matrix, Swap, Zero, head_rows
from search.arch import ModelShape
from search.units import LayerSelection


class GPT2Adapter(Adapter):
    """GPT-2: ``transformer.h[i].{attn.c_attn (fused q|k|v), attn.c_proj, mlp.c_fc, mlp.c_proj}``, Conv1D."""

    output_names = ("c_proj", "c_proj")

    def __init__(self, model: nn.Module, shape: ModelShape) -> None:
        super().__init__(model, shape)
        self.layers = model.transformer.h

    def linears(self, block: Block) -> dict[str, nn.Module]:
        layer = self.layers[block.layer]
        if block.kind == "attention":
            return {"c_attn": layer.attn.c_attn, "c_proj": layer.attn.c_proj}
        return {"c_fc": layer.mlp.c_fc, "c_proj": layer.mlp.c_proj}

    def matrices(self, block: Block, kept: LayerSelection) -> list[Matrix]:
        linears = self.linears(block)
        if block.kind == "attention":
            q_rows, _ = head_rows(self.shape, kept.kv_groups)
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

    def after_layers(self) -> list[nn.Module]:
        return [self.model.transformer.ln_f]

    def drop_attention(self, layer: int) -> list[Swap]:
        module = self.layers[layer]
        return [(module, "attn", Zero(returns_tuple=True)), (module, "ln_1", nn.Identity())]

    def drop_mlp(self, layer: int) -> list[Swap]:
        module = self.layers[layer]
        return [(module, "mlp", Zero(returns_tuple=False)), (module, "ln_2", nn.Identity())]

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
