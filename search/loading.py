"""Load a model and its tokenizer once per process, never executing repository code."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from search.adapters import Adapter
from search.arch import ModelShape
from search.artifacts import ArtifactStore, ModelArtifacts
from search.dispatch import dispatch, plan_for
from search.errors import ModelLoadError
from search.families import family_for, read_shape
from search.names import resolve
from search.placement import DevicePlan, MaxMemory, device_name, human_size, parse_max_memory, parse_size
from search.precision import WeightSource, read_source

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class LoadedModel:
    adapter: Adapter
    tokenizer: PreTrainedTokenizerBase
    key: tuple[str, str | None, str]
    # What is computed once for this model and reused by every trial and later jobs on it.
    artifacts: ModelArtifacts = field(default_factory=ModelArtifacts)
    # The checkpoint's precision and files: exports are written in it, whatever dtype the search uses.
    # None for a model built in memory, whose own dtype is its precision.
    source: WeightSource | None = None
    # Where its decoder layers are, when it was split over devices by a maximum-memory setting.
    plan: DevicePlan | None = None

    @property
    def split(self) -> bool:
        """Whether some decoder layers are stored off the main device (another GPU, cpu or disk offload)."""
        return self.plan is not None and self.plan.split


_HEADROOM = 0.8  # of a GPU's free memory the weights may take: activations, sketches and statistics need the rest


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(
    model: str,
    revision: str | None = None,
    *,
    device: str | None = None,
    artifacts: Path | None = None,
    max_memory: MaxMemory | None = None,
    offload_folder: Path | None = None,
) -> LoadedModel:
    """Decoders load as ``AutoModelForCausalLM``, encoders as ``AutoModel`` (no task head), searched in
    float32 on a CPU and bfloat16 on a GPU; the checkpoint's own precision is recorded for exports.
    ``artifacts``: a folder where what is computed from the weights is kept across processes.

    ``max_memory`` (device -> size, ``search.placement``) splits the model by decoder layer over the
    devices it names; ``device`` is then ignored. Without it, on ``auto`` or ``cuda``, a model too
    large for the first GPU is split over all visible GPUs (80% of each one's free memory) when there
    are several.
    ``offload_folder``: where layers placed on ``disk`` are memory-mapped (a temporary folder if None).
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    caps = parse_caps(max_memory)
    target = resolve_device(device) if caps is None else torch.device(next(iter(caps)))
    dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
    try:
        config = AutoConfig.from_pretrained(model, revision=revision, trust_remote_code=False)
        shape = read_shape(config.to_dict())
        caps = _check_room(shape, caps, device, target, dtype)
        auto = AutoModelForCausalLM if shape.causal else AutoModel
        tokenizer = AutoTokenizer.from_pretrained(model, revision=revision, trust_remote_code=False)
        network = auto.from_pretrained(
            model, revision=revision, dtype=dtype, trust_remote_code=False, attn_implementation="sdpa"
        )
        source = read_source(model, revision, config.to_dict())
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"cannot load model {model!r}: {error}") from error
    network.eval()
    network.config.use_cache = False
    adapter = adapter_for(network)
    plan = None if caps is None else plan_for(adapter, caps)
    if plan is None:
        network.to(target)
    else:
        dispatch(adapter, plan, offload_folder=offload_folder)
    store = ArtifactStore(artifacts, model, revision) if artifacts is not None else None
    key = (model, revision, placement_key(device, max_memory))
    return LoadedModel(adapter, tokenizer, key, ModelArtifacts(store), source, plan)


def parse_caps(max_memory: MaxMemory | None) -> dict[str, int] | None:
    """The maximum-memory setting as device -> bytes, GPU caps lowered to what is free; None when unset."""
    if max_memory is None:
        return None
    try:
        caps = parse_max_memory(max_memory)
    except ValueError as error:
        raise ModelLoadError(f"invalid maximum-memory setting: {error}") from error
    for name in caps:
        if name.startswith("cuda"):
            index = torch.device(name).index or 0
            if not torch.cuda.is_available() or index >= torch.cuda.device_count():
                raise ModelLoadError(f"the maximum-memory setting names {name}, but this worker does not see it")
            caps[name] = min(caps[name], torch.cuda.mem_get_info(index)[0])
    return caps


