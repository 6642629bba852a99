"""Load a model and its tokenizer once per process, never executing repository code."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from search.adapters import Adapter
from search.arch import ModelShape
from search.artifacts import ArtifactStore, ModelArtifacts
from search.errors import ModelLoadError
from search.families import family_for, read_shape
from search.names import resolve
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


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(
    model: str, revision: str | None = None, *, device: str | None = None, artifacts: Path | None = None
) -> LoadedModel:
    """Decoders load as ``AutoModelForCausalLM``, encoders as ``AutoModel`` (no task head), searched in
    float32 on a CPU and bfloat16 on a GPU; the checkpoint's own precision is recorded for exports.
    ``artifacts``: a folder where what is computed from the weights is kept across processes."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    target = resolve_device(device)
    dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
    try:
        config = AutoConfig.from_pretrained(model, revision=revision, trust_remote_code=False)
        shape = read_shape(config.to_dict())
        _check_fits(shape, target, dtype)
        auto = AutoModelForCausalLM if shape.causal else AutoModel
        tokenizer = AutoTokenizer.from_pretrained(model, revision=revision, trust_remote_code=False)
        network = auto.from_pretrained(
            model, revision=revision, dtype=dtype, trust_remote_code=False, attn_implementation="sdpa"
        )
        source = read_source(model, revision, config.to_dict())
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"cannot load model {model!r}: {error}") from error
    network.to(target).eval()
    network.config.use_cache = False
    store = ArtifactStore(artifacts, model, revision) if artifacts is not None else None
    key = (model, revision, str(target))
    return LoadedModel(adapter_for(network), tokenizer, key, ModelArtifacts(store), source)


def _check_fits(shape: ModelShape, device: torch.device, dtype: torch.dtype) -> None:
    """Fail before loading, with the figures, when the weights cannot fit the device.

    The weights alone must take at most 80% of the free memory: a trial's activations, the dense
    gradient sketch and the statistics need the rest.
    """
    if device.type != "cuda":
        return
    needed = shape.dense_params() * torch.finfo(dtype).bits // 8
    free, _total = torch.cuda.mem_get_info(device)
    if needed > 0.8 * free:
        raise ModelLoadError(
            f"the model's weights need {needed / 2**30:.1f} GiB in {dtype}, but {device} has {free / 2**30:.1f} GiB "
            "free; a search also needs room for activations: use a larger GPU"
        )


class ModelCache:
    """Keeps the most recently used model loaded, so consecutive jobs on it skip loading.

    One entry: a GPU worker holds one model at a time.
    """

    def __init__(self, artifacts: Path | None = None) -> None:
        self._entry: LoadedModel | None = None
        self.artifacts = artifacts

    def get(self, model: str, revision: str | None = None, *, device: str | None = None) -> LoadedModel:
        key = (model, revision, str(resolve_device(device)))
        if self._entry is None or self._entry.key != key:
            self._entry = None  # release the previous model before loading the next
            self._entry = load_model(model, revision, device=device, artifacts=self.artifacts)
        return self._entry


def adapter_for(model: PreTrainedModel) -> Adapter:
    """The adapter of a loaded model's family (raises ``UnsupportedModel`` with the supported list)."""
    shape = read_shape(model.config.to_dict())
    adapter: type[Adapter] = resolve(family_for(shape.model_type).adapter)
    return adapter(model, shape)
