"""Optuna's storage for a search: RDB with heartbeats, and SQLite tuned for several workers."""

from __future__ import annotations

import sqlite3
from typing import Any

from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback


def make_storage(url: str, *, heartbeat_interval: int = 30, grace_period: int = 120, max_retry: int = 2) -> RDBStorage:
    """RDB storage with heartbeats, so a trial whose worker died is failed and retried."""
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 30, "factory": _WalConnection}
    return RDBStorage(
        url,
        engine_kwargs=engine_kwargs,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
    )


class _WalConnection(sqlite3.Connection):
    """Every sampled parameter and attribute is a commit; in SQLite's default rollback journal each
    one is an fsync and blocks readers. WAL lets the workers of a job read while one writes, and
    synchronous=NORMAL (still crash-safe in WAL mode) drops the per-commit fsync."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.execute("PRAGMA journal_mode=WAL")
        self.execute("PRAGMA synchronous=NORMAL")
