"""Loading a model never executes code shipped with it (``trust_remote_code`` stays off).

A model folder may carry Python files that ``config.json`` / ``tokenizer_config.json`` point at
through ``auto_map``; with remote code trusted, transformers would import them. Here they would
leave a marker file: it must never appear, whether or not the model also has a built-in class.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from search.errors import ModelLoadError
from search.loading import load_model

PAYLOAD = """
from pathlib import Path
Path({marker!r}).write_text("repository code ran")
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
class EvilConfig(LlamaConfig):
    model_type = "evil"
class EvilModel(LlamaForCausalLM):
    config_class = EvilConfig
class EvilTokenizer(PreTrainedTokenizerFast):
    pass
"""


def _booby_trapped(source: Path, target: Path, marker: Path, model_type: str) -> Path:
    shutil.copytree(source, target)
    (target / "evil.py").write_text(PAYLOAD.format(marker=str(marker)))
    config = json.loads((target / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (target / "config.json").write_text(json.dumps(config))
    tokenizer_config = target / "tokenizer_config.json"
    settings = json.loads(tokenizer_config.read_text()) if tokenizer_config.exists() else {}
    settings["auto_map"] = {"AutoTokenizer": [None, "evil.EvilTokenizer"]}
    tokenizer_config.write_text(json.dumps(settings))
    return target


def test_a_known_architecture_loads_with_its_builtin_class_and_the_shipped_code_never_runs(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    model = _booby_trapped(tiny_llama_dir, tmp_path / "model", marker, model_type="llama")
    loaded = load_model(str(model), device="cpu")
    assert type(loaded.adapter.model).__module__.startswith("transformers.")  # the built-in class
    assert not marker.exists()


def test_an_unknown_architecture_is_refused_without_running_the_shipped_code(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    model = _booby_trapped(tiny_llama_dir, tmp_path / "model", marker, model_type="evil")
    with pytest.raises(ModelLoadError):
        load_model(str(model), device="cpu")
    assert not marker.exists()
