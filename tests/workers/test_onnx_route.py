"""The ONNX graph of a job's export over HTTP: a request queues the conversion, a real worker writes
it, and ``GET .../artifacts/best.onnx.tar`` serves a graph that generates as the model does.

Real processes (API and Celery worker) on PostgreSQL and Redis; the job row and its best export
are written here, so no search runs."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy.orm import sessionmaker
from transformers import AutoTokenizer

from search.export import load_pruned
from search.onnx_runtime import generate_onnx
from service import repository
from service.db import session_scope
from tests.conftest import tiny_job_spec
from tests.e2e.processes import wait_until
from tests.reliability.cluster import cluster_on
from tests.search.test_onnx_export import _export
from tests.service.helpers import assert_problem

pytestmark = pytest.mark.e2e


def test_onnx_conversion_is_requested_written_by_the_worker_and_served(
    postgres_database_factory: Callable[[], str], redis_url: str, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    with cluster_on(postgres_database_factory(), redis_url, tmp_path) as cluster:
        with session_scope(sessionmaker(cluster.engine)) as session:
            spec = tiny_job_spec(tiny_llama_dir).model_dump(mode="json")
            job_id = repository.create_job(session, spec=spec, model=str(tiny_llama_dir), trials_total=1).id
        best = _export(
            "llama", AutoTokenizer.from_pretrained(tiny_llama_dir), tmp_path / "data/artifacts" / job_id / "best"
        )
        cluster.start_api()
        client = cluster.client

        assert_problem(client.get(f"/v1/jobs/{job_id}/artifacts/best.onnx.tar"), 404, "/artifacts/best/onnx converts")
        assert_problem(client.post(f"/v1/jobs/{job_id}/artifacts/trial-9/onnx"), 404, "no export named 'trial-9'")
        assert_problem(client.post("/v1/jobs/nope/artifacts/best/onnx"), 404)
        requested = client.post(f"/v1/jobs/{job_id}/artifacts/best/onnx")
        assert requested.status_code == 202, requested.text
        assert requested.json()["name"] == "best.onnx" and requested.json()["status"] == "pending"
        assert requested.headers["location"] == f"/v1/jobs/{job_id}/artifacts"

        cluster.start_worker()

        def ready() -> bool:
            items = client.get(f"/v1/jobs/{job_id}/artifacts").json()["items"]
            return any(item["name"] == "best.onnx" and item["status"] == "ready" for item in items)

        wait_until(ready, timeout=240, interval=1.0, what="the ONNX graph of best")
        again = client.post(f"/v1/jobs/{job_id}/artifacts/best/onnx")
        assert again.status_code == 200 and again.json()["archive_url"].endswith("/best.onnx.tar")
        assert_problem(client.post(f"/v1/jobs/{job_id}/artifacts/best.onnx/onnx"), 409, "an ONNX graph already")
        archive = client.get(f"/v1/jobs/{job_id}/artifacts/best.onnx.tar")
        assert archive.status_code == 200

    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        tar.extractall(tmp_path / "download", filter="data")
    prompt = torch.randint(3, 512, (1, 6), generator=torch.Generator().manual_seed(4))
    model = load_pruned(best)
    model.generation_config.eos_token_id = None
    with torch.no_grad():
        expected = model.generate(prompt, max_new_tokens=16, do_sample=False, pad_token_id=0)
    tokens = generate_onnx(tmp_path / "download" / "best.onnx", prompt.numpy(), max_new_tokens=16, eos_token_id=[])
    np.testing.assert_array_equal(tokens, expected.numpy())
