"""The speed report of an export: the exported model beside the dense one, on the worker's device and
both in the export's precision.

Prefill: one forward over batch × tokens. Decode: greedy ``generate`` with the KV cache, a fixed
number of new tokens (no early stop at an end-of-sequence token). Every figure is the median of
``repeats`` timed runs after ``warmup`` untimed ones, the dense and the exported model taking turns,
so drift on a shared machine hits both alike. Sizes are clamped to the model's maximum positions and
the report holds the sizes used.

Peak memory, over the timed runs: on a GPU, CUDA's allocator peak while the model runs, less what
was allocated before (the other model), plus the model's own weights; on a CPU there is no allocator
peak to read, so it is the weights' bytes plus the largest KV cache a decode left, both counted from
the tensors (activations are not counted there).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from search.precision import WeightSource, dtype_name
from search.results import DecodeSpeed, PrefillSpeed, SpeedReport, SpeedWorkload

if TYPE_CHECKING:
    from search.loading import LoadedModel

CPU_PEAK = "weights + the largest KV cache, counted from the tensors (a CPU has no allocator peak to read)"
GPU_PEAK = "CUDA max allocated while the model ran, less the other model, plus its weights"


def speed_report(
    pruned: nn.Module, loaded: LoadedModel, workload: SpeedWorkload, *, pruned_size: int, dense_size: int
) -> SpeedReport:
    """Time ``pruned`` (an export, loaded) beside ``loaded``'s dense model on the dense model's device."""
    device = next(loaded.adapter.model.parameters()).device
    dtype = next(pruned.parameters()).dtype
    pruned = pruned.to(device).eval()
    causal = loaded.adapter.shape.causal
    used = clamp(workload, _max_positions(pruned), causal=causal)
    with dense_in(loaded, dtype) as dense, torch.no_grad():
        inputs, peaks = _Inputs(getattr(dense.config, "vocab_size", 2), device), _Peaks(device)
        prefill = [_prefill(dense, pruned, inputs, batch, used, peaks) for batch in used.prefill_batches]
        decode = [_decode(dense, pruned, inputs, batch, used, peaks) for batch in used.decode_batches]
        peak_bytes = peaks.bytes(dense), peaks.bytes(pruned)
    return SpeedReport(
        device=str(device),
        dtype=dtype_name(dtype),
        workload=used,
        prefill=prefill,
        decode=decode,
        dense_peak_bytes=peak_bytes[0],
        pruned_peak_bytes=peak_bytes[1],
        peak_memory=GPU_PEAK if device.type == "cuda" else CPU_PEAK,
        dense_size_bytes=dense_size,
        pruned_size_bytes=pruned_size,
    )


def clamp(workload: SpeedWorkload, max_positions: int | None, *, causal: bool) -> SpeedWorkload:
    """The workload fitted to the model: prefill within its context, prompt + new tokens too;
    no decode for an encoder."""
    changes: dict[str, Any] = {} if causal else {"decode_batches": []}
    if max_positions is not None:
        new = min(workload.new_tokens, max_positions - 1)
        changes |= {
            "prefill_tokens": min(workload.prefill_tokens, max_positions),
            "new_tokens": new,
            "prompt_tokens": max(1, min(workload.prompt_tokens, max_positions - new)),
        }
    return workload.model_copy(update=changes)


@contextmanager
def dense_in(loaded: LoadedModel, dtype: torch.dtype) -> Iterator[nn.Module]:
    """The dense model in ``dtype`` for the time of the measurement.

    Cast in place and back when the round trip is exact (the search's dtype holds the checkpoint's
    values, or the export is float32); otherwise (a bfloat16 search of a float16 checkpoint) the
    checkpoint is loaded once more in ``dtype`` on the device and released after.
    """
    model = loaded.adapter.model
    searched = next(model.parameters()).dtype
    source = loaded.source
    if searched == dtype:
        yield model
    elif not dense_copied(loaded, dtype):
        model.to(dtype)
        try:
            yield model
        finally:
            model.to(searched)
    else:
        assert source is not None  # dense_copied: only a checkpoint's values are loaded again
        copy = _load_dense(source, dtype, next(model.parameters()).device, causal=loaded.adapter.shape.causal)
        try:
            yield copy
        finally:
            del copy
            _empty_cache()


def dense_copied(loaded: LoadedModel, dtype: torch.dtype) -> bool:
    """Whether ``dense_in`` loads a second copy of the dense model (the round trip to ``dtype`` and back
    would not be exact) rather than casting the searched one in place."""
    searched = next(loaded.adapter.model.parameters()).dtype
    source = loaded.source
    return searched != dtype and dtype != torch.float32 and source is not None and not source.exact_in(searched)


def _load_dense(source: WeightSource, dtype: torch.dtype, device: torch.device, *, causal: bool) -> nn.Module:
    from transformers import AutoModel, AutoModelForCausalLM

    auto = AutoModelForCausalLM if causal else AutoModel
    network = auto.from_pretrained(
        source.model, revision=source.revision, dtype=dtype, trust_remote_code=False, attn_implementation="sdpa"
    )
    return network.to(device).eval()


class _Inputs:
    """Random token ids, the same for both models (a fixed seed)."""

    def __init__(self, vocab: int, device: torch.device) -> None:
        self.vocab, self.device = vocab, device

    def ids(self, batch: int, tokens: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        return torch.randint(0, self.vocab, (batch, tokens), generator=generator).to(self.device)


def _prefill(
    dense: nn.Module, pruned: nn.Module, inputs: _Inputs, batch: int, used: SpeedWorkload, peaks: _Peaks
) -> PrefillSpeed:
    ids = inputs.ids(batch, used.prefill_tokens)
    dense_s, pruned_s = _interleaved(lambda m: m(input_ids=ids, use_cache=False), dense, pruned, used, peaks)
    return PrefillSpeed(
        batch=batch, tokens=used.prefill_tokens, dense_s=dense_s, pruned_s=pruned_s, speedup=dense_s / pruned_s
    )


def _decode(
    dense: nn.Module, pruned: nn.Module, inputs: _Inputs, batch: int, used: SpeedWorkload, peaks: _Peaks
) -> DecodeSpeed:
    ids = inputs.ids(batch, used.prompt_tokens)
    dense_s, pruned_s = _interleaved(lambda m: _generate(m, ids, used.new_tokens), dense, pruned, used, peaks)
    tokens = batch * used.new_tokens
    return DecodeSpeed(
        batch=batch,
        prompt_tokens=used.prompt_tokens,
        new_tokens=used.new_tokens,
        dense_tokens_per_s=tokens / dense_s,
        pruned_tokens_per_s=tokens / pruned_s,
        speedup=dense_s / pruned_s,
    )


def _generate(model: nn.Module, ids: torch.Tensor, new_tokens: int) -> Any:
    """Greedy decoding of exactly ``new_tokens`` with the KV cache."""
    return model.generate(  # type: ignore[operator]
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,  # a fixed length: an end-of-sequence token does not stop it
        do_sample=False,
        use_cache=True,
        pad_token_id=0,
        return_dict_in_generate=True,
    )


class _Peaks:
    """Each model's memory beyond its weights over its timed runs (see the module's docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._extra: dict[int, int] = {}

    def run(self, model: nn.Module, run: Callable[[nn.Module], Any]) -> float:
        """Seconds ``run(model)`` takes; its memory is noted outside the timing."""
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        started = time.perf_counter()
        output = run(model)
        if cuda:
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - started
        extra = torch.cuda.max_memory_allocated(self.device) - before if cuda else _cache_bytes(output)
        self._extra[id(model)] = max(self._extra.get(id(model), 0), extra)
        return seconds

    def bytes(self, model: nn.Module) -> int:
        weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        return weights + self._extra.get(id(model), 0)


def _interleaved(
    run: Callable[[nn.Module], Any], dense: nn.Module, pruned: nn.Module, used: SpeedWorkload, peaks: _Peaks
) -> tuple[float, float]:
    """Median seconds of ``run`` on each model, after warm-up, the two taking turns."""
    for _ in range(used.warmup):
        run(dense)
        run(pruned)
    times: dict[int, list[float]] = {id(dense): [], id(pruned): []}
    for repeat in range(used.repeats):
        for model in (dense, pruned) if repeat % 2 == 0 else (pruned, dense):
            times[id(model)].append(peaks.run(model, run))
    return statistics.median(times[id(dense)]), statistics.median(times[id(pruned)])


def _cache_bytes(output: Any) -> int:
    """The bytes of a generate call's KV cache (0 for a forward's output without one)."""
    cache = getattr(output, "past_key_values", None) or getattr(output, "cache", None)
    cache = getattr(cache, "self_attention_cache", cache)
    total = 0
    for layer in getattr(cache, "layers", []):
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


def _max_positions(model: nn.Module) -> int | None:
    config = model.config
    value = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return int(value) if value else None


def _empty_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
