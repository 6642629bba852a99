"""Spread a loaded model over the devices of a ``DevicePlan``, by whole decoder layers.

Our own small dispatcher rather than ``accelerate.dispatch_model``: candidates are evaluated by
editing the weights in place (``search.masking`` swaps projections for gathers and zeroes sparse
weights), and accelerate's offload keeps weights on the ``meta`` device, reloading them from its own
copy on every forward, which would silently undo those edits. Here an offloaded layer's parameters
stay real tensors where they are stored (CPU memory, or a memory-mapped file for ``disk``); a
pre-forward hook copies whatever the layer holds *at call time* (gathers and zeros included) to the
main device, and a post-forward hook, which runs even when the forward raises, puts the stored
tensors back. Autograd keeps the copies a backward needs, so TraceNAS works under offload too.

Resident layers on another GPU get their inputs moved to them; the adapter's ``after_layers``
modules (the final norm) bring the hidden states back to the main device, where the head is.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search.adapters import Adapter
from search.errors import ModelLoadError
from search.placement import DISK, DevicePlan, plan_devices


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (a tied parameter once)."""
    tensors = {id(t): t for t in (*module.parameters(), *module.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def plan_for(adapter: Adapter, caps: dict[str, int]) -> DevicePlan:
    """The plan for a model loaded on the CPU, from its real tensor sizes."""
    layer_bytes = [module_bytes(layer) for layer in adapter.layers]
    trunk = module_bytes(adapter.model) - sum(layer_bytes)
    dtype = str(next(adapter.model.parameters()).dtype).removeprefix("torch.")
    return plan_devices(caps, trunk, layer_bytes, dtype)


def dispatch(adapter: Adapter, plan: DevicePlan, *, offload_folder: Path | None = None) -> None:
    """Move the model (on the CPU) to the plan's devices and install the hooks that make it run there.

    ``offload_folder``: where ``disk`` layers are written (a temporary folder when None); each file is
    memory-mapped and unlinked at once, so nothing is left behind, whatever ends the process.
    """
    if adapter.after_layers() is None:
        raise ModelLoadError(
            f"a {adapter.shape.model_type} model cannot be split over devices (only decoders can): "
            "run it on one device, without a maximum-memory setting"
        )
    layers = adapter.layers
    main = torch.device(plan.main)
    modules = list(layers)
    layers._modules.clear()  # move all but the decoder layers to the main device
    try:
        adapter.model.to(main)
    finally:
        for i, layer in enumerate(modules):
            layers._modules[str(i)] = layer
    for i, layer in enumerate(modules):
        stored = plan.layers[i]
        if stored == DISK:
            _to_disk(layer, Path(offload_folder or tempfile.gettempdir()), i)
        else:
            layer.to(torch.device(stored))
            if plan.offloaded(stored) and main.type == "cuda":
                _pin(layer)  # pinned host memory copies to the GPU about twice as fast
        run_on = torch.device(plan.execution_device(i))
        if plan.offloaded(stored):
            run_offloaded(layer, run_on)
        else:
            layer.register_forward_pre_hook(_inputs_to(run_on), with_kwargs=True)
    for module in adapter.after_layers() or []:
        module.register_forward_pre_hook(_inputs_to(main), with_kwargs=True)


def _to_disk(layer: nn.Module, folder: Path, index: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f"prunesearch-layer{index}-", suffix=".pt", dir=folder)
    os.close(handle)
    try:
        torch.save({key: value.detach() for key, value in layer.state_dict().items()}, name)
        # MAP_PRIVATE: in-place edits (sparse zeros) are private copies of the touched pages.
        mapped = torch.load(name, mmap=True, weights_only=True)
    finally:
        os.unlink(name)  # the mapping keeps the data; the file's name is not needed
    with torch.no_grad():
        for key, tensor in [*layer.named_parameters(), *layer.named_buffers()]:
            if key in mapped:
                tensor.data = mapped[key]


def _pin(layer: nn.Module) -> None:
    for tensor in [*layer.parameters(), *layer.buffers()]:
        tensor.data = tensor.data.pin_memory()


def _moved(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, tuple | list):
        return type(value)(_moved(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _moved(v, device) for k, v in value.items()}
    return value


def _inputs_to(device: torch.device):
    def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
        return _moved(args, device), _moved(kwargs, device)

    return hook


def run_offloaded(layer: nn.Module, device: torch.device) -> None:
    """Run ``layer`` on ``device`` with copies of the tensors it holds when called (see the module docstring)."""
    stored: list[tuple[dict[str, Any], str, torch.Tensor]] = []

    def before(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
        for sub in module.modules():
            for table in (sub._parameters, sub._buffers):
                for name, tensor in table.items():
                    if tensor is not None and tensor.device != device:
                        stored.append((table, name, tensor))
                        # Differentiable: a backward reaches the stored tensor through the copy. Blocking:
                        # the stored tensor may be written right after the forward (sparse zeros restored),
                        # and an asynchronous copy from pinned memory could still be reading it then.
                        table[name] = tensor.to(device)
        return _moved(args, device), _moved(kwargs, device)

    def after(_module: nn.Module, _args: tuple[Any, ...], _kwargs: dict[str, Any], output: Any) -> None:
        while stored:
            table, name, tensor = stored.pop()
            table[name] = tensor

    layer.register_forward_pre_hook(before, with_kwargs=True)
    layer.register_forward_hook(after, with_kwargs=True, always_call=True)
