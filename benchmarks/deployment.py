"""The production shape on this machine, for the benchmarks: a fresh PostgreSQL database, a private
Redis, and the API and workers as separate ``prunesearch`` processes, all stopped (and the database
dropped) by ``close``.

Benchmarks do not import ``tests``: what they start is written here, with the shipped settings
unless a benchmark passes others.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url

PRUNESEARCH = [sys.executable, "-m", "prunesearch"]
ADMIN_URL = os.environ.get("PRUNESEARCH_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def exit_on_sigterm() -> None:
    """Make SIGTERM (``timeout``, ``kill``) exit through ``finally`` blocks, so ``close`` still runs."""
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(128 + signal.SIGTERM))


class Deployment:
    """Everything a benchmark starts. ``settings`` become ``PRUNESEARCH_<NAME>`` variables."""

    def __init__(self, admin_url: str, work: Path, **settings: str) -> None:
        self.work = work
        self.admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self.database = f"prunesearch_bench_{secrets.token_hex(4)}"
        with self.admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{self.database}"')
        self.database_url = make_url(admin_url).set(database=self.database).render_as_string(hide_password=False)
        self.engine: Engine = create_engine(self.database_url, pool_pre_ping=True)
        self.processes: list[subprocess.Popen[bytes]] = []
        self.named: dict[str, subprocess.Popen[bytes]] = {}
        redis_server = shutil.which("redis-server")
        if redis_server is None:
            raise SystemExit("redis-server is not on PATH")
        redis_port = free_port()
        self.spawn("redis", [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(work)])  # fmt: skip
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PRUNESEARCH_")} | {
            "PRUNESEARCH_DATA_DIR": str(work / "data"),
            "PRUNESEARCH_DATABASE_URL": self.database_url,
            "PRUNESEARCH_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
            "PRUNESEARCH_PORT": str(self.port),
            "PRUNESEARCH_MODEL_ROOTS": str(work / "models"),
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
        }
        self.env.update({f"PRUNESEARCH_{name.upper()}": value for name, value in settings.items()})

    def spawn(self, name: str, args: list[str]) -> None:
        """Start one more process of the deployment (logging to ``<work>/<name>.log``), stopped by ``close``."""
        log = (self.work / f"{name}.log").open("wb")
        process = subprocess.Popen(args, env=getattr(self, "env", None), stdout=log, stderr=log)
        self.processes.append(process)
        self.named[name] = process

    def stop(self, name: str) -> None:
        """Stop one process the deployment started (SIGTERM, then wait)."""
        process = self.named[name]
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()

    def run(self, *args: str) -> str:
        result = subprocess.run([*PRUNESEARCH, *args], env=self.env, capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise SystemExit(f"prunesearch {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
        return result.stdout

    def start(self, *, key_owner: str | None = None, workers: int = 1) -> str | None:
        """Migrate, create a key for ``key_owner`` (if given), start the API (``api``) and ``workers``
        workers (``worker-0``, ``worker-1``, ...: the names ``stop`` takes).

        Returns the key, or None without one (the API then serves anonymous loopback callers)."""
        self.run("db", "upgrade")
        key = self.run("keys", "create", key_owner).strip() if key_owner else None
        self.spawn("api", [*PRUNESEARCH, "api"])
        for index in range(workers):
            self.spawn(f"worker-{index}", [*PRUNESEARCH, "worker"])
        with httpx.Client(base_url=self.base_url, timeout=5) as client:

            def ready() -> bool:
                try:
                    return client.get("/readyz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(ready, 120, "the API to be ready")
        return key

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        self.engine.dispose()
        with self.admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        self.admin.dispose()
