"""Commands on a fresh machine: the embedded database is found and migrated from any folder, an
external one that is behind is named (without its password) with the command that fixes it, and a
user's error is one line, never a traceback."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy.engine import make_url

from prunesearch.cli import main
from service.settings import get_settings
from tests.e2e.processes import PRUNESEARCH, base_env
from workers.settings import get_worker_settings


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty working directory, fresh settings, and a per-user data folder under ``tmp_path``."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    monkeypatch.chdir(folder)
    for name in ("DATA_DIR", "DATABASE_URL", "OPTUNA_STORAGE_URL", "BROKER_URL"):
        monkeypatch.delenv(f"PRUNESEARCH_{name}", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    get_settings.cache_clear()
    yield folder
    get_settings.cache_clear()


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def assert_one_line_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert "Traceback" not in result.output


def test_keys_create_on_a_fresh_machine_migrates_the_per_user_database(elsewhere: Path, tmp_path: Path) -> None:
    created = run("keys", "create", "alice")

    assert created.exit_code == 0, created.output
    assert created.stdout.startswith("psk_") and len(created.stdout.splitlines()) == 1
    data_dir = tmp_path / "xdg" / "prunesearch"
    assert f"Data in {data_dir}" in created.stderr  # commands say where the data is
    assert (data_dir / "prunesearch.sqlite3").is_file()
    assert list(elsewhere.iterdir()) == []  # nothing in the working directory
    assert "alice" in run("keys", "list").stdout


def test_keys_webhook_secret_is_shown_at_creation_and_retrievable_and_rotatable(elsewhere: Path) -> None:
    created = run("keys", "create", "alice")
    assert created.exit_code == 0, created.output
    key_id = created.stdout.split("_")[1]
    shown = next(line for line in created.stderr.splitlines() if "webhook signing secret" in line)
    secret = shown.split(": ", 1)[1].split()[0]
    assert secret.startswith("whsec_") and secret not in created.stdout  # stdout stays the key alone
    again = run("keys", "webhook-secret", key_id)
    assert again.exit_code == 0 and again.stdout.strip() == secret
    rotated = run("keys", "webhook-secret", key_id, "--rotate").stdout.strip()
    assert rotated.startswith("whsec_") and rotated != secret
    assert run("keys", "webhook-secret", key_id).stdout.strip() == rotated
    assert_one_line_error(run("keys", "webhook-secret", "000000000000"), "no API key")


def test_export_from_another_folder_reads_the_same_database_and_leaves_no_stray_folder(
    elsewhere: Path, tmp_path: Path
) -> None:
    assert run("keys", "create", "alice").exit_code == 0  # as if `serve` had run in another folder
    result = run("export", "0123456789ab", "--out", str(tmp_path / "out"))

    assert_one_line_error(result, "no job '0123456789ab'", str(tmp_path / "xdg" / "prunesearch"))
    assert list(elsewhere.iterdir()) == []


def test_db_commands_report_the_revision_of_the_embedded_database(elsewhere: Path) -> None:
    from service.migrate import head

    assert run("db", "current").stdout.strip() == "none"
    upgraded = run("db", "upgrade")
    assert upgraded.exit_code == 0 and f"database at revision {head()} (sqlite:///" in upgraded.stdout


def test_an_external_database_behind_is_named_without_its_password(
    elsewhere: Path, monkeypatch: pytest.MonkeyPatch, postgres_database_factory: Callable[[], str]
) -> None:
    # The tests' server trusts local connections, so the password is accepted and ignored.
    url = make_url(postgres_database_factory()).set(password="s3cret-pw")
    monkeypatch.setenv("PRUNESEARCH_DATABASE_URL", url.render_as_string(hide_password=False))

    for command in (["keys", "list"], ["keys", "create", "alice"], ["export", "0123456789ab", "--out", "x"]):
        result = run(*command)
        assert_one_line_error(result, "run `prunesearch db upgrade`", url.render_as_string(hide_password=True))
        assert "s3cret-pw" not in result.output
    assert run("db", "upgrade").exit_code == 0
    assert run("keys", "create", "alice").exit_code == 0


def test_user_errors_are_one_line(elsewhere: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PRUNESEARCH_DATABASE_URL", "postgresql://nobody:pw@127.0.0.1:1/none")
    assert_one_line_error(run("keys", "list"), "database error", "Connection refused")
    monkeypatch.setenv("PRUNESEARCH_DATABASE_URL", f"sqlite:///{tmp_path / 'elsewhere'}")  # a folder, not a file
    assert_one_line_error(run("keys", "list"), "database error")
    monkeypatch.delenv("PRUNESEARCH_DATABASE_URL")
    monkeypatch.setenv("PRUNESEARCH_PORT", "eighty")
    get_settings.cache_clear()
    assert_one_line_error(run("keys", "list"), "PRUNESEARCH_PORT")
    # A worker's setting, read by the local search (its artifact store is the workers').
    monkeypatch.delenv("PRUNESEARCH_PORT")
    monkeypatch.setenv("PRUNESEARCH_TRIAL_GRACE_S", "never")
    get_worker_settings.cache_clear()
    model = str(Path(__file__).resolve().parents[2] / "models" / "ref-llama-7m")
    assert_one_line_error(run("search", "--model", model, "--param-ratio", "0.5"), "PRUNESEARCH_TRIAL_GRACE_S")
    get_worker_settings.cache_clear()


def test_keys_create_as_a_process_from_another_folder(tmp_path: Path) -> None:
    """The README's laptop case, as a user types it: no setting but the per-user folder."""
    env = base_env(tmp_path / "unused")
    del env["PRUNESEARCH_DATA_DIR"]
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    (tmp_path / "cwd").mkdir()
    result = subprocess.run(
        [*PRUNESEARCH, "keys", "create", "alice"], env=env, cwd=tmp_path / "cwd", capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "xdg" / "prunesearch" / "prunesearch.sqlite3").is_file()
    assert list((tmp_path / "cwd").iterdir()) == []
