"""`prunesearch export --study`: user errors in one line, never a traceback (the export itself is
tested on a real search in test_local_search.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from prunesearch.cli import main


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give a JOB_ID, or --study NAME --trial N"),
        (["--study", "search-1"], "--study needs --trial N"),
    ],
)
def test_export_says_what_is_missing(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["export", "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_export_of_a_study_in_a_missing_database_names_it(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'none.sqlite3'}"
    args = ["export", "--study", "search-1", "--storage", storage, "--trial", "0", "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and f"no database at {storage}" in result.output, result.output
    assert not (tmp_path / "none.sqlite3").exists()
