"""BERT-style encoders' adapter: post-norm blocks, sentence embeddings by mean pooling, and a
contrastive distillation loss against the dense model's embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from search.adapters import Adapter, Batch, Block, Identity, Matrix, Swap, head_rows, linear
from search.arch import ModelShape
from search.errors import UnsupportedModel
from search.units import LayerSelection

# Temperature of the contrastive distillation loss (in-batch negatives).
_DISTILLATION_TEMPERATURE = 0.05


class ResidualOnly(nn.Module):
    """BERT's ``output`` module of a dropped MLP: ``LayerNorm(dense(x) + input)`` becomes ``input``."""

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return input_tensor


class EncoderAdapter(Adapter):
    """BERT-style encoders (``BertModel``): post-norm blocks, sentence embeddings by mean pooling."""

    output_names = ("output", "output")

    def __init__(self, model: nn.Module, shape: ModelShape) -> None:
        if not hasattr(model, "encoder"):
            raise UnsupportedModel("BERT models are searched as encoders: load them with AutoModel, not a task head")
        super().__init__(model, shape)
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
            rows, _ = head_rows(self.shape, kept.kv_groups)
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
        return [(self.layers[layer], "attention", Identity(returns_tuple=True))]

    def drop_mlp(self, layer: int) -> list[Swap]:
        layer_module = self.layers[layer]
        return [(layer_module, "intermediate", Identity()), (layer_module, "output", ResidualOnly())]

    def resize(self, layer: int, heads: int, channels: int) -> None:
        module = self.layers[layer]
        hidden, width = self.shape.hidden_size, heads * self.shape.head_dim
        if heads:
            attention = module.attention.self
            attention.query = linear(hidden, width, True)
            attention.key = linear(hidden, width, True)
            attention.value = linear(hidden, width, True)
            attention.num_attention_heads = heads
            attention.all_head_size = width
            module.attention.output.dense = linear(width, hidden, True)
        if channels:
            module.intermediate.dense = linear(hidden, channels, True)
            module.output.dense = linear(channels, hidden, True)

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
