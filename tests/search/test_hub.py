"""search.hub: a hub id is accepted when cached or when the hub answers, refused otherwise, and fast."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import constants

from search import hub
from search.errors import InvalidJobSpec
from search.spec import JobSpec, check_job
from tests.conftest import TINY_LLAMA_CONFIG

MISTYPED = "models/ref-llama-70m"  # issue 17: a relative path with a typo reads as a hub id


@pytest.fixture
def hub_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty hub cache of the test's own, and no probe verdict remembered from other tests."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub, "_probes", {})
    return cache


def cache_model(cache: Path, repo_id: str, commit: str = "0123abcd") -> None:
    """The layout huggingface_hub writes for a downloaded model: refs/main names a snapshot."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text(json.dumps(TINY_LLAMA_CONFIG))


@pytest.fixture
def listening_endpoint() -> Iterator[str]:
    """A local endpoint that accepts connections, standing in for a reachable hub."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def closed_endpoint() -> str:
    """A local port nobody listens on: connecting is refused at once."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def spec_for(model: str) -> JobSpec:
    return JobSpec(model=model, target={"param_ratio": 0.6})


def test_offline_a_mistyped_path_is_refused_naming_both_readings(
    monkeypatch: pytest.MonkeyPatch, hub_cache: Path
) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    started = time.monotonic()
    with pytest.raises(InvalidJobSpec, match="no such directory; not a cached hub model") as refused:
        check_job(spec_for(MISTYPED))
    assert time.monotonic() - started < 1.0
    assert MISTYPED in str(refused.value) and "HF_HUB_OFFLINE" in str(refused.value)


def test_offline_a_cached_hub_model_is_accepted(monkeypatch: pytest.MonkeyPatch, hub_cache: Path) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cache_model(hub_cache, "acme/tiny-llama")
    assert check_job(spec_for("acme/tiny-llama")) is None
    # A revision that was never downloaded is not in the cache.
    with pytest.raises(InvalidJobSpec, match="not a cached hub model"):
        check_job(spec_for("acme/tiny-llama").model_copy(update={"revision": "v2"}))


def test_without_the_flag_an_unreachable_hub_is_found_by_a_quick_probe(
    monkeypatch: pytest.MonkeyPatch, hub_cache: Path
) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    endpoint = closed_endpoint()
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    started = time.monotonic()
    with pytest.raises(InvalidJobSpec, match=f"not a cached hub model, and the hub cannot be reached.*{endpoint}"):
        check_job(spec_for(MISTYPED))
    assert time.monotonic() - started < hub.PROBE_TIMEOUT_S + 0.5


def test_a_reachable_hub_leaves_an_uncached_id_to_the_worker(
    monkeypatch: pytest.MonkeyPatch, hub_cache: Path, listening_endpoint: str
) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", listening_endpoint)
    assert check_job(spec_for("acme/not-downloaded-yet")) is None


def test_the_probe_verdict_is_reused_for_a_while(monkeypatch: pytest.MonkeyPatch, hub_cache: Path) -> None:
    probes: list[tuple[str, int]] = []

    def fake_connects(host: str, port: int) -> bool:
        probes.append((host, port))
        return False

    monkeypatch.setattr(hub, "_connects", fake_connects)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.example")
    for _ in range(3):
        assert hub.unreachable_reason() == "https://hub.example does not answer"
    assert probes == [("hub.example", 443)]
