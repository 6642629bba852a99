"""Load test: many concurrent pollers of one job, beside a bare FastAPI app serving the same bytes.

Starts the production shape on this machine (a fresh PostgreSQL database, a private Redis, the API
and one worker as separate processes, an API key), runs a job on a tiny model to the end (60 trials,
~120 KB of inline calibration texts, as the issue that asked for this measured), then lets
``--pollers`` clients poll ``GET /v1/jobs/{id}`` and page through ``GET /v1/jobs/{id}/trials`` as
fast as they can: the service, and ``benchmarks/bare_app.py``, a bare FastAPI app on the same
uvicorn settings answering the same paths with the service's bodies held in memory. The two take
turns (``--rounds``), so a change in the machine's other load weighs on both alike. Reports
requests per second and latency percentiles of both, the service's share of the bare app's
throughput per GET, each server's CPU time per request, and every failed request (a non-2xx
answer or a transport error), and writes them, with the exact command, to ``--write``
(``docs/reliability.md``).

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
import shlex
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.deployment import ADMIN_URL, Deployment, exit_on_sigterm, free_port, wait_until  # noqa: E402
from benchmarks.sections import write_section  # noqa: E402


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
    deployment.spawn("bare", [sys.executable, str(ROOT / "benchmarks" / "bare_app.py"), str(path), str(port)])
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
    cpu_s: float  # the server process's CPU time (user + system) while it was polled

    def rate(self, endpoint: str) -> float:
        return len(self.samples.latencies[endpoint]) / self.wall_s

    def cpu_ms_per_request(self) -> float:
        served = sum(len(values) for values in self.samples.latencies.values())
        return self.cpu_s / served * 1000 if served else float("nan")

    def add(self, other: Run) -> Run:
        """This run and ``other`` (a later round of the same server and pollers) as one."""
        samples = Samples(failures=self.samples.failures + other.samples.failures)
        for endpoint in {*self.samples.latencies, *other.samples.latencies}:
            samples.latencies[endpoint] = self.samples.latencies[endpoint] + other.samples.latencies[endpoint]
        samples.stale_connection_retries = (
            self.samples.stale_connection_retries + other.samples.stale_connection_retries
        )
        return Run(self.server, self.pollers, samples, self.wall_s + other.wall_s, self.cpu_s + other.cpu_s)


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
    cpu = f"{service.cpu_ms_per_request():.2f} ms for the service, {bare.cpu_ms_per_request():.2f} ms for the bare app"
    return "\n".join(lines) + f"\n\nServer CPU time per request (user + system, both GETs): {cpu}."


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
`GET /v1/jobs/{{id}}/trials?limit=50` (following `next_cursor`, then starting over), never sending
`If-None-Match`, so every answer is a whole 200 body ({sizes["job"]:,} bytes for the job,
{sizes["page"]:,} for a full page of trials). The same clients poll `benchmarks/bare_app.py`: a bare
FastAPI app on the same uvicorn settings answering the same paths with those bytes from memory (no
authentication, database or rendering). The two take turns, {args.rounds} rounds each of
{args.duration / args.rounds:.0f} s ({args.duration:.0f} s per server and number of pollers), so a
change in the other work on the machine weighs on both alike.

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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_round(server: str, url: str, pid: int, key: str, job_id: str, pollers: int, args: argparse.Namespace) -> Run:
    seconds = args.duration / args.rounds
    print(f"{server}: {pollers} pollers for {seconds:.0f} s ...", flush=True)
    started, cpu = time.monotonic(), cpu_seconds(pid)
    samples = asyncio.run(load(url, key, job_id, pollers, seconds, args.max_requests // args.rounds))
    return Run(server, pollers, samples, time.monotonic() - started, cpu_seconds(pid) - cpu)


def run_phase(
    servers: dict[str, tuple[str, int]], key: str, job_id: str, pollers: int, args: argparse.Namespace
) -> tuple[Run, Run]:
    """The service and the bare app (``servers``: name to URL and process id), taking turns."""
    totals: dict[str, Run] = {}
    for _ in range(args.rounds):
        for server, (url, pid) in servers.items():
            run = run_round(server, url, pid, key, job_id, pollers, args)
            totals[server] = totals[server].add(run) if server in totals else run
    return totals["service"], totals["bare app"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pollers", type=int, nargs="+", default=[4, 200])
    parser.add_argument(
        "--duration",
        type=float,
        default=20.0,
        help="Seconds of polling per server and number of pollers (upper bound).",
    )
    parser.add_argument("--rounds", type=int, default=4, help="Turns each server takes within --duration.")
    parser.add_argument("--max-requests", type=int, default=200_000, help="Requests per phase (upper bound).")
    parser.add_argument("--trials", type=int, default=60, help="Trials of the polled job.")
    parser.add_argument("--admin-url", default=ADMIN_URL)
    parser.add_argument("--write", type=Path, default=None, help="Markdown file to put the results in.")
    args = parser.parse_args()
    exit_on_sigterm()
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
        key = deployment.start(key_owner="load-test")
        assert key is not None
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
            deployment.stop("worker-0")  # the API alone, as the bare app will be alone
            bodies = capture_bodies(client, job_id, page=50)
        bare_url = start_bare_app(deployment, bodies)
        sizes = {
            "trials": args.trials,
            "texts": sum(map(len, texts)),
            "job": len(bodies["job"].encode()),
            "page": len(bodies["trials"][""].encode()),
        }
        load_average = os.getloadavg()[0]
        servers = {
            "service": (deployment.base_url, deployment.named["api"].pid),
            "bare app": (bare_url, deployment.named["bare"].pid),
        }
        runs = [run_phase(servers, key, job_id, pollers, args) for pollers in args.pollers]
    text, ok = report(runs, args, sizes, command, load_average)
    print(text)
    if args.write is not None:
        write_section(args.write, "load-test", text)
        print(f"written to {args.write}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
