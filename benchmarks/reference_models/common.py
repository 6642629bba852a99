"""Shared by corpus.py, train.py and evaluate.py: model shapes, document separator, windowed perplexity.

Kept free of anything but numpy/torch/transformers so the same code runs on the CPU here and on the
GPU machine (whose Python, torch and transformers versions differ).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BUILD = HERE / "build"  # ignored by git (.gitignore: build/)
HELDOUT = HERE / "heldout"  # committed held-out texts (small)
MODELS_DIR = ROOT / "models"

EOS = "<|endoftext|>"
# Documents in a split file are joined by this line; it is also the tokenizer's only special token.
DOC_SEPARATOR = f"\n{EOS}\n"
VOCAB_SIZE = 4096
SEQ_LEN = 512

# Llama-style decoders, GQA (2 KV heads), untied embeddings. Sizes are bounded by the ~40 MB the
# repository can hold for both in float16 (see README.md here).
MODEL_SHAPES: dict[str, dict[str, int]] = {
    "ref-llama-7m": dict(
        num_hidden_layers=6, hidden_size=256, num_attention_heads=8, num_key_value_heads=2, intermediate_size=768
    ),
    "ref-llama-13m": dict(
        num_hidden_layers=10, hidden_size=320, num_attention_heads=10, num_key_value_heads=2, intermediate_size=832
    ),
}


def llama_config(name: str, eos_id: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        use_cache=True,
        **MODEL_SHAPES[name],
    )


def split_documents(text: str) -> list[str]:
    return [doc for doc in text.split(DOC_SEPARATOR) if doc]


def token_stream(tokenizer, text: str) -> np.ndarray:
    """Token ids of a split file: each document's ids followed by EOS, as one uint16 stream."""
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    docs = split_documents(text)
    encoded = tokenizer._tokenizer.encode_batch(docs, add_special_tokens=False)
    out: list[int] = []
    for enc in encoded:
        out.extend(enc.ids)
        out.append(eos_id)
    return np.asarray(out, dtype=np.uint16)


def windows(stream: np.ndarray, seq_len: int = SEQ_LEN, limit: int | None = None) -> np.ndarray:
    """Non-overlapping windows of seq_len tokens over the stream (the tail shorter than a window is dropped)."""
    n = len(stream) // seq_len
    if limit is not None:
        n = min(n, limit)
    return stream[: n * seq_len].reshape(n, seq_len).astype(np.int64)


def perplexity(
    model, stream: np.ndarray, *, device, batch_size: int = 16, limit: int | None = None, autocast_dtype=None
) -> dict[str, float]:
    """Perplexity over non-overlapping windows: every token but each window's first is predicted.

    Deterministic and identical on CPU and GPU (up to floating point); no sliding context.
    """
    import torch
    import torch.nn.functional as F

    data = torch.from_numpy(windows(stream, limit=limit))
    total_nll = 0.0
    total_tokens = 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            batch = data[start : start + batch_size].to(device)
            if autocast_dtype is not None:
                with torch.autocast(device_type=torch.device(device).type, dtype=autocast_dtype):
                    logits = model(input_ids=batch).logits
            else:
                logits = model(input_ids=batch).logits
            nll = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
            )
            total_nll += float(nll)
            total_tokens += batch[:, 1:].numel()
    mean = total_nll / max(total_tokens, 1)
    return {"loss": mean, "ppl": math.exp(mean), "tokens": total_tokens, "windows": len(data)}
