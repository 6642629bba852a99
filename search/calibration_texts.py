"""Calibration texts, and how many samples they give: torch-free.

``search.calibration`` turns the texts into token windows (decoders) or paragraphs (encoders);
``search.calibration_count`` counts the same samples before a job is accepted. Both read the texts
and judge the counts here, so the API refuses exactly what the worker would.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from search.errors import CalibrationError

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")
MIN_PARAGRAPH_CHARS = 40


def iter_texts(source: str | None, texts: Sequence[str] | None) -> Iterator[str]:
    """The texts of a job, one file at a time: ``texts`` inline, else ``source``, else the default."""
    if texts is not None:
        yield from texts
        return
    if source is None:
        yield from default_texts()
        return
    for file in _source_files(Path(source).expanduser()):
        yield file.read_text(encoding="utf-8", errors="replace")


def default_texts() -> list[str]:
    """The Python documentation's topic reference, which ships with every CPython (offline, English)."""
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


def _source_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise CalibrationError(f"calibration source {path} does not exist")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    if not files:
        raise CalibrationError(f"calibration directory {path} has no {'/'.join(TEXT_SUFFIXES)} files")
    return files


def paragraphs(text: str) -> list[str]:
    """An encoder's samples from one text: blank-line separated paragraphs, whitespace collapsed."""
    return [" ".join(part.split()) for part in re.split(r"\n\s*\n", text) if len(part.strip()) >= MIN_PARAGRAPH_CHARS]


def require_windows(n_tokens: int, *, seq_len: int, n_calibration: int, n_heldout: int) -> int:
    """The number of ``seq_len`` windows in a stream of ``n_tokens``; refused when fewer than needed."""
    windows = n_tokens // seq_len
    needed = n_calibration + n_heldout
    if windows < needed:
        raise CalibrationError(
            f"calibration texts give {n_tokens} tokens = {windows} windows of {seq_len}; "
            f"{needed} are needed ({n_calibration} calibration + {n_heldout} held-out)"
        )
    return windows


def require_paragraphs(n_paragraphs: int, *, n_calibration: int, n_heldout: int) -> None:
    """Refuse fewer paragraphs than calibration plus held-out samples."""
    needed = n_calibration + n_heldout
    if n_paragraphs < needed:
        raise CalibrationError(
            f"calibration texts give {n_paragraphs} paragraphs of at least {MIN_PARAGRAPH_CHARS} characters; "
            f"{needed} are needed ({n_calibration} calibration + {n_heldout} held-out)"
        )
