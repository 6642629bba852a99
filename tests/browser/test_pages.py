"""The web pages in headless Chromium against a real ``prunesearch serve``: submit a job through the
form, watch it run and finish, read its plot and trials, cancel another job from its page."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import httpx
import pytest

from tests.browser.conftest import LAPTOP, PHONE, new_page, save_screenshot
from tests.e2e import flow
from tests.e2e.processes import TERMINAL, wait_until

pytestmark = pytest.mark.e2e

N_TRIALS = 60
# The job page polls every 2 s (job.js), and 60 trials of this tiny model take 1-2 s in all: the test
# fast-forwards the page's clock by a poll interval each time it looks, so the page polls as often as
# the test looks (4 times a second) and the bar is seen between 0 and 1 however fast the trials run.
PAGE_POLL_MS = 2000


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
    page.fill("#f-cal-n", "16")
    page.fill("#f-cal-len", "128")
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
    page.clock.install()  # time still flows; run_for below only adds to it
    errors = _errors(page)
    foreign = _same_origin_only(page, server)
    page.goto(f"{server}/")
    _fill_job_form(page, tiny_llama_dir)
    page.click("#submit-job")
    page.wait_for_url(re.compile(r".*/jobs/[0-9a-f]+$"))
    job_id = _job_id(page)
    # Each answer to the page's polls of the job: its status and the If-None-Match the page sent.
    polls: list[tuple[int, str | None]] = []
    job_url = f"{server}/v1/jobs/{job_id}"
    page.on(
        "response",
        lambda response: (
            polls.append((response.status, response.request.headers.get("if-none-match")))
            if response.url == job_url
            else None
        ),
    )

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
        page.clock.run_for(PAGE_POLL_MS)
        time.sleep(0.25)
    page.wait_for_function("document.querySelector('#poll-status').textContent.includes('updates stopped')")
    observed = {
        "job_id": job_id,
        "fractions": fractions,
        "statuses": statuses,
        "errors": errors,
        "foreign": foreign,
        "polls": polls,
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
    # A file where the model folder belongs is called a file, not a missing directory.
    config_file = tmp_path / "config.json"
    config_file.write_text("{}")
    page.fill("#f-model", str(config_file))
    page.click("#submit-job")
    page.wait_for_selector(f"#form-alert:has-text('{config_file}')")
    alert = page.inner_text("#form-alert")
    assert "is a file" in alert and "does not exist" not in alert
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
    # The page polls conditionally: after its first answer, each poll sends the last ETag back.
    polls = finished_job["polls"]
    assert len(polls) >= 2 and {status for status, _ in polls} <= {200, 304}, polls
    assert all(sent for _, sent in polls[1:]), polls

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
        "verification": {
            "primary": "kl",
            "dense": {"kl": 0.0, "ppl": 25.0, "tokens": 252, "primary": "kl"},
            "finalists": [
                {"trial_number": 7, "origin": "sampler", "proxy_score": 0.8, "kl": 0.0123, "ppl": 30.5, "tokens": 252},
                {
                    "trial_number": 0,
                    "origin": "seed:uniform",
                    "proxy_score": 0.5,
                    "kl": 0.05,
                    "ppl": 41.0,
                    "tokens": 252,
                },
            ],
            "ladder": [],
        },
        "trust": {
            "metric": "kl",
            "objective": "tracenas",
            "threshold": 0.3,
            "proxies": {
                "tracenas": {
                    "spearman": 0.31,
                    "spearman_ci": [-0.2, 0.68],
                    "kendall": 0.22,
                    "kendall_ci": [-0.1, 0.5],
                    "n": 24,
                    "params_spearman": 0.9,
                    "depth_spearman": 0.4,
                    "poor": False,
                },
                # A good ρ on few candidates: its interval reaches below the threshold.
                "prunenet": {
                    "spearman": 0.75,
                    "spearman_ci": [0.2, 0.98],
                    "kendall": 0.6,
                    "kendall_ci": [0.1, 0.9],
                    "n": 12,
                    "params_spearman": 0.1,
                    "depth_spearman": 0.1,
                    "poor": False,
                },
            },
            "flagged": True,
            "flags": ["proxy tracenas correlates with parameter count"],
            # Near the best: PruneNet leads, but its interval overlaps TraceNAS's.
            "neighbourhood": {
                "best_trial": 7,
                "size": 12,
                "top_region": [7, 3, 5, 9, 11, 2],
                "distinct_trials": 40,
                "perturbations": 6,
                "max_moves": 3,
                "step": 0.02,
                "distance": {"min": 0.012, "median": 0.025, "max": 0.062},
                "top_distance": {"min": 0.06, "median": 0.11, "max": 0.2},
                "sequences": 2,
                "tokens": 252,
                "metric": "kl",
                "candidates": [],
                "proxies": {
                    "prunenet": {
                        "spearman": 0.8,
                        "spearman_ci": [0.45, 0.95],
                        "kendall": 0.6,
                        "kendall_ci": [0.3, 0.8],
                        "n": 12,
                        "params_spearman": 0.1,
                        "depth_spearman": 0.1,
                        "poor": False,
                    },
                    "tracenas": {
                        "spearman": 0.5,
                        "spearman_ci": [0.0, 0.85],
                        "kendall": 0.4,
                        "kendall_ci": [0.0, 0.7],
                        "n": 12,
                        "params_spearman": 0.2,
                        "depth_spearman": 0.2,
                        "poor": False,
                    },
                },
                "best_proxy": "prunenet",
                "uncertain": True,
                "summary": "Near the best trial 7 ...",
            },
        },
        "recovery": {
            "method": "distill",
            "steps": 200,
            "lora_rank": None,
            "learning_rate": 1e-4,
            "batch_size": 8,
            "training_sequences": 1968,
            "device": "cuda:0",
            "precision": "float32 weights, bfloat16 autocast",
            "primary": "kl",
            "finalists": [
                {
                    "trial_number": 7,
                    "origin": "sampler",
                    "param_count": 1000,
                    "before": {"kl": 0.0123, "ppl": 30.5, "tokens": 252, "primary": "kl"},
                    "after": {"kl": 0.0061, "ppl": 27.0, "tokens": 252, "primary": "kl"},
                    "steps": 200,
                    "seconds": 75.0,
                },
                {
                    "trial_number": 0,
                    "origin": "seed:uniform",
                    "param_count": 1000,
                    "before": {"kl": 0.05, "ppl": 41.0, "tokens": 252, "primary": "kl"},
                    "after": {"kl": 0.0042, "ppl": 26.1, "tokens": 252, "primary": "kl"},
                    "steps": 200,
                    "seconds": 70.0,
                },
            ],
            "winner": 0,
            "seconds": 150.0,
        },
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
    assert "TraceNAS ordered 24 audited candidates with Spearman 0.31 [−0.20, 0.68]" in text
    assert page.get_attribute("#report-trust p.verdict[data-proxy='tracenas']", "data-verdict") == "weak"
    assert "correlates with parameter count" in text
    assert (
        "Near the best trial 7, among 12 candidates (6 of the search's best trials and 6 variations of trial 7 "
        "moving 1.2% to 6.2% of the blocks' parameters), PruneNet ranked best with Spearman 0.80 [0.45, 0.95]"
    ) in text
    assert page.get_attribute("#report-trust p.neighbourhood", "data-verdict") == "uncertain"  # overlaps TraceNAS
    assert page.locator("#neighbourhood-table tbody tr").count() == 2
    assert page.locator("#verified-table tbody tr").count() == 3  # two finalists and the dense model
    assert "Uniform width" in page.inner_text("#verified-table tr[data-trial='0']")
    # Recovery: each finalist before and after; the winner (chosen after recovery) is the exported one.
    assert page.locator("#recovery-table tbody tr").count() == 2
    winner = page.inner_text("#recovery-table tr[data-trial='0']")
    assert "exported" in winner and "0.0500" in winner and "0.00420" in winner
    assert "chosen after recovery: trial 0" in page.inner_text("#report-recovery")
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

    # A good ρ whose interval reaches below the threshold reads "uncertain", not "weak".
    report["trust"]["objective"] = "prunenet"
    page.reload()
    verdict = page.locator("#report-trust p.verdict[data-proxy='prunenet']")
    assert verdict.get_attribute("data-verdict") == "uncertain"
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


def test_cancel_a_running_job_from_its_page_and_resume_it(
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
    # A cancelled job resumes from its page: its study goes on, the page polls it running again.
    page.once("dialog", lambda dialog: dialog.accept("5000"))
    page.click("#resume-job")
    page.wait_for_selector("#job-status[data-status='running']", timeout=180_000)
    assert page.is_hidden("#resume-job") and page.is_visible("#cancel-job")
    assert api.get(f"/v1/jobs/{job_id}").json()["progress"]["trials_completed"] >= job["progress"]["trials_completed"]
    assert api.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    page.wait_for_selector("#job-status[data-status='cancelled']", timeout=180_000)
    assert page.is_visible("#resume-job")
    assert errors == []
    page.context.close()


def test_the_pages_pareto_front_matches_the_servers_on_random_points(browser: Any, server: str) -> None:
    """pareto.js (used when GET /pareto is absent) agrees with search.pareto, ties and duplicates included."""
    import random

    from search.pareto import non_dominated

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


def _capped(arch: dict[str, Any] | None, channels: int) -> dict[str, Any] | None:
    if not arch:
        return arch
    return {"layers": [{**layer, "ffn_channels": min(layer["ffn_channels"], channels)} for layer in arch["layers"]]}


def _rewrite_json(page: Any, pattern: re.Pattern[str], change: Any) -> None:
    """Serve ``pattern``'s real responses with ``change(body)`` applied."""

    def handle(route: Any) -> None:
        response = route.fetch()
        route.fulfill(response=response, json=change(response.json()))

    page.route(pattern, handle)


