"""The dense model's outputs on the calibration tokens, kept in the form the KL proxy compares candidates
with, and the KL of a candidate's logits against them, computed in chunks.

Decoders keep the log-probabilities of the next token at every position but the last, per sequence,
in one of two forms:
- ``FullLogProbs``: (N, T-1, V) float32, when that is at most ``FULL_BUDGET_BYTES``: the exact KL;
- ``TopKLogProbs``: the dense model's k most likely tokens per position (their log-probabilities and
  ids) and the log of the mass outside them, the "rest": 2·k + 1 numbers per position. For a 128k
  vocabulary at 4,096 tokens and k = 256 that is 8 MiB instead of 2 GiB. The KL is between the
  coarsened distributions, the k tokens plus one rest bucket, the same coarsening applied to both
  models, so by the data-processing inequality it is a lower bound of the true KL (equal when k
  covers the vocabulary, where the rest is empty).
Encoders keep the mean-pooled embeddings (N, H).

A candidate's logits become float32 log-probabilities ``CHUNK_ELEMENTS`` at a time, so a large
vocabulary never materialises a float32 (tokens × V) tensor beyond a chunk; the forward's own logits,
(B, T, V) in the model's dtype, are the batch's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from search.adapters import Adapter, Batch
from search.artifacts import Artifact
from search.calibration import TokenSet

FULL_BUDGET_BYTES = 256 * 2**20  # the largest exact (N, T-1, V) float32 form kept on the model's device
# float32 log-probabilities formed at once: 256 MiB (512 positions of a 128k vocabulary). Each chunk is
# ~25 kernel launches: smaller chunks made the KL of a 1B model's 4,096 tokens 800 launches, more
# than its forward, and the trial bound by the host, not the GPU.
CHUNK_ELEMENTS = 2**26
FULL, EMBEDDINGS = "full", "embeddings"


@dataclass(frozen=True)
class FullLogProbs:
    logprobs: torch.Tensor  # (N, T-1, V) float32

    def kl(self, logits: torch.Tensor, first: int) -> torch.Tensor:
        """KL(dense ‖ candidate) at every position of sequences ``first``.. ; ``logits`` (B, T-1, V) → (B, T-1)."""
        parts = []
        for b, lo, hi in _chunks(logits):
            candidate = F.log_softmax(logits[b, lo:hi].float(), dim=-1)  # (c, V)
            dense = self.logprobs[first + b, lo:hi]
            parts.append(F.kl_div(candidate, dense, log_target=True, reduction="none").sum(-1))
        return torch.cat(parts).view(logits.shape[:-1])


@dataclass(frozen=True)
class TopKLogProbs:
    values: torch.Tensor  # (N, T-1, k) float32: the dense model's k largest log-probabilities
    indices: torch.Tensor  # (N, T-1, k) int32: their token ids
    rest: torch.Tensor  # (N, T-1) float32: log of the dense mass outside them (-inf when k = V)

    def kl(self, logits: torch.Tensor, first: int) -> torch.Tensor:
        """KL between the coarsened distributions (k tokens + the rest) at every position of sequences
        ``first``.. ; ``logits`` (B, T-1, V) → (B, T-1)."""
        parts = []
        for b, lo, hi in _chunks(logits):
            sequence = first + b
            top, rest = _coarsen(logits[b, lo:hi], self.indices[sequence, lo:hi].long())
            dense, dense_rest = self.values[sequence, lo:hi], self.rest[sequence, lo:hi]
            head = F.kl_div(top, dense, log_target=True, reduction="none").sum(-1)  # (c,)
            # 0·log 0 = 0: an empty rest (k = V) contributes nothing.
            tail = torch.where(torch.isinf(dense_rest), 0.0, dense_rest.exp() * (dense_rest - rest))
            parts.append(head + tail)
        return torch.cat(parts).view(logits.shape[:-1])


@dataclass(frozen=True)
class DenseEmbeddings:
    embeddings: torch.Tensor  # (N, H) float32


Reference = FullLogProbs | TopKLogProbs | DenseEmbeddings


def reference_form(adapter: Adapter, tokens: TokenSet, top_k: int | None, default_top_k: int) -> str:
    """``"embeddings"`` for encoders; for decoders ``"full"`` or ``"top{k}"``: ``top_k`` 0 asks for the
    exact form whatever its size, a positive one for that k (at most V), None for the exact form
    within ``FULL_BUDGET_BYTES`` and ``default_top_k`` above it."""
    if not adapter.shape.causal:
        return EMBEDDINGS
    vocabulary = adapter.shape.vocab_size
    if top_k is None:
        positions = tokens.calibration.shape[0] * (tokens.calibration.shape[1] - 1)
        top_k = 0 if positions * vocabulary * 4 <= FULL_BUDGET_BYTES else default_top_k
    return FULL if top_k == 0 else f"top{min(top_k, vocabulary)}"


@torch.no_grad()
def compute_reference(adapter: Adapter, tokens: TokenSet, form: str, batch_size: int) -> Reference:
    """The dense model's reference on every calibration sequence, in ``form``, on the model's device."""
    parts: list[tuple[torch.Tensor, ...]] = []
    for batch in tokens.batches("calibration", batch_size, adapter.device):
        output = adapter.forward(batch)
        if form == EMBEDDINGS:
            parts.append((output.float(),))  # (B, H)
        else:
            parts.extend(_dense_positions(output[b, :-1], form) for b in range(len(output)))
    columns = [torch.stack(column) if form != EMBEDDINGS else torch.cat(column) for column in zip(*parts, strict=True)]
    if form == EMBEDDINGS:
        return DenseEmbeddings(*columns)
    return FullLogProbs(*columns) if form == FULL else TopKLogProbs(*columns)


def _dense_positions(logits: torch.Tensor, form: str) -> tuple[torch.Tensor, ...]:
    """One sequence's reference from its logits (T-1, V): the full log-probabilities, or top-k and rest."""
    if form == FULL:
        return (torch.cat([F.log_softmax(logits[lo:hi].float(), dim=-1) for lo, hi in _spans(*logits.shape)]),)
    k = int(form.removeprefix("top"))
    values, indices, rests = [], [], []
    for lo, hi in _spans(*logits.shape):
        chunk = logits[lo:hi].float()
        top = chunk.topk(k, dim=-1).indices  # (c, k)
        logprobs, rest = _coarsen(chunk, top)
        values.append(logprobs)
        indices.append(top.to(torch.int32))
        rests.append(rest)
    return torch.cat(values), torch.cat(indices), torch.cat(rests)


