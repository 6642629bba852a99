"""The README's first command runs as written, and its timing belongs to that command: it says how
many trials were timed and where (issue 17, item 12: the figure had gone stale by a factor of ten)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from prunesearch.cli import main

REPO = Path(__file__).resolve().parents[2]


def first_search_command(readme: str) -> list[str]:
    match = re.search(r"prunesearch search ([^\n`]+)", readme)
    assert match, "the README has no `prunesearch search` command"
    return shlex.split(match.group(1))


def test_the_first_command_is_valid_and_its_timing_says_what_and_where(monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (REPO / "README.md").read_text()
    args = first_search_command(readme)
    monkeypatch.chdir(REPO)  # the command is run from a fresh clone's root
    result = CliRunner().invoke(main, ["search", *args, "--print-spec"])
    assert result.exit_code == 0, result.output
    spec = json.loads(result.stdout)

    timing = next(p for p in readme.split("\n\n") if "wall-clock" in p)
    flat = " ".join(timing.split())
    assert f"{spec['n_trials']} trials" in flat and Path(spec["model"]).name in flat
    assert re.search(r"measured (on|in) \d{4}-\d{2}-\d{2}", flat), flat