def test_layer_widths_are_drawn_against_the_models_real_width(
    finished_job: dict[str, Any], browser: Any, server: str, api: httpx.Client, tiny_llama_dir: Path
) -> None:
    """A 25%-pruned FFN reads "96 of 128 channels" even when no trial kept a full layer."""
    job_id = finished_job["job_id"]
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    heads, ffn = config["num_attention_heads"], config["intermediate_size"]
    model = api.get(f"/v1/jobs/{job_id}/model").json()
    assert (model["num_heads"], model["intermediate_size"], model["num_layers"]) == (
        heads,
        ffn,
        config["num_hidden_layers"],
    )
    # No trial keeps more than three quarters of any FFN: the widest layer seen is not the model's width.
    cap = ffn * 3 // 4
    page = new_page(browser, viewport=LAPTOP)
    _rewrite_json(
        page,
        re.compile(rf"/v1/jobs/{job_id}$"),
        lambda job: job | {"best": job["best"] | {"arch": _capped(job["best"]["arch"], cap)}},
    )
    _rewrite_json(
        page,
        re.compile(rf"/v1/jobs/{job_id}/trials(\?.*)?$"),
        lambda body: body | {"items": [t | {"arch": _capped(t["arch"], cap)} for t in body["items"]]},
    )
    page.goto(f"{server}/jobs/{job_id}")
    page.wait_for_selector("#poll-status:has-text('updates stopped')")
    labels = page.locator("#arch-body .mlp .block-label").all_inner_texts()
    assert labels and all(label.endswith(f" of {ffn} channels") for label in labels), labels
    assert all(
        t.endswith(f" of {heads} heads") for t in page.locator("#arch-body .attn .block-label").all_inner_texts()
    )
    assert page.inner_text("#arch-scale-note") == ""
    # A server that cannot read the model's config: counts without a misleading "of".
    page.route(re.compile(rf"/v1/jobs/{job_id}/model$"), lambda route: route.fulfill(status=404, json={}))
    page.reload()
    page.wait_for_selector("#poll-status:has-text('updates stopped')")
    assert all(" of " not in label for label in page.locator("#arch-body .block-label").all_inner_texts())
    assert "could not be read" in page.inner_text("#arch-scale-note")
    page.context.close()


