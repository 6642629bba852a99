"""PruneSearch's search library: find pruned architectures of a decoder under a parameter budget.

Usable without the service::

    from search import JobSpec, export_model, load_pruned, prepare_job, run_search

    spec = JobSpec(model="models/ref-llama-7m", target={"param_ratio": 0.6}, n_trials=20)
    context = prepare_job(spec)                    # load, check, prepare the candidate builder
    result = run_search(context, study_name="mine")
    selection = context.selection(ArchConfig.from_dict(result.best.arch))
    export_model(context.loaded, selection, "pruned/")

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
    "make_storage",
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
    "Proxy": "search.proxies",
    "create_proxy": "search.proxies",
    "job_proxy": "search.trials",
    "SearchHooks": "search.trials",
    "make_storage": "search.storage",
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
