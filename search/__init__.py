"""PruneSearch's search library: find pruned architectures of a decoder under a parameter budget.

Usable without the service. The package root stays light (no torch at import) so that the API can
import ``search.spec``; the heavy parts are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ArchConfig",
    "JobSpec",
    "LayerArch",
    "ModelShape",
    "SearchError",
    "SearchResult",
    "run_search",
]

_LAZY = {
    "ArchConfig": "search.arch",
    "LayerArch": "search.arch",
    "ModelShape": "search.arch",
    "JobSpec": "search.spec",
    "SearchError": "search.errors",
    "SearchResult": "search.study",
    "run_search": "search.study",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'search' has no attribute {name!r}")
