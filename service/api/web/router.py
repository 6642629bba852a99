"""``/`` (jobs list and submit form), ``/jobs/{id}`` (one job, live), ``/compare?jobs=a,b`` (jobs side by
side) and ``/static`` (assets)."""

from __future__ import annotations

import hashlib
import html
import re
from functools import cache
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.types import Scope

from service.api.schemas import API_PREFIX

WEB_DIR = Path(__file__).resolve().parent
STATIC_DIR = WEB_DIR / "static"
TEMPLATES_DIR = WEB_DIR / "templates"
STATIC_PREFIX = "/static"

# Job ids are 32 hex characters today; accept any URL-safe id so a format change needs no edit here.
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# Only our own origin: the page works offline, and an injected third-party script could not load.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


class _StaticFiles(StaticFiles):
    """Assets are small: revalidate every time (ETag → 304), so an upgrade never mixes old and new modules."""

    async def get_response(self, path: str, scope: Scope):  # type: ignore[no-untyped-def]
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


@cache
def _asset_version() -> str:
    """A digest of the assets, appended to their URLs so browsers fetch new ones after an upgrade."""
    digest = hashlib.sha256()
    for path in sorted(STATIC_DIR.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(STATIC_DIR).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


@cache
def _template(name: str) -> str:
    return (TEMPLATES_DIR / name).read_text(encoding="utf-8")


def render(name: str, **values: str) -> str:
    """Fill ``{{ key }}`` slots of a template with HTML-escaped values (no logic in templates)."""
    slots = {"static": STATIC_PREFIX, "version": _asset_version(), "api": API_PREFIX, **values}
    page = _template("base.html").replace("{{ content }}", _template(name))

    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in slots:
            raise KeyError(f"template {name} has no value for {{{{ {key} }}}}")
        return html.escape(slots[key], quote=True)

    return re.sub(r"\{\{ (\w+) \}\}", fill, page)


# HEAD as well as GET: uptime checks and `curl -I` probe the page with HEAD.
@router.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
def jobs_page() -> HTMLResponse:
    return HTMLResponse(render("jobs.html", title="Jobs", page="jobs", job_id=""), headers=_PAGE_HEADERS)


@router.api_route("/jobs/{job_id}", methods=["GET", "HEAD"], response_class=HTMLResponse)
def job_page(job_id: str = PathParam(max_length=64)) -> HTMLResponse:
    if not _JOB_ID.match(job_id):
        raise HTTPException(status_code=404, detail=f"{job_id!r} is not a job id")
    # The shell does not look the job up: the page asks the API (with the user's key) and says
    # "not found" itself, so a page never reveals more than the API would.
    return HTMLResponse(render("job.html", title=f"Job {job_id}", page="job", job_id=job_id), headers=_PAGE_HEADERS)


@router.api_route("/compare", methods=["GET", "HEAD"], response_class=HTMLResponse)
def compare_page() -> HTMLResponse:
    # The jobs come from the query string, read by the page, which asks GET /v1/compare for them.
    return HTMLResponse(render("compare.html", title="Compare jobs", page="compare", job_id=""), headers=_PAGE_HEADERS)


def install_web(app: FastAPI) -> None:
    """Mount the pages and their assets on ``app``."""
    app.include_router(router)
    app.mount(STATIC_PREFIX, _StaticFiles(directory=STATIC_DIR), name="static")
