"""Load test: many concurrent pollers of one running job, on loopback, bounded in time and count.

Starts the production shape on this machine (a fresh PostgreSQL database, a private Redis, the API
and one worker as separate processes, an API key), submits a job on a tiny model and, while its
worker runs trials, lets ``--pollers`` clients poll ``GET /v1/jobs/{id}`` and page through
``GET /v1/jobs/{id}/trials`` as fast as they can. Reports requests per second, latency percentiles
and every failed request (a non-2xx answer or a transport error), and writes them, with the exact
command, to ``--write`` (``docs/reliability.md``).

    .venv/bin/python benchmarks/load.py --pollers 200 --duration 30 --write docs/reliability.md

Needs PostgreSQL (``--admin-url``, a role that may CREATE DATABASE) and ``redis-server`` on PATH.
Exits non-zero if any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
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

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.deployment import Deployment, exit_on_sigterm, wait_until  # noqa: E402
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


async def poller(
    client: httpx.AsyncClient, job_id: str, deadline: float, budget: list[int], samples: Samples, page: int
) -> None:
    """Alternates a status read with the next page of trials (following cursors, then starting over)."""
    cursor: str | None = None
    read_status = True
    while time.monotonic() < deadline and budget[0] > 0:
        budget[0] -= 1
        if read_status:
            endpoint, url, params = "GET /v1/jobs/{id}", f"/v1/jobs/{job_id}", None
        else:
            endpoint, url = "GET /v1/jobs/{id}/trials", f"/v1/jobs/{job_id}/trials"
            params = {"limit": page} | ({"cursor": cursor} if cursor else {})
        started = time.perf_counter()
        try:
            try:
                response = await client.get(url, params=params)
            except (httpx.ReadError, httpx.RemoteProtocolError):
                samples.stale_connection_retries += 1
                response = await client.get(url, params=params)
            elapsed = time.perf_counter() - started
            if response.status_code != 200:
                samples.failures.append(f"{endpoint}: {response.status_code} {response.text[:200]}")
            else:
                samples.latencies[endpoint].append(elapsed)
                if not read_status:
                    cursor = response.json()["next_cursor"]
        except httpx.HTTPError as error:
            samples.failures.append(f"{endpoint}: {type(error).__name__}: {error}")
        read_status = not read_status


async def load(base_url: str, key: str, job_id: str, pollers: int, duration: float, max_requests: int) -> Samples:
    samples = Samples()
    budget = [max_requests]
    limits = httpx.Limits(max_connections=pollers, max_keepalive_connections=pollers)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=60) as client:
        deadline = time.monotonic() + duration
        await asyncio.gather(*(poller(client, job_id, deadline, budget, samples, page=50) for _ in range(pollers)))
    return samples


# --- the report -----------------------------------------------------------------------------------


def report(
    samples: Samples,
    wall_s: float,
    args: argparse.Namespace,
    trials: tuple[int, int],
    command: str,
    load_average: float,
) -> tuple[str, bool]:
    ok = not samples.failures
    rows = []
    everything: list[float] = []
    for endpoint, values in sorted(samples.latencies.items()):
        everything += values
        rows.append((endpoint, values))
    rows.append(("all", everything))
    table = ["| endpoint | requests | req/s | p50 ms | p99 ms | max ms |", "|---|---:|---:|---:|---:|---:|"]
    for name, values in rows:
        table.append(
            f"| {name} | {len(values)} | {len(values) / wall_s:.0f} | {percentile(values, 50) * 1000:.1f} "
            f"| {percentile(values, 99) * 1000:.1f} | {max(values, default=float('nan')) * 1000:.1f} |"
        )
    failures = "\n".join(f"- {failure}" for failure in samples.failures[:20]) or "none"
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    busy = ": other work was using the cores too" if load_average > (os.cpu_count() or 1) else ""
    text = f"""## Load test: {args.pollers} concurrent pollers of a running job

Measured {when} on this machine: {os.cpu_count()} CPU cores shared by the API, the worker (running
trials the whole time), PostgreSQL, Redis and the load generator itself (load average
{load_average:.1f} just before the run{busy}); Python
{platform.python_version()}, {platform.system()} {platform.release()}. One API process
(`prunesearch api`, uvicorn, defaults), one worker, API key authentication on every request.

```bash
{command}
```

{args.pollers} clients each alternate `GET /v1/jobs/{{id}}` with the next page of
`GET /v1/jobs/{{id}}/trials?limit=50` (following `next_cursor`, then starting over), for
{args.duration:.0f} s or {args.max_requests} requests in all, whichever comes first.

{chr(10).join(table)}

- Requests: {samples.total} in {wall_s:.1f} s = **{samples.total / wall_s:.0f} requests/s**;
  **failed: {len(samples.failures)}** (a failure is any answer other than 200, or a transport error).
  GETs re-sent once because the idle keep-alive connection they used had just been closed by the
  server (as browsers and urllib3 do; the first attempt never reached the app): {samples.stale_connection_retries}.
- The job kept running: {trials[0]} → {trials[1]} trials completed during the test.
- Latency is client-side (the load generator shares the CPU), from sending the request to reading the
  whole body.

Failed requests: {failures}
"""
    return text, ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pollers", type=int, default=200)
    parser.add_argument("--duration", type=float, default=30.0, help="Seconds of polling (upper bound).")
    parser.add_argument("--max-requests", type=int, default=200_000, help="Requests in all (upper bound).")
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("PRUNESEARCH_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    parser.add_argument("--write", type=Path, default=None, help="Markdown file to put the results in.")
    args = parser.parse_args()
    exit_on_sigterm()
    python = Path(sys.executable)
    shown = str(python.relative_to(ROOT)) if python.is_relative_to(ROOT) else "python"
    command = shlex.join([shown, "benchmarks/load.py", *sys.argv[1:]])

    from search.demo import build_demo_model  # torch: only the load generator's own set-up needs it

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
            "n_trials": 5000,  # longer than the test: the worker is busy throughout
            "seed": 1,
            "calibration": {"n_samples": 4, "seq_len": 64, "heldout_samples": 4},
            "search_space": {"ffn_alignment": 8},
        }
        with httpx.Client(
            base_url=deployment.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120
        ) as client:
            created = client.post("/v1/jobs", json=body)
            created.raise_for_status()
            job_id = created.json()["id"]

            def trials_done() -> int:
                return int(client.get(f"/v1/jobs/{job_id}").json()["progress"]["trials_completed"])

            wait_until(lambda: trials_done() >= 5, 180, "the job to complete a few trials")
            before = trials_done()
            load_average = os.getloadavg()[0]
            print(f"job {job_id} running ({before} trials); {args.pollers} pollers for {args.duration:.0f} s ...")
            started = time.monotonic()
            samples = asyncio.run(
                load(deployment.base_url, key, job_id, args.pollers, args.duration, args.max_requests)
            )
            wall_s = time.monotonic() - started
            after = trials_done()
            client.post(f"/v1/jobs/{job_id}/cancel")
        text, ok = report(samples, wall_s, args, (before, after), command, load_average)
    print(text)
    if args.write is not None:
        write_section(args.write, "load-test", text)
        print(f"written to {args.write}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
