"""optuna-dashboard, pointed at a job's Optuna storage, shows the study, its metric names and the
budget constraint's feasibility (anchors.md §3.1: `optuna-dashboard <our-db-url>` just works)."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from search.candidates import prepare
from search.loading import LoadedModel, load_model
from search.spec import JobSpec
from search.study import run_search
from studystore import make_storage
from tests.e2e.processes import Process, base_env, free_port, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def loaded(tiny_llama_dir: Path) -> LoadedModel:
    return load_model(str(tiny_llama_dir), device="cpu")


def test_dashboard_reads_the_study(loaded: LoadedModel, tiny_llama_dir: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/optuna.sqlite3"
    spec = JobSpec(
        model=str(tiny_llama_dir),
        target={"param_ratio": 0.6},
        n_trials=4,
        verify_top_k=0,
        calibration={"n_samples": 4, "seq_len": 32, "heldout_samples": 4},
        search_space={"ffn_alignment": 8},
    )
    run_search(prepare(loaded, spec), study_name="job-dashboard", storage=make_storage(url))

    port = free_port()
    dashboard = Process(
        "dashboard",
        [str(Path(sys.executable).with_name("optuna-dashboard")), "--host", "127.0.0.1", "--port", str(port), url],
        base_env(tmp_path),
        tmp_path,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:

        def studies() -> list[dict] | None:
            try:
                return client.get("/api/studies").json()["study_summaries"]
            except (httpx.TransportError, ValueError):
                return None

        (summary,) = wait_until(studies, timeout=60, what="optuna-dashboard to answer")
        assert summary["study_name"] == "job-dashboard"
        detail = client.get(f"/api/studies/{summary['study_id']}").json()
        assert detail["objective_names"] == ["kl"]  # the default proxy
        assert len(detail["trials"]) == 4
        for trial in detail["trials"]:
            assert trial["state"] == "Complete"
            assert trial["constraints"] and all(value <= 0 for value in trial["constraints"])
        assert {a["key"] for a in detail["trials"][0]["user_attrs"]} >= {"arch", "param_ratio", "origin"}
    except BaseException:
        print(dashboard.tail())
        raise
    finally:
        client.close()
        dashboard.stop()