def _laid_out_one_word_per_line(page: Any, selector: str) -> list[str]:
    """Texts in ``selector`` squeezed narrower than a short word (the old report at 390 px: a letter a line)."""
    return page.evaluate(
        """(selector) => [...document.querySelectorAll(selector)]
             .filter(el => el.offsetParent !== null && el.textContent.trim().length > 3)
             .filter(el => el.getBoundingClientRect().width < 72)
             .map(el => el.tagName + ': ' + el.textContent.trim().slice(0, 40))""",
        selector,
    )


def save_section(page: Any, folders: list[Path], name: str) -> None:
    image = page.locator("#report-section").screenshot()
    for folder in folders:
        (folder / name).write_bytes(image)


def test_the_report_reads_as_sentences_and_one_table_at_laptop_and_phone_width(
    finished_job: dict[str, Any], browser: Any, server: str, api: httpx.Client, screenshot_dir: list[Path]
) -> None:
    job_id = finished_job["job_id"]
    report = api.get(f"/v1/jobs/{job_id}/report").json()
    verification, trust = report["verification"], report["trust"]
    page = new_page(browser, viewport=LAPTOP)
    errors = _errors(page)
    page.goto(f"{server}/jobs/{job_id}")
    page.wait_for_selector("#report-section:not([hidden])")

    # One table: every verified finalist and baseline with its held-out figures, and the dense model.
    rows = page.locator("#verified-table tbody tr")
    numbers = [f["trial_number"] for f in verification["finalists"]]
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.trial)") == [*map(str, numbers), "dense"]
    # The verified table, the trust numbers (the audit's and, near the best, the neighbourhood's) and
    # the exported model's speed beside the dense model's.
    assert "neighbourhood" in trust and page.locator("#report-section table").count() == 4
    speed = report["export"]["speed"]
    speed_rows = page.locator("#speed-table tbody tr")
    assert speed_rows.count() == len(speed["prefill"]) + len(speed["decode"]) + 2  # + peak memory, weights
    assert "Prefill, batch" in speed_rows.first.inner_text()
    first = verification["finalists"][0]
    assert f"{first['ppl']:.1f}" in page.inner_text(f"#verified-table tr[data-trial='{first['trial_number']}']")
    assert "best" in page.inner_text(
        f"#verified-table tr[data-trial='{api.get(f'/v1/jobs/{job_id}').json()['best']['trial_number']}']"
    )
    # The ladder: one sentence per round; the trust figures: a sentence, the numbers behind a disclosure.
    assert page.locator("#report-ladder ol.ladder > li").count() == len(verification["ladder"])
    objective = trust["proxies"][trust["objective"]]
    sentence = page.inner_text("#report-trust p.verdict")
    assert re.fullmatch(
        rf"KL on the calibration tokens ordered {objective['n']} audited candidates "
        r"with Spearman [−\d.]+ \[[−\d.]+, [−\d.]+\] "
        r"against their verified KL to dense: (poor|weak|uncertain|moderate|strong)\.",
        sentence,
    ), sentence
    nearby = trust["neighbourhood"]
    assert f"Near the best trial {nearby['best_trial']}, among {nearby['size']} candidates" in page.inner_text(
        "#report-trust p.neighbourhood"
    )
    assert page.get_attribute("#report-trust details", "open") is None
    assert not page.is_visible("#report-trust details table")
    text = page.inner_text("#report-section")
    for raw in ("SIZE BYTES", "Size bytes", "POOR", "Poor", "Key", "Baseline\n", "Survivors", "Flags"):
        assert raw not in text, raw
    save_section(page, screenshot_dir, "report.png")

    page.set_viewport_size(PHONE)
    page.click("#report-trust details > summary")
    page.wait_for_timeout(300)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    squeezed = _laid_out_one_word_per_line(
        page, "#report-section p, #report-section li, #report-section th, #report-section td"
    )
    assert squeezed == []
    save_section(page, screenshot_dir, "report-phone.png")
    assert errors == []
    page.context.close()


