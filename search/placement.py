"""Where a model too large for one device puts its decoder layers: a device map, torch-free.

A maximum-memory setting names the devices and what each may hold of the weights, as in
``accelerate``: ``{"0": "60GiB", "1": "60GiB", "cpu": "100GiB", "disk": "500GiB"}`` (a bare number
or ``cuda:N`` is a GPU; sizes in bytes or with a unit: ``GiB``, ``GB``, ``MiB``...). The first
device is the main one: it holds the embeddings, the final norm and the LM head, so token batches
go in and logits come out there. Decoder layers are never split; they fill the GPUs in order, each
up to an even share of the weights (plus one layer of slack, so the share is reachable in whole
layers) and never past its cap; what the GPUs cannot hold goes to ``cpu``, then to ``disk``.

``cpu`` and ``disk`` beside a GPU are offload: those layers are stored there and copied to the main
GPU for each forward (``search.dispatch``). Without a GPU, ``cpu`` layers run where they are and
``disk`` layers are memory-mapped files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from search.errors import ModelLoadError

CPU, DISK = "cpu", "disk"
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")

MaxMemory = Mapping[str | int, str | int]  # as a user writes it: device -> size


def parse_size(value: str | int) -> int:
    """Bytes of ``"60GiB"``, ``"500 MB"``, ``"1.5GB"`` or a plain number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"a memory size cannot be negative: {value}")
        return value
    match = _SIZE.match(str(value))
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"{value!r} is not a memory size: write bytes or a number with GiB, GB, MiB, MB...")
    return int(float(match.group(1)) * _UNITS[unit])


def device_name(key: str | int) -> str:
    """``0``/``"0"``/``"cuda:0"`` -> ``"cuda:0"``; ``"cuda"`` -> ``"cuda:0"``; ``"cpu"``, ``"disk"`` as they are."""
    text = str(key).strip().lower()
    if text.isdigit():
        return f"cuda:{int(text)}"
    if text == "cuda":
        return "cuda:0"
    if text in (CPU, DISK) or re.fullmatch(r"cuda:\d+", text):
        return text
    raise ValueError(f"{key!r} is not a device of a device map: use a GPU index (0, 1, ...), 'cuda:N', 'cpu' or 'disk'")


def parse_max_memory(max_memory: MaxMemory) -> dict[str, int]:
    """Device -> bytes, GPUs first (by index), then ``cpu``, then ``disk``: the order layers fill them."""
    caps: dict[str, int] = {}
    for key, value in max_memory.items():
        name = device_name(key)
        if name in caps:
            raise ValueError(f"device {name} appears twice in the maximum-memory setting")
        caps[name] = parse_size(value)
    if not caps:
        raise ValueError("the maximum-memory setting names no device")
    if set(caps) == {DISK}:
        raise ValueError("a device map needs a GPU or 'cpu' besides 'disk': layers on disk run on the main device")
    return dict(sorted(caps.items(), key=lambda item: _order(item[0])))


def _order(name: str) -> tuple[int, int]:
    if name.startswith("cuda:"):
        return (0, int(name.removeprefix("cuda:")))
    return (1, 0) if name == CPU else (2, 0)


@dataclass(frozen=True)
class DevicePlan:
    """Where every decoder layer is stored, and the main device (embeddings, final norm, head)."""

    main: str
    layers: tuple[str, ...]  # per decoder layer: the device it is stored on
    caps: dict[str, int]  # the budgets the plan was made against, in bytes

    def offloaded(self, device: str) -> bool:
        """Whether layers stored on ``device`` are copied to the main device to run."""
        return device == DISK or (device == CPU and self.main != CPU)

    def execution_device(self, layer: int) -> str:
        stored = self.layers[layer]
        return self.main if self.offloaded(stored) else stored

    @property
    def split(self) -> bool:
        return any(device != self.main for device in self.layers)

    def describe(self) -> str:
        """``cuda:0 layers 0-15, cuda:1 layers 16-31`` (what the worker logs)."""
        runs: list[tuple[str, int, int]] = []
        for i, device in enumerate(self.layers):
            if runs and runs[-1][0] == device:
                runs[-1] = (device, runs[-1][1], i)
            else:
                runs.append((device, i, i))
        return ", ".join(f"{d} layer{'s' if a != b else ''} {a}{f'-{b}' if a != b else ''}" for d, a, b in runs)


def plan_devices(caps: Mapping[str, int], trunk_bytes: int, layer_bytes: list[int], dtype: str) -> DevicePlan:
    """Assign decoder layers to the devices of ``caps`` (ordered as ``parse_max_memory`` orders them).

    ``trunk_bytes``: what stays on the main device whatever the plan (embeddings, norm, head);
    ``layer_bytes``: each decoder layer's weights. Raises ``ModelLoadError`` with the figures when
    the devices cannot hold the model.
    """
    devices = list(caps)
    main = devices[0]
    total = trunk_bytes + sum(layer_bytes)
    gpus = [d for d in devices if d.startswith("cuda:")]
    largest = max(layer_bytes, default=0)
    # An even share over the GPUs, with one layer of slack: a share is filled in whole layers.
    share = -(-total // len(gpus)) + largest if gpus else total
    budgets = {d: (min(caps[d], share) if d in gpus and d != gpus[-1] else caps[d]) for d in devices}
    used = dict.fromkeys(devices, 0)
    used[main] = trunk_bytes
    if trunk_bytes > caps[main]:
        raise _too_little(caps, trunk_bytes, layer_bytes, dtype, f"{main} must hold the embeddings and head")
    placed: list[str] = []
    index = 0
    for size in layer_bytes:
        while index < len(devices) and used[devices[index]] + size > budgets[devices[index]]:
            index += 1
        if index == len(devices):
            raise _too_little(caps, trunk_bytes, layer_bytes, dtype, None)
        used[devices[index]] += size
        placed.append(devices[index])
    return DevicePlan(main, tuple(placed), dict(caps))


def _too_little(caps: Mapping[str, int], trunk: int, layers: list[int], dtype: str, why: str | None) -> ModelLoadError:
    need = trunk + sum(layers)
    given = ", ".join(f"{device} {human_size(size)}" for device, size in caps.items())
    reason = f" ({why})" if why else ""
    return ModelLoadError(
        f"the model's weights need {human_size(need)} in {dtype} (embeddings and head {human_size(trunk)}, "
        f"{len(layers)} layers of up to {human_size(max(layers, default=0))}, a layer is never split), but the "
        f"device map gives {human_size(sum(caps.values()))} in all: {given}{reason}; raise the maximum-memory setting "
        "or add devices ('cpu' or 'disk' offload)"
    )


def human_size(size: int) -> str:
    """``1.50 GiB``, ``320.0 MiB``, ``12.0 KiB``: the unit that reads best."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if size >= scale:
            return f"{size / scale:.{2 if unit == 'GiB' else 1}f} {unit}"
    return f"{size / 2**10:.1f} KiB"
