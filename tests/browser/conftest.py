"""Headless Chromium (Debian's ``chromium``) driven by Playwright, against ``prunesearch serve``.

Playwright's own browser download cannot run here (no network), so the tests launch the system
Chromium at ``CHROMIUM`` (``.ci/run`` installs it). A missing browser fails the tests with the
command that fixes it, rather than skipping them silently.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.processes import PRUNESEARCH, Process, base_env, free_port, wait_ready

CHROMIUM = os.environ.get("PRUNESEARCH_TEST_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium keeps dialling Google on a closed network.
CHROMIUM_ARGS = [  # Playwright adds --headless itself
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
LAPTOP = {"width": 1280, "height": 900}
# Generous: the two cores are shared by Chromium, the server, its worker and whatever else runs.
PAGE_TIMEOUT_MS = 90_000
PHONE = {"width": 390, "height": 844}


def _chromium_path() -> str:
    path = CHROMIUM if os.path.isabs(CHROMIUM) else shutil.which(CHROMIUM)
    if not path or not os.access(path, os.X_OK):
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}: the browser tests need Debian's chromium "
            "(apt-get install -y chromium; .ci/run does this), or set PRUNESEARCH_TEST_CHROMIUM to a Chromium binary.",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    executable = _chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests need Playwright: pip install -e '.[dev]'", pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The data folder of ``server``: its SQLite database holds the jobs' Optuna studies too."""
    return tmp_path_factory.mktemp("browser-data")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, server_data_dir: Path) -> Iterator[str]:
    """``prunesearch serve`` (API + embedded worker, SQLite, filesystem broker) on a free port."""
    port = free_port()
    env = base_env(server_data_dir, port=str(port))
    process = Process("serve", [*PRUNESEARCH, "serve"], env, tmp_path_factory.mktemp("browser-logs"))
    base_url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base_url, timeout=30) as client:
            wait_ready(client, [process], timeout=180)
        yield base_url
    except BaseException:
        print(process.tail())
        raise
    finally:
        process.stop()
    print(process.tail(20))


@pytest.fixture
def api(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Where screenshots go: a temporary folder, and PRUNESEARCH_SCREENSHOT_DIR when set (docs/screenshots)."""
    folders = [tmp_path_factory.mktemp("screenshots")]
    if os.environ.get("PRUNESEARCH_SCREENSHOT_DIR"):
        folder = Path(os.environ["PRUNESEARCH_SCREENSHOT_DIR"])
        folder.mkdir(parents=True, exist_ok=True)
        folders.append(folder)
    return folders


def new_page(browser: object, **options: object) -> object:
    """A page in a fresh context (own storage, own timeouts); close it with ``page.context.close()``."""
    context = browser.new_context(**options)  # type: ignore[attr-defined]
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    context.set_default_navigation_timeout(PAGE_TIMEOUT_MS)
    return context.new_page()


def save_screenshot(page: object, folders: list[Path], name: str, *, full_page: bool = False) -> None:
    image = page.screenshot(full_page=full_page)  # type: ignore[attr-defined]
    for folder in folders:
        (folder / name).write_bytes(image)
