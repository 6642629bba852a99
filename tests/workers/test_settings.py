"""Worker-only settings: the same ``PRUNESEARCH_*`` variables, read by workers and ignored by the API."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings
from workers.settings import WorkerSettings, get_worker_settings


def test_worker_fields_come_from_the_shared_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNESEARCH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("PRUNESEARCH_DEVICE", "cpu")
    monkeypatch.setenv("PRUNESEARCH_CHUNK_TRIALS", "6")
    monkeypatch.setenv("PRUNESEARCH_JOB_HEARTBEAT_S", "1")
    monkeypatch.setenv("PRUNESEARCH_JOB_STALE_AFTER_S", "4")
    monkeypatch.setenv("PRUNESEARCH_MAX_MEMORY", '{"0": "60GiB", "cpu": "100GiB", "disk": 2000000000}')
    settings = WorkerSettings()

    assert (settings.device, settings.chunk_trials, settings.job_stale_after_s) == ("cpu", 6, 4)
    assert settings.max_memory == {"0": "60GiB", "cpu": "100GiB", "disk": 2_000_000_000}
    assert settings.offload_dir == tmp_path / "cache" / "offload"
    assert settings.database_url == Settings().database_url  # the shared part resolves alike
    assert settings.artifact_cache_dir == tmp_path / "cache" / "artifacts"
    assert not hasattr(Settings(), "chunk_trials")  # the API ignores what only workers read


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"job_heartbeat_s": 10, "job_stale_after_s": 15}, "at least twice job_heartbeat_s"),
        ({"trial_heartbeat_s": 30, "trial_grace_s": 30}, "must exceed trial_heartbeat_s"),
        ({"chunk_trials": -1}, "greater than or equal to 0"),
        ({"speed": {"prefill_batches": [1, 0]}}, "greater than 0"),
        ({"speed": {"prefill_batches": []}}, "at least 1 item"),
        ({"max_memory": {"0": "60 parsecs"}}, "'60 parsecs' is not a memory size"),
        ({"max_memory": {"gpu0": "60GiB"}}, "'gpu0' is not a device of a device map"),
    ],
)
def test_inconsistent_timing_fails_at_start_up(values: dict[str, float], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        WorkerSettings(**values)


def test_get_worker_settings_is_cached() -> None:
    assert get_worker_settings() is get_worker_settings()


def test_speed_workload_defaults_are_the_reports_and_the_environment_changes_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from search.results import SpeedWorkload

    for name in [key for key in os.environ if key.startswith("PRUNESEARCH_SPEED_")]:
        monkeypatch.delenv(name)  # tests/conftest.py sets a tiny workload for the suite
    assert WorkerSettings().speed == SpeedWorkload(
        prefill_batches=[1, 8], prefill_tokens=512, decode_batches=[1, 16], new_tokens=128, repeats=5
    )
    monkeypatch.setenv("PRUNESEARCH_SPEED_DECODE_BATCHES", "[]")
    monkeypatch.setenv("PRUNESEARCH_SPEED_REPEATS", "3")
    workload = WorkerSettings().speed
    assert (workload.decode_batches, workload.repeats) == ([], 3)
