"""ONNX graphs of exports, per-layer ones included, for runtimes without PyTorch or prunesearch.

``export_onnx(export_dir, out)`` loads an export with ``load_pruned`` and traces it with torch's
dynamo exporter (``torch.onnx.export(dynamo=True)``, which needs ``onnxscript``): the per-layer
shapes are plain shapes in the graph, so any ONNX runtime runs it. Decoders take and return the KV
cache as tensors (one pair per kept attention; ``search.onnx_runtime`` documents the inputs and
outputs), so they generate; encoders are a plain forward. A thin wrapper module takes the flat
cache tensors and builds transformers' cache object inside the traced forward: a cache object as a
graph input is what the exporters handle worst.

The graph keeps the export's precision (float16 stays float16). onnxruntime's CPU provider runs
float16 graphs, slowly (several of its kernels upcast); GPU providers run them natively.
Batch and sequence axes are dynamic. Graphs over 2 GB keep their weights in ``model.onnx.data``
beside the graph (the protobuf limit); smaller ones are one file unless asked otherwise.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search.errors import InvalidArchConfig, MissingDependency, ModelLoadError
from search.export import load_pruned
from search.export_format import CONFIG_KEY, ONNX_GRAPH_FILE, ONNX_LAYOUT_FILE
from search.families import read_shape
from search.onnx_runtime import CacheSlot, OnnxLayout, onnx_session

log = logging.getLogger(__name__)

__all__ = ["DTYPES", "OnnxExportInfo", "export_onnx", "require_onnx"]

# Example sizes for tracing: above 1 so that torch.export keeps the axes symbolic (0 and 1 specialise).
_BATCH, _NEW, _PAST = 2, 3, 4
# Weights files of the PyTorch export, not copied next to the graph (it holds its own weights).
_WEIGHTS_SUFFIXES = (".safetensors", ".bin", ".pt")
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class OnnxExportInfo:
    directory: Path
    layout: OnnxLayout
    size_bytes: int
    max_abs_error: float  # onnxruntime against PyTorch on the tracing inputs


class _CachedDecoder(nn.Module):
    """The causal LM as a function of flat tensors: (ids, mask, positions, *past) → (logits, *present)."""

    def __init__(self, model: nn.Module, slots: int) -> None:
        super().__init__()
        self.model = model
        self.slots = slots
        # transformers 5 renamed ``past_key_values`` to ``cache``; take whichever this version has.
        self.cache_argument = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past: list[torch.Tensor],
    ) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=[(past[2 * j], past[2 * j + 1]) for j in range(self.slots)])
        output = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **{self.cache_argument: cache},
        )
        present = [tensor for layer in cache.layers for tensor in (layer.keys, layer.values)]
        return (output.logits, *present)


class _Encoder(nn.Module):
    """The encoder's hidden states and the mean-pooled sentence embedding the search scored."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return hidden, (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, T, H), (B, H)


def export_onnx(
    export_dir: str | Path,
    out: str | Path,
    *,
    dtype: str = "auto",
    external_data: bool | None = None,
    check: bool = True,
) -> OnnxExportInfo:
    """Write the ONNX graph of the export in ``export_dir`` (standard or per-layer) into ``out``.

    ``out`` receives ``model.onnx`` (and ``model.onnx.data`` when the weights are external),
    ``onnx_layout.json`` and the export's tokenizer, config and provenance. ``dtype``: "auto" keeps
    float32 and float16 and writes a bfloat16 export as float32 (lossless; onnxruntime's CPU provider
    has no bfloat16 kernels), or one of ``DTYPES`` to cast. ``check`` runs the graph once with
    onnxruntime on the CPU on the tracing inputs and refuses a graph that disagrees with PyTorch
    (skipped for a bfloat16 graph, which that provider cannot run).
    """
    require_onnx()
    source, target = Path(export_dir), Path(out)
    if target.exists() and any(target.iterdir()):
        raise InvalidArchConfig(f"ONNX output directory {target} exists and is not empty")
    config = _read_config(source)
    model = load_pruned(source)
    model = model.to(_graph_dtype(dtype, next(model.parameters()).dtype))
    check = check and next(model.parameters()).dtype != torch.bfloat16
    layout = _layout(model, config)
    wrapper, example, dynamic = _decoder_inputs(model, layout) if layout.kind == "decoder" else _encoder_inputs(model)
    target.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The exporter says so for every axis it names after our Dims; nothing to act on.
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used", category=UserWarning)
        program = torch.onnx.export(
            wrapper.eval(),
            example,
            dynamo=True,
            dynamic_shapes=dynamic,
            input_names=list(layout.inputs),
            output_names=list(layout.outputs),
            verbose=False,
        )
        program.save(str(target / ONNX_GRAPH_FILE), external_data=external_data)
    for file in sorted(source.iterdir()):  # tokenizer, config, provenance: what a runtime reads beside the graph
        if file.is_file() and not file.name.endswith(_WEIGHTS_SUFFIXES):
            shutil.copy2(file, target / file.name)
    (target / ONNX_LAYOUT_FILE).write_text(json.dumps(layout.to_dict(), indent=2))
    error = _check(wrapper, example, target, layout) if check else float("nan")
    size = sum(file.stat().st_size for file in target.rglob("*") if file.is_file())
    return OnnxExportInfo(target, layout, size, error)


