"""Statistics of the dense model on the calibration tokens, computed once per (model, calibration).

One forward pass gives what selection, sparsity and the baselines need: per input channel of every
weight matrix, the L2 norm (Wanda's ‖X_j‖₂), and of the output projections also the mean and
variance (FLAP's fluctuation); and every layer's Block Influence (ShortGPT: 1 − mean cosine
between a layer's input and output hidden states).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from search.adapters import Adapter
from search.artifacts import Artifact, ModelArtifacts

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
    return DenseStats(
        inputs={key: _channel_stats(*totals) for key, totals in sums.items()},
        block_influence=(1.0 - cos_sum / max(cos_count[0], 1)).float(),
        loss=loss_sum / max(batches, 1),
    )


def _channel_stats(total: torch.Tensor, squares: torch.Tensor, count: int) -> ChannelStats:
    """Norm, mean and unbiased variance per channel from Σx, Σx² and the count."""
    mean = total / count
    var = (squares - count * mean.pow(2)) / max(count - 1, 1)
    return ChannelStats(squares.sqrt().float().cpu(), mean.float().cpu(), var.clamp(min=0).float().cpu())


def cached_stats(adapter: Adapter, tokens: TokenSet, artifacts: ModelArtifacts, *, batch_size: int) -> DenseStats:
    """``collect_stats`` once per (model, calibration): in memory, and on disk when the model has an
    artifact store, so other workers and later jobs on the same weights and texts skip the pass."""
    dtype = str(next(adapter.model.parameters()).dtype).removeprefix("torch.")
    key = StatsKey(tokens.digest, batch_size, dtype)
    return artifacts.get(DENSE_STATS, key, lambda: collect_stats(adapter, tokens, batch_size=batch_size))


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


class StatsKey(NamedTuple):
    digest: str  # of the calibration tokens
    batch_size: int
    dtype: str  # of the model's weights


DENSE_STATS: Artifact[StatsKey, DenseStats] = Artifact(
    "dense-stats",
    file=lambda key: f"stats-{key.digest}-batch{key.batch_size}-{key.dtype}",
    encode=_encode,
    decode=_decode,
)
