"""The worker re-checks model_roots where it opens the files, not only the API at submission."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from search.loading import ModelCache
from search.spec import JobSpec
from service import migrate, repository
from service.db import make_engine, make_sessionmaker, session_scope
from service.states import JobStatus
from workers.jobs import run_job
from workers.settings import WorkerSettings


def test_a_hub_style_id_naming_a_folder_outside_the_roots_is_refused(
    tiny_llama_dir: Path, tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "acme/model" looks like a hub id to the API, but is a folder in the worker's working directory.
    workdir = tmp_path / "worker-cwd"
    shutil.copytree(tiny_llama_dir, workdir / "acme" / "model")
    monkeypatch.chdir(workdir)
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    settings = WorkerSettings(data_dir=tmp_path / "data", database_url=sqlite_url, model_roots=(allowed,))
    migrate.upgrade(sqlite_url)
    sessions = make_sessionmaker(make_engine(sqlite_url))
    spec = JobSpec(model="acme/model", target={"param_ratio": 0.6}, n_trials=2, search_space={"ffn_alignment": 8})
    with session_scope(sessions) as session:
        job = repository.create_job(
            session, spec=spec.model_dump(mode="json"), model=spec.model, trials_total=2, owner="tenant"
        )
        job_id = job.id

    assert run_job(job_id, settings=settings, sessions=sessions, models=ModelCache()) == "failed"
    with session_scope(sessions) as session:
        job = repository.get_job(session, job_id)
        assert job.status == JobStatus.FAILED and "not inside the folders this server allows" in job.error
