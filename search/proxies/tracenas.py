"""TraceNAS: how well a candidate's gradient trace correlates with the dense model's.

For every linear layer, the weight gradient of the LM loss is sketched as ∇W · R with a fixed,
seeded Gaussian R (in × r); this is what the authors' LoRA-B gradient computes, without a PEFT
fork. It is formed as Gᵀ(XR) from the layer's output gradient G and input X, so no weight
gradient is ever materialised and the model's parameters never receive ``.grad``.

The dense sketch is computed once; each candidate costs one forward+backward. A sub-block's term
is the Pearson correlation of its sketch with the dense one; the score is the mean over kept
sub-blocks (the authors' sum favours deep candidates; it is reported as ``tracenas_sum``).

On a GPU the whole of it (forward, backward, sketches, correlations) may instead be one replayed CUDA
graph of the full-width model with the candidate as masks (``search.replay``; ``execution``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from torch import nn

from search.adapters import Adapter, Batch, Block
from search.artifacts import Artifact, ModelArtifacts
from search.calibration import TokenSet
from search.correlation import pearson_rows, pearson_stack
from search.errors import ProxyError
from search.graphs import Replay
from search.masking import Slices, apply_arch, kept_blocks
from search.proxies.base import COST_BACKWARD, Proxy, ProxyBuild, ProxyScore, Scores, or_error
from search.replay import (
    AUTO,
    EXECUTION_OPTION,
    GATHER,
    REPLAY,
    CompiledLayers,
    Execution,
    MaskSlots,
    attention_backends,
    repeated,
    replayable_batch,
    shared_weights,
)
from search.selection import Selection
from search.stopwatch import Stopwatch

Sketches = dict[Block, dict[str, torch.Tensor]]


class TraceNAS(Proxy):
    name = "tracenas"
    cost = COST_BACKWARD

    def __init__(
        self,
        adapter: Adapter,
        tokens: TokenSet,
        *,
        rank: int = 32,
        seed: int = 0,
        batch_size: int = 8,
        artifacts: ModelArtifacts | None = None,
        execution: str = AUTO,
    ) -> None:
        """``artifacts``: the model's; with an artifact store, the dense sketch is kept on disk.
        ``execution``: ``search.replay.Execution``."""
        self.adapter = adapter
        self.batches: list[Batch] = list(tokens.batches("calibration", batch_size, adapter.device))
        self.rank = rank
        self._projections: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}
        self._seed = seed
        self._memo: tuple[Selection, dict[Block, float]] | None = None  # the last candidate's terms
        # Encoders distil towards the dense model's embeddings; decoders need no reference.
        self._references = [None if adapter.shape.causal else _dense_output(adapter, b) for b in self.batches]
        dtype = str(next(adapter.model.parameters()).dtype).removeprefix("torch.")
        key = SketchKey(tokens.digest, seed, rank, batch_size, dtype)
        dense = (artifacts or ModelArtifacts()).get(DENSE_SKETCH, key, lambda: self._sketch(None))
        self._dense = {block: {n: g.to(adapter.device) for n, g in parts.items()} for block, parts in dense.items()}
        self.execution = Execution(execution, adapter, self.name)
        # Per number of slots (candidates per replay): the masks and the graph, captured when first needed.
        self._replays: dict[int, tuple[MaskSlots, Replay[torch.Tensor]]] = {}
        self._layers = CompiledLayers(adapter)

    @classmethod
    def create(cls, build: ProxyBuild) -> TraceNAS:
        execution = build.options.get(EXECUTION_OPTION, AUTO)
        key = ("tracenas", build.tokens.digest, build.seed, build.batch_size, execution)
        return build.reuse(
            key,
            lambda: cls(
                build.adapter,
                build.tokens,
                seed=build.seed,
                batch_size=build.batch_size,
                artifacts=build.artifacts,
                execution=execution,
            ),
        )

    def score(self, selection: Selection) -> ProxyScore:
        timings: dict[str, float] = {}
        return _scored(self._terms(selection, timings), timings)

    def score_many(self, selections: Sequence[Selection]) -> Scores:
        """The candidates started together and waited for once where they can be (``launch``);
        otherwise one after another."""
        waiting = self.launch(selections)
        return super().score_many(selections) if waiting is None else waiting()

    def launch(self, selections: Sequence[Selection]) -> Callable[[], Scores] | None:
        """The candidates started on the device, and one wait for all of them. Replaying: in one replay
        (a mask slot and a copy of the calibration batch each). Gathering on a GPU: each candidate's
        forward+backward and correlations queued one after another. On a CPU nothing would run while
        the host proposes, and the eager path keeps the sampler one trial fresher: ``None``."""
        if self.execution.mode == REPLAY and shared_weights(selections):
            started = time.perf_counter()
            masks, replay = self._replayed(len(selections))
            masks.load(selections)
            timings: dict[str, float] = {}
            read = self._started(selections, replay, started, timings)
            return lambda: [or_error(lambda t=terms: _scored(t, dict(timings))) for terms in read()]
        if self.execution.mode == GATHER and self.adapter.device.type == "cuda":
            reads = [self._gathered(selection) for selection in selections]
            return lambda: [or_error(lambda r=read: _scored(*r())) for read in reads]
        return None

    def block_terms(self, selection: Selection) -> dict[Block, float]:
        """ρ_b of every kept sub-block (the meta-network's features); shares the work with ``score``."""
        return dict(self._terms(selection, {}))

    def _terms(self, selection: Selection, timings: dict[str, float]) -> dict[Block, float]:
        if self._memo is not None and self._memo[0] is selection:
            return self._memo[1]
        if self.execution.timing:
            terms = self.execution.compare(
                lambda: self._gathered_terms(selection, timings),
                lambda: self._replayed_terms([selection], {})[0],
                _agree,
                self._release,
            )
        elif self.execution.mode == REPLAY:
            terms = self._replayed_terms([selection], timings)[0]
        else:
            terms = self._gathered_terms(selection, timings)
        self._memo = (selection, terms)
        return terms

    def _gathered_terms(self, selection: Selection, timings: dict[str, float]) -> dict[Block, float]:
        terms, measured = self._gathered(selection)()
        timings |= measured
        return terms

    def _gathered(self, selection: Selection) -> Callable[[], tuple[dict[Block, float], dict[str, float]]]:
        """The candidate's forward+backward on gathers of its kept units, and its sub-blocks' ρ, queued
        on the device; the call waits for them and returns them with the device's time on each part."""
        clock = Stopwatch(self.adapter.device)
        candidate = self._sketch(selection, clock)
        began = clock.mark()
        pairs = []
        for block, parts in candidate.items():
            dense = _flat(self._dense[block])
            # A model split over devices sketches each layer where it runs; the dense sketch is on the main one.
            pairs.append((_flat(parts).to(dense.device), dense))
        values = pearson_stack(pairs) if pairs else None
        clock.lap("correlation_s", began)

        def read() -> tuple[dict[Block, float], dict[str, float]]:
            timings = clock.totals()
            rows = [] if values is None else values.tolist()
            return dict(zip(candidate, rows, strict=True)), timings

        return read

    def _replayed_terms(self, selections: Sequence[Selection], timings: dict[str, float]) -> list[dict[Block, float]]:
        started = time.perf_counter()
        masks, replay = self._replayed(len(selections))
        with masks.realised(selections):
            return self._started(selections, replay, started, timings)()

    def _started(
        self,
        selections: Sequence[Selection],
        replay: Replay[torch.Tensor],
        started: float,
        timings: dict[str, float],
    ) -> Callable[[], list[dict[Block, float]]]:
        """The replay of ``selections`` (in its mask slots since ``started``) started on the device; the
        call waits for each candidate's kept sub-blocks' ρ. Forward, backward and correlations count
        under ``forward_s`` (the device's time), and every candidate's timings are its share."""
        count = len(selections)
        timings["apply_s"] = (time.perf_counter() - started) / count
        running = replay.start()

        def read() -> list[dict[Block, float]]:
            timings["forward_s"] = running.wait() / count
            rows = running.output.tolist()
            terms = []
            for selection, values in zip(selections, rows, strict=False):  # spare slots repeat the last candidate
                kept = {block for i, layer in enumerate(selection.arch.layers) for block in kept_blocks(i, layer)}
                terms.append({block: value for block, value in zip(self._dense, values, strict=True) if block in kept})
            return terms

        return read

    def _replayed(self, candidates: int) -> tuple[MaskSlots, Replay[torch.Tensor]]:
        """The graph with the fewest slots that holds ``candidates``, captured when none does."""
        slots = min((n for n in self._replays if n >= candidates), default=candidates)
        if slots not in self._replays:
            masks = MaskSlots(self.adapter, slots)
            batches = [repeated(replayable_batch(batch), slots) for batch in self.batches]
            run = lambda: self._replayed_correlations(masks, batches)  # noqa: E731
            self._replays[slots] = masks, self._layers.replay(run, self.adapter.device)
        return self._replays[slots]

    def _release(self) -> None:
        self._replays.clear()

    def _replayed_correlations(self, masks: MaskSlots, batches: list[Batch]) -> torch.Tensor:
        """What the graph runs: the full-width model, masked per slot, and each slot's sketches
        correlated with the dense ones: (slots, blocks), in ``self._dense``'s block order."""
        sketches: Sketches = {}
        with (
            _frozen_parameters(self.adapter.model),
            self._hooks(sketches, {}, slots=masks.slots),
            masks.installed(),
            attention_backends(replayed=True),
            self._layers.installed(),
        ):
            for batch, reference in zip(batches, self._references, strict=True):
                self.adapter.loss(batch, reference).backward()
        columns = [pearson_rows(_rows(sketches[block]), _flat(dense)) for block, dense in self._dense.items()]
        return torch.stack(columns, dim=1)

    def _projection(self, width: int, like: torch.Tensor) -> torch.Tensor:
        key = (width, like.device, like.dtype)
        if key not in self._projections:
            generator = torch.Generator().manual_seed(self._seed * 1_000_003 + width)
            projection = torch.randn(width, self.rank, generator=generator) / self.rank**0.5
            self._projections[key] = projection.to(device=like.device, dtype=like.dtype)
        return self._projections[key]

    def _sketch(self, selection: Selection | None, clock: Stopwatch | None = None) -> Sketches:
        """Σ over calibration batches of ∇W·R for every linear of every kept sub-block, queued on the
        device; ``clock`` times the apply, the forwards and the backwards."""
        clock = clock or Stopwatch(self.adapter.device)
        sketches: Sketches = {}
        slices: Slices = {}  # filled once the candidate is realised; the hooks read it at call time
        began = clock.mark()
        with (
            _frozen_parameters(self.adapter.model),
            self._hooks(sketches, slices),
            _arch(self.adapter, selection) as realised,
            attention_backends(),
        ):
            slices.update(realised)
            since = clock.lap("apply_s", began)
            for batch, reference in zip(self.batches, self._references, strict=True):
                loss = self.adapter.loss(batch, reference)
                since = clock.lap("forward_s", since)
                loss.backward()  # the sketch hooks run inside: their cost is part of the backward
                since = clock.lap("backward_s", since)
        return sketches

    @contextmanager
    def _hooks(self, sketches: Sketches, slices: Slices, slots: int | None = None) -> Iterator[None]:
        """Sketch every linear into ``sketches`` as (out, r); with ``slots``, the batch is that many
        candidates' copies and each linear's sketch is (slots, out, r)."""
        handles: list[Any] = []

        def make_hook(block: Block, name: str):
            def forward_hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
                x = args[0].detach()
                sliced = slices.get(module)
                if sliced is not None and sliced.cols is not None:
                    # A gathered input is the full one without the pruned (zero) columns: same X·R.
                    # (cols are where the weight is stored: elsewhere for an offloaded layer)
                    projection = self._projection(sliced.in_features, x).index_select(0, sliced.cols.to(x.device))
                else:
                    projection = self._projection(x.shape[-1], x)
                xr = _tokens(x @ projection, slots)  # (B*T, r), or (slots, B*T, r)

                def grad_hook(grad: torch.Tensor) -> None:
                    # (out, r) = Gᵀ(XR) = (∇W)·R; the matmul accumulates in fp32 even in bf16
                    g = (_tokens(grad, slots).transpose(-2, -1) @ xr.to(grad.dtype)).float()
                    if sliced is not None and sliced.rows is not None:
                        # Pruned outputs get no gradient: zero rows, as at full width.
                        full = g.new_zeros(sliced.out_features, g.shape[1])
                        g = full.index_copy_(0, sliced.rows.to(g.device), g)
                    store = sketches.setdefault(block, {})
                    store[name] = store[name] + g if name in store else g

                output.register_hook(grad_hook)

            return forward_hook

        # The embedding output is the leaf that lets gradients flow while every weight is frozen.
        handles.append(self.adapter.embeddings().register_forward_hook(lambda _m, _a, out: out.requires_grad_(True)))
        for block in self.adapter.blocks():
            for name, linear in self.adapter.linears(block).items():
                handles.append(linear.register_forward_hook(make_hook(block, name)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


@torch.no_grad()
def _dense_output(adapter: Adapter, batch: Batch) -> torch.Tensor:
    return adapter.forward(batch).detach()


@contextmanager
def _frozen_parameters(model: nn.Module) -> Iterator[None]:
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextmanager
def _arch(adapter: Adapter, selection: Selection | None) -> Iterator[Slices]:
    if selection is None:
        yield {}
    else:
        with apply_arch(adapter, selection) as slices:
            yield slices


def _encode_sketches(sketches: Sketches) -> dict[str, Any]:
    return {
        f"{block.layer}|{block.kind}|{name}": g.cpu() for block, parts in sketches.items() for name, g in parts.items()
    }


def _decode_sketches(state: dict[str, Any]) -> Sketches:
    sketches: Sketches = {}
    for key, g in state.items():
        layer, kind, name = key.split("|")
        sketches.setdefault(Block(int(layer), kind), {})[name] = g
    return sketches


class SketchKey(NamedTuple):
    digest: str  # of the calibration tokens
    seed: int
    rank: int
    batch_size: int
    dtype: str  # of the model's weights


# The dense model's gradient sketch: one backward pass over the calibration tokens, kept on disk.
DENSE_SKETCH: Artifact[SketchKey, Sketches] = Artifact(
    "tracenas-dense-sketch",
    file=lambda k: f"tracenas-dense-{k.digest}-seed{k.seed}-rank{k.rank}-batch{k.batch_size}-{k.dtype}",
    encode=_encode_sketches,
    decode=_decode_sketches,
    in_memory=False,  # the TraceNAS instance keeps it, on the model's device
)


def _flat(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([parts[name].flatten() for name in sorted(parts)])


def _rows(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """``_flat`` of each slot's sketches: (slots, values)."""
    return torch.cat([parts[name].flatten(1) for name in sorted(parts)], dim=1)


def _tokens(x: torch.Tensor, slots: int | None) -> torch.Tensor:
    """A linear's input or output gradient as (tokens, features), or with ``slots`` as (slots, tokens,
    features): the batch holds the slots' copies one after another."""
    return x.flatten(0, -2) if slots is None else x.reshape(slots, -1, x.shape[-1])


def _scored(terms: dict[Block, float], timings: dict[str, float]) -> ProxyScore:
    """The mean ρ over the kept sub-blocks (the authors' sum as an extra)."""
    if not terms:
        raise ProxyError("the candidate keeps no sub-block")
    total = float(sum(terms.values()))
    mean = total / len(terms)
    if not torch.isfinite(torch.tensor(mean)):
        raise ProxyError("TraceNAS correlation is not finite (a constant gradient sketch?)")
    return ProxyScore(mean, {"tracenas_sum": total, "tracenas_blocks": float(len(terms))}, timings)


def _agree(gathered: dict[Block, float], replayed: dict[Block, float]) -> bool:
    """Whether both ways found the same terms (up to the rounding of different kernels)."""
    return gathered.keys() == replayed.keys() and all(abs(gathered[b] - replayed[b]) <= 1e-2 for b in gathered)
