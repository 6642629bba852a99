"""What pip is told: Python 3.11 to 3.13, torch as a range (a user's CUDA build is kept), and the
exact CPU torch of these machines only in constraints.txt, which the README's commands pass."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SUPPORTED_PYTHONS = ("3.11", "3.12", "3.13")


def dependencies() -> dict[str, Requirement]:
    return {Requirement(spec).name: Requirement(spec) for spec in PYPROJECT["project"]["dependencies"]}


def constraints() -> dict[str, Requirement]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return {Requirement(line).name: Requirement(line) for line in lines if line.strip() and not line.startswith("#")}


def test_every_supported_python_may_install_it_and_ruff_targets_the_oldest() -> None:
    requires = SpecifierSet(PYPROJECT["project"]["requires-python"])
    assert all(requires.contains(python) for python in SUPPORTED_PYTHONS), requires
    assert not requires.contains("3.10")
    assert PYPROJECT["tool"]["ruff"]["target-version"] == "py" + SUPPORTED_PYTHONS[0].replace(".", "")
    classifiers = PYPROJECT["project"]["classifiers"]
    assert [f"Programming Language :: Python :: {python}" for python in SUPPORTED_PYTHONS] == classifiers


def test_torch_is_a_range_and_the_exact_pin_lives_in_constraints() -> None:
    torch = dependencies()["torch"].specifier
    assert not any(spec.operator in ("==", "===", "~=") for spec in torch), torch  # pip would replace a CUDA build
    assert torch.contains("2.11.0") and torch.contains("2.13.0") and not torch.contains("2.10.0")
    (pin,) = constraints()["torch"].specifier
    assert pin.operator == "=="
    assert Version(version("torch")).public == pin.version  # what the tests run on
    for name, constraint in constraints().items():  # a pin must lie within the declared range
        assert dependencies()[name].specifier.contains(next(iter(constraint.specifier)).version), name


def test_the_readme_commands_and_the_worker_image_install_with_the_constraints() -> None:
    readme = (ROOT / "README.md").read_text()
    installs = re.findall(r"^python3 -m venv \.venv && \.venv/bin/pip install (.*?) &&", readme, flags=re.MULTILINE)
    assert len(installs) == 2, installs  # the quickstart and the test command (.ci/run runs the latter)
    assert all(command.endswith("-c constraints.txt") for command in installs), installs
    dockerfile = (ROOT / "docker" / "worker.Dockerfile").read_text()
    assert "-r pyproject.toml -c constraints.txt" in dockerfile
    assert "!constraints.txt" in (ROOT / ".dockerignore").read_text().splitlines()