def test_the_api_docs_work_offline(browser: Any, server: str) -> None:
    """/docs and /redoc load their code from this server: cut off from the internet, they still render."""
    page = new_page(browser, viewport=LAPTOP)
    foreign: list[tuple[str, str]] = []

    def block(route: Any) -> None:
        foreign.append((route.request.resource_type, route.request.url))
        route.abort()

    page.route(lambda url: not url.startswith(server), block)
    page.goto(f"{server}/docs")
    page.wait_for_selector(".swagger-ui .info .title:has-text('PruneSearch')")
    page.wait_for_selector(".opblock-summary-path:has-text('/v1/jobs')")
    assert foreign == []
    page.goto(f"{server}/redoc")
    page.wait_for_selector("h1:has-text('PruneSearch')")
    # ReDoc's "powered by" footer links its logo image from its site; nothing the page needs is foreign.
    assert [url for kind, url in foreign if kind != "image"] == []
    page.context.close()


def test_the_jobs_list_draws_equal_bars_and_names_models_alike(
    finished_job: dict[str, Any], browser: Any, server: str
) -> None:
    page = new_page(browser, viewport=LAPTOP)
    finished = {"trials_completed": 12, "trials_failed": 0, "fraction": 1.0, "eta_seconds": None}
    jobs = [
        ("a" * 32, "models/ref-llama-7m", 12),
        ("b" * 32, "/srv/models/ref-llama-7m", 5000),
        ("c" * 32, "./ref-llama-7m/", 300),
    ]

    def listing(body: dict[str, Any]) -> dict[str, Any]:
        template = body["items"][0]
        items = [
            template
            | {
                "id": job_id,
                "model": model,
                "status": "succeeded",
                "progress": finished | {"trials_completed": total, "trials_total": total},
            }
            for job_id, model, total in jobs
        ]
        return body | {"items": items, "next_cursor": None, "next": None}

    _rewrite_json(page, re.compile(r"/v1/jobs(\?.*)?$"), listing)
    page.goto(f"{server}/")
    page.wait_for_selector(f"#jobs-body tr[data-job-id='{'c' * 32}']")
    widths = page.locator("#jobs-body progress").evaluate_all("bars => bars.map(b => b.getBoundingClientRect().width)")
    assert len(widths) == 3 and max(widths) - min(widths) < 0.5, widths
    shown = page.locator("#jobs-body tr").evaluate_all(
        "rows => rows.map(r => [r.dataset.jobId, ...['textContent', 'title'].map(k => r.querySelector('td.model')[k])])"
    )
    assert sorted(shown) == sorted([job_id, "ref-llama-7m", model] for job_id, model, _ in jobs)
    page.context.close()


