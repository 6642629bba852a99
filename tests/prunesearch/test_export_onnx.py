"""`prunesearch export JOB --format onnx`: a job's per-layer trial as an ONNX graph that generates."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from prunesearch.cli import main
from prunesearch.database import open_sessions
from search.arch import ArchConfig, LayerArch
from search.onnx_runtime import generate_onnx, read_layout
from service import repository
from service.db import session_scope
from service.settings import get_settings
from tests.conftest import tiny_job_spec
from tests.service.helpers import best_entry, trial_info

# The tiny demo Llama (4 layers, 4 heads in 2 KV groups, 256 FFN channels), per layer: layer 0
# without attention, layer 1 without MLP, differing head counts.
ARCH = ArchConfig((LayerArch(0, 128), LayerArch(2, 0), LayerArch(4, 256), LayerArch(2, 64)))


@pytest.fixture
def job_id(tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A job in a fresh embedded database whose best trial is ``ARCH``."""
    monkeypatch.setenv("PRUNESEARCH_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    spec = tiny_job_spec(tiny_llama_dir).model_dump(mode="json")
    with session_scope(open_sessions(get_settings())) as session:
        job = repository.create_job(session, spec=spec, model=str(tiny_llama_dir), trials_total=4)
        repository.record_trial(session, job.id, trial_info(3, arch=ARCH.to_dict(), value=0.5, param_ratio=0.6))
        repository.set_best(session, job.id, best_entry(3, arch=ARCH.to_dict()))
        created = job.id
    yield created
    get_settings.cache_clear()


def test_export_job_as_onnx_writes_a_graph_that_generates(job_id: str, tmp_path: Path) -> None:
    out = tmp_path / "exports" / "onnx"
    result = CliRunner().invoke(main, ["export", job_id, "--format", "onnx", "--out", str(out), "--device", "cpu"])

    assert result.exit_code == 0, result.output
    assert "Wrote an ONNX graph (decoder, float32, 3 KV-cache slots" in result.stdout
    layout = read_layout(out)
    assert [(slot.layer, slot.kv_heads) for slot in layout.cache] == [(1, 1), (2, 2), (3, 1)]
    assert {"model.onnx", "onnx_layout.json", "provenance.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert [p.name for p in out.parent.iterdir()] == ["onnx"]  # the scratch model export is gone
    tokens = generate_onnx(out, np.array([[5, 6, 7, 8]]), max_new_tokens=8, eos_token_id=[])
    assert tokens.shape == (1, 12)


def test_export_as_onnx_refuses_a_used_folder_before_loading_anything(job_id: str, tmp_path: Path) -> None:
    out = tmp_path / "used"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = CliRunner().invoke(main, ["export", job_id, "--format", "onnx", "--out", str(out)])

    assert result.exit_code == 2 and "exists and is not an empty directory" in result.output, result.output
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
