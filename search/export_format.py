"""The on-disk format of an exported model, as constants: torch-free, so the service can read an
export (its provenance, its per-layer shapes) without the code that writes one (``search.export``)."""

from __future__ import annotations

PROVENANCE_FILE = "provenance.json"  # where an export records its source, counts and kept units
CONFIG_KEY = "prunesearch"  # the config.json member holding per-layer shapes
FORMAT_VERSION = 1
ONNX_GRAPH_FILE = "model.onnx"  # an ONNX export's graph (weights beside it in model.onnx.data when large)
ONNX_LAYOUT_FILE = "onnx_layout.json"  # its inputs, outputs and KV-cache layout (search.onnx_runtime)
ONNX_LAYOUT_VERSION = 1