def test_the_target_label_never_covers_a_point_at_phone_width(browser: Any, server: str) -> None:
    """The best trial sits on the target at the top of the plot, where the label used to be drawn."""
    page = new_page(browser, viewport=PHONE)
    page.goto(f"{server}/static/favicon.svg")  # any same-origin page can import the modules
    overlaps = page.evaluate(
        """async () => {
             const { drawScatter } = await import('/static/plot.js');
             const box = document.createElementNS('http://www.w3.org/1999/xhtml', 'div');
             box.style.width = '358px';
             document.documentElement.append(box);
             const points = [0.45, 0.48, 0.5, 0.52].map((x, i) => ({ number: i, x, y: 0.5 + i / 10 }));
             points.push({ number: 9, x: 0.5, y: 0.95 });
             drawScatter(box, { points, front: new Set([9]), best: 9, target: 0.5 });
             const label = box.querySelector('.target text').getBoundingClientRect();
             return [...box.querySelectorAll('circle.point')].map(c => c.getBoundingClientRect())
               .filter(c => c.left < label.right && label.left < c.right)
               .filter(c => c.top < label.bottom && label.top < c.bottom)
               .length;
           }"""
    )
    assert overlaps == 0
    page.context.close()


def test_a_latency_front_is_drawn_against_predicted_milliseconds(browser: Any, server: str) -> None:
    """A latency job's scatter (objectives ["score", "latency"]): x is the predicted ms per step, in plain numbers."""
    page = new_page(browser, viewport=LAPTOP)
    page.goto(f"{server}/static/favicon.svg")  # any same-origin page can import the modules
    drawn = page.evaluate(
        """async () => {
             const { drawScatter } = await import('/static/plot.js');
             const box = document.createElementNS('http://www.w3.org/1999/xhtml', 'div');
             box.style.width = '640px';
             document.documentElement.append(box);
             const points = [4.2, 6.5, 9.8].map((x, i) => ({ number: i, x, y: -0.1 + i / 20 }));
             drawScatter(box, { points, front: new Set([0, 1, 2]), xLabel: 'predicted ms per step', xPercent: false });
             return {
               labels: [...box.querySelectorAll('.axis-label')].map(t => t.textContent),
               ticks: [...box.querySelectorAll('.tick')].map(t => t.textContent),
               title: box.querySelector('title').textContent,
             };
           }"""
    )
    assert "predicted ms per step" in drawn["labels"]
    assert drawn["ticks"] and not any(tick.endswith("%") for tick in drawn["ticks"])
    assert drawn["title"].endswith("against predicted ms per step")
    page.context.close()


def test_the_form_offers_exactly_the_names_a_spec_accepts(browser: Any, server: str) -> None:
    from search import names

    page = new_page(browser, viewport=LAPTOP)
    page.goto(f"{server}/")
    page.wait_for_selector(f"#f-sampler option[value='{names.SAMPLERS[-1]}']", state="attached")
    proxies = page.eval_on_selector_all("#proxy-names option", "options => options.map(o => o.value)")
    samplers = page.eval_on_selector_all("#f-sampler option", "options => options.map(o => o.value)")
    assert proxies == list(names.proxy_names())
    assert samplers == ["", *names.SAMPLERS]
    page.context.close()


# --- comparing jobs ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_finished_jobs(finished_job: dict[str, Any], server: str, tiny_llama_dir: Path) -> list[str]:
    """The form's job and a smaller one on the same model and proxy, with another sampler."""
    with httpx.Client(base_url=server, timeout=30) as api:
        first = api.get(f"/v1/jobs/{finished_job['job_id']}").json()
        body = flow.job_body(tiny_llama_dir, n_trials=6, verify_top_k=2, proxy=first["spec"]["proxy"], sampler="random")
        second = flow.submit(api, body)
        assert flow.wait_for(api, second, TERMINAL, timeout=300)["status"] == "succeeded"
    return [first["id"], second]


