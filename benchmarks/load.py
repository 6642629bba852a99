"""Load test: many concurrent pollers of one job, beside a bare FastAPI app serving the same bytes.

Starts the production shape on this machine (a fresh PostgreSQL database, a private Redis, the API
and one worker as separate processes, an API key), runs a job on a tiny model to the end (60 trials,
~120 KB of inline calibration texts, as the issue that asked for this measured), then lets
``--pollers`` clients poll ``GET /v1/jobs/{id}`` and page through ``GET /v1/jobs/{id}/trials`` as
fast as they can: first the service, then ``benchmarks/bare_app.py``, a bare FastAPI app on the same
uvicorn settings answering the same paths with the service's bodies held in memory. Reports
requests per second and latency percentiles of both, the service's share of the bare app's
throughput per GET, and every failed request (a non-2xx answer or a transport error), and writes
them, with the exact command, to ``--write`` (``docs/reliability.md``).

    .venv/bin/python benchmarks/load.py --pollers 4 200 --duration 20 --write docs/reliability.md

The pollers never send ``If-None-Match``: every answer is a whole 200 body, the bare app's job.
Needs PostgreSQL (``--admin-url``, a role that may CREATE DATABASE) and ``redis-server`` on PATH.
Exits non-zero if any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.sections import write_section  # noqa: E402

PRUNESEARCH = [sys.executable, "-m", "prunesearch"]


@dataclass
class Samples:
    """Latencies (seconds) of successful requests and descriptions of failed ones, per endpoint."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    failures: list[str] = field(default_factory=list)
    # GETs sent again because the server had just closed the idle keep-alive connection they went
    # out on (the request never reached the app). Browsers and urllib3 retry these silently.
    stale_connection_retries: int = 0

    @property
    def total(self) -> int:
        return sum(len(values) for values in self.latencies.values()) + len(self.failures)


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile: the smallest value with at least q% of the values at or below it."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


# --- the deployment -------------------------------------------------------------------------------


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


class Deployment:
    """Everything the benchmark starts, stopped (and the database dropped) by ``close``."""

    def __init__(self, admin_url: str, work: Path) -> None:
        self.work = work
        self.admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self.database = f"prunesearch_load_{secrets.token_hex(4)}"
        with self.admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{self.database}"')
        self.database_url = make_url(admin_url).set(database=self.database).render_as_string(hide_password=False)
        self.processes: list[subprocess.Popen[bytes]] = []
        self.named: dict[str, subprocess.Popen[bytes]] = {}
        redis_server = shutil.which("redis-server")
        if redis_server is None:
            raise SystemExit("redis-server is not on PATH")
        redis_port = free_port()
        self._spawn("redis", [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
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

    def _spawn(self, name: str, args: list[str]) -> None:
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

    def start(self) -> str:
        """Migrate, create a key, start the API and a worker; returns the key."""
        self.run("db", "upgrade")
        key = self.run("keys", "create", "load-test").strip()
        self._spawn("api", [*PRUNESEARCH, "api"])
        self._spawn("worker", [*PRUNESEARCH, "worker"])
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
        with self.admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        self.admin.dispose()


# --- the pollers ----------------------------------------------------------------------------------


class KeepAliveConnection:
    """One poller's HTTP/1.1 keep-alive connection, spoken by hand.

    httpx with 200 connections took most of the two cores itself (its pool's bookkeeping grows with
    the connections), so at 200 pollers both servers measured the load generator. This client does
    what the pollers need and no more: GET, Content-Length bodies, reconnect when the server closed.
    """

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host, self.port = host, port
        self.head = "".join(f"{name}: {value}\r\n" for name, value in {"Host": f"{host}:{port}", **headers}.items())
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self, target: str) -> tuple[int, bytes]:
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        writer.write(f"GET {target} HTTP/1.1\r\n{self.head}\r\n".encode())
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            fields = head.lower()
            start = fields.find(b"\r\ncontent-length:")
            length = int(fields[start + 17 : fields.index(b"\r\n", start + 2)]) if start >= 0 else 0
            body = await reader.readexactly(length)
        except BaseException:
            self.close()
            raise
        if b"\r\nconnection: close" in fields:
            self.close()
        return status, body

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


async def poller(
    connection: KeepAliveConnection, job_id: str, deadline: float, budget: list[int], samples: Samples, page: int
) -> None:
    """Alternates a status read with the next page of trials (following cursors, then starting over)."""
    cursor: str | None = None
    read_status = True
    while time.monotonic() < deadline and budget[0] > 0:
        budget[0] -= 1
        if read_status:
            endpoint, target = "GET /v1/jobs/{id}", f"/v1/jobs/{job_id}"
        else:
            endpoint = "GET /v1/jobs/{id}/trials"
            target = f"/v1/jobs/{job_id}/trials?" + urlencode({"limit": page} | ({"cursor": cursor} if cursor else {}))
        started = time.perf_counter()
        try:
            try:
                status, body = await connection.get(target)
            except (ConnectionError, asyncio.IncompleteReadError):
                samples.stale_connection_retries += 1
                status, body = await connection.get(target)
            elapsed = time.perf_counter() - started
            if status != 200:
                samples.failures.append(f"{endpoint}: {status} {body[:200]!r}")
            else:
                samples.latencies[endpoint].append(elapsed)
                if not read_status:
                    cursor = json.loads(body)["next_cursor"]
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as error:
            samples.failures.append(f"{endpoint}: {type(error).__name__}: {error}")
        read_status = not read_status


async def load(base_url: str, key: str, job_id: str, pollers: int, duration: float, max_requests: int) -> Samples:
    samples = Samples()
    budget = [max_requests]
    url = httpx.URL(base_url)
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}
    connections = [KeepAliveConnection(url.host, url.port or 80, headers) for _ in range(pollers)]
    deadline = time.monotonic() + duration
    try:
        await asyncio.gather(*(poller(c, job_id, deadline, budget, samples, page=50) for c in connections))
    finally:
        for connection in connections:
            connection.close()
    return samples


