"""What a model family is, as data (the way litgpt keeps its configs): which ``model_type`` values
belong to it, how its ``config.json`` reads as a ``ModelShape``, where its torch adapter lives, and
which config keys an export rewrites. Torch-free: the API reads shapes through it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from search.arch import ModelShape


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    # ``config.json`` (a dict with ``model_type`` among ``model_types``) -> its shape
    read: Callable[[Mapping[str, Any]], ModelShape]
    # "module:Class" of the family's torch adapter, imported on first use (``search.loading.adapter_for``),
    # so the description stays torch-free.
    adapter: str
    layer_count_key: str  # the config key of the number of layers
    intermediate_key: str  # the config key of the FFN width
    # Config keys of (query heads, KV heads, head size); None where the head size derives from the
    # hidden size, so a standard config cannot describe fewer heads.
    head_keys: tuple[str, str, str] | None
