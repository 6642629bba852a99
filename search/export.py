"""Export a candidate as a physically smaller model: weights sliced, not zeroed; config rewritten;
tokenizer copied; provenance recorded.

Two kinds of export:
- ``standard``: the kept layers all keep both sub-blocks with the same widths (depth pruning and
  uniform width; for GPT-2 and BERT, whose head size is derived from the hidden size, only when all
  heads are kept). ``config.json`` is the family's own, rewritten, and the directory loads with plain
  ``AutoModelForCausalLM.from_pretrained`` / ``AutoModel.from_pretrained``.
- ``per_layer``: anything else. ``config.json`` keeps the family's fields plus a ``prunesearch``
  entry with every layer's shape; ``load_pruned(directory)`` builds the model from it. Plain
  ``from_pretrained`` refuses such a directory with a size-mismatch error rather than loading
  something wrong.
Weights are written in the checkpoint's own precision (float16 stays float16, bfloat16 stays
bfloat16), whatever dtype the search held them in, so a GPU worker's export and a CPU's are the same
bytes (``search.precision``).
Unstructured sparsity is stored as zeros in dense tensors: it counts in the non-zero parameter
figures but saves neither disk nor time without sparse kernels, and the provenance says so.

The function that slices the weights also rewrites the config and checks that the two agree: the
exported model's non-zero parameter count must equal what the search counted.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search.adapters import Adapter, Block
from search.arch import ArchConfig, LayerArch
from search.errors import InvalidArchConfig, ModelLoadError
from search.export_format import CONFIG_KEY, FORMAT_VERSION, PROVENANCE_FILE
from search.families import family_for, read_shape
from search.loading import LoadedModel, adapter_for
from search.masking import apply_arch
from search.precision import CheckpointTensors, WeightSource, dtype_name, export_dtype, stored_dtype
from search.selection import Selection
from search.standard import is_standard


@dataclass(frozen=True)
class ExportInfo:
    directory: Path
    kind: str  # "standard" | "per_layer"
    param_count: int  # parameters stored
    nonzero_params: int  # what the search counted
    size_bytes: int  # every file of the directory (weights, config, tokenizer, provenance)
    dtype: str  # the weights' precision: the checkpoint's
    weights_bytes: int  # the safetensors files alone
    dense_weights_bytes: int  # the dense checkpoint's weights on disk (or its parameters × bytes per parameter)


def export_model(
    loaded: LoadedModel,
    selection: Selection,
    directory: str | Path,
    *,
    provenance: dict[str, Any] | None = None,
    weights: Mapping[str, torch.Tensor] | None = None,
) -> ExportInfo:
    """Write ``selection`` as a model directory; returns what was written.

    ``weights``: trained weights of the sliced model (``search.recovery``), under the exported
    model's parameter names, written instead of the dense model's slices (cast to the export's dtype)."""
    shape = loaded.adapter.shape
    arch = selection.arch
    target = Path(directory)
    if target.exists() and any(target.iterdir()):
        raise InvalidArchConfig(f"export directory {target} exists and is not empty")
    model, kind, config = materialize(loaded.adapter, selection, source=loaded.source)
    if weights is not None:
        _load_weights(model, weights)
    stored = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    expected = shape.count_params(arch)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    if CONFIG_KEY in config:
        # The family's config class drops keys it does not know; put the per-layer shapes back.
        saved = json.loads((target / "config.json").read_text())
        (target / "config.json").write_text(json.dumps(saved | {CONFIG_KEY: config[CONFIG_KEY]}, indent=2))
    loaded.tokenizer.save_pretrained(target)
    dtype = next(model.parameters()).dtype
    weights_bytes = sum(f.stat().st_size for f in target.glob("*.safetensors"))
    dense_weights = _dense_weights_bytes(loaded, dtype)
    sizes = {"dtype": dtype_name(dtype), "weights_bytes": weights_bytes, "dense_weights_bytes": dense_weights}
    record = _provenance(loaded, selection, kind, stored, nonzero, expected) | sizes | (provenance or {})
    (target / PROVENANCE_FILE).write_text(json.dumps(record, indent=2, default=str))
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    return ExportInfo(target, kind, stored, nonzero, size, dtype_name(dtype), weights_bytes, dense_weights)


def _dense_weights_bytes(loaded: LoadedModel, dtype: torch.dtype) -> int:
    """The dense checkpoint's weights on disk; for a model without files, what they would take."""
    on_disk = loaded.source.weights_bytes if loaded.source is not None else None
    if on_disk is not None:
        return on_disk
    return sum(p.numel() for p in loaded.adapter.model.parameters()) * dtype.itemsize


def _load_weights(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    """Replace the sliced weights with ``weights``, each cast to the dtype its parameter has."""
    own = model.state_dict()
    if set(weights) != set(own):
        raise InvalidArchConfig(
            f"recovered weights do not match the exported model: missing {sorted(set(own) - set(weights))[:5]}, "
            f"unexpected {sorted(set(weights) - set(own))[:5]}"
        )
    for name, tensor in own.items():
        if tuple(weights[name].shape) != tuple(tensor.shape):
            raise InvalidArchConfig(f"{name}: recovered {tuple(weights[name].shape)}, exported {tuple(tensor.shape)}")
    model.load_state_dict({name: weights[name].to(own[name].dtype) for name in own}, strict=True)


def _provenance(
    loaded: LoadedModel, selection: Selection, kind: str, stored: int, nonzero: int, expected: int
) -> dict[str, Any]:
    """What ``provenance.json`` records of an export: its source, shape, counts and the kept units."""
    shape, arch = loaded.adapter.shape, selection.arch
    return {
        "format": FORMAT_VERSION,
        "kind": kind,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "base_model": loaded.key[0],
        "revision": loaded.key[1],
        "model_type": shape.model_type,
        "dense_params": shape.dense_params(),
        "param_count": stored,
        "nonzero_params": nonzero,
        "searched_param_count": expected,
        "dtype_from": loaded.source.dtype_from if loaded.source is not None else "model",
        "arch": arch.to_dict(),
        "kept": {"layers": _kept_layers(arch), "units": selection.to_dict()["layers"]},
        "load_with": (
            "transformers.AutoModelForCausalLM.from_pretrained"
            if shape.causal
            else "transformers.AutoModel.from_pretrained"
        )
        if kind == "standard"
        else "prunesearch.load_pruned",
        "notes": (
            ["unstructured sparsity is stored as zeros in dense tensors: no size or speed gain without sparse kernels"]
            if arch.sparse
            else []
        ),
    }


def materialize(
    adapter: Adapter,
    selection: Selection,
    *,
    device: str | torch.device = "cpu",
    source: WeightSource | None = None,
) -> tuple[nn.Module, str, dict[str, Any]]:
    """The physically smaller model of ``selection``, in memory: (model, kind, config).

    In the precision of ``source``, the checkpoint the adapter's model was loaded from (its own dtype
    when None). Checks that the model holds exactly the parameters the architecture counts.
    """
    shape = adapter.shape
    arch = selection.arch
    kept_layers = _kept_layers(arch)
    kind, config = export_config(adapter, arch)
    dtype = export_dtype(adapter.model, source)
    model = build_skeleton(config, device=device, dtype=dtype)
    weights = _DenseWeights(adapter.model, source, sparse=arch.sparse)
    # Zeroes sparse weights in place, so the slices carry the zeros; full-width modules, sliced below.
    with apply_arch(adapter, selection, physical=False):
        state = _sliced_state(adapter, selection, kept_layers, model, weights)
    model.load_state_dict(state, strict=True)
    stored = sum(p.numel() for p in model.parameters())
    structured = shape.count_params(ArchConfig(tuple(replace(layer, sparsity=0.0) for layer in arch.layers)))
    if stored != structured:
        raise InvalidArchConfig(f"export holds {stored:,} parameters, the architecture has {structured:,}")
    return model, kind, config


def load_pruned(directory: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """Load an export of any kind, in the precision it is stored in. Standard exports load exactly
    as ``from_pretrained`` would."""
    from safetensors.torch import load_file

    path = Path(directory)
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{path} is not a model directory: {error}") from error
    if CONFIG_KEY not in config:
        from transformers import AutoModel, AutoModelForCausalLM

        auto = AutoModelForCausalLM if read_shape(config).causal else AutoModel
        return auto.from_pretrained(path, dtype="auto", trust_remote_code=False).to(device).eval()
    files = tuple(sorted(path.glob("*.safetensors")))
    if not files:
        raise ModelLoadError(f"{path} has no safetensors weights")
    model = build_skeleton(config, dtype=stored_dtype(files))  # built in its precision: no float32 copy
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(file))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # save_pretrained stores a tied LM head once, under the embeddings' name.
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise ModelLoadError(f"{path}: weights do not match the config (missing {missing}, unexpected {unexpected})")
    model.tie_weights()
    return model.to(device=device).eval()


def build_skeleton(
    config: dict[str, Any], *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> nn.Module:
    """The model a (possibly per-layer) export config describes, with placeholder weights."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    hf_config = AutoConfig.for_model(**{k: v for k, v in config.items() if k != CONFIG_KEY})
    shape = read_shape(hf_config.to_dict())
    auto = AutoModelForCausalLM if shape.causal else AutoModel
    with torch.device(device):  # built where it will run: an 8B skeleton is not initialised on the CPU
        model = auto.from_config(hf_config, dtype=dtype) if dtype is not None else auto.from_config(hf_config)
    layers = config.get(CONFIG_KEY, {}).get("layers")
    if layers is not None:
        adapter = adapter_for(model)
        for index, layer in enumerate(layers):
            with torch.device(device):
                adapter.resize(index, layer["heads"], layer["ffn_channels"])
            if not layer["heads"]:
                _swap_in(adapter.drop_attention(index))
            if not layer["ffn_channels"]:
                _swap_in(adapter.drop_mlp(index))
        if shape.causal:
            _number_caches(adapter, [index for index, layer in enumerate(layers) if layer["heads"]])
    return model.to(dtype=dtype).eval() if dtype is not None else model.eval()


def export_config(adapter: Adapter, arch: ArchConfig) -> tuple[str, dict[str, Any]]:
    """(kind, config) of the export of ``arch``: its kept layers only, "standard" where the family's own
    config expresses it. ``build_skeleton(config)`` is then the exported model with placeholder weights
    (what ``search.latency`` calibrates its table against)."""
    kept_layers = _kept_layers(arch)
    if not kept_layers:
        raise InvalidArchConfig("the architecture keeps no layer; there is nothing to export")
    kind = "standard" if is_standard(adapter.shape, arch) else "per_layer"
    return kind, _config_for(adapter, arch, kept_layers, kind)


def layers_config(adapter: Adapter, layers: Sequence[LayerArch]) -> dict[str, Any]:
    """The per-layer export config of a model of ``adapter``'s family with exactly these layers, each
    kept even when it keeps nothing: what ``search.latency`` times sub-blocks with."""
    return _config_for(adapter, ArchConfig(tuple(layers)), list(range(len(layers))), "per_layer")


def _kept_layers(arch: ArchConfig) -> list[int]:
    return [i for i, layer in enumerate(arch.layers) if layer.attention_kept or layer.mlp_kept]


def _config_for(adapter: Adapter, arch: ArchConfig, kept_layers: list[int], kind: str) -> dict[str, Any]:
    shape = adapter.shape
    family = family_for(shape.model_type)
    config = adapter.model.config.to_dict()
    for key in ("_name_or_path", "transformers_version", "torch_dtype", "dtype"):
        config.pop(key, None)
    layers = [arch.layers[i] for i in kept_layers]
    config[family.layer_count_key] = len(kept_layers)
    if isinstance(config.get("layer_types"), list):
        config["layer_types"] = [config["layer_types"][i] for i in kept_layers]
    if kind == "standard":
        heads, channels = layers[0].heads, layers[0].ffn_channels
        config[family.intermediate_key] = channels
        if family.head_keys is not None:
            heads_key, kv_key, head_dim_key = family.head_keys
            config.update({heads_key: heads, kv_key: heads // shape.group_size, head_dim_key: shape.head_dim})
    else:
        config[CONFIG_KEY] = {
            "format": FORMAT_VERSION,
            "layers": [{"heads": layer.heads, "ffn_channels": layer.ffn_channels} for layer in layers],
        }
    return config


class _DenseWeights:
    """The dense model's tensors as an export takes them, in the checkpoint's precision.

    Where the searched weights hold the stored values exactly, they are used (sliced, then cast back:
    exact); otherwise each tensor comes from the checkpoint (``CheckpointTensors``), with the zeros
    unstructured sparsity put in the searched weights carried over.
    """

    def __init__(self, model: nn.Module, source: WeightSource | None, *, sparse: bool) -> None:
        searched = next(model.parameters()).dtype
        exact = source is None or source.exact_in(searched)
        self._checkpoint = None if exact else CheckpointTensors(source, model)  # type: ignore[arg-type]
        self._parameters = {name for name, _ in model.named_parameters(remove_duplicate=False)}
        self._sparse = sparse

    def get(self, name: str, live: torch.Tensor) -> torch.Tensor:
        """Parameter or buffer ``name``, whose searched value is ``live`` (as the model stores it)."""
        live = live.detach()
        if self._checkpoint is None or name not in self._parameters or not live.is_floating_point():
            return live
        stored = self._checkpoint.get(name)
        if tuple(stored.shape) != tuple(live.shape):
            raise ModelLoadError(f"{name}: the checkpoint stores {tuple(stored.shape)}, the model {tuple(live.shape)}")
        if self._sparse:
            stored = stored.masked_fill(live.to(stored.device) == 0, 0)
        return stored


def _sliced_state(
    adapter: Adapter, selection: Selection, kept_layers: list[int], skeleton: nn.Module, weights: _DenseWeights
) -> dict[str, torch.Tensor]:
    """The dense weights cut to the candidate, under the skeleton's parameter names, in its dtype."""
    prefix = _layers_prefix(adapter)
    sliced = _sliced_matrices(adapter, selection, kept_layers, prefix, weights)
    dense_state = adapter.model.state_dict()
    old_for_new = {new: old for new, old in enumerate(kept_layers)}
    state: dict[str, torch.Tensor] = {}
    for name, tensor in skeleton.state_dict().items():
        if name in sliced:
            value = sliced[name]
        else:
            source = _source_name(name, prefix, old_for_new)
            if source not in dense_state:
                raise InvalidArchConfig(f"no dense weight for exported parameter {name}")
            value = weights.get(source, dense_state[source])
        if tuple(value.shape) != tuple(tensor.shape):
            raise InvalidArchConfig(f"{name}: sliced {tuple(value.shape)} but the config says {tuple(tensor.shape)}")
        # A cast to the export's dtype: exact, as _DenseWeights guarantees.
        state[name] = value.clone().to(tensor.dtype if tensor.is_floating_point() else value.dtype)
    return state


def _sliced_matrices(
    adapter: Adapter, selection: Selection, kept_layers: list[int], prefix: str, weights: _DenseWeights
) -> dict[str, torch.Tensor]:
    """The kept rows / columns of every sliced projection, by their exported names."""
    module_names = {module: name for name, module in adapter.model.named_modules()}
    sliced: dict[str, torch.Tensor] = {}
    for new_index, old_index in enumerate(kept_layers):
        layer = selection.arch.layers[old_index]
        kept = selection.layers[old_index]
        for kind, on in (("attention", layer.attention_kept), ("mlp", layer.mlp_kept)):
            if not on:
                continue
            for matrix in adapter.matrices(Block(old_index, kind), kept):
                dense_name = module_names[matrix.module]
                name = _renumber(dense_name, prefix, old_index, new_index)
                weight = weights.get(f"{dense_name}.weight", matrix.module.weight)
                weight = weight.t() if matrix.transposed else weight  # (out, in)
                if matrix.rows is not None:
                    weight = weight[matrix.rows.to(weight.device)]
                if matrix.cols is not None:
                    weight = weight[:, matrix.cols.to(weight.device)]
                sliced[f"{name}.weight"] = (weight.t() if matrix.transposed else weight).contiguous()
                bias = getattr(matrix.module, "bias", None)
                if bias is not None:
                    bias = weights.get(f"{dense_name}.bias", bias)
                    rows = matrix.rows.to(bias.device) if matrix.rows is not None else slice(None)
                    sliced[f"{name}.bias"] = bias[rows].contiguous()
    return sliced


def _layers_prefix(adapter: Adapter) -> str:
    for name, module in adapter.model.named_modules():
        if module is adapter.layers:
            return name + "."
    raise InvalidArchConfig("cannot find the layer list of this model")


def _renumber(name: str, prefix: str, old: int, new: int) -> str:
    head = f"{prefix}{old}."
    if not name.startswith(head):
        raise InvalidArchConfig(f"{name} is not in layer {old}")
    return f"{prefix}{new}." + name[len(head) :]


def _source_name(name: str, prefix: str, old_for_new: dict[int, int]) -> str:
    if not name.startswith(prefix):
        return name
    index, _, rest = name[len(prefix) :].partition(".")
    return f"{prefix}{old_for_new[int(index)]}.{rest}"


def _number_caches(adapter: Adapter, kept_attention: list[int]) -> None:
    """Give the kept attentions the KV-cache slots 0..K-1, in order.

    transformers reads the cache's length (positions, mask sizes) from slot 0. A dropped attention
    never writes its slot, so with the layer's own index a model whose layer 0 has no attention
    decodes with a wrong mask (a padded batch gets wrong tokens from ``generate``); numbered
    compactly, slot 0 is always a written one. The ONNX graph's cache inputs follow the same order.
    """
    for slot, index in enumerate(kept_attention):
        output = adapter.attention_output(index)
        for module in adapter.layers[index].modules():
            # The attention module is the one holding the output projection and a cache index.
            if hasattr(module, "layer_idx") and any(child is output for child in module.children()):
                module.layer_idx = slot


def _swap_in(swaps: list[tuple[nn.Module, str, nn.Module]]) -> None:
    for parent, attribute, replacement in swaps:
        parent._modules[attribute] = replacement
