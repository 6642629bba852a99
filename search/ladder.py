"""Verification at increasing fidelity: successive halving over held-out prefixes (Týr-style).

The finalists (the proxy's favourites) are verified on the first n_0 held-out sequences, the better
half on the first 2·n_0, and so on, until the last rung verifies the two best on every held-out
sequence; the job's baselines (seeds) are verified on every rung beside them. Rungs are nested
prefixes of the held-out split, so a survivor's figures on the earlier sequences are reused and
each rung only evaluates the sequences it adds. Decoders are ranked by KL(dense ‖ candidate) per
token, encoders by the similarity gap (1 − Spearman agreement of pairwise cosine similarities).

The same incremental ``Verifier`` audits candidates cheaply for the trust report (the first few
held-out sequences, i.e. the first rung's fidelity).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from search.adapters import Adapter, Batch
from search.calibration import TokenSet
from search.masking import apply_arch
from search.results import LadderCandidate, LadderKey, LadderRung, Verification
from search.selection import Selection
from search.verify import decoder_figures, encoder_figures

# Fewest held-out sequences a figure is computed on: encoders need pairs of sentences.
MIN_SEQUENCES_DECODER = 1
MIN_SEQUENCES_ENCODER = 8


@dataclass
class _Accumulator:
    sequences: int = 0
    tokens: int = 0
    kl: float = 0.0
    nll: float = 0.0
    embeddings: list[torch.Tensor] = field(default_factory=list)


class Verifier:
    """Figures of candidates on prefixes of the held-out split, extended incrementally.

    ``evaluate(key → selection, n)`` brings every candidate to the first ``n`` held-out sequences,
    computing only the sequences it has not seen; the dense model's outputs are computed once per
    batch and shared by all candidates evaluated on it. A candidate already evaluated further keeps
    its larger figure: use one verifier per fidelity when figures must be comparable (audits).
    """

    def __init__(self, adapter: Adapter, tokens: TokenSet, *, batch_size: int = 8) -> None:
        self.adapter = adapter
        self.tokens = tokens
        self.batch_size = batch_size
        self.causal = adapter.shape.causal
        self._done: dict[Hashable, _Accumulator] = {}
        self._dense = _Accumulator()
        self.batches_run = 0

    @property
    def available(self) -> int:
        return len(self.tokens.heldout)

    def evaluate(
        self,
        candidates: dict[Hashable, Selection | None],
        sequences: int,
        on_batch: Callable[[], None] | None = None,
    ) -> dict[Hashable, Verification]:
        """``None`` as a selection means the dense model itself."""
        sequences = min(sequences, self.available)
        for key in candidates:
            self._done.setdefault(key, _Accumulator())
        start = min(self._done[key].sequences for key in candidates)
        with torch.no_grad():
            for lo, batch in self._batches(start, sequences):
                hi = lo + len(batch["input_ids"])
                pending = {k: s for k, s in candidates.items() if self._done[k].sequences < hi}
                if pending:
                    self._run(batch, lo, hi, pending)
                    self.batches_run += 1
                    if on_batch is not None:
                        on_batch()
        return {key: self._figures(self._done[key]) for key in candidates}

    def _batches(self, start: int, end: int) -> Iterator[tuple[int, Batch]]:
        ids, mask = self.tokens.heldout, self.tokens.heldout_mask
        device = self.adapter.device
        for lo in range(start, end, self.batch_size):
            hi = min(lo + self.batch_size, end)
            chunk = ids[lo:hi].to(device)
            chunk_mask = torch.ones_like(chunk) if mask is None else mask[lo:hi].to(device)
            yield lo, {"input_ids": chunk, "attention_mask": chunk_mask}

    def _run(self, batch: Batch, lo: int, hi: int, pending: dict[Hashable, Selection | None]) -> None:
        adapter = self.adapter
        dense_out = adapter.forward(batch)
        if self.causal:
            targets = batch["input_ids"][:, 1:]
            real = batch["attention_mask"][:, 1:].bool()
            dense = F.log_softmax(dense_out[:, :-1].float(), dim=-1)  # (B, T-1, V)
            if self._dense.sequences < hi:  # the dense model's own perplexity
                skip = max(0, self._dense.sequences - lo)
                self._add_decoder(self._dense, dense[skip:], dense[skip:], targets[skip:], real[skip:], hi)
        else:
            dense = dense_out.float().cpu()  # (B, H)
            if self._dense.sequences < hi:
                self._dense.embeddings.append(dense[max(0, self._dense.sequences - lo) :])
                self._dense.sequences = hi
        for key, selection in pending.items():
            accumulator = self._done[key]
            skip = max(0, accumulator.sequences - lo)  # sequences of this batch it already has
            if selection is None:
                output = dense_out
            else:
                with apply_arch(adapter, selection):
                    output = adapter.forward(batch)
            if self.causal:
                candidate = F.log_softmax(output[:, :-1].float(), dim=-1)
                self._add_decoder(accumulator, candidate[skip:], dense[skip:], targets[skip:], real[skip:], hi)
            else:
                accumulator.embeddings.append(output.float().cpu()[skip:])
                accumulator.sequences = hi

    @staticmethod
    def _add_decoder(
        accumulator: _Accumulator,
        candidate: torch.Tensor,
        dense: torch.Tensor,
        targets: torch.Tensor,
        real: torch.Tensor,
        hi: int,
    ) -> None:
        kl = F.kl_div(candidate, dense, log_target=True, reduction="none").sum(-1)  # (B, T-1)
        accumulator.kl += float(kl[real].sum())
        nll = -candidate.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
        accumulator.nll += float(nll[real].sum())
        accumulator.tokens += int(real.sum())
        accumulator.sequences = hi

    def _figures(self, accumulator: _Accumulator) -> Verification:
        if self.causal:
            return decoder_figures(accumulator.kl, accumulator.nll, accumulator.tokens)
        embeddings = torch.cat(accumulator.embeddings)
        dense = torch.cat(self._dense.embeddings)[: len(embeddings)]
        mask = self.tokens.heldout_mask
        tokens = int(mask[: len(embeddings)].sum()) if mask is not None else embeddings.shape[0]
        return encoder_figures(embeddings, dense, tokens)


def min_sequences(adapter: Adapter) -> int:
    return MIN_SEQUENCES_DECODER if adapter.shape.causal else MIN_SEQUENCES_ENCODER


def rung_sizes(available: int, finalists: int, minimum: int, *, last_survivors: int = 2) -> list[int]:
    """Held-out sequences per rung: the last rung uses all of them, each earlier rung half the next.

    As many rungs as halving ``finalists`` down to ``last_survivors`` takes, fewer when the first
    rung would drop below ``minimum`` sequences.
    """
    rungs = max(0, math.ceil(math.log2(max(finalists, 1) / last_survivors))) + 1 if finalists > last_survivors else 1
    sizes = [available]
    while len(sizes) < rungs and sizes[0] // 2 >= max(minimum, 1):
        sizes.insert(0, sizes[0] // 2)
    return sizes


@dataclass
class LadderResult:
    dense: Verification
    final: dict[Hashable, Verification]  # everything verified on the last rung (survivors and seeds)
    rungs: list[LadderRung]  # per rung: sequences, tokens, every candidate's figure, survivors


def successive_halving(
    verifier: Verifier,
    finalists: Sequence[tuple[LadderKey, Selection]],
    baselines: Sequence[tuple[LadderKey, Selection]],
    *,
    last_survivors: int = 2,
    on_batch: Callable[[int, int], None] | None = None,
) -> LadderResult:
    """Verify ``finalists`` (best proxy score first) at increasing fidelity, keeping ``baselines``
    (verified on every rung) beside them; the survivors of the last rung and the baselines are
    verified on every held-out sequence."""
    sizes = rung_sizes(
        verifier.available, len(finalists), min_sequences(verifier.adapter), last_survivors=last_survivors
    )
    survivors = list(finalists)
    order = {key: index for index, (key, _) in enumerate(finalists)}
    progress = _Progress(_planned_batches(sizes, verifier.batch_size), on_batch)
    rungs: list[LadderRung] = []
    figures: dict[Hashable, Verification] = {}
    for index, sequences in enumerate(sizes):
        candidates: dict[Hashable, Selection | None] = {key: s for key, s in survivors} | dict(baselines)
        candidates["dense"] = None
        figures = verifier.evaluate(candidates, sequences, on_batch=progress.tick)
        dense = figures.pop("dense")
        last = index == len(sizes) - 1
        keep = len(survivors) if last else max(last_survivors, math.ceil(len(survivors) / 2))
        survivors = sorted(survivors, key=lambda item: (figures[item[0]].value, order[item[0]]))[:keep]
        rungs.append(_rung(index, sequences, dense, figures, {key for key, _ in baselines}, survivors))
    progress.finish()
    return LadderResult(dense, figures, rungs)


class _Progress:
    """Reports the ladder's batches as (done, planned) to ``on_batch``; ends on (planned, planned)."""

    def __init__(self, total: int, on_batch: Callable[[int, int], None] | None) -> None:
        self.total, self.done, self.on_batch = total, 0, on_batch

    def tick(self) -> None:
        self.done += 1
        if self.on_batch is not None:
            self.on_batch(min(self.done, self.total), self.total)

    def finish(self) -> None:
        if self.on_batch is not None and self.done < self.total:
            self.on_batch(self.total, self.total)


def _rung(
    index: int,
    sequences: int,
    dense: Verification,
    figures: dict[Hashable, Verification],
    baselines: set[LadderKey],
    survivors: Sequence[tuple[LadderKey, Selection]],
) -> LadderRung:
    return LadderRung(
        rung=index,
        sequences=sequences,
        tokens=dense.tokens,
        primary=dense.primary,
        candidates=[
            LadderCandidate(key=key, value=figures[key].value, baseline=key in baselines)
            for key in sorted(figures, key=lambda k: figures[k].value)
        ],
        survivors=[key for key, _ in survivors],
    )


def _planned_batches(sizes: list[int], batch_size: int) -> int:
    """Batches the ladder runs (for progress): each rung runs the batches of the sequences it adds."""
    return max(1, sum(math.ceil((b - a) / batch_size) for a, b in zip([0, *sizes[:-1]], sizes, strict=True)))


def audit(verifier: Verifier, selections: dict[Hashable, Selection], sequences: int) -> dict[Hashable, Verification]:
    """Cheap verification of an audit sample on the first ``sequences`` held-out sequences."""
    return {key: v for key, v in verifier.evaluate(dict(selections), sequences).items()}
