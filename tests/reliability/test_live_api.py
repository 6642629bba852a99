"""A real ``prunesearch api`` process, with a valid API key, under hostile and heavy use.

schemathesis fuzzes its live OpenAPI document: whatever it generates, valid or not, the API answers
without a 5xx and as its schema says. Bounded (``MAX_EXAMPLES`` per operation and generation mode,
derandomized) so the module runs in well under a minute. And more concurrent clients than the
API has threads are all served.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service import apikeys, migrate
from service.db import make_engine, make_sessionmaker
from tests.conftest import TINY_LLAMA_CONFIG
from tests.e2e.processes import PRUNESEARCH, Process, base_env, free_port, wait_ready

pytestmark = pytest.mark.e2e

MAX_EXAMPLES = 20
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
    ignored_auth,  # a request without the key must not be served
]


@dataclass(frozen=True)
class LiveApi:
    base_url: str
    key: str
    model: Path  # a config-only model inside the server's model_roots


@pytest.fixture(scope="module")
def live_api(
    tmp_path_factory: pytest.TempPathFactory, postgres_database_factory: Callable[[], str]
) -> Iterator[LiveApi]:
    """A real API process (filesystem broker, no worker: accepted jobs just wait) and a key."""
    work = tmp_path_factory.mktemp("fuzz")
    models = work / "models"
    (models / "tiny").mkdir(parents=True)
    (models / "tiny" / "config.json").write_text(json.dumps(TINY_LLAMA_CONFIG))
    database_url = postgres_database_factory()
    migrate.upgrade(database_url)
    engine = make_engine(database_url)
    with make_sessionmaker(engine)() as session:
        key = apikeys.create_key(session, "fuzzer").key
        session.commit()
    engine.dispose()
    port = free_port()
    env = base_env(work / "data", database_url=database_url, port=str(port), model_roots=str(models))
    process = Process("api", [*PRUNESEARCH, "api"], env, work)
    base_url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base_url, timeout=10) as client:
            wait_ready(client, [process])
        yield LiveApi(base_url, key, models / "tiny")
    except BaseException:
        print(process.tail())
        raise
    finally:
        process.stop()


@pytest.fixture(scope="module")
def api_schema(live_api: LiveApi) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_url(f"{live_api.base_url}/openapi.json")
    # Every call carries the key (ignored_auth probes without it): a generated case must not also
    # vary the Authorization header, or a "missing header" negative case becomes a valid request.
    schema.config.generation.update(with_security_parameters=False)
    return schema


# schemathesis' own pytest integration (lazy schemas) does not run under pytest 9; the documented
# strategy API does the same: one bounded Hypothesis run per operation and generation mode.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_the_live_api_honours_its_schema(
    api_schema: schemathesis.BaseSchema, live_api: LiveApi, mode: GenerationMode
) -> None:
    key = live_api.key
    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10

    for operation in operations:

        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,  # the same examples on every run: a failure here is reproducible
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, checks=CHECKS, timeout=30)

        try:
            run()
        except Unsatisfiable:  # no invalid input exists where every parameter accepts any string
            assert mode is GenerationMode.NEGATIVE, operation.label
        except Exception as error:  # collect every operation's first failure, not only the first one
            failures.append(f"{operation.label}: {error}")
    assert not failures, "\n\n".join(failures)


def test_the_schema_covers_the_job_api(api_schema: schemathesis.BaseSchema) -> None:
    paths = set(api_schema.raw_schema["paths"])
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/trials", "/v1/jobs/{job_id}/cancel"} <= paths


def test_more_concurrent_clients_than_threads_are_all_served(live_api: LiveApi) -> None:
    """Regression: with FastAPI's default 40 threads, 200 concurrent pollers deadlocked the thread pool
    against the connection pool and every request timed out (benchmarks/load.py found it)."""
    headers = {"Authorization": f"Bearer {live_api.key}"}
    body = {"model": str(live_api.model), "target": {"param_ratio": 0.6}, "search_space": {"ffn_alignment": 8}}
    created = httpx.post(f"{live_api.base_url}/v1/jobs", json=body, headers=headers, timeout=30)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]

    async def hammer(clients: int) -> list[int | str]:
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(base_url=live_api.base_url, headers=headers, limits=limits, timeout=60) as client:

            async def one(index: int) -> int | str:
                path = f"/v1/jobs/{job_id}" if index % 2 else f"/v1/jobs/{job_id}/trials"
                try:
                    return (await client.get(path)).status_code
                except httpx.HTTPError as error:
                    return type(error).__name__

            return await asyncio.gather(*(one(index) for index in range(clients)))

    # A thread of its own: Playwright's sync API (tests/browser) may keep an event loop running in this one.
    with ThreadPoolExecutor(max_workers=1) as pool:
        statuses = pool.submit(asyncio.run, hammer(150)).result()
    assert statuses == [200] * 150, sorted(set(map(str, statuses)))
