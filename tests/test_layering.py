"""DESIGN.md §1: the layers' dependency rules, checked on every test run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _loaded_after(imports: str, modules: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    code = f"import sys; {imports}; heavy = [m for m in {modules!r} if m in sys.modules]; assert not heavy, heavy"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)


def test_api_process_starts_without_torch() -> None:
    imports = "import service.api.app, workers.celery_app, search.spec; service.api.app.create_app"
    result = _loaded_after(imports, ("torch", "transformers"))
    assert result.returncode == 0, result.stderr


def test_worker_process_loads_no_web_stack() -> None:
    """What lint-imports checks statically, at run time too: the worker's modules and the service's
    core pull in neither FastAPI nor Starlette (nor torch, until a task imports it)."""
    imports = "import workers.tasks, service.submission, service.admission, service.artifacts"
    result = _loaded_after(imports, ("fastapi", "starlette", "torch", "transformers"))
    assert result.returncode == 0, result.stderr