# --- the bare app ---------------------------------------------------------------------------------


def capture_bodies(client: httpx.Client, job_id: str, page: int) -> dict[str, Any]:
    """The service's answers to the pollers' GETs, for the bare app to serve: the job, and each page of
    trials by the cursor that asks for it ("" for the first)."""
    job = client.get(f"/v1/jobs/{job_id}")
    job.raise_for_status()
    pages: dict[str, str] = {}
    cursor: str | None = None
    while True:
        answer = client.get(
            f"/v1/jobs/{job_id}/trials", params={"limit": page} | ({"cursor": cursor} if cursor else {})
        )
        answer.raise_for_status()
        pages[cursor or ""] = answer.text
        cursor = answer.json()["next_cursor"]
        if cursor is None:
            return {"job": job.text, "trials": pages}


def start_bare_app(deployment: Deployment, bodies: dict[str, Any]) -> str:
    """``benchmarks/bare_app.py`` serving ``bodies``, as one more process of the deployment; its URL."""
    path = deployment.work / "bare-bodies.json"
    path.write_text(json.dumps(bodies))
    port = free_port()
    deployment._spawn("bare", [sys.executable, str(ROOT / "benchmarks" / "bare_app.py"), str(path), str(port)])
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=url, timeout=5) as client:

        def ready() -> bool:
            try:
                return client.get("/v1/jobs/any").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, 60, "the bare app to be ready")
    return url


# --- the report -----------------------------------------------------------------------------------

ENDPOINTS = ("GET /v1/jobs/{id}", "GET /v1/jobs/{id}/trials")


@dataclass
class Run:
    """One load phase: who served it, with how many pollers, what the clients saw."""

    server: str
    pollers: int
    samples: Samples
    wall_s: float

    def rate(self, endpoint: str) -> float:
        return len(self.samples.latencies[endpoint]) / self.wall_s


