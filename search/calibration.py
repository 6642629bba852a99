"""Calibration and held-out tokens from texts: a file, a directory of files, or inline texts.

Decoders: the texts are tokenised as one stream and cut into windows of ``seq_len`` tokens.
Encoders: the texts are split into paragraphs, each truncated to ``seq_len`` tokens and padded.
Either way the samples are shuffled with a fixed seed and split into disjoint calibration and
held-out sets. The digest identifies the exact tokens, so caches and provenance can be keyed by it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
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
_MIN_PARAGRAPH_CHARS = 40


@dataclass(frozen=True)
class TokenSet:
    calibration: torch.Tensor  # (N, T) token ids
    heldout: torch.Tensor  # (M, T) token ids
    digest: str
    calibration_mask: torch.Tensor | None = None  # (N, T); None = no padding
    heldout_mask: torch.Tensor | None = None

    def batches(self, split: str, batch_size: int, device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
        ids = self.calibration if split == "calibration" else self.heldout
        mask = self.calibration_mask if split == "calibration" else self.heldout_mask
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size].to(device)
            chunk_mask = torch.ones_like(chunk) if mask is None else mask[start : start + batch_size].to(device)
            yield {"input_ids": chunk, "attention_mask": chunk_mask}

    def count(self, split: str) -> int:
        """Real (unpadded) tokens in a split."""
        mask = self.calibration_mask if split == "calibration" else self.heldout_mask
        ids = self.calibration if split == "calibration" else self.heldout
        return int(mask.sum()) if mask is not None else ids.numel()


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


def build_token_set(tokenizer: PreTrainedTokenizerBase, calibration: Calibration, *, causal: bool = True) -> TokenSet:
    texts = load_texts(calibration)
    build = tokenize_windows if causal else tokenize_paragraphs
    return build(
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
        # Whole documents are tokenised on purpose and cut into seq_len windows below, so the
        # tokenizer's "longer than the specified maximum sequence length" warning does not apply.
        stream.extend(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        stream.extend(separator)
    windows = len(stream) // seq_len
    needed = n_calibration + n_heldout
    if windows < needed:
        raise CalibrationError(
            f"calibration texts give {len(stream)} tokens = {windows} windows of {seq_len}; "
            f"{needed} are needed ({n_calibration} calibration + {n_heldout} held-out)"
        )
    ids = torch.tensor(stream[: windows * seq_len], dtype=torch.long).view(windows, seq_len)
    order = _order(windows)
    calibration, heldout = ids[order[:n_calibration]].contiguous(), ids[order[n_calibration:needed]].contiguous()
    return TokenSet(calibration, heldout, _digest(seq_len, calibration, heldout))


def tokenize_paragraphs(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    seq_len: int,
    n_calibration: int,
    n_heldout: int,
) -> TokenSet:
    paragraphs = [
        " ".join(part.split())
        for text in texts
        for part in re.split(r"\n\s*\n", text)
        if len(part.strip()) >= _MIN_PARAGRAPH_CHARS
    ]
    needed = n_calibration + n_heldout
    if len(paragraphs) < needed:
        raise CalibrationError(
            f"calibration texts give {len(paragraphs)} paragraphs of at least {_MIN_PARAGRAPH_CHARS} characters; "
            f"{needed} are needed ({n_calibration} calibration + {n_heldout} held-out)"
        )
    order = _order(len(paragraphs)).tolist()

    def encode(indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = tokenizer(
            [paragraphs[i] for i in indices],
            truncation=True,
            max_length=seq_len,
            padding="max_length",
            return_tensors="pt",
        )
        return encoded["input_ids"], encoded["attention_mask"]

    calibration, calibration_mask = encode(order[:n_calibration])
    heldout, heldout_mask = encode(order[n_calibration:needed])
    return TokenSet(calibration, heldout, _digest(seq_len, calibration, heldout), calibration_mask, heldout_mask)


def _order(count: int) -> torch.Tensor:
    return torch.randperm(count, generator=torch.Generator().manual_seed(_SPLIT_SEED))


def _digest(seq_len: int, calibration: torch.Tensor, heldout: torch.Tensor) -> str:
    digest = hashlib.sha256()
    digest.update(f"{seq_len}:{len(calibration)}:{len(heldout)}:".encode())
    digest.update(calibration.numpy().tobytes())
    digest.update(heldout.numpy().tobytes())
    return digest.hexdigest()[:16]
