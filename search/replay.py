"""Score candidates by replaying a captured CUDA graph of the model, with the candidate as data.

A trial evaluated in place (``search.masking.apply_arch``) gathers the kept rows and columns of every
projection and then runs a forward (and, for TraceNAS, a backward) over layers of uneven widths: on a
GPU that is thousands of kernel launches, each of which the host issues one at a time, so a model
that is small for its GPU keeps it idle most of the trial (the profile in docs/performance.md). Here
the model's shapes never change and the candidate is data (``search.slots``): masks on the inputs
of the output projections at full width (zero for pruned heads and channels, all zero for a dropped
sub-block), or, for TraceNAS, its kept units gathered into weights of a fixed narrower width, the
rest of that width masked. Either computes what the physically pruned model computes (for families
whose output projections have no bias; a dropped layer is then its residual connection). The whole
scoring (forward, backward, the proxy's own reduction) is captured once per width as a CUDA graph and
each candidate costs one copy and one replay: the host's work per trial no longer grows with the model.

The price is arithmetic at the graph's width, above the pruned model's, so the proxies time both ways
on their first candidates and keep the faster (``Execution``): replay wins where the host is the
bottleneck (small and mid-sized models), gathering where the GPU is.
On a CPU the same computation runs eagerly (no capture); that is what tests exercise.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from search.adapters import Adapter, Batch

log = logging.getLogger(__name__)

T = TypeVar("T")

GATHER, REPLAY, AUTO = "gather", "replay", "auto"
EXECUTIONS = (AUTO, GATHER, REPLAY)
EXECUTION_OPTION = "execution"  # ProxyBuild.options: one of EXECUTIONS (TraceNAS, KL); absent = auto
TIMED_CANDIDATES = 3  # scored both ways before ``auto`` settles; the first of them warms up and is not compared

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
    return None


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
    """The batch without an attention mask that masks nothing: the model then needs no look at the
    mask's values, a wait for the device that a graph cannot capture. Called before capture."""
    if bool(batch["attention_mask"].all()):
        return {name: value for name, value in batch.items() if name != "attention_mask"}
    return batch


def _timed(device: torch.device, work: Callable[[], T]) -> tuple[T, float]:
    """``work()`` and its wall time, the device's queue drained at both ends."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    result = work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - started
