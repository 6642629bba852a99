"""The web pages in headless Chromium against a real ``prunesearch serve``: submit a job through the
form, watch it run and finish, read its plot and trials, cancel another job from its page."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import LAPTOP, PHONE, new_page, save_screenshot
from tests.e2e import flow
from tests.e2e.processes import TERMINAL, wait_until

pytestmark = pytest.mark.e2e

N_TRIALS = 20  # enough trials that a 2 s poll sees the bar move before the end


def _same_origin_only(page: Any, base_url: str) -> list[str]:
    foreign: list[str] = []
    page.on("request", lambda request: None if request.url.startswith(base_url) else foreign.append(request.url))
    return foreign


def _errors(page: Any) -> list[str]:
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


def _fill_job_form(page: Any, model: Path) -> None:
    page.fill("#f-model", str(model))
    page.fill("#f-ratio", str(flow.TARGET))
    page.fill("#f-trials", str(N_TRIALS))
    page.click("details.advanced > summary")
    page.fill("#f-seed", "1")
    page.fill("#f-verify", "3")
    page.fill("#f-align", "8")
    page.fill("#f-cal-n", "4")
    page.fill("#f-cal-len", "64")
    page.fill("#f-cal-heldout", "4")


def _job_id(page: Any) -> str:
    match = re.search(r"/jobs/([0-9A-Za-z_-]+)$", page.url)
    assert match, page.url
    return match.group(1)


def _all_trials(api: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    return flow.all_trials(api, job_id)


def _plotted(page: Any, selector: str) -> set[int]:
    """Trial numbers of the plot's points that match ``selector``."""
    numbers = page.locator(f"svg.scatter {selector}").evaluate_all("els => els.map(e => e.dataset.trial)")
    return {int(n) for n in numbers}


@pytest.fixture(scope="module")
def finished_job(browser: Any, server: str, tiny_llama_dir: Path, screenshot_dir: list[Path]) -> dict[str, Any]:
    """Submit through the form, watch the page until the job ends; returns what was observed."""
    page = new_page(browser, viewport=LAPTOP)
    errors = _errors(page)
    foreign = _same_origin_only(page, server)
    page.goto(f"{server}/")
    _fill_job_form(page, tiny_llama_dir)
    page.click("#submit-job")
    page.wait_for_url(re.compile(r".*/jobs/[0-9a-f]+$"))
    job_id = _job_id(page)

    fractions: list[float] = []
    statuses: list[str] = []
    screenshot_taken = False
    deadline = time.monotonic() + 480
    while True:
        assert time.monotonic() < deadline, f"job {job_id} did not end in 480 s; seen {statuses} {fractions}"
        status = page.inner_text("#job-status")
        value = page.get_attribute("#job-progress", "value")
        if status not in statuses:
            statuses.append(status)
        if value is not None and (not fractions or fractions[-1] != float(value)):
            fractions.append(float(value))
        if status == "running" and 0.3 < float(value or 0) < 0.9 and not screenshot_taken:
            save_screenshot(page, screenshot_dir, "job-running.png")
            screenshot_taken = True
        if status in TERMINAL:
            break
        time.sleep(0.25)
    page.wait_for_function("document.querySelector('#poll-status').textContent.includes('updates stopped')")
    observed = {
        "job_id": job_id,
        "fractions": fractions,
        "statuses": statuses,
        "errors": errors,
        "foreign": foreign,
    }
    page.context.close()
    return observed


def test_pages_are_self_contained_accessible_and_fit_a_phone(browser: Any, server: str) -> None:
    page = new_page(browser, viewport=PHONE, is_mobile=True, has_touch=True)
    errors = _errors(page)
    foreign = _same_origin_only(page, server)
    response = page.goto(f"{server}/")
    assert response.status == 200
    assert "default-src 'self'" in response.headers["content-security-policy"]
    page.wait_for_selector("#jobs-updated:not(:empty)")
    assert page.get_attribute("html", "lang") == "en"
    # Every form control has a label that names it.
    unlabelled = page.evaluate(
        """[...document.querySelectorAll('input, select')]
             .filter(el => el.type !== 'hidden' && !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
             .map(el => el.id || el.name)"""
    )
    assert unlabelled == []
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.goto(f"{server}/jobs/{'0' * 32}")
    page.wait_for_selector("#job-status[data-status='not found']")
    assert "There is no job" in page.inner_text("#job-loading")
    assert foreign == [] and errors == []
    page.context.close()


