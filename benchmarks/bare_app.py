"""The floor for benchmarks/load.py: a bare FastAPI app that answers the pollers' GETs with bytes it
holds in memory (captured from the service), on the same uvicorn settings as ``prunesearch api``.

No authentication, database, middleware or rendering: what is left is uvicorn, Starlette's routing
and FastAPI's parameter parsing, so the service's throughput over this app's is the share of a
request's cost that FastAPI itself takes.

    python benchmarks/bare_app.py BODIES.json PORT

``BODIES.json``: ``{"job": <the job GET body>, "trials": {"<cursor or empty>": <page body>}}`` (text).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fastapi import FastAPI, Query, Response


def create_bare_app(job: bytes, trial_pages: dict[str, bytes]) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/jobs/{job_id}")
    def get_job(job_id: str) -> Response:
        return Response(job, media_type="application/json")

    @app.get("/v1/jobs/{job_id}/trials")
    def list_trials(job_id: str, limit: int | None = Query(None), cursor: str | None = Query(None)) -> Response:
        return Response(trial_pages[cursor or ""], media_type="application/json")

    return app


def main() -> None:
    import uvicorn

    bodies = json.loads(Path(sys.argv[1]).read_text())
    pages = {cursor: page.encode() for cursor, page in bodies["trials"].items()}
    app = create_bare_app(bodies["job"].encode(), pages)
    # prunesearch api: uvicorn.run with its defaults but host and port.
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]))


if __name__ == "__main__":
    main()
