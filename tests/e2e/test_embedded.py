"""`prunesearch serve`: the API and an embedded worker with no external services."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e import flow
from tests.e2e.processes import PRUNESEARCH, Process, base_env, free_port, run_command, wait_ready, wait_until
from tests.service.receiver import receiver

pytestmark = pytest.mark.e2e

# The no-auth mode signs webhook events with this server setting; receivers here are on 127.0.0.1.
WEBHOOK_SECRET = "whsec_embedded"


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Path]]:
    port = free_port()
    data_dir = tmp_path_factory.mktemp("embedded-data")
    env = base_env(
        data_dir,
        port=str(port),
        webhook_secret=WEBHOOK_SECRET,
        webhook_allow_http="true",
        webhook_allow_private="true",
    )
    process = Process("serve", [*PRUNESEARCH, "serve"], env, tmp_path_factory.mktemp("logs"))
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        wait_ready(client, [process])
        yield client, data_dir
    except BaseException:
        print(process.tail())
        raise
    finally:
        client.close()
        process.stop()
    print(process.tail(20))


def test_embedded_service_runs_a_job_on_sqlite_and_the_filesystem_broker(
    embedded: tuple[httpx.Client, Path], tiny_llama_dir: Path, tmp_path: Path
) -> None:
    client, data_dir = embedded
    job_id = flow.submit(client, flow.job_body(tiny_llama_dir))
    flow.check_completed_job(client, job_id)
    flow.check_report_and_artifacts(client, job_id, tmp_path)
    assert (data_dir / "prunesearch.sqlite3").is_file()
    assert (data_dir / "broker").is_dir()

    # `prunesearch export` reads the same database and writes a loadable model.
    from search.export import load_pruned

    trial = flow.all_trials(client, job_id)[5]["number"]
    out = tmp_path / "cli-export"
    run_command(["export", job_id, "--trial", str(trial), "--out", str(out)], base_env(data_dir))
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["trial_number"] == trial and provenance["job_id"] == job_id
    assert sum(p.numel() for p in load_pruned(out).parameters()) == provenance["param_count"]


def test_embedded_cancel(embedded: tuple[httpx.Client, Path], tiny_llama_dir: Path) -> None:
    flow.check_cancel(embedded[0], tiny_llama_dir)


def test_embedded_webhook_on_the_filesystem_broker(embedded: tuple[httpx.Client, Path], broken_model_dir: Path) -> None:
    """The notify queue works on the filesystem broker and SQLite; the anonymous job is signed with
    the server's WEBHOOK_SECRET."""
    client = embedded[0]
    with receiver() as hooks:
        body = flow.job_body(broken_model_dir) | {"notify": {"url": hooks.url("/ok")}}
        job_id = flow.submit(client, body)
        assert flow.wait_for(client, job_id, {"succeeded", "failed", "cancelled"})["status"] == "failed"

        def delivered() -> bool:
            deliveries = client.get(f"/v1/jobs/{job_id}").json()["notify"]["deliveries"]
            return [d["status"] for d in deliveries] == ["delivered"]

        wait_until(delivered, timeout=60, what="the webhook delivery")
    [event] = hooks.on("/ok")
    assert event.verified_with(WEBHOOK_SECRET) and json.loads(event.body)["event"] == "job.failed"
