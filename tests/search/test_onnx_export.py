"""ONNX graphs of exports run outside PyTorch: onnxruntime's greedy decoding with the KV cache gives
the tokens PyTorch's ``generate`` gives, for a per-layer Llama (layer 0 without attention, head counts
differing per layer, an MLP dropped) and a per-layer GPT-2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, LlamaConfig

from search.arch import ArchConfig, LayerArch
from search.errors import InvalidArchConfig, ModelLoadError
from search.export import export_model, load_pruned
from search.export_format import ONNX_LAYOUT_FILE
from search.loading import LoadedModel, adapter_for
from search.onnx_export import export_onnx
from search.onnx_runtime import generate_onnx, read_layout
from tests.search.selections import random_selection

# initializer_range 0.2: random weights whose greedy continuations vary (0.02 repeats one token).
CONFIGS = {
    "llama": LlamaConfig(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=512,
        tie_word_embeddings=False,
        initializer_range=0.2,
    ),
    "gpt2": GPT2Config(
        n_embd=64, n_layer=4, n_head=4, n_inner=128, vocab_size=512, n_positions=128, initializer_range=0.2
    ),
}
# (heads, FFN channels) per layer: layer 0 without attention, differing head counts, layer 1 without MLP.
ARCHS = {
    "llama": ArchConfig((LayerArch(0, 64), LayerArch(2, 0), LayerArch(4, 128), LayerArch(2, 96))),
    "gpt2": ArchConfig((LayerArch(0, 64), LayerArch(3, 0), LayerArch(4, 128), LayerArch(1, 96))),
}
NEW_TOKENS = 32


def _export(family: str, tokenizer: object, directory: Path) -> Path:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CONFIGS[family]).eval()
    loaded = LoadedModel(adapter_for(model), tokenizer, (f"tiny-{family}", None, "cpu"))
    selection = random_selection(loaded, ARCHS[family])
    assert export_model(loaded, selection, directory).kind == "per_layer"
    return directory


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir: Path) -> object:
    return AutoTokenizer.from_pretrained(tiny_llama_dir)


@pytest.mark.parametrize("family", list(CONFIGS))
def test_onnx_greedy_decoding_equals_pytorch_generate(family: str, tokenizer: object, tmp_path: Path) -> None:
    export = _export(family, tokenizer, tmp_path / "export")
    info = export_onnx(export, tmp_path / "onnx")

    # The cache layout a runtime needs: one slot per kept attention, with its own KV head count.
    layout = read_layout(info.directory)
    heads = [layer.heads for layer in ARCHS[family].layers]
    group = CONFIGS[family].num_attention_heads // getattr(CONFIGS[family], "num_key_value_heads", 4)
    assert [(slot.layer, slot.kv_heads) for slot in layout.cache] == [(i, h // group) for i, h in enumerate(heads) if h]
    assert layout.inputs[3:5] == ("past.0.key", "past.0.value") and layout.dtype == "float32"
    assert json.loads((info.directory / ONNX_LAYOUT_FILE).read_text())["cache"][0]["name"] == "past.0"
    assert (info.directory / "tokenizer.json").is_file() and not list(info.directory.glob("*.safetensors"))

    # A batch of two prompts, the second left-padded: positions and masks matter, not only the cache.
    prompt = torch.randint(3, 512, (2, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(prompt)
    prompt[1, :4], mask[1, :4] = 0, 0
    model = load_pruned(export)
    model.generation_config.eos_token_id = None  # 32 tokens, whatever comes
    with torch.no_grad():
        expected = model.generate(
            prompt, attention_mask=mask, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0
        )
    tokens = generate_onnx(
        info.directory, prompt.numpy(), attention_mask=mask.numpy(), max_new_tokens=NEW_TOKENS, eos_token_id=[]
    )

    assert tokens.shape == (2, 9 + NEW_TOKENS)
    np.testing.assert_array_equal(tokens, expected.numpy())
    assert len(set(tokens[0, 9:].tolist())) > 3  # a real continuation, not one token repeated


def test_onnx_export_refusals(tokenizer: object, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a model directory"):
        export_onnx(tmp_path, tmp_path / "out")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(InvalidArchConfig, match="not empty"):
        export_onnx(tmp_path, tmp_path / "busy")
    with pytest.raises(ModelLoadError, match="not an ONNX export"):
        generate_onnx(tmp_path, np.zeros((1, 2), dtype=np.int64), max_new_tokens=1)


def test_per_layer_export_generates_with_the_cache_as_without(tokenizer: object, tmp_path: Path) -> None:
    """Layer 0 has no attention: the cache slots are numbered from the first kept attention
    (``build_skeleton``), so transformers' cache length, positions and masks are right on a padded batch."""
    model = load_pruned(_export("llama", tokenizer, tmp_path / "export"))
    model.generation_config.eos_token_id = None
    prompt = torch.randint(3, 512, (2, 7), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(prompt)
    prompt[1, :3], mask[1, :3] = 0, 0
    settings = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        cached = model.generate(prompt, use_cache=True, **settings)
        uncached = model.generate(prompt, use_cache=False, **settings)
    torch.testing.assert_close(cached, uncached, rtol=0, atol=0)
