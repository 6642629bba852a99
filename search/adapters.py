"""Model adapters: where a family keeps its layers, attention, MLP and projections.

Llama, Mistral, Qwen2 and Qwen3 share module names, so one adapter serves them; other families
(GPT-2, BERT) get their own adapter in a later change and register in ``_ADAPTERS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from search.arch import SUPPORTED_MODEL_TYPES, ModelShape
from search.errors import UnsupportedModel

if TYPE_CHECKING:
    from torch import nn

ATTENTION_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_LINEARS = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Block:
    """One prunable sub-block: the attention or the MLP of one layer."""

    layer: int
    kind: str  # "attention" | "mlp"

    @property
    def name(self) -> str:
        return f"{self.kind}.{self.layer}"


class DecoderAdapter:
    """Names the parts of a Llama-style ``*ForCausalLM`` model."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.shape = ModelShape.from_config(model.config.to_dict())
        self.layers: nn.ModuleList = model.model.layers

    def attention(self, layer: int) -> nn.Module:
        return self.layers[layer].self_attn

    def mlp(self, layer: int) -> nn.Module:
        return self.layers[layer].mlp

    def linears(self, block: Block) -> dict[str, nn.Linear]:
        parent = self.attention(block.layer) if block.kind == "attention" else self.mlp(block.layer)
        names = ATTENTION_LINEARS if block.kind == "attention" else MLP_LINEARS
        return {name: getattr(parent, name) for name in names}

    def o_proj(self, layer: int) -> nn.Linear:
        return self.attention(layer).o_proj

    def down_proj(self, layer: int) -> nn.Linear:
        return self.mlp(layer).down_proj

    def embeddings(self) -> nn.Module:
        return self.model.model.embed_tokens

    def blocks(self) -> list[Block]:
        return [Block(i, kind) for i in range(self.shape.num_layers) for kind in ("attention", "mlp")]


def adapter_for(model: nn.Module) -> DecoderAdapter:
    model_type = getattr(model.config, "model_type", "")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModel(
            f"model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return DecoderAdapter(model)