def test_the_form_reports_errors_next_to_the_fields(browser: Any, server: str, tmp_path: Path) -> None:
    page = new_page(browser, viewport=LAPTOP)
    page.goto(f"{server}/")
    # Checked in the browser: a required field left empty.
    page.fill("#f-model", "")
    page.click("#submit-job")
    assert page.get_attribute("#f-model", "aria-invalid") == "true"
    assert page.is_visible("#f-model-error")
    # Checked by the server: a model directory that does not exist (problem+json detail).
    missing = tmp_path / "no-such-model"
    page.fill("#f-model", str(missing))
    page.click("#submit-job")
    page.wait_for_selector("#form-alert:not([hidden])")
    assert f"model directory '{missing}' does not exist" in page.inner_text("#form-alert")
    assert page.url.rstrip("/") == server  # nothing was created, the page stays
    # A field error the server reports (422 with errors[].loc) lands under its field.
    page.fill("#f-model", str(missing))
    page.fill("#f-proxy", "no-such-proxy")
    page.click("#submit-job")
    page.wait_for_selector("#f-proxy-error:not([hidden])")
    assert "unknown proxy" in page.inner_text("#f-proxy-error")
    assert page.get_attribute("#f-proxy", "aria-invalid") == "true"
    page.context.close()


def test_a_job_submitted_through_the_form_runs_to_completion_on_its_page(
    finished_job: dict[str, Any], browser: Any, server: str, api: httpx.Client, screenshot_dir: list[Path]
) -> None:
    job_id = finished_job["job_id"]
    assert finished_job["errors"] == [] and finished_job["foreign"] == []
    assert finished_job["statuses"][-1] == "succeeded", finished_job
    assert "running" in finished_job["statuses"]
    fractions = finished_job["fractions"]
    assert any(0 < f < 1 for f in fractions), f"the progress bar never moved between 0 and 1: {fractions}"
    assert fractions == sorted(fractions) and fractions[-1] == 1.0

    job = api.get(f"/v1/jobs/{job_id}").json()
    trials = _all_trials(api, job_id)
    complete = [t for t in trials if t["state"] == "complete"]
    assert len(complete) == N_TRIALS

    page = new_page(browser, viewport=LAPTOP)
    errors = _errors(page)
    page.goto(f"{server}/jobs/{job_id}")
    page.wait_for_selector("#job-status[data-status='succeeded']")
    page.wait_for_selector("svg.scatter circle.point")
    assert page.inner_text("#progress-text").startswith(f"{N_TRIALS} of {N_TRIALS} trials done")
    assert page.is_hidden("#cancel-job")

    # The plot: one point per complete trial, the best marked, the front highlighted.
    points = page.locator("svg.scatter circle.point")
    assert points.count() == len(complete)
    assert _plotted(page, "circle.point") == {t["number"] for t in complete}
    best = page.locator("svg.scatter circle.best")
    assert best.count() == 1 and best.get_attribute("data-trial") == str(job["best"]["trial_number"])
    front = _plotted(page, "circle.pareto")
    server_front = {t["number"] for t in api.get(f"/v1/jobs/{job_id}/pareto").json()["items"]}
    assert front == server_front and front

    # The best architecture, one row per layer.
    assert page.locator("#arch-body tr").count() == len(job["best"]["arch"]["layers"])
    first_layer = job["best"]["arch"]["layers"][0]
    assert f"{first_layer['heads']} of" in page.inner_text("#arch-body tr >> nth=0")
    assert "nats/token" in page.inner_text("#best-summary")

    # The trials table: paged by 10, sortable.
    rows = page.locator("#trials-body tr")
    assert rows.count() == 10
    assert f"of {len(trials)}" in page.inner_text("#trials-page")
    page.click("#trials-next")
    assert page.locator("#trials-body tr").first.get_attribute("data-key") == "10"
    page.click("#trials-head button[data-key='score']")
    assert page.get_attribute("#trials-head th:has(button[data-key='score'])", "aria-sort") == "descending"
    top = max(complete, key=lambda t: t["value"])
    assert page.locator("#trials-body tr").first.get_attribute("data-key") == str(top["number"])
    assert page.is_disabled("#trials-prev")

    # The job has ended, so the page no longer polls.
    polls: list[str] = []
    page.on("request", lambda request: polls.append(request.url) if "/v1/" in request.url else None)
    page.wait_for_timeout(5000)
    assert polls == []

    page.click("#trials-head button[data-key='number']")
    save_screenshot(page, screenshot_dir, "job.png", full_page=True)
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(300)  # the plot redraws for the new width
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.locator("#best-section").scroll_into_view_if_needed()
    save_screenshot(page, screenshot_dir, "phone.png")
    assert errors == []
    page.context.close()


