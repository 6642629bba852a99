"""Which installed distributions the API image has: the closure of docker/requirements-api.txt.

Plain functions, no side effects: ``sitecustomize`` uses them to hide everything else from a
process, and the tests use them to check what such a process imported.
"""

from __future__ import annotations

import importlib.metadata as metadata
from pathlib import Path

from packaging.requirements import Requirement


def normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def read_requirements(path: Path) -> list[Requirement]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [Requirement(line) for line in lines if line and not line.startswith("#")]


def closure(requirements: list[Requirement]) -> set[str]:
    """Normalized names of the distributions that installing ``requirements`` brings, extras included."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(req, frozenset(req.extras)) for req in requirements]
    while todo:
        req, extras = todo.pop()
        key = (normalize(req.name), extras)
        if key in seen:
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(key)
        environments = [{"extra": extra} for extra in extras] or [{"extra": ""}]
        for spec in dist.requires or []:
            child = Requirement(spec)
            if child.marker is None or any(child.marker.evaluate(env) for env in environments):
                todo.append((child, frozenset(child.extras)))
    return {name for name, _extras in seen}


def foreign_modules(allowed: set[str]) -> set[str]:
    """Top-level modules installed only by distributions outside ``allowed`` (stdlib and the project stay)."""
    foreign = set()
    for module, dists in metadata.packages_distributions().items():
        if not any(normalize(dist) in allowed for dist in dists):
            foreign.add(module)
    return foreign
