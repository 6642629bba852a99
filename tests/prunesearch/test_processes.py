"""``prunesearch serve`` stops every process it started, whatever stops it: SIGTERM (``docker
stop``, systemd), SIGINT (Ctrl+C), and even SIGKILL, which leaves it no chance to clean up."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from prunesearch.lifetime import WORKER_STOP_TIMEOUT_S
from tests import proctree
from tests.e2e.processes import PRUNESEARCH, Process, base_env, free_port, wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not proctree.supported(), reason="reads the process tree from /proc (Linux)"),
]

# uvicorn's shutdown plus the idle worker's warm shutdown take a few seconds; never the worker timeout.
STOP_BOUND_S = WORKER_STOP_TIMEOUT_S


def start_serve(tmp_path: Path) -> tuple[Process, list[proctree.ProcessInfo]]:
    """``serve`` on a fresh data dir and port, up: /healthz answers and the worker's pool is forked."""
    port = free_port()
    process = Process("serve", [*PRUNESEARCH, "serve"], base_env(tmp_path / "data", port=str(port)), tmp_path)

    def up() -> list[proctree.ProcessInfo] | None:
        if process.popen.poll() is not None:
            raise AssertionError(f"serve exited early\n{process.tail()}")
        try:
            healthy = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        except httpx.TransportError:
            return None
        ready = b"ready." in process.log_path.read_bytes()  # Celery's worker, pool child forked
        started = proctree.descendants(process.popen.pid)
        return started if healthy and ready and len(started) >= 2 else None

    return process, wait_until(up, timeout=120, what="serve and its worker")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_stops_serve_and_everything_it_started(tmp_path: Path, signum: signal.Signals) -> None:
    process, started = start_serve(tmp_path)
    try:
        process.popen.send_signal(signum)
        assert process.popen.wait(timeout=STOP_BOUND_S) == 0, process.tail()
        left = proctree.survivors(started, within=2)
        assert not left, [f"{p.pid}: {p.command}" for p in left]
        assert "Stopping the worker" in process.tail()
    finally:
        process.stop()


def test_the_worker_does_not_outlive_a_killed_serve(tmp_path: Path) -> None:
    process, started = start_serve(tmp_path)
    try:
        process.popen.kill()
        process.popen.wait()
        left = proctree.survivors(started, within=15)
        assert not left, [f"{p.pid}: {p.command}" for p in left]
    finally:
        process.stop()
