"""Ground truth for the finalists, on held-out tokens.

Decoders: KL(dense ‖ candidate) per token and perplexity; finalists are ranked by KL. Encoders:
how well the candidate preserves the dense model's pairwise similarities (Spearman correlation over
all held-out pairs; finalists are ranked by its gap to 1), the figure that matters for retrieval and
clustering, and the distance of its sentence embeddings to the dense model's (1 − cosine, MSE).

Batches are the outer loop, so the dense model's output is computed once per batch and shared by
all candidates, and nothing the size of (tokens × vocabulary) outlives a batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from search.adapters import Adapter
from search.calibration import TokenSet
from search.masking import apply_arch
from search.results import Verification
from search.selection import Selection


@torch.no_grad()
def verify(
    adapter: Adapter,
    tokens: TokenSet,
    selections: Sequence[Selection],
    *,
    batch_size: int = 8,
    on_batch: Callable[[int, int], None] | None = None,
) -> tuple[Verification, list[Verification]]:
    """Return the dense model's figures and one ``Verification`` per selection."""
    run = _verify_decoder if adapter.shape.causal else _verify_encoder
    return run(adapter, tokens, selections, batch_size, on_batch)


def _verify_decoder(
    adapter: Adapter,
    tokens: TokenSet,
    selections: Sequence[Selection],
    batch_size: int,
    on_batch: Callable[[int, int], None] | None,
) -> tuple[Verification, list[Verification]]:
    kl_sums = [0.0] * len(selections)
    nll_sums = [0.0] * len(selections)
    dense_nll, count = 0.0, 0
    batches = list(tokens.batches("heldout", batch_size, adapter.device))
    for index, batch in enumerate(batches):
        targets = batch["input_ids"][:, 1:]
        dense = F.log_softmax(adapter.forward(batch)[:, :-1].float(), dim=-1)  # (B, T-1, V)
        dense_nll += _nll(dense, targets)
        count += targets.numel()
        for i, selection in enumerate(selections):
            with apply_arch(adapter, selection):
                candidate = F.log_softmax(adapter.forward(batch)[:, :-1].float(), dim=-1)
            kl_sums[i] += float(F.kl_div(candidate, dense, log_target=True, reduction="sum"))
            nll_sums[i] += _nll(candidate, targets)
        if on_batch is not None:
            on_batch(index + 1, len(batches))

    return decoder_figures(0.0, dense_nll, count), [
        decoder_figures(kl, nll, count) for kl, nll in zip(kl_sums, nll_sums, strict=True)
    ]


def _verify_encoder(
    adapter: Adapter,
    tokens: TokenSet,
    selections: Sequence[Selection],
    batch_size: int,
    on_batch: Callable[[int, int], None] | None,
) -> tuple[Verification, list[Verification]]:
    dense_parts: list[torch.Tensor] = []
    candidate_parts: list[list[torch.Tensor]] = [[] for _ in selections]
    batches = list(tokens.batches("heldout", batch_size, adapter.device))
    for index, batch in enumerate(batches):
        dense_parts.append(adapter.forward(batch).float().cpu())
        for i, selection in enumerate(selections):
            with apply_arch(adapter, selection):
                candidate_parts[i].append(adapter.forward(batch).float().cpu())
        if on_batch is not None:
            on_batch(index + 1, len(batches))
    dense = torch.cat(dense_parts)  # (M, H)
    count = tokens.count("heldout")

    return encoder_figures(dense, dense, count), [
        encoder_figures(torch.cat(parts), dense, count) for parts in candidate_parts
    ]


def decoder_figures(kl_sum: float, nll_sum: float, tokens: int) -> Verification:
    """KL to the dense model and perplexity per token, from their sums over ``tokens`` tokens."""
    count = max(tokens, 1)
    return Verification(
        primary="kl", metrics={"kl": kl_sum / count, "ppl": math.exp(min(nll_sum / count, 700.0))}, tokens=tokens
    )


def encoder_figures(embeddings: torch.Tensor, dense: torch.Tensor, tokens: int) -> Verification:
    cosine = F.cosine_similarity(embeddings, dense, dim=-1)
    agreement = similarity_agreement(embeddings, dense)
    return Verification(
        # Retrieval and clustering use similarities, not the vectors: rank by how well they survive.
        primary="similarity_gap",
        metrics={
            "similarity_gap": 1.0 - agreement,
            "similarity_spearman": agreement,
            "cosine_distance": float((1 - cosine).mean()),
            "mse": float((embeddings - dense).pow(2).mean()),
        },
        tokens=tokens,
    )


def similarity_agreement(embeddings: torch.Tensor, reference: torch.Tensor) -> float:
    """Spearman correlation between the pairwise cosine similarities of two embedding sets."""
    upper = torch.triu_indices(len(reference), len(reference), offset=1)

    def pairwise(x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x, dim=-1)
        return (x @ x.t())[upper[0], upper[1]]

    return spearman(pairwise(embeddings), pairwise(reference))


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ranks_a, ranks_b = _ranks(a.double()), _ranks(b.double())
    ranks_a, ranks_b = ranks_a - ranks_a.mean(), ranks_b - ranks_b.mean()
    denominator = ranks_a.norm() * ranks_b.norm()
    return float((ranks_a @ ranks_b) / denominator) if denominator > 0 else 0.0


def _ranks(values: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share the mean of their positions), as scipy's rankdata."""
    order = torch.argsort(values, stable=True)
    ranks = torch.empty_like(values)
    ranks[order] = torch.arange(len(values), dtype=values.dtype)
    unique, inverse = torch.unique(values, return_inverse=True)
    sums = torch.zeros(len(unique), dtype=values.dtype).index_add_(0, inverse, ranks)
    counts = torch.zeros(len(unique), dtype=values.dtype).index_add_(0, inverse, torch.ones_like(ranks))
    return (sums / counts)[inverse]


def _nll(log_probs: torch.Tensor, targets: torch.Tensor) -> float:
    return float(-log_probs.gather(-1, targets.unsqueeze(-1)).sum())
