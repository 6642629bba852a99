"""Score candidates by replaying one captured CUDA graph of the dense model, with the candidate as masks.

A trial evaluated in place (``search.masking.apply_arch``) gathers the kept rows and columns of every
projection and then runs a forward (and, for TraceNAS, a backward) over layers of uneven widths: on a
GPU that is thousands of kernel launches, each of which the host issues one at a time, so a model
that is small for its GPU keeps it idle most of the trial (the profile in docs/performance.md). Here
the model keeps its full width and the candidate is data: each layer's output projections multiply
their input by a mask (zero for pruned heads and channels, all zero for a dropped sub-block), which
computes what the physically pruned model computes (for families whose output projections have no
bias; a dropped layer is then its residual connection). Shapes never change, so the whole scoring
(forward, backward, the proxy's own reduction) is captured once as a CUDA graph and each candidate
costs one mask copy and one replay: the host's work per trial no longer grows with the model.

The price is full-width arithmetic, about twice the pruned model's at half the parameters, so the
proxies time both ways on their first candidates and keep the faster (``Execution``): replay wins
where the host is the bottleneck (small and mid-sized models), gathering where the GPU is.
On a CPU the same masked computation runs eagerly (no capture); that is what tests exercise.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import TypeVar

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from search.adapters import Adapter, Batch, head_rows
from search.graphs import Replay
from search.masking import sparsified
from search.selection import Selection

log = logging.getLogger(__name__)

T = TypeVar("T")

GATHER, REPLAY, AUTO = "gather", "replay", "auto"
EXECUTIONS = (AUTO, GATHER, REPLAY)
EXECUTION_OPTION = "execution"  # ProxyBuild.options: one of EXECUTIONS (TraceNAS, KL); absent = auto
# Scored both ways before ``auto`` settles. The first warms both up; the median of the other three
# decides, so one stalled timing (an allocation, a compile) cannot: the median of two is their mean.
TIMED_CANDIDATES = 4

# The proxies' attention. Gathered candidates keep bringing new head counts, and cuDNN's attention
# (PyTorch's first choice on Hopper) builds an execution plan on the host for every new shape, 50-80
# ms each in the profile (docs/performance.md); flash and memory-efficient attention build nothing.
# A replayed graph has one shape, so it takes cuDNN's, the fastest kernels on the device (6x the
# memory-efficient kernel's speed in the backward there), planned once before capture.
_GATHERED_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
_REPLAYED_ATTENTION = [SDPBackend.CUDNN_ATTENTION, *_GATHERED_ATTENTION]


def unsupported(adapter: Adapter) -> str | None:
    """Why a model cannot be scored by masks, or None where it can."""
    shape = adapter.shape
    if not (shape.causal and adapter.slices_width):
        return "only decoders with per-head projections are masked"
    if shape.o_bias or shape.mlp_bias:
        return "an output projection has a bias, so a masked input does not drop the sub-block"
    if any(p.device != adapter.device for p in adapter.model.parameters()):
        return "the model is split over devices"
    if getattr(adapter.model.config, "_attn_implementation", None) != "sdpa":
        return "only models with SDPA attention take the explicit causal mask (replayable_batch)"
    return None


class MaskSlots:
    """Candidates as one device tensor: per slot and layer, the kept inputs of the attention's and the
    MLP's output projections. Written once per candidate (one copy); read by forward pre-hooks, so a
    graph captured with the hooks installed sees every later candidate. With ``slots`` > 1 the model
    runs ``slots`` copies of its batch, one behind another, and each copy is masked by its own slot:
    several candidates in one forward (``TraceNAS.score_many``)."""

    def __init__(self, adapter: Adapter, slots: int = 1) -> None:
        shape = self.shape = adapter.shape
        self.adapter = adapter
        self.slots = slots
        self.attention_width = shape.num_heads * shape.head_dim
        dtype = next(adapter.model.parameters()).dtype
        self.device_masks = torch.ones(
            slots, shape.num_layers, self.attention_width + shape.intermediate_size, device=adapter.device, dtype=dtype
        )
        # Built as booleans in page-locked memory, so the copy does not wait for the device. Reusing it is
        # safe: every candidate's score is read back (a wait for the device) before the next one is loaded.
        pinned = adapter.device.type == "cuda"
        self._host = torch.empty(self.device_masks.shape, dtype=torch.bool, pin_memory=pinned)
        self._staged = torch.empty(self.device_masks.shape, dtype=torch.bool, device=adapter.device)

    def load(self, selections: Sequence[Selection]) -> None:
        """One candidate per slot; slots beyond ``selections`` repeat the last one."""
        host = self._host
        host.zero_()
        for slot in range(self.slots):
            selection = selections[min(slot, len(selections) - 1)]
            for i, (layer, kept) in enumerate(zip(selection.arch.layers, selection.layers, strict=True)):
                # index_fill_, not an indexed assignment: ~100x faster on the host (3.6 ms against 0.03 for a row).
                if layer.attention_kept:
                    host[slot, i].index_fill_(0, head_rows(self.shape, kept.kv_groups)[0], True)
                if layer.mlp_kept:
                    host[slot, i].index_fill_(0, self.attention_width + kept.channels, True)
        self._staged.copy_(host, non_blocking=True)
        self.device_masks.copy_(self._staged)

    @contextmanager
    def realised(self, selections: Sequence[Selection]) -> Iterator[None]:
        """``selections`` in the slots, and a lone candidate's unstructured sparsity zeroed in the
        weights until exit (candidates that share a forward have none: ``shared_weights``)."""
        if len(selections) > 1 and not shared_weights(selections):
            raise ValueError("candidates with unstructured sparsity cannot share one forward")
        self.load(selections)
        with sparsified(self.adapter, selections[0]):
            yield

    @contextmanager
    def installed(self) -> Iterator[None]:
        attention, mlp = self.device_masks.split([self.attention_width, self.shape.intermediate_size], dim=2)
        with ExitStack() as stack:
            for i in range(self.shape.num_layers):
                stack.enter_context(_masked_input(self.adapter.attention_output(i), attention[:, i]))
                stack.enter_context(_masked_input(self.adapter.mlp_output(i), mlp[:, i]))
            yield


def shared_weights(selections: Sequence[Selection]) -> bool:
    """Whether candidates can share one forward (``MaskSlots`` with several slots): none zeroes
    unstructured sparsity, which changes the weights every slot reads."""
    return all(selection.sparsity is None for selection in selections)


def repeated(batch: Batch, times: int) -> Batch:
    """``batch`` with its sequences ``times`` over, one copy per mask slot."""
    return {name: value.repeat(times, *[1] * (value.dim() - 1)) for name, value in batch.items()}


@contextmanager
def _masked_input(module: torch.nn.Module, masks: torch.Tensor) -> Iterator[None]:
    """``masks``: (slots, width); the input's sequences are the slots' copies, one after another."""

    def mask(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = args[0]
        per_slot = x.unflatten(0, (len(masks), -1)) * masks.view(len(masks), *[1] * (x.dim() - 1), -1)
        return (per_slot.flatten(0, 1), *args[1:])

    handle = module.register_forward_pre_hook(mask)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def attention_backends(*, replayed: bool = False) -> Iterator[None]:
    with sdpa_kernel(_REPLAYED_ATTENTION if replayed else _GATHERED_ATTENTION, set_priority=True):
        yield


class Execution:
    """Which way a proxy scores: ``gather`` (in place, physically sliced), ``replay`` (masks and a
    captured graph), or ``auto``: the first ``TIMED_CANDIDATES`` candidates are scored both ways and
    the faster is kept (the first pair only warms both up). Both ways compute the same values; the
    proxy returns the gathered score while timing, so a job's first scores do not depend on the choice."""

    def __init__(self, requested: str, adapter: Adapter, proxy: str) -> None:
        if requested not in EXECUTIONS:
            raise ValueError(f"execution must be one of {', '.join(EXECUTIONS)}, not {requested!r}")
        reason = unsupported(adapter)
        if requested == REPLAY and reason is not None:
            raise ValueError(f"{proxy} cannot replay this model: {reason}")
        if requested == AUTO and (reason is not None or adapter.device.type != "cuda"):
            requested = GATHER
        self.mode = requested
        self.proxy = proxy
        self.device = adapter.device
        self._timings: list[tuple[float, float]] = []

    @property
    def timing(self) -> bool:
        return self.mode == AUTO

    def compare(
        self,
        gather: Callable[[], T],
        replay: Callable[[], T],
        agree: Callable[[T, T], bool],
        release: Callable[[], None],
    ) -> T:
        """One candidate scored both ways while ``auto`` times them; returns the gathered result.
        ``release`` drops what replaying holds (its graphs' memory) once gathering is chosen."""
        gathered, gather_s = _timed(self.device, gather)
        try:
            replayed, replay_s = _timed(self.device, replay)
        except RuntimeError as error:  # a kernel or a check of the model's that a graph cannot hold
            self._cannot_capture(error)
        else:
            self.record(gather_s, replay_s, agree=agree(gathered, replayed))
        if self.mode == GATHER:
            release()
        return gathered

    def _cannot_capture(self, error: Exception) -> None:
        self.mode = GATHER
        log.warning(
            "%s: the model's scoring could not be captured as a CUDA graph (%s); scoring by gathering",
            self.proxy,
            error,
        )

    def record(self, gather_s: float, replay_s: float, *, agree: bool) -> None:
        if not agree:  # a family whose masked model is not its pruned one: never trust the replay
            self.mode = GATHER
            log.warning("%s: the replayed scores differ from the gathered ones; scoring by gathering", self.proxy)
            return
        self._timings.append((gather_s, replay_s))
        if len(self._timings) < TIMED_CANDIDATES:
            return
        measured = self._timings[1:]
        gather, replay = (statistics.median(t[k] for t in measured) for k in (0, 1))
        self.mode = REPLAY if replay < gather else GATHER
        log.info(
            "%s scores by %s (median %.1f ms gathering, %.1f ms replaying)",
            self.proxy,
            self.mode,
            gather * 1e3,
            replay * 1e3,
        )


