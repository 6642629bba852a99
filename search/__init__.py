"""PruneSearch's search library: find pruned architectures of a decoder under a parameter budget.

Usable without the service (README.md's library example, run by tests/search/test_readme_example.py):
``prepare_job(spec)`` loads the model, checks the job against it and prepares the candidate
builder; ``run_search(context, study_name=...)`` searches, verifies and returns a ``SearchResult``
whose ``best`` is the verified best; ``export_model`` writes a selection as a smaller model and
``load_pruned`` loads it back. ``job_proxy(context)`` (or ``create_proxy``) gives the job's proxy,
to score ``context.candidate(...)`` yourself.

The package root stays light (no torch at import) so that the API can import ``search.spec``; the
names below are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ArchConfig",
    "BestEntry",
    "JobSpec",
    "LayerArch",
    "LoadedModel",
    "MetaNetStore",
    "ModelCache",
    "ModelShape",
    "Proxy",
    "SearchContext",
    "SearchError",
    "SearchHooks",
    "SearchResult",
    "TrialInfo",
    "Verification",
    "create_proxy",
    "export_model",
    "job_proxy",
    "load_model",
    "load_pruned",
    "prepare",
    "prepare_job",
    "run_search",
]

_LAZY = {
    "ArchConfig": "search.arch",
    "LayerArch": "search.arch",
    "ModelShape": "search.arch",
    "JobSpec": "search.spec",
    "SearchError": "search.errors",
    "LoadedModel": "search.loading",
    "ModelCache": "search.loading",
    "load_model": "search.loading",
    "SearchContext": "search.candidates",
    "prepare": "search.candidates",
    "prepare_job": "search.candidates",
    "MetaNetStore": "search.proxies",
    "Proxy": "search.proxies",
    "create_proxy": "search.proxies",
    "job_proxy": "search.trials",
    "SearchHooks": "search.trials",
    "run_search": "search.study",
    "BestEntry": "search.results",
    "SearchResult": "search.results",
    "TrialInfo": "search.results",
    "Verification": "search.results",
    "export_model": "search.export",
    "load_pruned": "search.export",
}
assert set(_LAZY) == set(__all__), "search.__all__ and its lazy imports disagree"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'search' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
