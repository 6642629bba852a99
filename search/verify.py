"""Ground truth for the finalists: KL(dense ‖ candidate) and perplexity on held-out tokens.

Batches are the outer loop so the dense model's distribution is computed once per batch and
shared by all candidates, and nothing the size of (tokens × vocabulary) outlives a batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from search.adapters import DecoderAdapter
from search.masking import apply_arch
from search.selection import Selection


@dataclass(frozen=True)
class Verification:
    kl: float  # mean per-token KL(dense ‖ candidate), nats
    ppl: float  # held-out perplexity of the candidate
    tokens: int

    def to_dict(self) -> dict[str, float | int]:
        return {"kl": self.kl, "ppl": self.ppl, "tokens": self.tokens}


@torch.no_grad()
def verify(
    adapter: DecoderAdapter,
    heldout: torch.Tensor,
    selections: Sequence[Selection],
    *,
    batch_size: int = 8,
    on_batch: Callable[[int, int], None] | None = None,
) -> tuple[Verification, list[Verification]]:
    """Return the dense model's figures (KL 0) and one ``Verification`` per selection."""
    model = adapter.model
    device = next(model.parameters()).device
    kl_sums = [0.0] * len(selections)
    nll_sums = [0.0] * len(selections)
    dense_nll, tokens = 0.0, 0
    batches = heldout.split(batch_size)
    for index, batch in enumerate(batches):
        batch = batch.to(device)
        targets = batch[:, 1:]
        dense = F.log_softmax(model(input_ids=batch, use_cache=False).logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
        dense_nll += _nll(dense, targets)
        tokens += targets.numel()
        for i, selection in enumerate(selections):
            with apply_arch(adapter, selection):
                logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
            candidate = F.log_softmax(logits, dim=-1)
            kl_sums[i] += float(F.kl_div(candidate, dense, log_target=True, reduction="sum"))
            nll_sums[i] += _nll(candidate, targets)
        if on_batch is not None:
            on_batch(index + 1, len(batches))
    reference = Verification(0.0, math.exp(dense_nll / tokens), tokens)
    results = [
        Verification(kl / tokens, math.exp(min(nll / tokens, 700.0)), tokens)
        for kl, nll in zip(kl_sums, nll_sums, strict=True)
    ]
    return reference, results


def _nll(log_probs: torch.Tensor, targets: torch.Tensor) -> float:
    return float(-log_probs.gather(-1, targets.unsqueeze(-1)).sum())
