"""A worker whose maximum-memory setting cannot hold the job's model fails the job with the figures."""

from __future__ import annotations

from pathlib import Path

from search.loading import ModelCache
from search.spec import JobSpec
from service import migrate, repository
from service.db import make_engine, make_sessionmaker, session_scope
from service.states import JobStatus
from workers.jobs import run_job
from workers.settings import WorkerSettings


def test_devices_too_small_for_the_model_fail_the_job_saying_how_much_it_needs(
    tiny_llama_dir: Path, tmp_path: Path, sqlite_url: str
) -> None:
    max_memory = {"cpu": "64KiB", "disk": "64KiB"}
    settings = WorkerSettings(data_dir=tmp_path / "data", database_url=sqlite_url, max_memory=max_memory)
    migrate.upgrade(sqlite_url)
    sessions = make_sessionmaker(make_engine(sqlite_url))
    spec = JobSpec(
        model=str(tiny_llama_dir), target={"param_ratio": 0.6}, n_trials=2, search_space={"ffn_alignment": 8}
    )
    with session_scope(sessions) as session:
        job_id = repository.create_job(session, spec=spec.model_dump(mode="json"), model=spec.model, trials_total=2).id

    assert run_job(job_id, settings=settings, sessions=sessions, models=ModelCache()) == "failed"
    with session_scope(sessions) as session:
        job = repository.get_job(session, job_id)
        assert job.status == JobStatus.FAILED
        assert (
            job.error.startswith("the model's weights need ") and " in float32, but the device map gives " in job.error
        )
        assert "128.0 KiB in all: cpu 64.0 KiB, disk 64.0 KiB; raise the maximum-memory setting" in job.error
