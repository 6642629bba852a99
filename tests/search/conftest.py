from __future__ import annotations

from pathlib import Path

import pytest
import torch

from search.calibration import TokenSet, tokenize_windows
from search.calibration_texts import default_texts
from search.loading import LoadedModel, load_model


@pytest.fixture(scope="session")
def tiny_loaded(tiny_llama_dir: Path) -> LoadedModel:
    torch.manual_seed(0)
    return load_model(str(tiny_llama_dir), device="cpu")


@pytest.fixture(scope="session")
def tiny_tokens(tiny_loaded: LoadedModel) -> TokenSet:
    return tokenize_windows(tiny_loaded.tokenizer, default_texts(), seq_len=64, n_calibration=8, n_heldout=8)