def _coarsen(logits: torch.Tensor, top: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the ``top`` ids (c, k) and log of the mass outside them (c,), from logits (c, V)."""
    x = logits.to(torch.float32, copy=True)  # (c, V): the chunk's one float32 copy, masked in place below
    normaliser = torch.logsumexp(x, dim=-1)  # (c,)
    chosen = x.gather(-1, top) - normaliser.unsqueeze(-1)  # (c, k)
    # The rest from the logits outside the top ids, not 1 − Σ top: exact even when the top holds ~all mass.
    rest = torch.logsumexp(x.scatter_(-1, top, float("-inf")), dim=-1) - normaliser
    return chosen, rest


def _spans(positions: int, vocabulary: int) -> Iterator[tuple[int, int]]:
    """(first, end) of each chunk of ``positions`` rows of ``vocabulary`` logits."""
    rows = max(1, CHUNK_ELEMENTS // vocabulary)
    for lo in range(0, positions, rows):
        yield lo, min(lo + rows, positions)


def _chunks(logits: torch.Tensor) -> Iterator[tuple[int, int, int]]:
    """(sequence, first position, end) of each chunk of ``logits`` (B, T, V)."""
    for b in range(logits.shape[0]):
        for lo, hi in _spans(logits.shape[1], logits.shape[2]):
            yield b, lo, hi


def moved(reference: Reference, device: torch.device) -> Reference:
    """The reference with its tensors on ``device``."""
    return replace(reference, **{name: value.to(device) for name, value in _tensors(reference).items()})


def reference_bytes(reference: Reference) -> int:
    return sum(t.numel() * t.element_size() for t in _tensors(reference).values())


def form_bytes(form: str, positions: int, vocabulary: int) -> int:
    """What a decoder's reference in ``form`` takes for ``positions`` next-token positions, without
    computing it (what a larger model would need): float32 log-probabilities of every token in
    ``"full"``; k float32 log-probabilities, k int32 ids and one float32 rest per position in ``"top{k}"``."""
    if form == FULL:
        return positions * vocabulary * 4
    k = min(int(form.removeprefix("top")), vocabulary)
    return positions * (k * (4 + 4) + 4)


def _tensors(reference: Reference) -> dict[str, torch.Tensor]:
    return {name: getattr(reference, name) for name in reference.__dataclass_fields__}


def _encode(reference: Reference) -> dict[str, Any]:
    return {"kind": type(reference).__name__} | {name: t.cpu() for name, t in _tensors(reference).items()}


def _decode(state: dict[str, Any]) -> Reference:
    kinds: dict[str, type[Reference]] = {kind.__name__: kind for kind in (FullLogProbs, TopKLogProbs, DenseEmbeddings)}
    kind = kinds[state.pop("kind")]
    return kind(**state)


class ReferenceKey(NamedTuple):
    digest: str  # of the calibration tokens
    form: str  # "full", "top{k}" or "embeddings"
    batch_size: int  # the dense model's batches: a candidate scored in the same ones matches it exactly
    dtype: str  # of the model's weights


# The dense model's reference outputs: one forward pass over the calibration tokens, kept on disk.
DENSE_REFERENCE: Artifact[ReferenceKey, Reference] = Artifact(
    "kl-dense-reference",
    file=lambda k: f"kl-dense-{k.digest}-{k.form}-batch{k.batch_size}-{k.dtype}",
    encode=_encode,
    decode=_decode,
    in_memory=False,  # the KL proxy keeps it, on the model's device
)


def forward_batches(tokens: TokenSet, start: int, end: int, batch_size: int, device: torch.device) -> Iterator[Batch]:
    """Calibration sequences ``start``..``end`` in the dense model's batches (cut at multiples of
    ``batch_size``), so a prefix scored later is batched as the reference was."""
    ids, mask = tokens.calibration, tokens.calibration_mask
    lo = start
    while lo < end:
        hi = min((lo // batch_size + 1) * batch_size, end)
        chunk = ids[lo:hi].to(device)
        chunk_mask = torch.ones_like(chunk) if mask is None else mask[lo:hi].to(device)
        yield {"input_ids": chunk, "attention_mask": chunk_mask}
        lo = hi
