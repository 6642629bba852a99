"""Exports keep the checkpoint's precision, whatever dtype the search held the weights in."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from search.arch import ArchConfig, LayerArch
from search.export import export_model, load_pruned
from search.export_format import PROVENANCE_FILE
from search.loading import LoadedModel, load_model
from search.precision import read_source
from tests.search.selections import random_selection

REFERENCE = Path(__file__).resolve().parents[2] / "models" / "ref-llama-7m"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _checkpoint(root: Path, tokenizer_dir: Path, dtype: torch.dtype, *, gpt2: bool = False) -> Path:
    """A tiny model built from a config, saved in ``dtype`` with a tokenizer."""
    torch.manual_seed(0)
    if gpt2:  # Conv1D weights stored (in, out), biases, tied embeddings
        model = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=4, n_head=4, n_inner=128, vocab_size=512))
    else:
        config = LlamaConfig(
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
            vocab_size=512,
            tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(config)
    target = root / f"{'gpt2' if gpt2 else 'llama'}-{dtype}"
    model.to(dtype).save_pretrained(target)
    for file in tokenizer_dir.glob("tokenizer*"):
        shutil.copy(file, target)
    return target


def _per_layer(loaded: LoadedModel) -> ArchConfig:
    """Per-layer widths with a dropped attention and a dropped MLP: a per-layer export."""
    shape = loaded.adapter.shape
    heads, group, ffn = shape.num_heads, shape.group_size, shape.intermediate_size
    pattern = (LayerArch(group, ffn // 4), LayerArch(0, ffn // 2), LayerArch(heads, 0), LayerArch(group, ffn))
    return ArchConfig(tuple(pattern[i % len(pattern)] for i in range(shape.num_layers)))


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "model.safetensors")


@pytest.mark.parametrize("name", list(DTYPES))
def test_export_keeps_the_checkpoint_precision(name: str, tiny_llama_dir: Path, tmp_path: Path) -> None:
    dtype = DTYPES[name]
    loaded = load_model(str(_checkpoint(tmp_path, tiny_llama_dir, dtype)), device="cpu")
    assert loaded.source is not None and loaded.source.dtype == dtype and loaded.source.dtype_from == "weights"
    assert next(loaded.adapter.model.parameters()).dtype == torch.float32  # searched in float32 on a CPU

    selection = random_selection(loaded, _per_layer(loaded))
    info = export_model(loaded, selection, tmp_path / "export")

    stored = _weights(info.directory)
    assert {tensor.dtype for tensor in stored.values()} == {dtype}
    assert info.dtype == name
    # The kept weights are the checkpoint's own bits (embeddings and the LM head are never sliced).
    source = load_file(loaded.source.files[0])
    assert torch.equal(stored["model.embed_tokens.weight"], source["model.embed_tokens.weight"])
    assert torch.equal(stored["lm_head.weight"], source["lm_head.weight"])
    # Size on disk: the kept parameters × bytes per parameter, plus a small header.
    expected = info.param_count * dtype.itemsize
    assert expected <= info.weights_bytes < expected + 16_384
    provenance = json.loads((info.directory / PROVENANCE_FILE).read_text())
    assert provenance["dtype"] == name and provenance["weights_bytes"] == info.weights_bytes
    assert provenance["dense_weights_bytes"] == info.dense_weights_bytes == loaded.source.weights_bytes

    reloaded = load_pruned(info.directory)
    assert {p.dtype for p in reloaded.parameters()} == {dtype}
    assert all(torch.equal(reloaded.state_dict()[key], value) for key, value in stored.items())


@pytest.mark.parametrize("gpt2", [False, True], ids=["llama", "gpt2"])
@pytest.mark.parametrize("name", ["float16", "float32"])
def test_a_bfloat16_search_exports_the_checkpoint_bits(
    name: str, gpt2: bool, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """A GPU worker holds float16 / float32 weights in bfloat16, which rounds them: the slices come
    from the checkpoint, so its export equals a float32 search's bit for bit."""
    loaded = load_model(str(_checkpoint(tmp_path, tiny_llama_dir, DTYPES[name], gpt2=gpt2)), device="cpu")
    selection = random_selection(loaded, _per_layer(loaded))
    exact = _weights(export_model(loaded, selection, tmp_path / "float32-search").directory)

    loaded.adapter.model.to(torch.bfloat16)  # what a GPU worker searches in
    assert loaded.source is not None and not loaded.source.exact_in(torch.bfloat16)
    rounded = _weights(export_model(loaded, selection, tmp_path / "bfloat16-search").directory)

    assert rounded.keys() == exact.keys()
    assert all(torch.equal(rounded[key], exact[key]) for key in exact)


def test_checkpoint_without_safetensors_falls_back_to_the_config(tmp_path: Path) -> None:
    assert read_source(str(tmp_path), None, {"dtype": "bfloat16"}).dtype == torch.bfloat16
    assert read_source(str(tmp_path), None, {"torch_dtype": "float16"}).dtype_from == "config"
    unknown = read_source(str(tmp_path), None, {})
    assert (unknown.dtype, unknown.dtype_from, unknown.weights_bytes) == (torch.float32, "default", None)


@pytest.mark.skipif(not (REFERENCE / "model.safetensors").is_file(), reason="the reference decoder is not checked out")
def test_reference_model_half_export_is_half_the_size(tmp_path: Path) -> None:
    """models/ref-llama-7m is float16: its ~50% export is float16 and about half the dense file."""
    loaded = load_model(str(REFERENCE), device="cpu")
    shape = loaded.adapter.shape
    half = ArchConfig(tuple(LayerArch(shape.num_heads // 2, shape.intermediate_size // 2) for _ in range(6)))
    info = export_model(loaded, random_selection(loaded, half), tmp_path / "export")
    assert info.dtype == "float16"
    ratio = info.weights_bytes / info.dense_weights_bytes
    assert abs(ratio - info.param_count / shape.dense_params()) < 0.01
    assert 0.4 < ratio < 0.7  # embeddings and the LM head are kept whole


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name", list(DTYPES))
def test_gpu_export_equals_cpu_export(name: str, tiny_llama_dir: Path, tmp_path: Path) -> None:
    _gpu_equals_cpu(_checkpoint(tmp_path, tiny_llama_dir, DTYPES[name]), tmp_path)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.skipif(not (REFERENCE / "model.safetensors").is_file(), reason="the reference decoder is not checked out")
def test_gpu_export_of_the_reference_equals_cpu_export(tmp_path: Path) -> None:
    _gpu_equals_cpu(REFERENCE, tmp_path)


def _gpu_equals_cpu(checkpoint: Path, tmp_path: Path) -> None:
    """The same selection exported by a CPU worker (float32 search) and a GPU one (bfloat16 search)."""
    on_cpu = load_model(str(checkpoint), device="cpu")
    on_gpu = load_model(str(checkpoint), device="cuda")
    assert next(on_gpu.adapter.model.parameters()).dtype == torch.bfloat16
    selection = random_selection(on_cpu, _per_layer(on_cpu))
    cpu = _weights(export_model(on_cpu, selection, tmp_path / "cpu").directory)
    gpu_weights = _weights(export_model(on_gpu, selection, tmp_path / "gpu").directory)
    assert cpu.keys() == gpu_weights.keys()
    assert all(torch.equal(cpu[key], gpu_weights[key]) for key in cpu)
