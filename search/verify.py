"""The figures of ground truth, from what a verification pass accumulates (``search.ladder.Verifier``
runs the passes).

Decoders: KL(dense ‖ candidate) per token and perplexity; finalists are ranked by KL. Encoders:
how well the candidate preserves the dense model's pairwise similarities (Spearman correlation over
all held-out pairs; finalists are ranked by its gap to 1), the figure that matters for retrieval and
clustering, and the distance of its sentence embeddings to the dense model's (1 − cosine, MSE).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from search.correlation import spearman_tensors
from search.results import Verification


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

    return spearman_tensors(pairwise(embeddings), pairwise(reference))
