"""Settings resolution and the shared Celery configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.broker import RUN_JOB_TASK, celery_config, make_celery
from service.settings import Settings, get_settings


def test_defaults_live_under_the_per_user_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Not under the working directory: commands run from any folder find the same data.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PRUNESEARCH_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    settings = Settings()

    data_dir = tmp_path / "xdg" / "prunesearch"
    assert settings.data_dir == data_dir
    assert settings.database_url == f"sqlite:///{data_dir}/prunesearch.sqlite3"
    assert settings.database_url.startswith("sqlite:////")
    assert settings.optuna_storage_url == settings.database_url
    assert settings.broker_url == "filesystem://"
    assert settings.artifacts_dir == data_dir / "artifacts"
    assert (settings.host, settings.port, settings.max_trials) == ("127.0.0.1", 8000, 5000)
    assert not data_dir.exists()  # nothing is created by reading settings


def test_environment_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNESEARCH_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("PRUNESEARCH_DATABASE_URL", "postgresql://u@db/prunesearch")
    monkeypatch.setenv("PRUNESEARCH_BROKER_URL", "redis://redis:6379/0")
    monkeypatch.setenv("PRUNESEARCH_MAX_TRIALS", "42")
    settings = Settings()

    assert settings.database_url == "postgresql://u@db/prunesearch"
    assert settings.optuna_storage_url == "postgresql://u@db/prunesearch"
    assert settings.artifacts_dir == tmp_path / "d" / "artifacts"
    assert settings.max_trials == 42


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("database_url", "not a url", "not a SQLAlchemy database URL"),
        ("broker_url", "localhost", "has no scheme"),
        ("port", 0, "greater than or equal to 1"),
        ("max_trials", 0, "greater than or equal to 1"),
    ],
)
def test_bad_values_fail_at_start_up(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**{field: value})


def test_get_settings_is_cached() -> None:
    assert get_settings() is get_settings()


def test_redis_celery_config(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:6379/3", visibility_timeout_s=99)
    config = celery_config(settings)

    assert config["accept_content"] == ["json"] and config["task_serializer"] == "json"
    assert config["task_acks_late"] is True and config["worker_prefetch_multiplier"] == 1
    assert config["task_reject_on_worker_lost"] is True and config["task_ignore_result"] is True
    assert config["result_backend"] is None
    assert config["broker_transport_options"] == {"visibility_timeout": 99}
    assert not (tmp_path / "broker").exists()


def test_filesystem_celery_config_creates_its_folders(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    options = celery_config(settings)["broker_transport_options"]

    assert options["data_folder_in"] == options["data_folder_out"] == str(tmp_path / "broker" / "out")
    assert options["store_processed"] is False
    for key in ("data_folder_out", "processed_folder", "control_folder"):
        assert Path(options[key]).is_dir()
    app = make_celery(settings, "test")
    assert app.main == "test" and app.conf.broker_url == "filesystem://"
    assert RUN_JOB_TASK == "prunesearch.run_job"
