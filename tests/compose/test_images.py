"""What the images are built from: the wheel carries the web assets and migrations, and the API
image's requirement list is pyproject.toml's dependencies minus the worker's (no torch)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement

from tests.compose.api_image.api_image_rules import read_requirements
from tests.compose.compose import API_REQUIREMENTS, ROOT

WORKER_ONLY = {"torch", "transformers", "safetensors", "optuna", "cmaes", "rich", "httpx"}


def api_requirements() -> list[Requirement]:
    return read_requirements(API_REQUIREMENTS)


def test_api_requirements_are_pyprojects_without_the_worker_packages() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {Requirement(spec).name.lower(): Requirement(spec) for spec in project["dependencies"]}
    api = {req.name.lower(): req for req in api_requirements()}
    assert "torch" not in api and "transformers" not in api
    for name, req in api.items():
        assert name in declared, f"{name} is in requirements-api.txt but not a dependency in pyproject.toml"
        assert str(req.specifier) == str(declared[name].specifier), f"{name}: ranges differ from pyproject.toml"
        assert req.extras == declared[name].extras, name
    # Every dependency is either in the API image or deliberately worker-only.
    assert set(declared) - set(api) <= WORKER_ONLY, set(declared) - set(api) - WORKER_ONLY


def build_context(target: Path) -> Path:
    """The files the Dockerfiles COPY (the only ones .dockerignore lets through), in a fresh folder."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, target / name)
    for package in ("search", "service", "workers", "migrations", "prunesearch"):
        shutil.copytree(ROOT / package, target / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def test_the_wheel_carries_the_web_assets_and_the_migrations(tmp_path: Path) -> None:
    # What `pip install --no-deps .` in the Dockerfiles installs (not the editable install tests use),
    # built from the same files the image gets.
    (tmp_path / "context").mkdir()
    context = build_context(tmp_path / "context")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = tmp_path.glob("prunesearch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    web = ROOT / "service" / "web"
    for path in [*web.glob("static/*"), *web.glob("templates/*.html")]:
        assert path.relative_to(ROOT).as_posix() in names, path
    for path in (ROOT / "migrations" / "versions").glob("*.py"):
        assert path.relative_to(ROOT).as_posix() in names, path
    assert "migrations/env.py" in names and "prunesearch/cli.py" in names