def placement_key(device: str | None, max_memory: MaxMemory | None) -> str:
    """What a cached model's placement is keyed by: its device, or its maximum-memory setting."""
    if max_memory is None:
        return str(resolve_device(device))
    return ",".join(f"{device_name(k)}={parse_size(v)}" for k, v in sorted(max_memory.items(), key=str))


def _check_room(
    shape: ModelShape, caps: dict[str, int] | None, device: str | None, target: torch.device, dtype: torch.dtype
) -> dict[str, int] | None:
    """Fail before loading when the weights cannot fit; the caps to split over (None: one device)."""
    if caps is None and device in (None, "auto", "cuda"):  # not a chosen GPU ("cuda:1")
        caps = _auto_split(shape, target, dtype)
    if caps is None:
        _check_fits(shape, target, dtype)
    else:
        _check_total(shape, caps, dtype)
    return caps


def _auto_split(shape: ModelShape, target: torch.device, dtype: torch.dtype) -> dict[str, int] | None:
    """Caps over every visible GPU when the model does not fit the first one and there are several."""
    if target.type != "cuda" or torch.cuda.device_count() < 2:
        return None
    needed = shape.dense_params() * torch.finfo(dtype).bits // 8
    if needed <= _HEADROOM * torch.cuda.mem_get_info(target)[0]:
        return None
    return {f"cuda:{i}": int(_HEADROOM * torch.cuda.mem_get_info(i)[0]) for i in range(torch.cuda.device_count())}


def _check_total(shape: ModelShape, caps: dict[str, int], dtype: torch.dtype) -> None:
    """Fail before loading when the devices together cannot hold the weights (the plan checks per layer)."""
    needed = shape.dense_params() * torch.finfo(dtype).bits // 8
    if needed > sum(caps.values()):
        given = ", ".join(f"{name} {human_size(size)}" for name, size in caps.items())
        raise ModelLoadError(
            f"the model's weights need {human_size(needed)} in {str(dtype).removeprefix('torch.')}, but the "
            f"device map gives {human_size(sum(caps.values()))} in all: {given}; raise the maximum-memory "
            "setting or add devices ('cpu' or 'disk' offload)"
        )


def _check_fits(shape: ModelShape, device: torch.device, dtype: torch.dtype) -> None:
    """Fail before loading, with the figures, when the weights cannot fit the device.

    The weights alone must take at most 80% of the free memory: a trial's activations, the dense
    gradient sketch and the statistics need the rest.
    """
    if device.type != "cuda":
        return
    needed = shape.dense_params() * torch.finfo(dtype).bits // 8
    free, _total = torch.cuda.mem_get_info(device)
    if needed > _HEADROOM * free:
        raise ModelLoadError(
            f"the model's weights need {needed / 2**30:.1f} GiB in {dtype}, but {device} has {free / 2**30:.1f} GiB "
            "free; a search also needs room for activations: use a larger GPU, or split the model over several "
            "GPUs or offload part of it with the maximum-memory setting (max_memory)"
        )


class ModelCache:
    """Keeps the most recently used model loaded, so consecutive jobs on it skip loading.

    One entry: a GPU worker holds one model at a time.
    """

    def __init__(self, artifacts: Path | None = None, *, offload_folder: Path | None = None) -> None:
        self._entry: LoadedModel | None = None
        self.artifacts = artifacts
        self.offload_folder = offload_folder

    def get(
        self, model: str, revision: str | None = None, *, device: str | None = None, max_memory: MaxMemory | None = None
    ) -> LoadedModel:
        key = (model, revision, placement_key(device, max_memory))
        if self._entry is None or self._entry.key != key:
            self._entry = None  # release the previous model before loading the next
            self._entry = load_model(
                model,
                revision,
                device=device,
                artifacts=self.artifacts,
                max_memory=max_memory,
                offload_folder=self.offload_folder,
            )
        return self._entry


def adapter_for(model: PreTrainedModel) -> Adapter:
    """The adapter of a loaded model's family (raises ``UnsupportedModel`` with the supported list)."""
    shape = read_shape(model.config.to_dict())
    adapter: type[Adapter] = resolve(family_for(shape.model_type).adapter)
    return adapter(model, shape)
