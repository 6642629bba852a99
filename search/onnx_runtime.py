"""Running an ONNX export outside PyTorch: its layout file, an empty KV cache, greedy generation.

An ONNX export (``search.onnx_export.export_onnx``) is a directory with ``model.onnx``, the
tokenizer and config of the export it came from, and ``onnx_layout.json``: which inputs the graph
takes and, for decoders, one KV-cache pair per *kept* attention (a per-layer export's dropped
attentions have no cache), with its layer, KV head count and head size, so a runtime can build the
empty cache of the first step. This module needs ``numpy`` and ``onnxruntime`` only (no torch):

    from search.onnx_runtime import generate_onnx
    tokens = generate_onnx("out/", prompt_ids, max_new_tokens=32)   # (B, T + 32) int64, greedy

Decoder graph, for a batch of B sequences with P tokens cached and T new ones:
- inputs ``input_ids`` (B, T) int64, ``attention_mask`` (B, P+T) int64 (0 = left padding),
  ``position_ids`` (B, T) int64, and ``past.{j}.key`` / ``past.{j}.value`` (B, kv_heads_j, P, head_dim)
  for the j-th kept attention (P = 0 on the first step);
- outputs ``logits`` (B, T, vocab) and ``present.{j}.key`` / ``present.{j}.value`` (B, kv_heads_j, P+T, head_dim).
Encoder graph: inputs ``input_ids``, ``attention_mask`` (B, T); outputs ``last_hidden_state``
(B, T, H) and ``sentence_embedding`` (B, H), the mean over unmasked tokens (what the search scored).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.errors import ModelLoadError
from search.export_format import ONNX_GRAPH_FILE, ONNX_LAYOUT_FILE, ONNX_LAYOUT_VERSION

if TYPE_CHECKING:
    import numpy as np
    import onnxruntime

__all__ = ["CacheSlot", "OnnxLayout", "empty_cache", "generate_onnx", "onnx_session", "read_layout"]


@dataclass(frozen=True)
class CacheSlot:
    """One kept attention's KV cache: inputs ``{name}.key``/``.value``, outputs ``present.{j}.*``."""

    name: str  # "past.{j}"
    layer: int  # the decoder layer (of the export) the attention belongs to
    kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class OnnxLayout:
    """What ``onnx_layout.json`` records: enough to feed the graph without reading it."""

    kind: str  # "decoder" | "encoder"
    model_type: str
    dtype: str  # of the weights and the cache tensors: "float32", "float16", "bfloat16"
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    cache: tuple[CacheSlot, ...]  # decoders: one per kept attention, in graph order; encoders: none
    num_layers: int
    vocab_size: int
    eos_token_id: int | list[int] | None
    graph: str = ONNX_GRAPH_FILE
    format: int = ONNX_LAYOUT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"inputs": list(self.inputs), "outputs": list(self.outputs)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OnnxLayout:
        fields = dict(data)
        fields["inputs"] = tuple(fields["inputs"])
        fields["outputs"] = tuple(fields["outputs"])
        fields["cache"] = tuple(CacheSlot(**slot) for slot in fields["cache"])
        return cls(**fields)


def read_layout(directory: str | Path) -> OnnxLayout:
    path = Path(directory) / ONNX_LAYOUT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != ONNX_LAYOUT_VERSION:
            raise ValueError(f"layout format {data.get('format')!r}, expected {ONNX_LAYOUT_VERSION}")
        return OnnxLayout.from_dict(data)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelLoadError(f"{directory} is not an ONNX export of prunesearch: {error}") from error


def onnx_session(directory: str | Path, *, threads: int | None = None) -> onnxruntime.InferenceSession:
    """An onnxruntime CPU session on the export's graph."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    graph = Path(directory) / read_layout(directory).graph
    return onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])


def empty_cache(layout: OnnxLayout, batch: int) -> dict[str, np.ndarray]:
    """The cache inputs of a first step: zero tokens cached, (B, kv_heads, 0, head_dim) each."""
    import numpy as np

    dtype = _numpy_dtype(layout.dtype)
    return {
        f"{slot.name}.{part}": np.zeros((batch, slot.kv_heads, 0, slot.head_dim), dtype=dtype)
        for slot in layout.cache
        for part in ("key", "value")
    }


def generate_onnx(
    directory: str | Path,
    input_ids: np.ndarray,
    *,
    max_new_tokens: int,
    attention_mask: np.ndarray | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int = 0,
    session: onnxruntime.InferenceSession | None = None,
) -> np.ndarray:
    """Greedy decoding with the KV cache, as ``model.generate(do_sample=False)`` does.

    ``input_ids`` (B, T) with ``attention_mask`` 0 on left padding. Rows stop at ``eos_token_id``
    (default: the export's, as ``generate`` does) and are filled with ``pad_token_id`` after it;
    decoding ends when every row has stopped. Returns (B, T + new) int64.
    """
    import numpy as np

    layout = read_layout(directory)
    if layout.kind != "decoder":
        raise ModelLoadError(f"{directory} holds an {layout.kind}; only decoders generate")
    session = session or onnx_session(directory)
    tokens = np.asarray(input_ids, dtype=np.int64)
    mask = np.ones_like(tokens) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
    stops = _stop_tokens(layout.eos_token_id if eos_token_id is None else eos_token_id)
    # Left padding: positions count real tokens only, as generate's position_ids do.
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    feeds: dict[str, np.ndarray] = {"input_ids": tokens, "position_ids": positions} | empty_cache(layout, len(tokens))
    finished = np.zeros(len(tokens), dtype=bool)
    for _ in range(max_new_tokens):
        feeds["attention_mask"] = mask
        outputs = dict(zip(layout.outputs, session.run(list(layout.outputs), feeds), strict=True))
        chosen = outputs["logits"][:, -1, :].astype(np.float32).argmax(axis=-1)  # (B,)
        chosen = np.where(finished, pad_token_id, chosen).astype(np.int64)
        tokens = np.concatenate([tokens, chosen[:, None]], axis=1)
        finished |= np.isin(chosen, stops)
        if finished.all():
            break
        mask = np.concatenate([mask, np.ones((len(tokens), 1), dtype=np.int64)], axis=1)
        feeds["input_ids"] = chosen[:, None]
        feeds["position_ids"] = feeds["position_ids"][:, -1:] + 1
        for slot in layout.cache:
            index = slot.name.removeprefix("past.")
            for part in ("key", "value"):
                feeds[f"{slot.name}.{part}"] = outputs[f"present.{index}.{part}"]
    return tokens


def _stop_tokens(eos: int | list[int] | None) -> list[int]:
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else list(eos)


def _numpy_dtype(name: str) -> Any:
    import numpy as np

    if name == "bfloat16":
        import ml_dtypes  # onnxruntime's numpy bfloat16, installed with onnx

        return ml_dtypes.bfloat16
    return np.dtype(name)
