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

On a GPU a decoder's batches may instead be replayed CUDA graphs of the full-width model with the
candidate as masks (``search.replay``; ``execution``), one graph per span of sequences a rung scores.
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
from search.graphs import Replay
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
from search.replay import (
    AUTO,
    EXECUTION_OPTION,
    REPLAY,
    CompiledLayers,
    Execution,
    MaskSlots,
    attention_backends,
    replayable_batch,
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
        execution: str = AUTO,
    ) -> None:
        """``top_k``: as the ``kl_top_k`` option; ``artifacts``: the model's (the dense reference is kept
        there); ``execution``: ``search.replay.Execution`` (decoders)."""
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
        self.execution = Execution(execution, adapter, self.name)
        self._masks: MaskSlots | None = None
        self._graphs: dict[tuple[int, int], Replay[None]] = {}  # per span of sequences, captured when first scored
        self._pool: tuple[int, int] | None = None
        self._layers = CompiledLayers(adapter)
        self._sums = torch.zeros(2, dtype=torch.float64, device=adapter.device)  # the replays' Σ KL and tokens

    @classmethod
    def create(cls, build: ProxyBuild) -> KL:
        option = build.options.get(TOP_K_OPTION)
        top_k = None if option is None else int(option)
        if top_k is not None and top_k < 0:
            raise ProxyError(f"{TOP_K_OPTION} must be 0 (the exact KL) or a positive number of tokens, not {top_k}")
        execution = build.options.get(EXECUTION_OPTION, AUTO)
        key = ("kl", build.tokens.digest, build.batch_size, top_k, execution)
        return build.reuse(
            key,
            lambda: cls(
                build.adapter,
                build.tokens,
                top_k=top_k,
                batch_size=build.batch_size,
                artifacts=build.artifacts,
                execution=execution,
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
        if self.execution.timing:  # both ways score each rung from scratch while they are timed
            yield
            return
        started = time.perf_counter()
        with self._realised(selection):
            self._held = selection
            self._hold_seconds = time.perf_counter() - started  # counted once, with the first rung
            try:
                yield
            finally:
                self._held = None

    @contextmanager
    def _realised(self, selection: Selection) -> Iterator[None]:
        with self._replayed(selection) if self.execution.mode == REPLAY else apply_arch(self.adapter, selection):
            yield

    @torch.no_grad()
    def _extend(self, selection: Selection, sums: _Sums, sequences: int) -> None:
        if sums.sequences >= sequences:
            return
        started = time.perf_counter()
        held = self._held is selection
        if held:
            sums.seconds += self._hold_seconds
            self._hold_seconds = 0.0
        if self.causal:
            kl, tokens = self._kl(selection, sums.sequences, sequences, held)
            sums.kl += kl
            sums.tokens += round(tokens)
            sums.sequences = sequences
        else:
            with nullcontext() if held else apply_arch(self.adapter, selection):
                for batch in forward_batches(
                    self.tokens, sums.sequences, sequences, self.batch_size, self.adapter.device
                ):
                    output = self.adapter.forward(batch)
                    sums.embeddings.append(output.float())
                    sums.tokens += int(batch["attention_mask"].sum())
                    sums.sequences += len(output)
        sums.seconds += time.perf_counter() - started

    def _kl(self, selection: Selection, first: int, end: int, held: bool) -> tuple[float, float]:
        """(Σ KL, real tokens) of sequences ``first``..``end``."""
        if self.execution.timing:
            return self.execution.compare(
                lambda: self._gathered_kl(selection, first, end, held),
                lambda: self._replayed_kl(selection, first, end, held),
                _same_kl,
                self._release,
            )
        if self.execution.mode == REPLAY:
            return self._replayed_kl(selection, first, end, held)
        return self._gathered_kl(selection, first, end, held)

    def _release(self) -> None:
        self._graphs.clear()
        self._masks = self._pool = None

    def _gathered_kl(self, selection: Selection, first: int, end: int, held: bool) -> tuple[float, float]:
        sums: list[torch.Tensor] = []  # per batch: (Σ KL, real tokens), on the device
        with nullcontext() if held else apply_arch(self.adapter, selection), attention_backends():
            for batch in forward_batches(self.tokens, first, end, self.batch_size, self.adapter.device):
                sums.append(self._batch_kl(self.adapter.forward(batch), batch["attention_mask"][:, 1:], first))
                first += len(batch["input_ids"])
        kl, tokens = torch.stack(sums).sum(0).tolist()  # the extension's one wait for the device
        return kl, tokens

    def _replayed_kl(self, selection: Selection, first: int, end: int, held: bool) -> tuple[float, float]:
        spans = list(_spans(first, end, self.batch_size))
        with nullcontext() if held else self._replayed(selection):
            for span in spans:
                if span not in self._graphs:  # capturing runs it too: before the sums are reset
                    self._graphs[span] = self._capture(*span)
            self._sums.zero_()
            for span in spans:
                self._graphs[span].replay()
            kl, tokens = self._sums.tolist()  # the extension's one wait for the device
        return kl, tokens

    @contextmanager
    def _replayed(self, selection: Selection) -> Iterator[None]:
        if self._masks is None:
            self._masks = MaskSlots(self.adapter)
        with self._masks.realised([selection]):
            yield

    def _capture(self, first: int, end: int) -> Replay[None]:
        """A graph that adds the (Σ KL, tokens) of sequences ``first``..``end`` (one batch) to ``_sums``."""
        assert self._masks is not None
        device = self.adapter.device
        batch = next(forward_batches(self.tokens, first, end, self.batch_size, device))
        inputs, mask = replayable_batch(batch), batch["attention_mask"][:, 1:]
        masks = self._masks

        def run() -> None:
            with masks.installed(), attention_backends(replayed=True), self._layers.installed():
                self._sums.add_(self._batch_kl(self.adapter.forward(inputs), mask, first))

        if self._pool is None and device.type == "cuda":
            self._pool = torch.cuda.graph_pool_handle()
        return self._layers.replay(run, device, self._pool)

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


def _same_kl(gathered: tuple[float, float], replayed: tuple[float, float]) -> bool:
    """Whether both ways found the same KL per token (up to the rounding of different kernels)."""
    per_token = [kl / max(tokens, 1.0) for kl, tokens in (gathered, replayed)]
    return abs(per_token[0] - per_token[1]) <= 0.01 + 0.02 * per_token[0]


def _spans(first: int, end: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """The (first, end) of each batch ``forward_batches`` makes of sequences ``first``..``end``."""
    while first < end:
        stop = min((first // batch_size + 1) * batch_size, end)
        yield first, stop
        first = stop


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
