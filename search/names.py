"""The names a job spec may use, one registry per kind, torch-free: the spec validates against these,
and the CLI and the web page list them.

Implementations are named by ``"module:attribute"`` paths and imported on first use
(``resolve``), so this module stays importable without torch. Registering a proxy or a selection
criterion is one line here (a test may add one for its duration).
"""

from __future__ import annotations

import importlib
from typing import Any

from search.families import FAMILIES, MODEL_TYPES

# Proxies that score a candidate on their own; a job names one, or a list of them (an ensemble).
PROXIES: dict[str, str] = {
    "tracenas": "search.proxies.tracenas:TraceNAS",
    "prunenet": "search.proxies.prunenet:PruneNet",
    "metanet": "search.proxies.metanet:MetaNet",
    "kl": "search.proxies.kl:KL",
}
ENSEMBLE = "ensemble"  # alone: the DEFAULT_ENSEMBLE
DEFAULT_ENSEMBLE: tuple[str, ...] = ("prunenet", "tracenas")

# Structured selection criteria: which heads and FFN channels a candidate keeps (search.criteria).
CRITERIA: dict[str, str] = {
    "wanda": "search.criteria.wanda:Wanda",
    "magnitude": "search.criteria.magnitude:Magnitude",
    "flap": "search.criteria.flap:Flap",
    "prunenet": "search.criteria.prunenet:PolicyCriterion",
}
# Which weights unstructured sparsity removes (search.selection.SparsityScorer).
SPARSITY_CRITERIA: tuple[str, ...] = ("wanda", "magnitude")

SAMPLERS: tuple[str, ...] = ("tpe", "random", "nsga2", "cmaes", "evo")
SINGLE_OBJECTIVE_SAMPLERS: tuple[str, ...] = ("cmaes", "evo")
OBJECTIVES: tuple[str, ...] = ("score", "params", "latency")
DEPTH_MODES: tuple[str, ...] = ("sublayer", "layer", "none")
PARAMETERIZATIONS: tuple[str, ...] = ("per_layer", "compact")
# How a job recovers its finalists after the search (search.recovery): distillation from the dense model.
RECOVERY_METHODS: tuple[str, ...] = ("distill",)
# What the search may propose: any per-layer architecture, or only what the family's own config
# expresses (search.standard), so the export loads with plain from_pretrained.
EXPORT_FORMATS: tuple[str, ...] = ("per_layer", "standard")
STANDARD = "standard"

# Model families and the ``model_type`` values they read (registered in ``search.families``).
FAMILY_NAMES: tuple[str, ...] = tuple(family.name for family in FAMILIES)
SUPPORTED_MODEL_TYPES: tuple[str, ...] = MODEL_TYPES


def proxy_names() -> tuple[str, ...]:
    """What ``JobSpec.proxy`` accepts as a single name."""
    return (*PROXIES, ENSEMBLE)


def resolve(path: str) -> Any:
    """The object a ``"module:attribute"`` path names."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)
