"""Model shapes, candidate architectures and their parameter counts. Plain data, no torch.

The API validates budgets with this module, so it must stay importable without torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from search.errors import InvalidArchConfig, UnsupportedModel

# model_type -> how its attention projections are biased; every family here shares Llama's
# module names (q/k/v/o_proj, gate/up/down_proj, input/post_attention_layernorm).
_DECODER_FAMILIES: dict[str, str] = {
    "llama": "config",  # bias from config.attention_bias
    "mistral": "none",
    "qwen2": "qkv",  # q, k, v biased; o not
    "qwen3": "config",  # plus per-head q_norm / k_norm
}

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(_DECODER_FAMILIES)


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a Llama-style decoder, read from its ``config.json``."""

    model_type: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelShape:
        model_type = str(config.get("model_type", ""))
        if model_type not in _DECODER_FAMILIES:
            raise UnsupportedModel(
                f"model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        if heads % kv_heads:
            raise UnsupportedModel(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}")
        bias_rule = _DECODER_FAMILIES[model_type]
        attention_bias = bool(config.get("attention_bias", False)) if bias_rule == "config" else False
        return cls(
            model_type=model_type,
            num_layers=int(config["num_hidden_layers"]),
            hidden_size=hidden,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=int(config.get("head_dim") or hidden // heads),
            intermediate_size=int(config["intermediate_size"]),
            vocab_size=int(config["vocab_size"]),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=bias_rule == "qkv" or attention_bias,
            o_bias=attention_bias,
            mlp_bias=bool(config.get("mlp_bias", False)),
            qk_norm=model_type == "qwen3",
        )

    @property
    def group_size(self) -> int:
        """Query heads per KV head: heads are kept and dropped in whole groups of this size."""
        return self.num_heads // self.num_kv_heads

    def dense_arch(self) -> ArchConfig:
        return ArchConfig(tuple(LayerArch(self.num_heads, self.intermediate_size) for _ in range(self.num_layers)))

    def fixed_params(self) -> int:
        """Parameters no candidate can remove: embeddings, LM head, final norm."""
        head = 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size
        return self.vocab_size * self.hidden_size + head + self.hidden_size

    def attention_params(self, heads: int) -> int:
        """Parameters of one attention sub-block (with its input norm) keeping ``heads`` query heads."""
        if heads == 0:
            return 0
        kv = heads // self.group_size
        h, d = self.hidden_size, self.head_dim
        params = h * heads * d + 2 * h * kv * d + heads * d * h + h  # q, k, v, o, input norm
        if self.qkv_bias:
            params += heads * d + 2 * kv * d
        if self.o_bias:
            params += h
        if self.qk_norm:
            params += 2 * d
        return params

    def mlp_params(self, channels: int) -> int:
        """Parameters of one MLP sub-block (with its input norm) keeping ``channels`` FFN channels."""
        if channels == 0:
            return 0
        h = self.hidden_size
        params = 3 * h * channels + h  # gate, up, down, post-attention norm
        if self.mlp_bias:
            params += 2 * channels + h
        return params

    def count_params(self, arch: ArchConfig) -> int:
        self.validate(arch)
        return self.fixed_params() + sum(
            self.attention_params(layer.heads) + self.mlp_params(layer.ffn_channels) for layer in arch.layers
        )

    def dense_params(self) -> int:
        return self.count_params(self.dense_arch())

    def min_param_ratio(self) -> float:
        """The smallest reachable ratio: every sub-block dropped, embeddings kept."""
        return self.fixed_params() / self.dense_params()

    def validate(self, arch: ArchConfig) -> None:
        if len(arch.layers) != self.num_layers:
            raise InvalidArchConfig(f"architecture has {len(arch.layers)} layers, model has {self.num_layers}")
        for index, layer in enumerate(arch.layers):
            if not 0 <= layer.heads <= self.num_heads or layer.heads % self.group_size:
                raise InvalidArchConfig(
                    f"layer {index}: {layer.heads} heads is not a whole number of KV groups "
                    f"(group size {self.group_size}, at most {self.num_heads})"
                )
            if not 0 <= layer.ffn_channels <= self.intermediate_size:
                raise InvalidArchConfig(
                    f"layer {index}: {layer.ffn_channels} FFN channels outside [0, {self.intermediate_size}]"
                )


@dataclass(frozen=True)
class LayerArch:
    """One decoder layer of a candidate. ``heads == 0`` drops attention; ``ffn_channels == 0`` drops the MLP."""

    heads: int
    ffn_channels: int

    @property
    def attention_kept(self) -> bool:
        return self.heads > 0

    @property
    def mlp_kept(self) -> bool:
        return self.ffn_channels > 0


@dataclass(frozen=True)
class ArchConfig:
    """A candidate architecture: what every decoder layer keeps. Frozen and JSON-serialisable."""

    layers: tuple[LayerArch, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"layers": [asdict(layer) for layer in self.layers]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArchConfig:
        layers: Sequence[Mapping[str, Any]] = data["layers"]
        return cls(tuple(LayerArch(int(layer["heads"]), int(layer["ffn_channels"])) for layer in layers))

    @property
    def depth(self) -> int:
        """Layers that keep at least one sub-block."""
        return sum(1 for layer in self.layers if layer.attention_kept or layer.mlp_kept)

    def summary(self) -> str:
        """A compact one-line picture, e.g. ``A4/M512 A2/M256 -/M0``."""
        return " ".join(
            f"{'A' + str(layer.heads) if layer.heads else '-'}/M{layer.ffn_channels}" for layer in self.layers
        )
