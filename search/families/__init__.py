"""The model families a search supports, by ``model_type``.

A family is one package: its ``__init__`` describes it as torch-free data (model types, shape
reader, export keys; ``search.families.family.Family``) and its ``adapter`` module holds the torch
code, named by its path and imported on first use (``search.loading.adapter_for``), so the API
validates specs without torch. Adding a family is one
package plus one line in ``FAMILIES``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from search.arch import ModelShape
from search.errors import UnsupportedModel
from search.families import bert, gpt2, llama
from search.families.family import Family

FAMILIES: tuple[Family, ...] = (llama.FAMILY, gpt2.FAMILY, bert.FAMILY)

_BY_MODEL_TYPE: dict[str, Family] = {model_type: family for family in FAMILIES for model_type in family.model_types}
MODEL_TYPES: tuple[str, ...] = tuple(_BY_MODEL_TYPE)


def family_for(model_type: str) -> Family:
    if model_type not in _BY_MODEL_TYPE:
        raise UnsupportedModel(f"model_type {model_type!r} is not supported; supported: {', '.join(MODEL_TYPES)}")
    return _BY_MODEL_TYPE[model_type]


def read_shape(config: Mapping[str, Any]) -> ModelShape:
    """The shape of a supported model from its ``config.json``."""
    model_type = str(config.get("model_type", ""))
    family = family_for(model_type)
    try:
        return family.read(config)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as error:
        raise UnsupportedModel(f"config.json of this {model_type} model is incomplete: {error}") from error
