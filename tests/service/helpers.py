"""Plain helpers for the service tests (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from search.results import BestEntry, TrialInfo
from service.models import Job
from service.settings import Settings

# Small enough that "above max_trials" is cheap to test, large enough for the default spec (100).
TEST_MAX_TRIALS = 500
TEST_PAGE_MAX = 20


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"data_dir": data_dir, "max_trials": TEST_MAX_TRIALS, "api_page_max": TEST_PAGE_MAX}
    return Settings(**(values | overrides))


def count_jobs(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.scalar(select(func.count()).select_from(Job)) or 0)


def job_spec(model_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A valid submission body for ``model_dir``; overrides replace top-level fields."""
    body: dict[str, Any] = {
        "model": str(model_dir),
        "target": {"param_ratio": 0.6},
        "n_trials": 20,
        # The tiny test model is too small for the default alignment of 32 channels.
        "search_space": {"ffn_alignment": 8},
    }
    return body | overrides


def assert_problem(response: Any, status: int, detail_contains: str = "") -> dict[str, Any]:
    """The response is RFC 9457 problem+json with this status and a detail mentioning ``detail_contains``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    problem: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail", "instance"} <= problem.keys(), problem
    assert problem["status"] == status
    assert detail_contains in problem["detail"], problem
    assert "Traceback" not in response.text
    return problem


def trial_info(number: int, state: str = "complete", *, origin: str = "sampler", **fields: Any) -> TrialInfo:
    """A trial as the search describes it (``search.results.TrialInfo``), empty but for ``fields``."""
    empty: dict[str, Any] = {
        "value": None,
        "values": None,
        "arch": None,
        "param_count": None,
        "param_ratio": None,
        "scores": {},
        "timings": {},
        "duration_s": None,
        "error": None,
    }
    return TrialInfo(number=number, state=state, origin=origin, **(empty | fields))


def best_entry(trial_number: int, **fields: Any) -> BestEntry:
    """A job's best entry (``search.results.BestEntry``), empty but for ``fields``."""
    empty: dict[str, Any] = {
        "origin": "sampler",
        "arch": None,
        "param_count": None,
        "param_ratio": None,
        "score": None,
        "scores": {},
        "verified": None,
    }
    return BestEntry(trial_number=trial_number, **(empty | fields))
