from __future__ import annotations

from pathlib import Path

import pytest
import torch

from search.calibration import build_token_set, load_texts
from search.errors import CalibrationError
from search.loading import LoadedModel
from search.spec import Calibration


def test_sources_file_directory_and_inline(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("first file")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("second file")
    (tmp_path / "ignored.bin").write_bytes(b"\x00")
    assert load_texts(Calibration(source=str(tmp_path))) == ["first file", "second file"]
    assert load_texts(Calibration(source=str(tmp_path / "a.txt"))) == ["first file"]
    assert load_texts(Calibration(texts=["x", "y"])) == ["x", "y"]
    assert sum(map(len, load_texts(Calibration()))) > 400_000  # the bundled Python docs topics (chars)


def test_windows_are_disjoint_and_the_digest_is_stable(tiny_loaded: LoadedModel) -> None:
    spec = Calibration(n_samples=6, seq_len=32, heldout_samples=5)
    first = build_token_set(tiny_loaded.tokenizer, spec)
    second = build_token_set(tiny_loaded.tokenizer, spec)
    assert first.calibration.shape == (6, 32) and first.heldout.shape == (5, 32)
    assert first.digest == second.digest
    assert torch.equal(first.calibration, second.calibration)
    calibration_rows = {tuple(row.tolist()) for row in first.calibration}
    assert not calibration_rows & {tuple(row.tolist()) for row in first.heldout}
    assert (
        build_token_set(tiny_loaded.tokenizer, Calibration(n_samples=6, seq_len=64, heldout_samples=5)).digest
        != first.digest
    )


def test_too_little_text_is_a_clear_error(tiny_loaded: LoadedModel) -> None:
    with pytest.raises(CalibrationError, match="windows of 64"):
        build_token_set(tiny_loaded.tokenizer, Calibration(texts=["only a few words"], seq_len=64))