def test_the_page_computes_the_pareto_front_when_the_server_has_none(
    finished_job: dict[str, Any], browser: Any, server: str, api: httpx.Client
) -> None:
    job_id = finished_job["job_id"]
    page = new_page(browser, viewport=LAPTOP)
    page.route(
        f"**/v1/jobs/{job_id}/pareto",
        lambda route: route.fulfill(status=404, content_type="application/problem+json", body="{}"),
    )
    page.goto(f"{server}/jobs/{job_id}")
    page.wait_for_selector("svg.scatter circle.point")
    page.wait_for_selector("#poll-status:has-text('updates stopped')")
    front = _plotted(page, "circle.pareto")
    server_front = {t["number"] for t in api.get(f"/v1/jobs/{job_id}/pareto").json()["items"]}
    assert front == server_front
    assert "(higher score, fewer parameters)" in page.inner_text("#plot-caption")
    page.context.close()


def test_report_and_downloads_appear_when_the_server_has_them(
    finished_job: dict[str, Any], browser: Any, server: str, api: httpx.Client
) -> None:
    job_id = finished_job["job_id"]
    page = new_page(browser, viewport=LAPTOP)
    page.goto(f"{server}/jobs/{job_id}")
    page.wait_for_selector("#poll-status:has-text('updates stopped')")
    has_report = api.get(f"/v1/jobs/{job_id}/report").status_code == 200
    assert page.is_visible("#report-section") == has_report

    report = {
        "verification": {"finalists": 3, "tokens": 252, "best_kl": 0.0123},
        "trust": {"tracenas": {"spearman": 0.71, "kendall": 0.55, "flagged": False}},
        "flags": ["proxy tracenas correlates with parameter count"],
    }
    artifacts = {
        "items": [
            {
                "name": "best",
                "status": "ready",
                "size": 2048,
                "archive_url": f"/v1/jobs/{job_id}/artifacts/best.tar",
                "files": [{"path": "config.json", "size": 512, "url": f"/v1/jobs/{job_id}/artifacts/best/config.json"}],
                "provenance": None,
            }
        ]
    }
    page.route(f"**/v1/jobs/{job_id}/report", lambda route: route.fulfill(json=report))
    page.route(f"**/v1/jobs/{job_id}/artifacts", lambda route: route.fulfill(json=artifacts))
    page.reload()
    page.wait_for_selector("#report-section:not([hidden])")
    text = page.inner_text("#report-section")
    assert "Spearman" in text and "0.7100" in text and "correlates with parameter count" in text
    link = page.locator("#artifacts-list a", has_text="Download best")
    assert link.get_attribute("href") == f"/v1/jobs/{job_id}/artifacts/best.tar"

    # The downloads the page builds itself.
    with page.expect_download() as download:
        page.click("#download-json")
    body = json.loads(Path(download.value.path()).read_text())
    assert body["job"]["id"] == job_id and len(body["trials"]) == N_TRIALS
    with page.expect_download() as download:
        page.click("#download-csv")
    lines = Path(download.value.path()).read_text().splitlines()
    assert lines[0].startswith("number,state,origin") and len(lines) == N_TRIALS + 1
    page.context.close()


