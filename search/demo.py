"""Build a small Llama-style decoder with a BPE tokenizer, offline, for the quickstart and tests.

The weights are random: searches on it exercise the whole pipeline, but its scores say nothing
about quality. (Pretrained reference models are a separate piece of work.)
"""

from __future__ import annotations

from pathlib import Path

import torch

from search.calibration_texts import default_texts

DEMO_SIZES: dict[str, dict[str, int]] = {
    # hidden, layers, heads, kv heads, intermediate, vocab
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=256,
        vocab_size=512,
    ),
    "small": dict(
        hidden_size=256,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=2,
        intermediate_size=768,
        vocab_size=4096,
    ),
}


def build_demo_model(directory: str | Path, *, size: str = "small", seed: int = 0) -> Path:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    dims = DEMO_SIZES[size]
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(default_texts(), vocab_size=dims["vocab_size"], special_tokens=["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    tokenizer.save_pretrained(target)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = LlamaConfig(
        **dims, max_position_embeddings=1024, bos_token_id=eos, eos_token_id=eos, tie_word_embeddings=False
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(target)
    return target
