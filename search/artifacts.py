"""What a model's search computes once: typed in memory (``ModelArtifacts``), and kept on disk beside
the model cache (``ArtifactStore``) where it is costly.

Each kind of artifact is an ``Artifact[K, V]`` defined once, beside the code that computes it (so
this module stays below all of them):
- ``search.stats.DENSE_STATS``: dense statistics per (calibration digest, batch size, dtype); disk;
- ``search.criteria.IMPORTANCE``: a criterion's importance per (criterion, digest, seed if seeded);
- ``search.criteria.prunenet.POLICY``: the PruneNet policy per seed; disk;
- ``search.proxies.prunenet.TABLES``: PruneNet's spectral tables per policy seed; disk;
- ``search.proxies.tracenas.DENSE_SKETCH``: TraceNAS's dense gradient sketch; disk only;
- ``search.proxies.reference.DENSE_REFERENCE``: the KL proxy's dense log-probabilities (full or
  top-k) or embeddings per (digest, form, batch size, dtype); disk only;
- ``search.proxies.metanet.FEATURES_OF_MODEL``: the meta-network's node features per (digest, seed);
- ``search.proxies.base.PROXY``: proxies per configuration (shared by ensembles and later jobs);
- ``search.space.LAYER_SIGNALS``: the layer signals seeds and the compact space rank by, per digest.
Per-job state does not belong here.

A helper worker joining a job, a restarted worker or a later job on the same model loads the disk
kinds instead of recomputing them (PruneNet's trained policy and its spectral tables cost minutes on
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
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import torch

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


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


@dataclass(frozen=True)
class Artifact(Generic[K, V]):
    """One kind of artifact: a value of type ``V`` per key ``K`` (what the value depends on).

    Each kind is defined once, beside the code that computes it. Kinds worth keeping across
    processes name their file (``file(key)``) and how they read and write it (plain tensors and
    values only); the others live in memory.
    """

    name: str
    file: Callable[[K], str] | None = None
    encode: Callable[[V], dict[str, Any]] | None = None
    decode: Callable[[dict[str, Any]], V] | None = None
    # False for values their user keeps in another form (moved to the GPU): memory holds no second copy.
    in_memory: bool = True


class ModelArtifacts:
    """What a search computes once per loaded model, reused by every trial and later jobs on it.

    ``get(kind, key, compute)`` returns the value in memory, else the one in the on-disk ``store``
    (when the model has one and the kind is kept on disk), else ``compute()`` (stored in both).
    """

    def __init__(self, store: ArtifactStore | None = None) -> None:
        self.store = store
        self._values: dict[tuple[str, Hashable], Any] = {}

    def get(self, kind: Artifact[K, V], key: K, compute: Callable[[], V]) -> V:
        if not kind.in_memory:
            return self._load_or_compute(kind, key, compute)
        slot = (kind.name, key)
        if slot not in self._values:
            self._values[slot] = self._load_or_compute(kind, key, compute)
        return cast(V, self._values[slot])

    def replace(self, kind: Artifact[K, V], key: K, value: V) -> None:
        """Keep ``value`` instead of what memory and the store hold (a measurement found out of date)."""
        if kind.in_memory:
            self._values[(kind.name, key)] = value
        if self.store is not None and kind.file is not None and kind.encode is not None:
            self.store.put(kind.file(key), kind.encode(value))

    def peek(self, kind: Artifact[K, V], key: K) -> V | None:
        """The value if it was computed in this process, without computing it."""
        return cast("V | None", self._values.get((kind.name, key)))

    def _load_or_compute(self, kind: Artifact[K, V], key: K, compute: Callable[[], V]) -> V:
        if self.store is None or kind.file is None or kind.encode is None or kind.decode is None:
            return compute()
        name = kind.file(key)
        if (payload := self.store.get(name)) is not None:
            return kind.decode(payload)
        value = compute()
        self.store.put(name, kind.encode(value))
        return value
