"""The committed reference models (models/ref-llama-*) load with plain transformers and are really trained.

They were trained by benchmarks/reference_models/ (see docs/reference_models.md); these checks run on
the CPU in a few seconds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
HELDOUT = ROOT / "benchmarks" / "reference_models" / "heldout"
EOS = "<|endoftext|>"

# name: (layers, hidden, attention heads, KV heads, intermediate, parameters)
EXPECTED = {
    "ref-llama-7m": (6, 256, 8, 2, 768, 6_622_464),
    "ref-llama-13m": (10, 320, 10, 2, 832, 13_072_960),
}


def _stream(tokenizer, path: Path, n_chars: int) -> torch.Tensor:
    """Token ids of the first documents of a committed held-out file (documents end with EOS)."""
    text = path.read_text(encoding="utf-8")[:n_chars]
    ids: list[int] = []
    for doc in text.split(f"\n{EOS}\n"):
        ids += tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return torch.tensor(ids)


def _perplexity(model, stream: torch.Tensor, seq_len: int = 512, n_windows: int = 2) -> float:
    windows = stream[: seq_len * n_windows].view(n_windows, seq_len)
    with torch.no_grad():
        logits = model(input_ids=windows).logits
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), windows[:, 1:].reshape(-1))
    return math.exp(float(loss))


def test_models_fit_the_repository_budget() -> None:
    total = sum(p.stat().st_size for name in EXPECTED for p in (MODELS / name).iterdir())
    assert total < 41 * 1024 * 1024, total


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_reference_model_loads_with_plain_transformers_and_is_trained(name: str) -> None:
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    directory = MODELS / name
    layers, hidden, heads, kv_heads, intermediate, parameters = EXPECTED[name]
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    config = model.config

    assert isinstance(model, LlamaForCausalLM)
    assert (config.num_hidden_layers, config.hidden_size) == (layers, hidden)
    assert (config.num_attention_heads, config.num_key_value_heads) == (heads, kv_heads)
    assert 2 <= config.num_key_value_heads < config.num_attention_heads  # GQA with at least 2 KV groups
    assert config.num_attention_heads % config.num_key_value_heads == 0
    assert config.intermediate_size == intermediate and config.intermediate_size % 32 == 0
    assert config.tie_word_embeddings is False
    assert config.max_position_embeddings >= 512
    assert config.vocab_size == len(tokenizer) == 4096
    assert tokenizer.eos_token == EOS and config.eos_token_id == tokenizer.eos_token_id
    assert sum(p.numel() for p in model.parameters()) == parameters
    with safe_open(str(directory / "model.safetensors"), framework="pt") as weights:
        assert {weights.get_slice(k).get_dtype() for k in weights.keys()} == {"F16"}  # noqa: SIM118

    # Trained, not random: a random model scores about the vocabulary size (4096).
    docs = _perplexity(model, _stream(tokenizer, HELDOUT / "docs.txt", 20_000))
    code = _perplexity(model, _stream(tokenizer, HELDOUT / "stdlib.txt", 20_000))
    assert docs < 40, docs
    assert code < 100, code


def test_metrics_match_the_committed_weights() -> None:
    import hashlib

    summary = json.loads((ROOT / "benchmarks" / "reference_models" / "results" / "reference_models.json").read_text())
    assert set(summary["models"]) == set(EXPECTED)
    for name, info in summary["models"].items():
        weights = (MODELS / name / "model.safetensors").read_bytes()
        assert hashlib.sha256(weights).hexdigest() == info["model_safetensors_sha256"]
        assert info["parameters"] == EXPECTED[name][-1]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_search_loads_the_reference_model(name: str) -> None:
    from search.loading import load_model

    loaded = load_model(str(MODELS / name), device="cpu")
    assert loaded.tokenizer.eos_token == EOS
