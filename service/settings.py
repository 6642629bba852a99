"""The service's configuration: one ``Settings`` class, read from ``PRUNESEARCH_*`` variables.

These are what the API and the workers share (stores, limits, model roots) and what the API alone
reads; what only workers read extends this class in ``workers.settings``.

Every derived value (database URL, Optuna storage, broker, artifacts) is filled in at validation
time, so callers read plain, resolved attributes and a bad value fails at start-up, not on the
first request. Nothing is created on disk here: folders are made by whoever first needs them.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from platformdirs import user_data_path
from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError


def default_data_dir() -> Path:
    """The per-user data folder (``$XDG_DATA_HOME/prunesearch`` or ``~/.local/share/prunesearch`` on
    Linux, the platform's equivalent elsewhere): the same whatever the working directory."""
    return user_data_path("prunesearch", appauthor=False)


def _data_dir(info: ValidationInfo) -> Path:
    # A field validator sees the fields declared before it; data_dir comes first. If data_dir
    # itself failed validation, fall back to the default so only the real error is reported.
    data_dir = info.data.get("data_dir")
    return data_dir if isinstance(data_dir, Path) else default_data_dir().resolve()


class Settings(BaseSettings):
    """Service settings. Optional URLs default to embedded stores under ``data_dir``."""

    model_config = SettingsConfigDict(env_prefix="PRUNESEARCH_", extra="ignore", frozen=True)

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str = Field(default=None, validate_default=True, description="SQLAlchemy URL of the job tables.")
    optuna_storage_url: str = Field(
        default=None,
        validate_default=True,
        description="Optuna RDB storage; defaults to the database URL so optuna-dashboard opens it directly.",
    )
    broker_url: str = Field(default=None, validate_default=True, description="Celery broker; filesystem by default.")
    artifacts_dir: Path = Field(default=None, validate_default=True)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    max_trials: int = Field(default=5000, ge=1)
    # Optimizer steps per finalist a job's recovery may ask for (JobSpec.recovery.steps).
    max_recovery_steps: int = Field(default=5000, ge=1)
    visibility_timeout_s: int = Field(default=172800, ge=1)
    api_page_max: int = Field(default=200, ge=1)

    # --- security (README "Security and reliability") ---
    allow_anonymous: bool = Field(
        default=False,
        description="Serve requests without an API key on a non-loopback address while no key exists. "
        "Only for a network you trust completely.",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="A bearer token that opens GET /metrics (for Prometheus) on a server with API keys or off "
        "loopback; any active API key opens it too. Unset: /metrics follows the anonymous rules of /v1.",
    )
    model_roots: Annotated[tuple[Path, ...], NoDecode] = Field(
        default=(),
        description="Folders that the local model directories and calibration sources of jobs must lie in "
        "(os.pathsep-separated, or a JSON list). Unset: any path for anonymous loopback use; none for keyed owners.",
    )

    # --- limits: each breach is a problem+json naming the setting ---
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Largest request body accepted.")
    max_calibration_samples: int = Field(
        default=1024, ge=1, description="Upper bound of calibration.n_samples and calibration.heldout_samples."
    )
    max_seq_len: int = Field(
        default=4096, ge=16, description="Upper bound of calibration.seq_len and target.latency.context."
    )
    max_latency_batch: int = Field(default=256, ge=1, description="Upper bound of target.latency.batch.")
    max_active_jobs_per_key: int = Field(default=8, ge=1, description="Queued + running jobs one owner may have.")
    max_submissions_per_minute: int = Field(default=30, ge=1, description="Jobs one owner may submit per minute.")
    # --- webhooks (README "Webhooks"): what a job's notify.url may be, and how events are delivered ---
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="Signs the webhook events of jobs submitted without an API key (the embedded, no-auth mode); "
        "jobs of a keyed owner are signed with their key's own secret. Unset: anonymous jobs cannot ask for one.",
    )
    webhook_allowed_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Hosts a notify.url may name (comma-separated or a JSON list; '*.example.com' matches "
        "subdomains). Empty: any host whose addresses are public.",
    )
    webhook_allow_http: bool = Field(default=False, description="Accept http:// notify URLs (local testing only).")
    webhook_allow_private: bool = Field(
        default=False,
        description="Accept notify URLs whose host resolves to a private, loopback or link-local address.",
    )
    webhook_timeout_s: float = Field(default=10.0, gt=0, description="Seconds one delivery attempt may take.")
    webhook_retries: int = Field(default=5, ge=0, description="Retries of a delivery after its first attempt fails.")
    webhook_backoff_s: float = Field(
        default=30.0, ge=0, description="Delay before the first retry; doubled for each retry after it."
    )
    webhook_backoff_max_s: float = Field(default=3600.0, ge=0, description="Longest delay between two retries.")
    public_url: str | None = Field(
        default=None,
        description="The API's external base URL (https://prunesearch.example.com), for absolute links in "
        "webhook events. Unset: links are paths (/v1/jobs/...).",
    )

    api_threads: int = Field(
        default=512,
        ge=8,
        description="Threads for the API's request handlers; keep it above the concurrent clients you expect.",
    )

    @field_validator("data_dir", mode="after")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        # Absolute, so the API and a worker started from another directory agree on the files.
        return value.expanduser().resolve()

    @field_validator("database_url", mode="before")
    @classmethod
    def _default_database_url(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None or value == "":
            # data_dir is absolute, so this has four slashes: sqlite:////abs/path.
            return f"sqlite:///{_data_dir(info) / 'prunesearch.sqlite3'}"
        return value

    @field_validator("database_url", mode="after")
    @classmethod
    def _parsable_database_url(cls, value: str) -> str:
        try:
            make_url(value)
        except ArgumentError as error:
            raise ValueError(f"not a SQLAlchemy database URL: {error}") from error
        return value

    @field_validator("optuna_storage_url", mode="before")
    @classmethod
    def _default_optuna_storage_url(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None or value == "":
            # Optuna's tables live beside ours; the Alembic version tables are kept apart.
            return info.data.get("database_url", "")
        return value

    @field_validator("broker_url", mode="before")
    @classmethod
    def _default_broker_url(cls, value: Any) -> Any:
        return "filesystem://" if value is None or value == "" else value

    @field_validator("broker_url", mode="after")
    @classmethod
    def _known_broker_scheme(cls, value: str) -> str:
        if "://" not in value:
            raise ValueError(f"broker URL {value!r} has no scheme (e.g. redis://host:6379/0 or filesystem://)")
        return value

    @field_validator("artifacts_dir", mode="before")
    @classmethod
    def _default_artifacts_dir(cls, value: Any, info: ValidationInfo) -> Any:
        return _data_dir(info) / "artifacts" if value is None or value == "" else value

    @field_validator("artifacts_dir", mode="after")
    @classmethod
    def _absolute_artifacts_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("metrics_token", mode="before")
    @classmethod
    def _empty_metrics_token(cls, value: Any) -> Any:
        # Compose passes an unset variable as "": that is no token, not an empty one anyone could send.
        return None if value == "" else value

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _empty_webhook_secret(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("webhook_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            return (
                json.loads(text) if text.startswith("[") else [part.strip() for part in text.split(",") if part.strip()]
            )
        return value

    @field_validator("webhook_allowed_hosts", mode="after")
    @classmethod
    def _lower_hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(host.lower().rstrip(".") for host in value)

    @field_validator("public_url", mode="after")
    @classmethod
    def _bare_public_url(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else None

    @field_validator("model_roots", mode="before")
    @classmethod
    def _split_model_roots(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part for part in text.split(os.pathsep) if part]
        return value

    @field_validator("model_roots", mode="after")
    @classmethod
    def _resolved_model_roots(cls, value: tuple[Path, ...]) -> tuple[Path, ...]:
        # Resolved once, so a containment check compares real paths on both sides.
        return tuple(root.expanduser().resolve() for root in value)

    @property
    def broker_dir(self) -> Path:
        """Folders of the filesystem broker (used only when ``broker_url`` is ``filesystem://``)."""
        return self.data_dir / "broker"

    @property
    def uses_filesystem_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings()
