"""The HTML shells and assets as the API serves them (no browser needed)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.api.web.router import STATIC_DIR
from service.settings import Settings


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("web-data"))
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_the_pages_are_served_with_a_strict_content_security_policy(client: TestClient) -> None:
    for path in ("/", "/jobs/0123456789abcdef0123456789abcdef", "/compare?jobs=a,b"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("text/html")
        policy = response.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "script-src 'self'" in policy
        assert "http://" not in response.text.replace("http://www.w3.org", "") and "https://" not in response.text


def test_a_job_page_shell_carries_only_the_escaped_id(client: TestClient) -> None:
    page = client.get("/jobs/abc-123_x").text
    assert 'data-job-id="abc-123_x"' in page
    bad = client.get("/jobs/%3Cscript%3Ealert(1)%3C%2Fscript%3E")
    assert bad.status_code == 404
    assert bad.headers["content-type"].startswith("application/problem+json")


def test_every_asset_is_served_locally_and_revalidated(client: TestClient) -> None:
    assets = sorted(path.name for path in STATIC_DIR.iterdir() if path.is_file())
    assert {"app.css", "jobs.js", "job.js", "plot.js", "favicon.svg"} <= set(assets)
    for name in assets:
        response = client.get(f"/static/{name}")
        assert response.status_code == 200, name
        assert response.headers["cache-control"] == "no-cache"
        text = response.text
        assert "https://" not in text and "http://" not in text.replace("http://www.w3.org/2000/svg", ""), name
    assert client.get("/static/../router.py").status_code == 404


def test_the_html_routes_stay_out_of_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and "/jobs/{job_id}" not in paths and "/compare" not in paths
    assert "/v1/compare" in paths


def test_templates_reference_only_existing_assets() -> None:
    import re

    templates = Path(STATIC_DIR).parent / "templates"
    for template in templates.glob("*.html"):
        for name in re.findall(r"\{\{ static \}\}/([\w.-]+)", template.read_text()):
            assert (STATIC_DIR / name).is_file(), (template.name, name)


def test_the_pages_answer_head_like_get(client: TestClient) -> None:
    for path in ("/", "/jobs/0123456789abcdef0123456789abcdef", "/compare"):
        head, get = client.head(path), client.get(path)
        assert head.status_code == 200, path
        assert head.headers["content-type"] == get.headers["content-type"] and head.content == b""


def test_the_api_docs_load_their_assets_from_this_server(client: TestClient) -> None:
    for path in ("/docs", "/redoc"):
        page = client.get(path).text
        assets = re.findall(r'(?:src|href)="([^"]+)"', page)
        assert assets and all(url.startswith("/") for url in assets), (path, assets)
        for url in assets:
            assert client.get(url).status_code == 200, url
