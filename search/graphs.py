"""A computation captured once as a CUDA graph and replayed: one launch for the whole of it, so the
host's time per kernel (Python, launches) no longer counts. The proxies replay their scoring of masked
candidates (``search.replay``); the latency tables time a model's step as a replayed graph
(``search.latency_timing``)."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

from search.stopwatch import Stopwatch

T = TypeVar("T")


class Replay(Generic[T]):
    """``run`` (static inputs, no host synchronisation) captured once as a CUDA graph on ``device``;
    ``replay`` runs it again and returns the same output tensors, refilled. On a CPU ``run`` is called
    each time. Graphs share ``pool`` (one per proxy): they run one after another and keep no output
    in it (results go to tensors allocated before capture), so one graph's scratch is the next's."""

    def __init__(self, run: Callable[[], T], device: torch.device, pool: tuple[int, int] | None = None) -> None:
        self._run = run
        self._device = device
        self._graph: torch.cuda.CUDAGraph | None = None
        if device.type != "cuda":
            return
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):  # kernels chosen, workspaces and the allocator warmed before capture
                run()
        torch.cuda.current_stream(device).wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with _collected_garbage(), torch.cuda.graph(self._graph, pool=pool):
            self._output = run()

    def replay(self) -> T:
        if self._graph is None:
            return self._run()
        self._graph.replay()
        return self._output

    def start(self) -> Running[T]:
        """``replay`` without waiting for the device (on a CPU, ``run`` is done when this returns)."""
        clock = Stopwatch(self._device)
        began = clock.mark()
        output = self.replay()
        clock.lap("device", began)
        return Running(output, lambda: clock.totals()["device"])


@dataclass
class Running(Generic[T]):
    """A replay started on the device. Its output tensors are the graph's own: read them before the
    graph is replayed again."""

    output: T
    wait: Callable[[], float]  # waits until the output is made; returns the device's seconds on it


@contextmanager
def _collected_garbage() -> Iterator[None]:
    """No garbage collection while a graph is captured. A proxy dropped in a reference cycle (its graph's
    function holds it) keeps its graph until the collector runs; destroying a graph during another's
    capture invalidates that capture (seen when a test built a second proxy). The garbage is collected
    first, and the collector waits until the capture ends."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
