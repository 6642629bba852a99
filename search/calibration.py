"""Calibration and held-out tokens from texts: a file, a directory of files, or inline texts.

Decoders: the texts are tokenised as one stream and cut into windows of ``seq_len`` tokens.
Encoders: the texts are split into paragraphs, each truncated to ``seq_len`` tokens and padded.
Either way the samples are shuffled with a fixed seed and split into disjoint calibration and
held-out sets. The digest identifies the exact tokens, so caches and provenance can be keyed by it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from search.calibration_texts import iter_texts, paragraphs, require_paragraphs, require_windows
from search.spec import Calibration

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_SPLIT_SEED = 0


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
    return list(iter_texts(calibration.source, calibration.texts))


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
    windows = require_windows(len(stream), seq_len=seq_len, n_calibration=n_calibration, n_heldout=n_heldout)
    needed = n_calibration + n_heldout
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
    samples = [paragraph for text in texts for paragraph in paragraphs(text)]
    require_paragraphs(len(samples), n_calibration=n_calibration, n_heldout=n_heldout)
    needed = n_calibration + n_heldout
    order = _order(len(samples)).tolist()

    def encode(indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = tokenizer(
            [samples[i] for i in indices],
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
