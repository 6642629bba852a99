"""Marked sections of a generated document: each benchmark script owns the text between its markers,
so several scripts (throughput, scaling, load) can write into one page and a rerun replaces only its own."""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, key: str, text: str, *, heading: str = "") -> None:
    """Put ``text`` into ``path`` between ``<!-- key -->`` and ``<!-- /key -->``: replaced on a rerun,
    else appended (after ``heading``, once, when the document does not have it yet)."""
    begin, end = f"<!-- {key} -->", f"<!-- /{key} -->"
    section = f"{begin}\n{text.rstrip()}\n{end}\n"
    document = path.read_text() if path.exists() else ""
    if begin in document and end in document:
        head, rest = document.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        document = head + section + ("\n" + tail if tail else "")
    else:
        if heading and heading not in document:
            document = document.rstrip() + ("\n\n" if document else "") + heading + "\n"
        document = document.rstrip() + ("\n\n" if document else "") + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document)
