"""schemathesis against the live OpenAPI document of a real ``prunesearch api`` process, with a valid
API key: whatever it generates, valid or not, the API answers without a 5xx and as its schema says.

Bounded (``MAX_EXAMPLES`` per operation, no shrinking beyond Hypothesis' defaults) so the module
runs in well under a minute.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

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

MAX_EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
    ignored_auth,  # a request without the key must not be served
]


@pytest.fixture(scope="module")
def live_api(
    tmp_path_factory: pytest.TempPathFactory, postgres_database_factory: Callable[[], str]
) -> Iterator[tuple[str, str]]:
    """A real API process (filesystem broker, no worker: accepted jobs just wait) and a key."""
    import httpx

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
        yield base_url, key
    except BaseException:
        print(process.tail())
        raise
    finally:
        process.stop()


@pytest.fixture(scope="module")
def api_schema(live_api: tuple[str, str]) -> schemathesis.BaseSchema:
    base_url, _key = live_api
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json")


# schemathesis' own pytest integration (lazy schemas) does not run under pytest 9; the documented
# strategy API does the same: one bounded Hypothesis run per operation and generation mode.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_the_live_api_honours_its_schema(
    api_schema: schemathesis.BaseSchema, live_api: tuple[str, str], mode: GenerationMode
) -> None:
    _base_url, key = live_api
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
        except Unsatisfiable:  # no invalid input exists for an operation without parameters
            assert mode is GenerationMode.NEGATIVE and not operation.path_parameters, operation.label
        except Exception as error:  # collect every operation's first failure, not only the first one
            failures.append(f"{operation.label}: {error}")
    assert not failures, "\n\n".join(failures)


def test_the_schema_covers_the_job_api(api_schema: schemathesis.BaseSchema) -> None:
    paths = set(api_schema.raw_schema["paths"])
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/trials", "/v1/jobs/{job_id}/cancel"} <= paths