def require_onnx() -> None:
    """Fail before any work, naming the extra, when the exporter's or the runtime's packages are missing."""
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingDependency(
            f"ONNX export needs {', '.join(missing)}: pip install 'prunesearch[onnx]' "
            f"(or pip install {' '.join(missing)})"
        )


def _graph_dtype(requested: str, stored: torch.dtype) -> torch.dtype:
    if requested == "auto":
        return torch.float32 if stored == torch.bfloat16 else stored
    if requested not in DTYPES:
        raise InvalidArchConfig(f"dtype {requested!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[requested]


def _read_config(source: Path) -> dict[str, Any]:
    try:
        return json.loads((source / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{source} is not a model directory: {error}") from error


def _layout(model: nn.Module, config: dict[str, Any]) -> OnnxLayout:
    """Inputs, outputs and the cache of one kept attention after another (``build_skeleton`` numbers them so)."""
    shape = read_shape(config)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None) or config.get("eos_token_id")
    common = dict(model_type=shape.model_type, dtype=dtype, vocab_size=shape.vocab_size, eos_token_id=eos)
    if not shape.causal:
        return OnnxLayout(
            kind="encoder",
            inputs=("input_ids", "attention_mask"),
            outputs=("last_hidden_state", "sentence_embedding"),
            cache=(),
            num_layers=shape.num_layers,
            **common,
        )
    per_layer = config.get(CONFIG_KEY, {}).get("layers")
    heads = [layer["heads"] for layer in per_layer] if per_layer else [shape.num_heads] * shape.num_layers
    kept = [(layer, count) for layer, count in enumerate(heads) if count]  # a dropped attention has no cache
    slots = tuple(
        CacheSlot(name=f"past.{j}", layer=layer, kv_heads=count // shape.group_size, head_dim=shape.head_dim)
        for j, (layer, count) in enumerate(kept)
    )
    cache_names = [f"{slot.name}.{part}" for slot in slots for part in ("key", "value")]
    return OnnxLayout(
        kind="decoder",
        inputs=("input_ids", "attention_mask", "position_ids", *cache_names),
        outputs=("logits", *(name.replace("past.", "present.", 1) for name in cache_names)),
        cache=slots,
        num_layers=shape.num_layers,
        **common,
    )


def _decoder_inputs(model: nn.Module, layout: OnnxLayout) -> tuple[nn.Module, tuple[Any, ...], tuple[Any, ...]]:
    """The wrapper, example inputs for tracing, and which of their axes are dynamic."""
    dtype = next(model.parameters()).dtype
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, layout.vocab_size, (_BATCH, _NEW), generator=generator)
    attention_mask = torch.ones(_BATCH, _PAST + _NEW, dtype=torch.long)
    position_ids = torch.arange(_PAST, _PAST + _NEW).expand(_BATCH, _NEW).contiguous()
    past = [
        torch.randn(_BATCH, slot.kv_heads, _PAST, slot.head_dim, generator=generator).to(dtype)
        for slot in layout.cache
        for _part in ("key", "value")
    ]
    batch, new, past_len, total = (torch.export.Dim(name) for name in ("batch", "sequence", "past", "total"))
    dynamic = (
        {0: batch, 1: new},
        {0: batch, 1: total},
        {0: batch, 1: new},
        [{0: batch, 2: past_len} for _ in past],
    )
    return _CachedDecoder(model, len(layout.cache)), (input_ids, attention_mask, position_ids, past), dynamic


def _encoder_inputs(model: nn.Module) -> tuple[nn.Module, tuple[Any, ...], tuple[Any, ...]]:
    vocab = int(model.config.vocab_size)
    input_ids = torch.randint(0, vocab, (_BATCH, _NEW + _PAST), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, -2:] = 0  # right padding, so the pooling's mask is traced as data
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dynamic = ({0: batch, 1: sequence}, {0: batch, 1: sequence})
    return _Encoder(model), (input_ids, attention_mask), dynamic


def _check(wrapper: nn.Module, example: tuple[Any, ...], target: Path, layout: OnnxLayout) -> float:
    """Largest absolute difference between onnxruntime's and PyTorch's outputs on the example."""
    flat = [*example[:-1], *example[-1]] if layout.kind == "decoder" else list(example)
    feeds = {name: _numpy(value) for name, value in zip(layout.inputs, flat, strict=True)}
    got = onnx_session(target).run(list(layout.outputs), feeds)
    with torch.no_grad():
        expected = wrapper(*example)
    error = max(
        float(abs(torch.from_numpy(ours).float() - theirs.float()).max())
        for ours, theirs in zip(got, expected, strict=True)
    )
    scale = max(float(theirs.float().abs().max()) for theirs in expected)
    # Re-association of sums differs between the two; an error near the outputs' size is a wrong graph.
    tolerance = (1e-3 if layout.dtype == "float32" else 5e-2) * max(scale, 1.0)
    if error > tolerance:
        raise InvalidArchConfig(f"the ONNX graph disagrees with PyTorch by {error:.3g} (tolerance {tolerance:.3g})")
    return error


def _numpy(value: torch.Tensor) -> Any:
    if value.dtype == torch.bfloat16:
        import ml_dtypes

        return value.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return value.numpy()
