"""Calibration and held-out tokens from texts: a file, a directory of files, or inline texts.

Texts are tokenised as one stream, cut into windows of ``seq_len`` tokens, shuffled with a fixed
seed and split into disjoint calibration and held-out sets. The digest identifies the exact tokens,
so caches and provenance can be keyed by it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from search.errors import CalibrationError
from search.spec import Calibration

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")
_SPLIT_SEED = 0


@dataclass(frozen=True)
class TokenSet:
    calibration: torch.Tensor  # (N, T) token ids
    heldout: torch.Tensor  # (M, T) token ids
    digest: str


def load_texts(calibration: Calibration) -> list[str]:
    if calibration.texts is not None:
        return list(calibration.texts)
    if calibration.source is None:
        return default_texts()
    path = Path(calibration.source).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise CalibrationError(f"calibration directory {path} has no {'/'.join(TEXT_SUFFIXES)} files")
    else:
        raise CalibrationError(f"calibration source {path} does not exist")
    return [f.read_text(encoding="utf-8", errors="replace") for f in files]


def default_texts() -> list[str]:
    """The Python documentation's topic reference, which ships with every CPython (offline, English)."""
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


def build_token_set(tokenizer: PreTrainedTokenizerBase, calibration: Calibration) -> TokenSet:
    texts = load_texts(calibration)
    return tokenize_windows(
        tokenizer,
        texts,
        seq_len=calibration.seq_len,
        n_calibration=calibration.n_samples,
        n_heldout=calibration.heldout_samples,
    )


def tokenize_windows(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    seq_len: int,
    n_calibration: int,
    n_heldout: int,
) -> TokenSet:
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        stream.extend(separator)
    windows = len(stream) // seq_len
    needed = n_calibration + n_heldout
    if windows < needed:
        raise CalibrationError(
            f"calibration texts give {len(stream)} tokens = {windows} windows of {seq_len}; "
            f"{needed} are needed ({n_calibration} calibration + {n_heldout} held-out)"
        )
    ids = torch.tensor(stream[: windows * seq_len], dtype=torch.long).view(windows, seq_len)
    order = torch.randperm(windows, generator=torch.Generator().manual_seed(_SPLIT_SEED))
    calibration = ids[order[:n_calibration]].contiguous()
    heldout = ids[order[n_calibration:needed]].contiguous()
    digest = hashlib.sha256()
    digest.update(f"{seq_len}:{n_calibration}:{n_heldout}:".encode())
    digest.update(calibration.numpy().tobytes())
    digest.update(heldout.numpy().tobytes())
    return TokenSet(calibration, heldout, digest.hexdigest()[:16])
