from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import TINY_LLAMA_CONFIG


@pytest.fixture(scope="session")
def broken_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory that passes validation (a valid config) but holds no weights: the job must fail cleanly."""
    directory = tmp_path_factory.mktemp("broken-model")
    (directory / "config.json").write_text(json.dumps(TINY_LLAMA_CONFIG))
    return directory
