"""service.paths.resolve_inside: nothing a URL names may leave the root folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import NotFound
from service.paths import resolve_inside


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "export").mkdir(parents=True)
    (root / "export" / "config.json").write_text("{}")
    (tmp_path / "secret.txt").write_text("secret")
    (root / "export" / "outside").symlink_to(tmp_path / "secret.txt")
    (root / "export" / "inside").symlink_to(root / "export" / "config.json")
    (root / "loop").symlink_to(root / "loop")
    return root


@pytest.mark.parametrize("relative", ["export/config.json", "export", "export/./config.json", "export/missing"])
def test_paths_inside_resolve(root: Path, relative: str) -> None:
    assert resolve_inside(root, relative) == (root / relative).resolve()


def test_symlink_that_stays_inside_is_followed(root: Path) -> None:
    assert resolve_inside(root, "export/inside") == (root / "export" / "config.json").resolve()


@pytest.mark.parametrize(
    "relative",
    [
        "",
        "..",
        "../secret.txt",
        "export/../../secret.txt",
        "export/../export/config.json",  # harmless, but '..' is refused outright
        "/etc/passwd",
        "//etc/passwd",
        "export\\..\\..\\secret.txt",
        "export/config.json\x00.png",
        "export/outside",  # symlink pointing outside the root
        "loop/x",
    ],
)
def test_escapes_are_not_found(root: Path, relative: str) -> None:
    with pytest.raises(NotFound):
        resolve_inside(root, relative)


def test_a_root_reached_through_a_symlink_works(root: Path, tmp_path: Path) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(root)
    assert resolve_inside(alias, "export/config.json") == (root / "export" / "config.json").resolve()
