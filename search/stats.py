"""Statistics of the dense model on the calibration tokens, computed once per (model, calibration).

One forward pass gives what selection, sparsity and the baselines need: per input channel of every
weight matrix, the L2 norm (Wanda's ‖X_j‖₂), and of the output projections also the mean and
variance (FLAP's fluctuation); and every layer's Block Influence (ShortGPT: 1 − mean cosine
between a layer's input and output hidden states).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from search.adapters import Adapter
from search.artifacts import persisted

if TYPE_CHECKING:
    from search.calibration import TokenSet


@dataclass(frozen=True)
class ChannelStats:
    norm: torch.Tensor  # (C,) ‖X_j‖₂ over calibration tokens
    mean: torch.Tensor  # (C,)
    var: torch.Tensor  # (C,) unbiased


@dataclass(frozen=True)
class DenseStats:
    inputs: dict[tuple[int, str, str], ChannelStats]  # (layer, kind, matrix name) -> input channel stats
    block_influence: torch.Tensor  # (L,)
    loss: float  # dense training-signal loss on the calibration tokens

    def attention_output(self, layer: int, name: str) -> ChannelStats:
        return self.inputs[(layer, "attention", name)]

    def mlp_output(self, layer: int, name: str) -> ChannelStats:
        return self.inputs[(layer, "mlp", name)]


@torch.no_grad()
def collect_stats(adapter: Adapter, tokens: TokenSet, *, batch_size: int) -> DenseStats:
    num_layers = adapter.shape.num_layers
    sums: dict[tuple[int, str, str], list[Any]] = {}  # key -> [Σx, Σx², count]
    cos_sum = torch.zeros(num_layers, dtype=torch.float64)
    cos_count = [0]
    handles = []

    def accumulate(key: tuple[int, str, str]):
        def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach().double().flatten(0, -2)  # (B*T, C)
            total = sums.setdefault(key, [0.0, 0.0, 0])
            total[0] = total[0] + x.sum(0)
            total[1] = total[1] + x.pow(2).sum(0)
            total[2] += x.shape[0]

        return hook

    def influence(layer: int):
        def hook(_module: torch.nn.Module, args: tuple, kwargs: dict, output: object) -> None:
            inputs = args[0] if args else kwargs["hidden_states"]
            out = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(inputs.float(), out.float(), dim=-1)  # (B, T)
            cos_sum[layer] += cos.double().sum().cpu()
            if layer == 0:
                cos_count[0] += cos.numel()

        return hook

    for block in adapter.blocks():
        for name, module in adapter.linears(block).items():
            handles.append(module.register_forward_pre_hook(accumulate((block.layer, block.kind, name))))
    for i in range(num_layers):
        handles.append(adapter.layers[i].register_forward_hook(influence(i), with_kwargs=True))
    loss_sum, batches = 0.0, 0
    try:
        for batch in tokens.batches("calibration", batch_size, adapter.device):
            loss_sum += float(adapter.loss(batch, None))
            batches += 1
    finally:
        for handle in handles:
            handle.remove()
    inputs = {}
    for key, (total, squares, count) in sums.items():
        mean = total / count
        var = (squares - count * mean.pow(2)) / max(count - 1, 1)
        inputs[key] = ChannelStats(squares.sqrt().float().cpu(), mean.float().cpu(), var.clamp(min=0).float().cpu())
    return DenseStats(
        inputs=inputs,
        block_influence=(1.0 - cos_sum / max(cos_count[0], 1)).float(),
        loss=loss_sum / max(batches, 1),
    )


def cached_stats(adapter: Adapter, tokens: TokenSet, cache: dict[Any, Any], *, batch_size: int) -> DenseStats:
    """``collect_stats`` once per (model, calibration): in memory, and on disk when the model has an
    artifact store, so other workers and later jobs on the same weights and texts skip the pass."""
    key = ("stats", tokens.digest)
    if key not in cache:
        dtype = str(next(adapter.model.parameters()).dtype).removeprefix("torch.")
        cache[key] = persisted(
            cache,
            f"stats-{tokens.digest}-batch{batch_size}-{dtype}",
            lambda: collect_stats(adapter, tokens, batch_size=batch_size),
            _encode,
            _decode,
        )
    return cache[key]


def _encode(stats: DenseStats) -> dict[str, Any]:
    return {
        "inputs": {"|".join(map(str, key)): vars(channels) for key, channels in stats.inputs.items()},
        "block_influence": stats.block_influence,
        "loss": stats.loss,
    }


def _decode(state: dict[str, Any]) -> DenseStats:
    inputs = {}
    for key, channels in state["inputs"].items():
        layer, kind, name = key.split("|")
        inputs[(int(layer), kind, name)] = ChannelStats(**channels)
    return DenseStats(inputs, state["block_influence"], float(state["loss"]))
