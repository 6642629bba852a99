"""The speed report: the exported model beside the dense one, in the export's precision."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from search.arch import ArchConfig, LayerArch
from search.export import ExportInfo, export_model, load_pruned
from search.loading import LoadedModel, load_model
from search.results import SpeedReport, SpeedWorkload
from search.speed import CPU_PEAK, GPU_PEAK, clamp, speed_report
from tests.search.selections import random_selection

REFERENCE = Path(__file__).resolve().parents[2] / "models" / "ref-llama-7m"
SMALL = SpeedWorkload(
    prefill_batches=[1, 2], prefill_tokens=16, decode_batches=[2], prompt_tokens=4, new_tokens=4, warmup=0, repeats=1
)


def _first_attention_dropped(loaded: LoadedModel) -> ArchConfig:
    """A per-layer architecture whose layer 0 has no attention (the KV cache's length lives there)."""
    shape = loaded.adapter.shape
    rest = (LayerArch(shape.group_size, shape.intermediate_size // 2), LayerArch(shape.num_heads, 0))
    return ArchConfig((LayerArch(0, shape.intermediate_size), *(rest[i % 2] for i in range(shape.num_layers - 1))))


@pytest.fixture(scope="module")
def reference() -> LoadedModel:
    if not (REFERENCE / "model.safetensors").is_file():
        pytest.skip("the reference decoder is not checked out")
    return load_model(str(REFERENCE), device="cpu")


def test_export_without_first_attention_decodes_the_same_with_the_cache(reference: LoadedModel, tmp_path: Path) -> None:
    info = export_model(
        reference, random_selection(reference, _first_attention_dropped(reference)), tmp_path / "export"
    )
    assert info.kind == "per_layer"
    model = load_pruned(info.directory).float()
    prompt = reference.tokenizer("The history of the city begins", return_tensors="pt").input_ids
    greedy = {"max_new_tokens": 16, "min_new_tokens": 16, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        cached = model.generate(prompt, use_cache=True, **greedy)
        uncached = model.generate(prompt, use_cache=False, **greedy)
        # Step by step with the cache, as a runtime would: the last token's logits equal a full forward's.
        first = model(prompt, use_cache=True)
        token = first.logits[:, -1:].argmax(-1)
        step = model(token, cache=first.cache, use_cache=True).logits[:, -1]
        full = model(torch.cat([prompt, token], dim=1), use_cache=False).logits[:, -1]
    assert torch.equal(cached, uncached)
    torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-4)


def test_speed_report_in_the_export_precision(reference: LoadedModel, tmp_path: Path) -> None:
    info = export_model(
        reference, random_selection(reference, _first_attention_dropped(reference)), tmp_path / "export"
    )
    dense = reference.adapter.model
    before = {name: value.clone() for name, value in dense.state_dict().items()}

    report = speed_report(
        load_pruned(info.directory),
        reference,
        SMALL,
        pruned_size=info.weights_bytes,
        dense_size=info.dense_weights_bytes,
    )

    assert (report.device, report.dtype) == ("cpu", "float16")  # the checkpoint's, not the search's float32
    assert [(p.batch, p.tokens) for p in report.prefill] == [(1, 16), (2, 16)]
    assert [(d.batch, d.new_tokens) for d in report.decode] == [(2, 4)]
    assert all(p.dense_s > 0 and p.pruned_s > 0 and p.speedup == p.dense_s / p.pruned_s for p in report.prefill)
    assert report.peak_memory == CPU_PEAK
    assert report.pruned_peak_bytes is not None and report.dense_peak_bytes is not None
    # Weights in float16 plus a cache for fewer attention layers: the export needs less.
    assert info.weights_bytes < report.pruned_peak_bytes < report.dense_peak_bytes
    assert (report.pruned_size_bytes, report.dense_size_bytes) == (info.weights_bytes, info.dense_weights_bytes)
    # The dense model went back to the search's dtype and values.
    assert all(torch.equal(before[name], value) for name, value in dense.state_dict().items())


def test_workload_is_clamped_to_the_context() -> None:
    default = SpeedWorkload()
    used = clamp(default, 100, causal=True)
    assert (used.prefill_tokens, used.new_tokens, used.prompt_tokens) == (100, 99, 1)
    assert clamp(default, 1024, causal=True) == default
    assert clamp(default, None, causal=False).decode_batches == []


def test_default_workload_shape(tiny_loaded: LoadedModel, tmp_path: Path) -> None:
    """The shipped workload's shapes (batch 1 and 8 × 512 prefill; batch 1 and 16 × 128 decoded tokens)
    run once here, timed once, on the tiny Llama (float16 matmuls on a CPU would take minutes)."""
    shape = tiny_loaded.adapter.shape
    half = ArchConfig(tuple(LayerArch(shape.num_heads // 2, shape.intermediate_size // 2) for _ in range(4)))
    info = export_model(tiny_loaded, random_selection(tiny_loaded, half), tmp_path / "export")
    once = SpeedWorkload().model_copy(update={"warmup": 0, "repeats": 1})
    report = _report(info, tiny_loaded, once)
    assert report.workload == once  # 512 + 128 tokens fit its 1024 positions: nothing clamped
    assert [(p.batch, p.tokens) for p in report.prefill] == [(1, 512), (8, 512)]
    assert [(d.batch, d.prompt_tokens, d.new_tokens) for d in report.decode] == [(1, 32, 128), (16, 32, 128)]
    assert all(d.pruned_tokens_per_s > 0 and d.dense_tokens_per_s > 0 for d in report.decode)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_default_workload_on_the_gpu(tmp_path: Path) -> None:
    """The shipped workload on the reference model on a GPU: bfloat16 search, float16 export and timing."""
    if not (REFERENCE / "model.safetensors").is_file():
        pytest.skip("the reference decoder is not checked out")
    loaded = load_model(str(REFERENCE), device="cuda")
    shape = loaded.adapter.shape
    half = ArchConfig(tuple(LayerArch(shape.num_heads // 2, shape.intermediate_size // 2) for _ in range(6)))
    info = export_model(loaded, random_selection(loaded, half), tmp_path / "export")
    report = _report(info, loaded, SpeedWorkload())
    assert report.device.startswith("cuda") and report.dtype == "float16"
    assert report.peak_memory == GPU_PEAK and report.pruned_peak_bytes < report.dense_peak_bytes  # type: ignore[operator]
    assert next(loaded.adapter.model.parameters()).dtype == torch.bfloat16  # the dense model went back
    assert 0.4 < report.pruned_size_bytes / report.dense_size_bytes < 0.7
    print(report.model_dump_json(indent=1))  # the figures, for the record (-s)


def _report(info: ExportInfo, loaded: LoadedModel, workload: SpeedWorkload) -> SpeedReport:
    pruned = load_pruned(info.directory)
    return speed_report(pruned, loaded, workload, pruned_size=info.weights_bytes, dense_size=info.dense_weights_bytes)
