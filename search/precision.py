"""The precision a checkpoint stores its weights in, and its tensors as stored.

A worker searches in whatever dtype suits its device (float32 on a CPU, bfloat16 on a GPU); an export
is written in the checkpoint's own precision, whatever the search used. ``export_dtype`` decides that
precision in one place. When the searched weights represent the stored ones exactly (the same dtype,
or a float32 search of a float16 / bfloat16 checkpoint), slices of the searched weights cast back
exactly; otherwise (a bfloat16 search of a float16 or float32 checkpoint) the slices are read from
the checkpoint's own tensors, one at a time (``CheckpointTensors``), so no second copy of the model
is held on the common path.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from search.errors import ModelLoadError

if TYPE_CHECKING:
    from torch import nn

# safetensors' dtype names (the header's "dtype") and transformers' config names, to torch.
_SAFETENSORS_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
_CONFIG_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# Dtypes a float32 search holds exactly (every value of theirs is a float32 value).
_EXACT_IN_FLOAT32 = (torch.float16, torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class WeightSource:
    """The checkpoint's weights as stored: their precision, and where to read them again.

    ``dtype_from`` says how the precision was learnt: ``"weights"`` (the safetensors header: what is
    stored), ``"config"`` (the config's ``dtype`` / ``torch_dtype``: no safetensors to read) or
    ``"default"`` (neither: float32, what ``from_pretrained`` gives such a checkpoint).
    """

    dtype: torch.dtype
    dtype_from: str
    files: tuple[Path, ...] = ()  # the checkpoint's safetensors files; empty when there are none
    model: str = ""  # the id or folder ``from_pretrained`` loaded, to load again when files are empty
    revision: str | None = None

    def exact_in(self, searched: torch.dtype) -> bool:
        """Whether weights held in ``searched`` are exactly the stored ones, so a cast back is exact."""
        return searched == self.dtype or (searched == torch.float32 and self.dtype in _EXACT_IN_FLOAT32)

    @property
    def weights_bytes(self) -> int | None:
        """The checkpoint's size on disk (its safetensors files); None when it has none here."""
        return sum(file.stat().st_size for file in self.files) if self.files else None


def export_dtype(model: nn.Module, source: WeightSource | None) -> torch.dtype:
    """The precision an export of ``model`` is written in: the checkpoint's (the model's own for a
    model built in memory, which has no checkpoint)."""
    return source.dtype if source is not None else next(model.parameters()).dtype


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` → ``"float16"``, as configs and reports spell it."""
    return str(dtype).removeprefix("torch.")


def read_source(model: str, revision: str | None, config: dict[str, Any]) -> WeightSource:
    """The precision of the checkpoint ``model`` (loaded already, so its files are local)."""
    files = checkpoint_files(model, revision)
    stored = stored_dtype(files)
    if stored is not None:
        return WeightSource(stored, "weights", files, model, revision)
    named = config.get("dtype") or config.get("torch_dtype")
    if isinstance(named, str) and named in _CONFIG_DTYPES:
        return WeightSource(_CONFIG_DTYPES[named], "config", files, model, revision)
    return WeightSource(torch.float32, "default", files, model, revision)


def checkpoint_files(model: str, revision: str | None) -> tuple[Path, ...]:
    """The safetensors files of a local folder or of a hub model in the local cache."""
    folder = Path(model)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        try:
            folder = Path(
                snapshot_download(model, revision=revision, allow_patterns=["*.safetensors"], local_files_only=True)
            )
        except Exception:  # not in the cache in this layout (huggingface_hub raises several kinds): no files
            return ()
    return tuple(sorted(folder.glob("*.safetensors")))


def _header(file: Path) -> dict[str, Any]:
    """A safetensors file's JSON header (name → dtype, shape, offsets), read without the tensors."""
    with file.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header: dict[str, Any] = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    return header


def stored_dtype(files: tuple[Path, ...]) -> torch.dtype | None:
    """The precision of safetensors ``files``: the floating dtype holding most of the stored elements
    (a float32 norm in a float16 model does not make it a float32 model); None without files."""
    elements: Counter[torch.dtype] = Counter()
    for file in files:
        for entry in _header(file).values():
            dtype = _SAFETENSORS_DTYPES.get(entry["dtype"])
            if dtype is not None:
                elements[dtype] += max(1, int(torch.Size(entry["shape"]).numel()))
    return elements.most_common(1)[0][0] if elements else None


class CheckpointTensors:
    """The dense model's tensors as the checkpoint stores them, read one at a time, by the loaded
    model's parameter names.

    A checkpoint may name a tensor without the base model's prefix (GPT-2's ``h.0...`` for
    ``transformer.h.0...``) or with one the loaded model lacks (BERT's ``bert.``), and stores a tied
    weight once; names resolve through all three. A checkpoint with no safetensors here is loaded
    once more, on the CPU in its own precision (the rare path that costs a second copy).
    """

    def __init__(self, source: WeightSource, model: nn.Module) -> None:
        self._source = source
        self._prefix = getattr(model, "base_model_prefix", "") or ""
        # Every name of a parameter shared by several (tied embeddings): any of them may be stored.
        by_tensor: dict[int, list[str]] = {}
        for name, parameter in model.named_parameters(remove_duplicate=False):
            by_tensor.setdefault(id(parameter), []).append(name)
        self._aliases = {name: names for names in by_tensor.values() for name in names}
        self._where = {name: file for file in source.files for name in _header(file)}
        self._loaded: dict[str, torch.Tensor] | None = None

    def get(self, name: str) -> torch.Tensor:
        """The stored tensor of the loaded model's parameter or buffer ``name``, on the CPU."""
        from safetensors import safe_open

        for candidate in self._candidates(name):
            if candidate in self._where:
                with safe_open(self._where[candidate], framework="pt") as handle:
                    return handle.get_tensor(candidate)
        state = self._copy()
        if name in state:
            return state[name]
        raise ModelLoadError(f"{self._source.model}: the checkpoint stores no tensor for {name}")

    def _candidates(self, name: str) -> list[str]:
        head = f"{self._prefix}." if self._prefix else ""
        names = []
        for alias in self._aliases.get(name, [name]):
            names += [alias, alias.removeprefix(head)] + ([head + alias] if head else [])
        return names

    def _copy(self) -> dict[str, torch.Tensor]:
        """The whole checkpoint in its own precision on the CPU, loaded once, for names the files
        do not resolve (or a checkpoint without safetensors)."""
        if self._loaded is None:
            from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

            from search.families import read_shape

            source = self._source
            config = AutoConfig.from_pretrained(source.model, revision=source.revision, trust_remote_code=False)
            auto = AutoModelForCausalLM if read_shape(config.to_dict()).causal else AutoModel
            network = auto.from_pretrained(
                source.model, revision=source.revision, dtype=source.dtype, trust_remote_code=False
            )
            self._loaded = dict(network.state_dict())
        return self._loaded
