"""Resolving a client-supplied relative path without ever leaving a root folder.

Every file the API serves from disk is named by a request (an export name, a path inside it), so
each lookup goes through ``resolve_inside``: a path that is absolute, climbs with ``..``, or
reaches outside through a symlink is answered as if it did not exist (404), never served.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from service.errors import NotFound

__all__ = ["resolve_inside"]


def resolve_inside(root: Path, relative: str) -> Path:
    """``root / relative`` with symlinks resolved, or ``NotFound`` if that would leave ``root``.

    ``relative`` is a POSIX-style path as it came from a URL. Refused: empty, absolute, containing
    ``..``, backslashes or NUL, and anything whose resolved location is not inside the resolved
    ``root`` (a symlink pointing elsewhere). The result need not exist; callers check that.
    """
    if not _plausible(relative):
        raise NotFound(f"no such path: {relative!r}")
    try:
        base = root.resolve()
        candidate = (base / relative).resolve()
    except (OSError, RuntimeError, ValueError) as error:  # symlink loops, over-long names
        raise NotFound(f"no such path: {relative!r}") from error
    if not candidate.is_relative_to(base):
        raise NotFound(f"no such path: {relative!r}")
    return candidate


def _plausible(relative: str) -> bool:
    if not relative or "\x00" in relative or "\\" in relative:
        return False
    pure = PurePosixPath(relative)
    return not pure.is_absolute() and ".." not in pure.parts
