"""Timing one step of a model in a latency setting (``search.spec.LatencySetting``) on its own device.

On a GPU a step is captured once as a CUDA graph (``search.graphs.Replay``) and timed as its replay:
the device's time, which is what serving runtimes (vLLM, SGLang, TensorRT-LLM replay graphs for
decode) pay per step. Launched one kernel at a time through ``transformers``' Python instead, a decode
step of the 8B shape took ~21 ms, nearly all of it the host's, and the host of a shared H200 ran
such steps up to 1.8x as long for tens of seconds at a time: a table timed in a slow period predicted
every later model 60-87% slow (docs/performance.md). On a CPU the host does the work: steps run as
they are. Both ends of a step are synchronised with the device. Medians over repeats, and repeats for
at least ``min_seconds`` where a step is short, so a few slow steps do not move the figure.
"""

from __future__ import annotations

import inspect
import logging
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
from torch import nn

from search.graphs import Replay
from search.spec import LatencySetting

MAX_REPEATS = 2000  # the most steps ``min_seconds`` may ask for (a step of a few microseconds)
HEADROOM = 0.8  # a timed model is built, or kept between passes, where it takes at most this share of free GPU memory

Key = TypeVar("Key")
log = logging.getLogger(__name__)


def random_ids(vocab: int, batch: int, tokens: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (batch, tokens), generator=generator).to(device)


class Stepper:
    """One step of ``model`` in ``setting``, ready to time again and again: a forward over batch ×
    context tokens (prefill), or one new token per sequence against a KV cache of ``context`` tokens
    (decode; the cache's tensors are put back after every step, so every step sees the same context
    and a captured graph reads tensors that stay alive)."""

    @torch.no_grad()
    def __init__(self, model: nn.Module, setting: LatencySetting, *, causal: bool) -> None:
        self.device = next(model.parameters()).device
        ids = random_ids(int(getattr(model.config, "vocab_size", 2)), setting.batch, setting.context, self.device)
        if setting.phase == "prefill":
            inputs: dict[str, Any] = {"input_ids": ids} | ({"use_cache": False} if causal else {})
            self._step = _replayed(lambda: model(**inputs), self.device, model)
            return
        output = model(input_ids=ids, use_cache=True)
        cache = getattr(output, "cache", None)  # an empty cache is falsy: compare with None
        cache = cache if cache is not None else output.past_key_values
        # transformers 5 renames ``past_key_values`` to ``cache``; the old name still works, with a warning.
        name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        inputs = {"input_ids": ids[:, :1], "use_cache": True, name: cache}
        context = [(layer.keys, layer.values) for layer in cache.layers]  # None in a layer without attention

        def step() -> Any:
            output = model(**inputs)
            for layer, (keys, values) in zip(cache.layers, context, strict=True):
                layer.keys, layer.values = keys, values
            return output

        self._step = _replayed(step, self.device, model)

    @torch.no_grad()
    def step(self) -> Any:
        """One step; the model's output (a replayed graph's: refilled by the next step)."""
        return self._step()

    def once(self) -> float:
        """Milliseconds of one step."""
        _synchronize(self.device)
        started = time.perf_counter()
        self.step()
        _synchronize(self.device)
        return (time.perf_counter() - started) * 1000


def _replayed(step: Callable[[], Any], device: torch.device, model: nn.Module) -> Callable[[], Any]:
    """``step`` as a replayed graph, or as it is where the model's forward cannot be captured (a wait for
    the device inside it): such a model is timed with the host's launches, and the log says so."""
    try:
        return Replay(step, device).replay
    except RuntimeError as error:
        log.warning("%s: a step could not be captured as a CUDA graph (%s); timed eagerly", type(model).__name__, error)
        return step


def _enough(done: int, repeats: int, started: float, min_seconds: float) -> bool:
    if done < repeats:
        return False
    return done >= MAX_REPEATS or time.perf_counter() - started >= min_seconds


def step_ms(
    model: nn.Module, setting: LatencySetting, *, causal: bool, warmup: int, repeats: int, min_seconds: float = 0.0
) -> float:
    """Milliseconds of one step of ``model`` in ``setting`` (``Stepper``), after ``warmup`` steps: the
    median over at least ``repeats`` steps and ``min_seconds``."""
    stepper = Stepper(model, setting, causal=causal)
    return interleaved_ms([stepper], warmup=warmup, repeats=repeats, min_seconds=min_seconds)[0]


def least_of_passes(timers: Mapping[Key, Callable[[int], float]], passes: int) -> dict[Key, float]:
    """Each timer's least figure over ``passes`` passes over all of them, the order reversed every pass.

    A shared host slows down for seconds at a time: an H200's ran steps timed eagerly up to twice as long,
    and timed one architecture 46% apart a minute later. With a model's passes all the other models'
    timings apart, a slow period makes one of its passes slow, not its figure; three passes of one
    model back to back (a second and a half) fell inside one. A timer is told which pass it runs (0
    first), so it can build its model on the first and free it after the last (``kept_timer``)."""
    keys = list(timers)
    least: dict[Key, float] = {}
    for done in range(passes):
        for key in keys if done % 2 == 0 else reversed(keys):
            measured = timers[key](done)
            least[key] = min(least.get(key, measured), measured)
    return least


def kept_timer(
    build: Callable[[], nn.Module], time_ms: Callable[[nn.Module], float], *, passes: int, keep: Callable[[], bool]
) -> Callable[[int], float]:
    """A timer for ``least_of_passes``: builds its model, times it, and keeps it for its next pass while
    ``keep()`` (there is room for it beside the others'), building it again otherwise."""
    kept: list[nn.Module] = []

    def timed(done: int) -> float:
        model = kept.pop() if kept else build()
        measured = time_ms(model)
        if done + 1 < passes and keep():
            kept.append(model)
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return measured

    return timed


def room_for(device: torch.device, params: int, dtype: torch.dtype) -> bool:
    """Whether ``params`` weights in ``dtype`` take at most ``HEADROOM`` of the GPU's free memory (a
    CPU: always)."""
    if device.type != "cuda":
        return True
    weights = params * torch.tensor([], dtype=dtype).element_size()
    return weights <= HEADROOM * torch.cuda.mem_get_info(device)[0]


def interleaved_ms(steppers: list[Stepper], *, warmup: int, repeats: int, min_seconds: float = 0.0) -> list[float]:
    """Median milliseconds of each, taking turns (the order reversed every round), so drift on a shared
    machine hits all alike and their differences are their own costs. At least ``repeats`` rounds and
    ``min_seconds``."""
    for _ in range(warmup):
        for stepper in steppers:
            stepper.once()
    times: list[list[float]] = [[] for _ in steppers]
    started, rounds = time.perf_counter(), 0
    while not _enough(rounds, repeats, started, min_seconds):
        order = list(enumerate(steppers))
        for index, stepper in order if rounds % 2 == 0 else reversed(order):
            times[index].append(stepper.once())
        rounds += 1
    return [statistics.median(each) for each in times]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
