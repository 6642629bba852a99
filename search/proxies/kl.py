"""KL: how far a candidate's outputs are from the dense model's on the calibration tokens, forward only.

Decoders: the score is −KL(dense ‖ candidate) per real token (higher is better; 0 for the dense
model). Encoders: the fidelity is the similarity gap, 1 − the agreement (Spearman) of the
candidate's pairwise cosine similarities with the dense model's on the calibration sequences, as
verification measures it on held-out ones (``search.verify``); the score is minus that gap
(agreement − 1, the same ranking as the agreement). Either way the score is minus a loss that is 0
for the dense model, which is what lets ``search.fidelity`` put a lower rung's score on the full
scale by a ratio.

The dense model's side is computed once per (model, calibration digest, form, batches, dtype) and kept
in the model's artifacts, on disk with an artifact store (``search.proxies.reference``): full
log-probabilities when they fit ``FULL_BUDGET_BYTES``, else the top ``kl_top_k`` (default
``DEFAULT_TOP_K``), whose KL is a lower bound of the exact one (the data-processing inequality).

Multi-fidelity: ``score_on(selection, n)`` scores the first n calibration sequences; a later, larger
n for the same selection extends the sums it accumulated instead of starting again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch

from search.adapters import Adapter
from search.artifacts import ModelArtifacts
from search.calibration import TokenSet
from search.correlation import spearman
from search.errors import ProxyError
from search.ladder import min_sequences
from search.masking import apply_arch
from search.proxies.base import COST_FORWARD, Proxy, ProxyBuild, ProxyScore
from search.proxies.reference import (
    DENSE_REFERENCE,
    DenseEmbeddings,
    Reference,
    ReferenceKey,
    compute_reference,
    forward_batches,
    moved,
    reference_bytes,
    reference_form,
)
from search.selection import Selection
from search.verify import similarity_agreement

DEFAULT_TOP_K = 256  # dense tokens kept per position when the exact form exceeds FULL_BUDGET_BYTES
TOP_K_OPTION = "kl_top_k"  # ProxyBuild.options: 0 = exact whatever its size, k ≥ 1 = top-k, absent = automatic


@dataclass
class _Sums:
    """What a candidate has accumulated over the first ``sequences`` calibration sequences."""

    sequences: int = 0
    tokens: int = 0
    kl: float = 0.0  # decoders: Σ KL over real tokens
    embeddings: list[torch.Tensor] = field(default_factory=list)  # encoders: (B, H) per batch
    seconds: float = 0.0


class KL(Proxy):
    name = "kl"
    cost = COST_FORWARD

    def __init__(
        self,
        adapter: Adapter,
        tokens: TokenSet,
        *,
        top_k: int | None = None,
        batch_size: int = 8,
        artifacts: ModelArtifacts | None = None,
    ) -> None:
        """``top_k``: as the ``kl_top_k`` option; ``artifacts``: the model's (the dense reference is kept there)."""
        self.adapter, self.tokens, self.batch_size = adapter, tokens, batch_size
        self.causal = adapter.shape.causal
        self.form = reference_form(adapter, tokens, top_k, DEFAULT_TOP_K)
        dtype = str(next(adapter.model.parameters()).dtype).removeprefix("torch.")
        key = ReferenceKey(tokens.digest, self.form, batch_size, dtype)
        dense = (artifacts or ModelArtifacts()).get(
            DENSE_REFERENCE, key, lambda: compute_reference(adapter, tokens, self.form, batch_size)
        )
        self.reference: Reference = moved(dense, adapter.device)
        self.available = len(tokens.calibration)
        self._memo: tuple[Selection, _Sums] | None = None  # the last candidate's sums, for a later rung
        self._held: Selection | None = None  # the candidate ``hold`` keeps applied across rungs
        self._hold_seconds = 0.0

    @classmethod
    def create(cls, build: ProxyBuild) -> KL:
        option = build.options.get(TOP_K_OPTION)
        top_k = None if option is None else int(option)
        if top_k is not None and top_k < 0:
            raise ProxyError(f"{TOP_K_OPTION} must be 0 (the exact KL) or a positive number of tokens, not {top_k}")
        key = ("kl", build.tokens.digest, build.batch_size, top_k)
        return build.reuse(
            key,
            lambda: cls(
                build.adapter, build.tokens, top_k=top_k, batch_size=build.batch_size, artifacts=build.artifacts
            ),
        )

    @property
    def reference_bytes(self) -> int:
        return reference_bytes(self.reference)

    @property
    def rungs(self) -> tuple[int, ...]:
        """Doubling from the fewest sequences a score needs (pairs of sentences for encoders) to all."""
        sizes = [min(min_sequences(self.adapter), self.available)]
        while sizes[-1] < self.available:
            sizes.append(min(2 * sizes[-1], self.available))
        return tuple(sizes)

    def score(self, selection: Selection) -> ProxyScore:
        return self.score_on(selection, self.available)

    def score_on(self, selection: Selection, sequences: int) -> ProxyScore:
        sequences = max(self.rungs[0], min(sequences, self.available))
        memo = self._memo
        sums = memo[1] if memo is not None and memo[0] is selection and memo[1].sequences <= sequences else _Sums()
        self._memo = (selection, sums)
        self._extend(selection, sums, sequences)
        return self._figure(sums)

    @contextmanager
    def hold(self, selection: Selection) -> Iterator[None]:
        started = time.perf_counter()
        with apply_arch(self.adapter, selection):
            self._held = selection
            self._hold_seconds = time.perf_counter() - started  # counted once, with the first rung
            try:
                yield
            finally:
                self._held = None

    @torch.no_grad()
    def _extend(self, selection: Selection, sums: _Sums, sequences: int) -> None:
        if sums.sequences >= sequences:
            return
        started = time.perf_counter()
        held = self._held is selection
        if held:
            sums.seconds += self._hold_seconds
            self._hold_seconds = 0.0
        kl_and_tokens: list[torch.Tensor] = []  # decoders, per batch: (Σ KL, real tokens), on the device
        with nullcontext() if held else apply_arch(self.adapter, selection):
            for batch in forward_batches(self.tokens, sums.sequences, sequences, self.batch_size, self.adapter.device):
                output = self.adapter.forward(batch)
                if self.causal:
                    kl_and_tokens.append(self._batch_kl(output, batch["attention_mask"][:, 1:], sums.sequences))
                else:
                    sums.embeddings.append(output.float())
                    sums.tokens += int(batch["attention_mask"].sum())
                sums.sequences += len(output)
        if kl_and_tokens:
            kl, tokens = torch.stack(kl_and_tokens).sum(0).tolist()  # the extension's one wait for the device
            sums.kl += kl
            sums.tokens += round(tokens)
        elif self.adapter.device.type == "cuda":
            torch.cuda.synchronize(self.adapter.device)
        sums.seconds += time.perf_counter() - started

    def _batch_kl(self, logits: torch.Tensor, mask: torch.Tensor, first: int) -> torch.Tensor:
        """(Σ KL over the batch's real positions, their count), float64 on the device; ``logits`` (B, T, V),
        ``mask`` (B, T-1). No host sync: a trial waits for the device once, not once per batch."""
        reference = self.reference
        assert not isinstance(reference, DenseEmbeddings)
        real = mask.bool()
        kl = torch.where(real, reference.kl(logits[:, :-1], first), 0.0)  # (B, T-1)
        return torch.stack([kl.sum(dtype=torch.float64), real.sum(dtype=torch.float64)])

    def _figure(self, sums: _Sums) -> ProxyScore:
        timings = {"forward_s": sums.seconds}
        if self.causal:
            kl = sums.kl / max(sums.tokens, 1)
            if not torch.isfinite(torch.tensor(kl)):
                raise ProxyError("the KL to the dense model is not finite")
            return ProxyScore(0.0 - kl, {"kl_per_token": kl}, timings, tokens=sums.tokens)  # 0.0, not -0.0, when equal
        assert isinstance(self.reference, DenseEmbeddings)
        dense = self.reference.embeddings[: sums.sequences]
        agreement = similarity_agreement(torch.cat(sums.embeddings), dense)
        if not torch.isfinite(torch.tensor(agreement)):
            raise ProxyError("the similarity agreement is not finite (constant embeddings?)")
        extras = {"similarity_agreement": agreement, "similarity_gap": 1.0 - agreement}
        return ProxyScore(agreement - 1.0, extras, timings, tokens=sums.tokens)


@dataclass(frozen=True)
class TopKAgreement:
    """How a top-k KL ranks candidates against the exact KL: what k costs in rank agreement."""

    top_k: int
    spearman: float | None  # of the two KLs over the candidates
    exact: list[float]  # KL per token, exact, per candidate
    coarse: list[float]  # the top-k lower bound, per candidate
    exact_bytes: int  # the dense reference of each form
    coarse_bytes: int


def top_k_agreement(
    adapter: Adapter, tokens: TokenSet, selections: list[Selection], top_k: int, *, batch_size: int = 8
) -> TopKAgreement:
    """Score ``selections`` with the exact KL and the top-``top_k`` KL (decoders; nothing is kept)."""
    exact = KL(adapter, tokens, top_k=0, batch_size=batch_size)
    coarse = KL(adapter, tokens, top_k=top_k, batch_size=batch_size)
    exact_kl = [-exact.score(s).value for s in selections]
    coarse_kl = [-coarse.score(s).value for s in selections]
    return TopKAgreement(
        top_k, spearman(exact_kl, coarse_kl), exact_kl, coarse_kl, exact.reference_bytes, coarse.reference_bytes
    )
