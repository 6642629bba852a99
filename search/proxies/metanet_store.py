"""The meta-network's training data: audited candidates, one JSON-lines file per model family.

Torch-free and apart from the network (``search.proxies.metanet``), so priming can carry a store
without importing the network.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RECORD_VERSION = 1


class MetaNetStore:
    """Audited candidates, one JSON-lines file per model family, append-only (safe across workers)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _file(self, family: str) -> Path:
        return self.path / f"{family}.jsonl"

    def add(self, records: Sequence[dict[str, Any]]) -> None:
        if not records:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        by_family: dict[str, list[dict[str, Any]]] = {}
        for record in records:
            by_family.setdefault(record["family"], []).append(record)
        for family, group in by_family.items():
            lines = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in group)
            with open(self._file(family), "a", encoding="utf-8") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    handle.write(lines)
                    handle.flush()
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)

    def records(self, family: str) -> list[dict[str, Any]]:
        path = self._file(family)
        if not path.is_file():
            return []
        with open(path, encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH)
            try:
                text = handle.read()
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        records = []
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn line from a crashed writer
            if isinstance(record, dict) and record.get("version") == RECORD_VERSION:
                records.append(record)
        return records
