"""Models that fail in the two ways a job can: at load time, and in every trial."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import TINY_LLAMA_CONFIG


@pytest.fixture(scope="session")
def unloadable_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid config (so the submission is accepted) and no weights: loading fails in the worker."""
    directory = tmp_path_factory.mktemp("unloadable-model")
    (directory / "config.json").write_text(json.dumps(TINY_LLAMA_CONFIG))
    return directory


@pytest.fixture(scope="session")
def nan_model_dir(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with NaN output projections: it loads and prepares, but every trial's score is
    NaN, so every trial fails."""
    import torch
    from safetensors.torch import load_file, save_file

    directory = tmp_path_factory.mktemp("nan-model") / "model"
    shutil.copytree(tiny_llama_dir, directory)
    weights = load_file(directory / "model.safetensors")
    for name, tensor in weights.items():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            weights[name] = torch.full_like(tensor, float("nan"))
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})
    return directory
