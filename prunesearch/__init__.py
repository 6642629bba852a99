"""The ``prunesearch`` command line, and ``load_pruned`` for exported models.

The library is ``search``, the service ``service``; ``load_pruned`` is re-exported here because it
is what users of an exported model call.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_pruned"]


def load_pruned(directory: Any, **kwargs: Any) -> Any:
    """Load an exported model of any kind (see ``search.export.load_pruned``)."""
    from search.export import load_pruned as _load_pruned

    return _load_pruned(directory, **kwargs)
