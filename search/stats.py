"""Statistics of the dense model on the calibration tokens, computed once per (model, calibration).

One forward pass gives what selection and the baselines need: the input norm of every channel
entering ``o_proj`` and ``down_proj`` (Wanda's ‖X_j‖₂) and every layer's Block Influence
(ShortGPT: 1 − mean cosine between a layer's input and output hidden states).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from search.adapters import DecoderAdapter

if TYPE_CHECKING:
    from search.calibration import TokenSet


@dataclass(frozen=True)
class DenseStats:
    o_proj_input_norms: tuple[torch.Tensor, ...]  # per layer: (H*D,)
    down_proj_input_norms: tuple[torch.Tensor, ...]  # per layer: (I,)
    block_influence: torch.Tensor  # (L,)
    loss: float  # dense LM loss on the calibration tokens


@torch.no_grad()
def collect_stats(adapter: DecoderAdapter, tokens: TokenSet, *, batch_size: int) -> DenseStats:
    model = adapter.model
    num_layers = adapter.shape.num_layers
    o_sq = [torch.zeros(0)] * num_layers
    down_sq = [torch.zeros(0)] * num_layers
    cos_sum = torch.zeros(num_layers, dtype=torch.float64)
    cos_count = 0
    handles = []

    def square_sum(store: list[torch.Tensor], layer: int):
        def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach().float().flatten(0, -2)  # (B*T, C)
            total = x.pow(2).sum(0)
            store[layer] = total if store[layer].numel() == 0 else store[layer] + total

        return hook

    def influence(layer: int):
        def hook(_module: torch.nn.Module, args: tuple, kwargs: dict, output: object) -> None:
            nonlocal cos_count
            inputs = args[0] if args else kwargs["hidden_states"]
            out = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(inputs.float(), out.float(), dim=-1)  # (B, T)
            cos_sum[layer] += cos.double().sum().cpu()
            if layer == 0:
                cos_count += cos.numel()

        return hook

    for i in range(num_layers):
        handles.append(adapter.o_proj(i).register_forward_pre_hook(square_sum(o_sq, i)))
        handles.append(adapter.down_proj(i).register_forward_pre_hook(square_sum(down_sq, i)))
        handles.append(adapter.layers[i].register_forward_hook(influence(i), with_kwargs=True))
    device = next(model.parameters()).device
    loss_sum, batches = 0.0, 0
    try:
        for batch in tokens.calibration.split(batch_size):
            batch = batch.to(device)
            loss_sum += float(model(input_ids=batch, labels=batch, use_cache=False).loss)
            batches += 1
    finally:
        for handle in handles:
            handle.remove()
    return DenseStats(
        o_proj_input_norms=tuple(x.sqrt().cpu() for x in o_sq),
        down_proj_input_norms=tuple(x.sqrt().cpu() for x in down_sq),
        block_influence=(1.0 - cos_sum / max(cos_count, 1)).float(),
        loss=loss_sum / max(batches, 1),
    )
