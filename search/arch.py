"""Model shapes, candidate architectures and their parameter counts. Plain data, no torch.

The API validates budgets with this module, so it must stay importable without torch.

Parameter counts are exact: a test compares them with ``sum(p.numel())`` of real models, masked
and exported. Unstructured sparsity removes ``round(s · cols)`` weights from every row of every
kept weight matrix of a layer, so a count with sparsity is the number of non-zero parameters.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from search.errors import InvalidArchConfig


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a supported transformer; its family reads them from ``config.json``
    (``search.families.read_shape``). Family differences are fields, not branches."""

    family: str
    model_type: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool
    causal: bool  # a decoder (LM loss, KL verification); False: an encoder
    gated_mlp: bool  # gate, up, down (Llama); False: up, down
    norm_bias: bool  # LayerNorm (weight and bias); False: RMSNorm (weight)
    fixed: int  # embeddings, positions, final norm, LM head / pooler: no candidate removes them

    @property
    def group_size(self) -> int:
        """Query heads per KV head: heads are kept and dropped in whole groups of this size."""
        return self.num_heads // self.num_kv_heads

    @property
    def norm_params(self) -> int:
        """One sub-block's norm: RMSNorm (weight) or LayerNorm (weight and bias)."""
        return 2 * self.hidden_size if self.norm_bias else self.hidden_size

    def dense_arch(self) -> ArchConfig:
        return ArchConfig(tuple(LayerArch(self.num_heads, self.intermediate_size) for _ in range(self.num_layers)))

    def attention_matrices(self, heads: int) -> list[tuple[int, int]]:
        """(rows, cols) of the attention weight matrices, in ``nn.Linear`` orientation (out, in)."""
        if heads == 0:
            return []
        kv = heads // self.group_size
        h, d = self.hidden_size, self.head_dim
        return [(heads * d, h), (kv * d, h), (kv * d, h), (h, heads * d)]  # q, k, v, o

    def mlp_matrices(self, channels: int) -> list[tuple[int, int]]:
        if channels == 0:
            return []
        h = self.hidden_size
        if self.gated_mlp:
            return [(channels, h), (channels, h), (h, channels)]  # gate, up, down
        return [(channels, h), (h, channels)]  # up (c_fc / intermediate), down (c_proj / output)

    def attention_params(self, heads: int, sparsity: float = 0.0) -> int:
        """Non-zero parameters of one attention sub-block (with its norm) keeping ``heads`` query heads."""
        return _attention_params(self, heads, sparsity)

    def mlp_params(self, channels: int, sparsity: float = 0.0) -> int:
        """Non-zero parameters of one MLP sub-block (with its norm) keeping ``channels`` FFN channels."""
        return _mlp_params(self, channels, sparsity)

    def _attention_params(self, heads: int, sparsity: float) -> int:
        if heads == 0:
            return 0
        kv = heads // self.group_size
        h, d = self.hidden_size, self.head_dim
        params = _sparse_matrices(self.attention_matrices(heads), sparsity) + self.norm_params
        if self.qkv_bias:
            params += heads * d + 2 * kv * d
        if self.o_bias:
            params += h
        if self.qk_norm:
            params += 2 * d
        return params

    def _mlp_params(self, channels: int, sparsity: float) -> int:
        if channels == 0:
            return 0
        params = _sparse_matrices(self.mlp_matrices(channels), sparsity) + self.norm_params
        if self.mlp_bias:
            params += (2 * channels if self.gated_mlp else channels) + self.hidden_size
        return params

    def count_params(self, arch: ArchConfig) -> int:
        self.validate(arch)
        return self.fixed + sum(
            self.attention_params(layer.heads, layer.sparsity) + self.mlp_params(layer.ffn_channels, layer.sparsity)
            for layer in arch.layers
        )

    def dense_params(self) -> int:
        return self.count_params(self.dense_arch())

    def min_param_ratio(self) -> float:
        """The smallest reachable ratio: every sub-block dropped, embeddings kept."""
        return self.fixed / self.dense_params()

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
            if not 0.0 <= layer.sparsity < 1.0:
                raise InvalidArchConfig(f"layer {index}: sparsity {layer.sparsity} outside [0, 1)")


# Repair counts parameters thousands of times per trial; a shape has few distinct sub-block sizes.
@functools.cache
def _attention_params(shape: ModelShape, heads: int, sparsity: float) -> int:
    return shape._attention_params(heads, sparsity)


@functools.cache
def _mlp_params(shape: ModelShape, channels: int, sparsity: float) -> int:
    return shape._mlp_params(channels, sparsity)


def zeros_per_row(cols: int, sparsity: float) -> int:
    """How many weights unstructured sparsity removes from a row of ``cols`` weights."""
    return round(sparsity * cols)


def _sparse_matrices(matrices: Sequence[tuple[int, int]], sparsity: float) -> int:
    return sum(rows * (cols - zeros_per_row(cols, sparsity)) for rows, cols in matrices)


@dataclass(frozen=True)
class LayerArch:
    """One layer of a candidate. ``heads == 0`` drops attention; ``ffn_channels == 0`` drops the MLP;
    ``sparsity`` is the unstructured ratio of the layer's remaining weight matrices."""

    heads: int
    ffn_channels: int
    sparsity: float = 0.0

    @property
    def attention_kept(self) -> bool:
        return self.heads > 0

    @property
    def mlp_kept(self) -> bool:
        return self.ffn_channels > 0


@dataclass(frozen=True)
class ArchConfig:
    """A candidate architecture: what every layer keeps. Frozen and JSON-serialisable."""

    layers: tuple[LayerArch, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"layers": [asdict(layer) for layer in self.layers]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArchConfig:
        layers: Sequence[Mapping[str, Any]] = data["layers"]
        return cls(
            tuple(
                LayerArch(int(layer["heads"]), int(layer["ffn_channels"]), float(layer.get("sparsity", 0.0)))
                for layer in layers
            )
        )

    @property
    def depth(self) -> int:
        """Layers that keep at least one sub-block."""
        return sum(1 for layer in self.layers if layer.attention_kept or layer.mlp_kept)

    @property
    def sparse(self) -> bool:
        return any(layer.sparsity > 0 for layer in self.layers)

    def is_uniform(self) -> bool:
        """Every kept layer keeps both sub-blocks with the same widths: a standard config describes it."""
        kept = [layer for layer in self.layers if layer.attention_kept or layer.mlp_kept]
        return (
            all(layer.attention_kept and layer.mlp_kept for layer in kept)
            and len({(layer.heads, layer.ffn_channels) for layer in kept}) <= 1
        )

    def summary(self) -> str:
        """A compact one-line picture, e.g. ``A4/M512 A2/M256 -/M0``."""
        return " ".join(
            f"{'A' + str(layer.heads) if layer.heads else '-'}/M{layer.ffn_channels}"
            + (f"/s{layer.sparsity:.2f}" if layer.sparsity else "")
            for layer in self.layers
        )