def table(service: Run, bare: Run) -> str:
    lines = [
        "| endpoint | service req/s | p50 ms | p99 ms | bare app req/s | p50 ms | p99 ms | service / bare |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for endpoint in ENDPOINTS:
        cells = []
        for run in (service, bare):
            values = run.samples.latencies[endpoint]
            cells += [
                f"{run.rate(endpoint):.0f}",
                f"{percentile(values, 50) * 1000:.1f}",
                f"{percentile(values, 99) * 1000:.1f}",
            ]
        ratio = service.rate(endpoint) / bare.rate(endpoint) if bare.rate(endpoint) else float("nan")
        lines.append(f"| {endpoint} | {' | '.join(cells)} | **{ratio:.2f}×** |")
    return "\n".join(lines)


def report(
    runs: list[tuple[Run, Run]],
    args: argparse.Namespace,
    sizes: dict[str, int],
    command: str,
    load_average: float,
) -> tuple[str, bool]:
    failures = [
        f"{run.server}, {run.pollers} pollers: {failure}"
        for pair in runs
        for run in pair
        for failure in run.samples.failures
    ]
    retries = sum(run.samples.stale_connection_retries for pair in runs for run in pair)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    busy = ": other work was using the cores too" if load_average > (os.cpu_count() or 1) else ""
    tables = "\n\n".join(f"**{service.pollers} pollers**\n\n{table(service, bare)}" for service, bare in runs)
    listed = "\n".join(f"- {failure}" for failure in failures[:20]) or "none"
    text = f"""## Load test: pollers of a job, the service beside a bare FastAPI app

Measured {when} on this machine: {os.cpu_count()} CPU cores shared by the API (or the bare app),
PostgreSQL, Redis and the load generator itself (load average {load_average:.1f} just before the
run{busy}); Python {platform.python_version()}, {platform.system()} {platform.release()}. One API
process (`prunesearch api`, uvicorn, defaults) on PostgreSQL, API key authentication on every
request; the worker had finished the job and was stopped.

```bash
{command}
```

One finished job: {sizes["trials"]} trials, ~{sizes["texts"] // 1000} KB of inline calibration texts in its spec.
Clients each alternate `GET /v1/jobs/{{id}}` with the next page of
`GET /v1/jobs/{{id}}/trials?limit=50` (following `next_cursor`, then starting over), for
{args.duration:.0f} s per phase, never sending `If-None-Match`, so every answer is a whole 200
body ({sizes["job"]:,} bytes for the job, {sizes["page"]:,} for a full page of trials). Then the same
clients poll `benchmarks/bare_app.py`: a bare FastAPI app on the same uvicorn settings answering
the same paths with those bytes from memory (no authentication, database or rendering).

{tables}

- Failed requests: **{len(failures)}** (a failure is any answer other than 200, or a transport
  error). GETs re-sent once because the idle keep-alive connection they used had just been closed
  by the server (as browsers and urllib3 do; the first attempt never reached the app): {retries}.
- Latency is client-side (the load generator shares the CPU), from sending the request to reading the
  whole body. The load generator is a minimal HTTP/1.1 keep-alive client (one connection per
  poller) on asyncio; it too takes CPU, the same for both servers.

Failed requests: {listed}
"""
    return text, not failures


def run_phase(server: str, url: str, key: str, job_id: str, pollers: int, args: argparse.Namespace) -> Run:
    print(f"{server}: {pollers} pollers for {args.duration:.0f} s ...", flush=True)
    started = time.monotonic()
    samples = asyncio.run(load(url, key, job_id, pollers, args.duration, args.max_requests))
    return Run(server, pollers, samples, time.monotonic() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pollers", type=int, nargs="+", default=[4, 200])
    parser.add_argument("--duration", type=float, default=20.0, help="Seconds of polling per phase (upper bound).")
    parser.add_argument("--max-requests", type=int, default=200_000, help="Requests per phase (upper bound).")
    parser.add_argument("--trials", type=int, default=60, help="Trials of the polled job.")
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("PRUNESEARCH_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    parser.add_argument("--write", type=Path, default=None, help="Markdown file to put the results in.")
    args = parser.parse_args()
    python = Path(sys.executable)
    # The project's virtual environment, as the README sets it up, wherever this checkout's is.
    shown = ".venv/bin/python" if python.parent.parent.name == ".venv" else "python"
    command = shlex.join([shown, "benchmarks/load.py", *sys.argv[1:]])

    from search.calibration_texts import default_texts
    from search.demo import build_demo_model  # torch: only the load generator's own set-up needs it

    texts: list[str] = []
    for text in default_texts():  # ~120 KB of inline texts, as the job the issue measured carried
        if sum(map(len, texts)) >= 120_000:
            break
        texts.append(text)
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="prunesearch-load-")))
        model = build_demo_model(work / "models" / "tiny", size="tiny")
        deployment = Deployment(args.admin_url, work)
        stack.callback(deployment.close)
        key = deployment.start()
        body = {
            "model": str(model),
            "target": {"param_ratio": 0.6},
            "n_trials": args.trials,
            "seed": 1,
            "calibration": {"texts": texts, "n_samples": 4, "seq_len": 64, "heldout_samples": 4},
            "search_space": {"ffn_alignment": 8},
            "verify_top_k": 1,
            "audit_size": 0,
        }
        with httpx.Client(
            base_url=deployment.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120
        ) as client:
            created = client.post("/v1/jobs", json=body)
            created.raise_for_status()
            job_id = created.json()["id"]

            def ended() -> bool:
                return client.get(f"/v1/jobs/{job_id}").json()["status"] in ("succeeded", "failed", "cancelled")

            print(f"job {job_id}: running {args.trials} trials ...", flush=True)
            wait_until(ended, 900, "the job to end", interval=2)
            deployment.stop("worker")  # the API alone, as the bare app will be alone
            bodies = capture_bodies(client, job_id, page=50)
        bare_url = start_bare_app(deployment, bodies)
        sizes = {
            "trials": args.trials,
            "texts": sum(map(len, texts)),
            "job": len(bodies["job"].encode()),
            "page": len(bodies["trials"][""].encode()),
        }
        load_average = os.getloadavg()[0]
        runs = [
            (
                run_phase("service", deployment.base_url, key, job_id, pollers, args),
                run_phase("bare app", bare_url, key, job_id, pollers, args),
            )
            for pollers in args.pollers
        ]
    text, ok = report(runs, args, sizes, command, load_average)
    print(text)
    if args.write is not None:
        write_section(args.write, "load-test", text)
        print(f"written to {args.write}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