def test_a_server_that_wants_a_key_gets_one_from_the_page(browser: Any, server: str) -> None:
    """A 401 says what to do; the key typed in is kept in localStorage and sent as a Bearer header."""
    page = new_page(browser, viewport=LAPTOP)
    seen: list[str | None] = []

    def guarded(route: Any) -> None:
        auth = route.request.headers.get("authorization")
        seen.append(auth)
        if auth != "Bearer psk_test_key":
            problem = {
                "type": "about:blank",
                "title": "Unauthorized",
                "status": 401,
                "detail": "this server requires an API key",
                "instance": route.request.url,
            }
            route.fulfill(status=401, content_type="application/problem+json", body=json.dumps(problem))
        else:
            # The real server (no keys: anonymous loopback) would refuse a key it does not know.
            headers = {k: v for k, v in route.request.headers.items() if k.lower() != "authorization"}
            route.continue_(headers=headers)

    page.route("**/v1/**", guarded)
    page.goto(f"{server}/")
    page.wait_for_selector("#page-alert:not([hidden])")
    assert "needs an API key" in page.inner_text("#page-alert")
    assert page.get_attribute("#api-key", "open") is not None
    page.fill("#api-key-input", "psk_test_key")
    page.click("#api-key-form button[type=submit]")
    page.wait_for_selector("#page-alert", state="hidden")
    page.wait_for_selector("#jobs-updated:not(:empty)")
    assert page.inner_text("#api-key-state") == "set"
    assert page.evaluate("localStorage.getItem('prunesearch.apiKey')") == "psk_test_key"
    assert seen[0] is None and seen[-1] == "Bearer psk_test_key"
    page.context.close()


def test_cancel_a_running_job_from_its_page(
    finished_job: dict[str, Any],
    browser: Any,
    server: str,
    api: httpx.Client,
    tiny_llama_dir: Path,
    screenshot_dir: list[Path],
) -> None:
    job_id = flow.submit(api, flow.job_body(tiny_llama_dir, n_trials=5000, verify_top_k=1))
    page = new_page(browser, viewport=LAPTOP)
    errors = _errors(page)
    page.goto(f"{server}/jobs/{job_id}")

    def some_trials_shown() -> bool:
        match = re.match(r"(\d+) of 5000", page.inner_text("#progress-text"))
        return bool(match and int(match.group(1)) >= 3)

    wait_until(some_trials_shown, timeout=300, interval=0.5, what="the page to show a few finished trials")
    page.goto(f"{server}/")
    page.wait_for_selector(f"#jobs-body tr[data-job-id='{job_id}'][data-status='running']")
    save_screenshot(page, screenshot_dir, "jobs.png")
    page.goto(f"{server}/jobs/{job_id}")
    page.wait_for_selector("#cancel-job:not([hidden])")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#cancel-job")
    page.wait_for_selector("#job-status[data-status='cancelled']", timeout=180_000)
    assert page.is_hidden("#cancel-job")
    assert "cancelled" in page.inner_text("#progress-text")
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "cancelled" and job["cancel_requested"]
    assert page.locator("svg.scatter circle.point").count() == job["progress"]["trials_completed"]
    assert errors == []
    page.context.close()


def test_the_pages_pareto_front_matches_the_servers_on_random_points(browser: Any, server: str) -> None:
    """pareto.js (used when GET /pareto is absent) agrees with service.pareto, ties and duplicates included."""
    import random

    from service.pareto import non_dominated

    page = new_page(browser)
    page.goto(f"{server}/static/favicon.svg")  # any same-origin page can import the modules
    rng = random.Random(6)
    for size in (1, 2, 7, 40, 300):
        # Few distinct values, so equal ratios, equal scores and exact duplicates all occur.
        points = [{"i": i, "x": rng.randint(0, 9) / 10, "y": rng.randint(0, 9) / 10} for i in range(size)]
        ours = page.evaluate(
            "async (points) => (await import('/static/pareto.js')).paretoFront(points).map(p => p.i)", points
        )
        theirs = non_dominated([[p["y"], p["x"]] for p in points], ["maximize", "minimize"])
        assert sorted(ours) == theirs, size
    page.context.close()
