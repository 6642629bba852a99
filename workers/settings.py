"""What only workers read: their device(s), heartbeats, the reaper's timing, trial retries, chunks.

``WorkerSettings`` extends the service's ``Settings`` (database, broker, artifacts, model roots:
what the API and the workers share), read from the same ``PRUNESEARCH_*`` variables, so one
environment configures both processes; the API ignores these fields.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from search.placement import parse_max_memory
from search.results import SpeedWorkload
from service.settings import Settings

__all__ = ["WorkerSettings", "get_worker_settings"]


class WorkerSettings(Settings):
    """A worker's settings: the shared ones plus the worker's own."""

    # One level of nesting, split at the first "_" after a nested field's name (``speed``).
    model_config = SettingsConfigDict(env_nested_delimiter="_", env_nested_max_split=1)

    device: str | None = Field(
        default=None, description="Worker's torch device (cuda, cuda:1, cpu); unset or 'auto' picks CUDA if present."
    )
    max_memory: dict[str, str | int] | None = Field(
        default=None,
        description="Split models over devices by decoder layer, each holding at most this much of the weights: "
        'JSON, e.g. {"0": "60GiB", "1": "60GiB", "cpu": "100GiB", "disk": "500GiB"} (GPU indices, cpu, disk; '
        "cpu and disk beside a GPU are offload). Unset: one device, or all visible GPUs when the model does "
        "not fit the first. Replaces device.",
    )
    # --- reliability: how fast a dead worker's job is noticed and resumed ---
    # A SIGKILLed worker's job runs again within job_stale_after_s + reaper_interval_s (~35 s) of
    # the kill. The heartbeats are single-row UPDATEs from their own threads; the widest gap measured
    # under a CPU-bound search on a loaded 2-core machine is in docs/reliability.md, and the stale
    # limits leave many times that. trial_grace_s stays below job_stale_after_s - job_heartbeat_s so
    # a resumed job always finds its dead trial already stale, and fails and retries it at once.
    job_stale_after_s: int = Field(default=30, ge=1, description="A running job silent this long is reclaimed.")
    job_heartbeat_s: float = Field(default=3.0, gt=0, description="How often a worker marks its job alive.")
    reaper_interval_s: float = Field(default=5.0, gt=0, description="How often each worker looks for orphans.")
    requeue_queued_after_s: int = Field(
        default=900, ge=1, description="Re-send the task of a job queued this long (its message may be lost)."
    )
    trial_heartbeat_s: int = Field(default=3, ge=1, description="Optuna heartbeat of a running trial.")
    trial_grace_s: int = Field(default=20, ge=1, description="A trial silent this long is failed and retried.")
    trial_max_retry: int = Field(default=2, ge=0, description="Retries of a trial whose worker died.")
    chunk_trials: int = Field(
        default=25,
        ge=0,
        description="Trials per chunk that idle workers may take from a running job (several workers per "
        "job); 0 keeps every job on the one worker that claimed it.",
    )
    trial_batch: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Trials a worker scores together (search.loop): replaying TraceNAS scores them in one graph, "
        "each on its own copy of the calibration tokens (that much more GPU memory; what it gives: "
        "docs/performance.md).",
    )
    db_retry_attempts: int = Field(
        default=5, ge=1, description="Times a worker resumes a job after losing the database, before failing it."
    )

    # The speed report of every export (search.speed); its defaults are the report's workload. Each
    # field is read from PRUNESEARCH_SPEED_<FIELD> (PRUNESEARCH_SPEED_REPEATS=3: speed.repeats).
    speed: SpeedWorkload = Field(default_factory=SpeedWorkload, description="The speed report's workload.")

    @field_validator("max_memory")
    @classmethod
    def _readable_max_memory(cls, value: dict[str, str | int] | None) -> dict[str, str | int] | None:
        if value is not None:
            parse_max_memory(value)  # fails at start-up, with the device or size at fault
        return value

    @model_validator(mode="after")
    def _consistent_timing(self) -> WorkerSettings:
        if self.job_stale_after_s < 2 * self.job_heartbeat_s:
            raise ValueError(
                f"job_stale_after_s ({self.job_stale_after_s}) must be at least twice job_heartbeat_s "
                f"({self.job_heartbeat_s}), or live jobs are taken for dead"
            )
        if self.trial_grace_s <= self.trial_heartbeat_s:
            raise ValueError(
                f"trial_grace_s ({self.trial_grace_s}) must exceed trial_heartbeat_s ({self.trial_heartbeat_s})"
            )
        return self

    @property
    def offload_dir(self) -> Path:
        """Where layers a maximum-memory setting puts on ``disk`` are memory-mapped (unlinked at once)."""
        return self.data_dir / "cache" / "offload"

    @property
    def artifact_cache_dir(self) -> Path:
        """What searches compute once per model and calibration (dense statistics, PruneNet's policy)."""
        return self.data_dir / "cache" / "artifacts"


@lru_cache(maxsize=1)
def get_worker_settings() -> WorkerSettings:
    """The worker process's settings, read once from the environment."""
    return WorkerSettings()
