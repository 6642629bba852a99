"""What a model's search computes from its weights once, kept on disk beside the model cache.

A helper worker joining a job, a restarted worker or a later job on the same model loads these
instead of recomputing them (PruneNet's trained policy and its spectral tables cost minutes on
billion-parameter models). Entries are keyed by the model's identity: its path or hub id, the
revision, and for a local folder the names, sizes and modification times of its weight files, so
changed weights never meet stale artifacts. Files hold tensors and plain values only and are read
with ``torch.load(weights_only=True)``; an unreadable entry is recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

log = logging.getLogger(__name__)

T = TypeVar("T")

# Where a loaded model's store sits in its ``LoadedModel.cache``, which every builder already receives.
STORE_KEY = "artifact-store"


class ArtifactStore:
    def __init__(self, root: Path, model: str, revision: str | None) -> None:
        self.directory = root / model_fingerprint(model, revision)

    def get(self, name: str) -> dict[str, Any] | None:
        path = self.directory / f"{name}.pt"
        if not path.exists():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # truncated or foreign: recompute and overwrite
            log.warning("ignoring unreadable cached artifact %s", path, exc_info=True)
            return None

    def put(self, name: str, payload: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # Write then rename: a reader in another worker sees the old file or the whole new one.
        handle, temporary = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        os.close(handle)
        try:
            torch.save(payload, temporary)
            os.replace(temporary, self.directory / f"{name}.pt")
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)


def model_fingerprint(model: str, revision: str | None) -> str:
    path = Path(model)
    parts = [str(path.resolve()) if path.is_dir() else model, revision or ""]
    if path.is_dir():
        for weights in sorted([*path.glob("*.safetensors"), *path.glob("*.bin")]):
            stat = weights.stat()
            parts.append(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def persisted(
    cache: dict[Any, Any],
    name: str,
    compute: Callable[[], T],
    encode: Callable[[T], dict[str, Any]],
    decode: Callable[[dict[str, Any]], T],
) -> T:
    """``compute()``, or its earlier result from the model's artifact store when there is one."""
    store: ArtifactStore | None = cache.get(STORE_KEY)
    if store is not None and (payload := store.get(name)) is not None:
        return decode(payload)
    value = compute()
    if store is not None:
        store.put(name, encode(value))
    return value