def replayable_batch(batch: Batch) -> Batch:
    """The batch with an attention mask that masks nothing made the explicit causal mask (B, 1, T, T),
    which transformers passes on as it is. The model then needs no look at the mask's values, a wait
    for the device that a graph cannot capture; and it attends the same way in the warm-up runs as in
    the capture, where transformers builds that mask itself when it is given none (compiled layers
    would otherwise be compiled again, inside the capture). Called before capture."""
    mask = batch["attention_mask"]
    if not bool(mask.all()):
        return batch
    rows, length = mask.shape
    causal = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
    return batch | {"attention_mask": causal.expand(rows, 1, length, length)}


class CompiledLayers:
    """The model's layers compiled (``torch.compile``) while a graph to replay is built, on a GPU.

    Compiling fuses what eager PyTorch runs as separate kernels (the norms, the rotary embedding,
    the activation, the masks, the residual additions); what it saves is in docs/performance.md. The
    layers are compiled wrappers only inside ``installed`` (the warm-up runs and the capture), so a
    gathered candidate, whose widths change every trial, never runs them; the wrappers are kept,
    so a later graph reuses the compiled code. Where compiling fails, graphs are built uncompiled."""

    def __init__(self, adapter: Adapter) -> None:
        self.layers = adapter.layers
        self.enabled = adapter.device.type == "cuda"
        self._compiled: list[torch.nn.Module] = []

    @contextmanager
    def installed(self) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        originals = list(self.layers)
        if [getattr(compiled, "_orig_mod", None) for compiled in self._compiled] != originals:
            self._compiled = [torch.compile(layer) for layer in originals]  # compiled on first call
        for i, compiled in enumerate(self._compiled):
            self.layers[i] = compiled
        try:
            yield
        finally:
            for i, layer in enumerate(originals):
                self.layers[i] = layer

    def replay(self, run: Callable[[], T], device: torch.device, pool: tuple[int, int] | None = None) -> Replay[T]:
        """``Replay(run)``, where ``run`` installs these layers; uncompiled from then on if compiling fails."""
        if self.enabled:
            try:
                return Replay(run, device, pool)
            except RuntimeError as error:  # dynamo's and inductor's errors, or a capture they broke
                log.warning("compiling the model's layers failed (%s); its graphs are built uncompiled", error)
                self.enabled = False
        return Replay(run, device, pool)


def _timed(device: torch.device, work: Callable[[], T]) -> tuple[T, float]:
    """``work()`` and its wall time, the device's queue drained at both ends."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    result = work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - started
