"""Start the service's real processes (the commands a user or Compose runs) and talk HTTP to them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from tests import proctree
from tests.conftest import SMALL_SPEED_WORKLOAD

PRUNESEARCH = [sys.executable, "-m", "prunesearch"]
TERMINAL = {"succeeded", "failed", "cancelled"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    """A child process whose output goes to a log file that failing tests print."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(args, env=dict(env), stdout=self._log, stderr=subprocess.STDOUT)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM, as ``docker stop`` and systemd send; then SIGKILL to whatever it left running
        (tests/prunesearch/test_processes.py checks that ``serve`` leaves nothing)."""
        started = proctree.descendants(self.popen.pid) if proctree.supported() else []
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        proctree.kill(proctree.survivors(started, within=5))
        self._log.close()

    def tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return f"--- {self.name} (exit {self.popen.poll()}) ---\n" + "\n".join(text[-lines:])


def run_command(args: list[str], env: Mapping[str, str]) -> None:
    result = subprocess.run([*PRUNESEARCH, *args], env=dict(env), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def wait_until(condition: Callable[[], Any], *, timeout: float, interval: float = 0.3, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def wait_ready(client: httpx.Client, processes: list[Process], timeout: float = 90) -> None:
    def ready() -> bool:
        for process in processes:
            if process.popen.poll() is not None:
                raise AssertionError(f"{process.name} exited early\n{process.tail()}")
        try:
            return client.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    wait_until(ready, timeout=timeout, what="/readyz")


def base_env(data_dir: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRUNESEARCH_")}
    env["PRUNESEARCH_DATA_DIR"] = str(data_dir)
    env["HF_HUB_OFFLINE"] = "1"
    env["OMP_NUM_THREADS"] = "1"  # the API, the worker and pytest share two cores
    env.update(SMALL_SPEED_WORKLOAD)  # each export's speed report: a tiny workload
    env.update({f"PRUNESEARCH_{key.upper()}": value for key, value in settings.items()})
    return env