def test_two_jobs_ticked_on_the_list_open_side_by_side(
    two_finished_jobs: list[str], browser: Any, server: str, api: httpx.Client, screenshot_dir: list[Path]
) -> None:
    page = new_page(browser, viewport=LAPTOP)
    errors = _errors(page)
    page.goto(f"{server}/")
    assert page.is_disabled("#compare-selected")
    for job_id in two_finished_jobs:
        page.check(f"#jobs-body tr[data-job-id='{job_id}'] input.compare-box")
    page.click("#compare-selected")
    page.wait_for_url(re.compile(r".*/compare\?jobs=[0-9a-f,]+$"))
    page.wait_for_selector("#compare-body:not([hidden])")

    comparison = api.get("/v1/compare", params={"jobs": ",".join(two_finished_jobs)}).json()
    # The plot: one coloured front per job, each named in the legend, the proxy's score by default.
    legend = page.locator("#compare-legend li").evaluate_all("items => items.map(i => i.dataset.jobId)")
    assert legend == two_finished_jobs
    series = page.locator("svg.scatter g.series").evaluate_all("groups => groups.map(g => g.dataset.series)")
    assert series == two_finished_jobs
    for job in comparison["jobs"]:
        plotted = page.locator(f"svg.scatter g.series[data-series='{job['id']}'] circle").count()
        assert plotted == len(job["pareto"]["items"]) > 0
    assert page.input_value("#compare-y") == "score"
    page.select_option("#compare-y", "kl")  # the verified KL: the best of each job at least
    for job_id in two_finished_jobs:
        assert page.locator(f"svg.scatter g.series[data-series='{job_id}'] circle.best").count() == 1

    # The tables: a column per job; the best architecture of each, layer by layer.
    for table in ("#compare-figures", "#compare-layers"):
        heads = page.locator(f"{table} thead th[data-job-id]").evaluate_all("cells => cells.map(c => c.dataset.jobId)")
        assert heads == two_finished_jobs, table
    figures = page.inner_text("#compare-figures")
    assert "random" in figures and "Perplexity (best)" in figures
    layers = comparison["jobs"][0]["best"]["arch"]["layers"]
    assert page.locator("#compare-layers tbody tr").count() == len(layers)
    first_heads = (
        f"{layers[0]['heads']} of {comparison['widths']['num_heads']} heads" if layers[0]["heads"] else "dropped"
    )
    assert first_heads in page.inner_text(
        f"#compare-layers tbody tr >> nth=0 >> td[data-job-id='{two_finished_jobs[0]}']"
    )
    save_screenshot(page, screenshot_dir, "compare.png", full_page=True)
    assert errors == []
    page.context.close()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_optuna_dashboard_compares_the_same_jobs_studies(
    two_finished_jobs: list[str], browser: Any, server_data_dir: Path
) -> None:
    """optuna-dashboard's WSGI app on the server's Optuna storage: its compare view shows both studies."""
    import optuna_dashboard

    from service.settings import Settings

    storage = Settings(data_dir=server_data_dir).optuna_storage_url
    dashboard = make_server("127.0.0.1", 0, optuna_dashboard.wsgi(storage), handler_class=_QuietHandler)
    thread = threading.Thread(target=dashboard.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{dashboard.server_port}"
    try:
        studies = httpx.get(f"{base}/api/studies", timeout=30).json()["study_summaries"]
        ids = {study["study_name"]: study["study_id"] for study in studies}
        names = [f"job-{job_id}" for job_id in two_finished_jobs]
        assert set(names) <= set(ids), ids
        page = new_page(browser, viewport=LAPTOP)
        page.goto(f"{base}/dashboard/compare-studies?ids={','.join(str(ids[name]) for name in names)}")
        # The view lists every study; the compared ones are drawn, each named in the history plot's legend.
        for name in names:
            page.get_by_text(f"Best Value of {name}").first.wait_for()
        drawn = page.locator("text=/^Best Value of /").all_text_contents()
        assert sorted(drawn) == sorted(f"Best Value of {name}" for name in names), drawn
        page.context.close()
    finally:
        dashboard.shutdown()
        dashboard.server_close()
        thread.join(timeout=10)
