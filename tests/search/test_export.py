"""Export per family: the physically smaller model computes what the search evaluated under masks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    BertConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)

from search.arch import ArchConfig, LayerArch
from search.export import export_model, load_pruned
from search.export_format import PROVENANCE_FILE
from search.loading import LoadedModel, adapter_for
from search.masking import apply_arch
from tests.search.selections import random_selection

_LLAMA = dict(
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=512,
)
FAMILIES = {
    "llama": LlamaConfig(**_LLAMA, tie_word_embeddings=False),
    "mistral": MistralConfig(**_LLAMA),
    "qwen2": Qwen2Config(**_LLAMA),
    "qwen3": Qwen3Config(**_LLAMA, head_dim=16),
    "gpt2": GPT2Config(n_embd=64, n_layer=4, n_head=4, n_inner=128, vocab_size=512, n_positions=128),
    "bert": BertConfig(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        vocab_size=512,
        max_position_embeddings=128,
    ),
}
ARCHS = {
    # depth pruning plus uniform FFN width: a standard config for every family
    "uniform": lambda heads, g: ArchConfig(
        (LayerArch(heads, 64), LayerArch(0, 0), LayerArch(heads, 64), LayerArch(heads, 64))
    ),
    # depth only
    "depth": lambda heads, g: ArchConfig(
        (LayerArch(heads, 128), LayerArch(heads, 128), LayerArch(0, 0), LayerArch(heads, 128))
    ),
    # per-layer widths, sub-layer drops
    "per_layer": lambda heads, g: ArchConfig(
        (LayerArch(g, 32), LayerArch(0, 96), LayerArch(heads, 0), LayerArch(g, 128))
    ),
    # per-layer widths and unstructured sparsity
    "sparse": lambda heads, g: ArchConfig(
        (LayerArch(g, 32, 0.3), LayerArch(0, 96, 0.5), LayerArch(heads, 0, 0.1), LayerArch(g, 128))
    ),
}


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_llama_dir)


def _loaded(family: str, tokenizer) -> LoadedModel:
    torch.manual_seed(0)
    config = FAMILIES[family]
    auto = AutoModel if family == "bert" else AutoModelForCausalLM
    model = auto.from_config(config).eval()
    with torch.no_grad():  # no zero or constant parameter (biases, norms, padding rows) to hide a mistake
        for parameter in model.parameters():
            if parameter.dim() == 1:
                parameter.uniform_(0.5, 1.5)
            else:
                parameter.normal_(0.0, 0.1)
    return LoadedModel(adapter_for(model), tokenizer, (f"tiny-{family}", None, "cpu"))


def _outputs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        output = model(**batch)
    return output.logits if hasattr(output, "logits") else output.last_hidden_state


@pytest.mark.parametrize("arch_name", list(ARCHS))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_export_equals_masked_evaluation(family: str, arch_name: str, tokenizer, tmp_path: Path) -> None:
    loaded = _loaded(family, tokenizer)
    shape = loaded.adapter.shape
    arch = ARCHS[arch_name](shape.num_heads, shape.group_size)
    selection = random_selection(loaded, arch)
    batch = {
        "input_ids": torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(2)),
        "attention_mask": torch.ones(2, 24, dtype=torch.long),
    }
    with apply_arch(loaded.adapter, selection):
        masked = _outputs(loaded.adapter.model, batch)
    before = {k: v.clone() for k, v in loaded.adapter.model.state_dict().items()}

    info = export_model(loaded, selection, tmp_path / "export")
    exported = load_pruned(info.directory)

    # Tolerance: float32 re-association between masked and sliced matmuls.
    torch.testing.assert_close(_outputs(exported, batch), masked, rtol=1e-4, atol=1e-5)
    assert info.nonzero_params == shape.count_params(arch)
    assert sum(int(torch.count_nonzero(p)) for p in exported.parameters()) == shape.count_params(arch)
    assert all(torch.equal(before[k], v) for k, v in loaded.adapter.model.state_dict().items())  # dense untouched
    provenance = json.loads((info.directory / PROVENANCE_FILE).read_text())
    assert provenance["kept"]["layers"] == [
        i for i, layer in enumerate(arch.layers) if layer.heads or layer.ffn_channels
    ]
    assert (info.directory / "tokenizer_config.json").is_file()

    expected_kind = "standard" if arch_name in ("depth", "uniform") else "per_layer"
    assert info.kind == expected_kind
    if info.kind == "standard":
        # No prunesearch code involved: plain transformers, no trust_remote_code.
        auto = AutoModel if family == "bert" else AutoModelForCausalLM
        plain = auto.from_pretrained(info.directory)
        torch.testing.assert_close(_outputs(plain, batch), masked, rtol=1e-4, atol=1e-5)
        config = AutoConfig.from_pretrained(info.directory)
        if shape.family == "llama":  # GQA groups are never split
            assert config.num_attention_heads == config.num_key_value_heads * shape.group_size
    else:
        with pytest.raises((RuntimeError, ValueError)):
            AutoModelForCausalLM.from_pretrained(info.directory) if family != "bert" else AutoModel.from_pretrained(
                info.directory
            )


def test_head_counts_transformers_refuses_are_exported_per_layer(tokenizer, tmp_path: Path) -> None:
    """12 of 16 heads on hidden 64: a standard Llama config would be rejected (64 % 12 != 0)."""
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=16,
        num_key_value_heads=4,
        head_dim=4,
        intermediate_size=64,
        vocab_size=512,
        tie_word_embeddings=False,
    )
    model = AutoModelForCausalLM.from_config(config).eval()
    loaded = LoadedModel(adapter_for(model), tokenizer, ("tiny-heads", None, "cpu"))
    arch = ArchConfig((LayerArch(12, 64), LayerArch(12, 64)))
    selection = random_selection(loaded, arch)
    info = export_model(loaded, selection, tmp_path / "export")
    assert info.kind == "per_layer"
    batch = {"input_ids": torch.randint(0, 512, (1, 8)), "attention_mask": torch.ones(1, 8, dtype=torch.long)}
    with apply_arch(loaded.adapter, selection):
        masked = _outputs(loaded.adapter.model, batch)
    torch.testing.assert_close(_outputs(load_pruned(info.directory), batch), masked, rtol=1e-4, atol=1e-5)
