"""search.calibration_count refuses exactly what the worker's tokenisation refuses, with its words."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from search.calibration import tokenize_paragraphs, tokenize_windows
from search.calibration_count import TOKENIZER_FILE, check_calibration_size
from search.calibration_texts import default_texts
from search.errors import CalibrationError

REFERENCE_MODEL = Path(__file__).resolve().parents[2] / "models" / "ref-llama-7m"
TEXTS = default_texts()[:6]


@pytest.fixture(scope="module")
def worker_tokenizer() -> PreTrainedTokenizerBase:
    """The tokenizer the worker loads (transformers); the count reads only its tokenizer.json."""
    return AutoTokenizer.from_pretrained(REFERENCE_MODEL)


def worker_refusal(tokenizer: PreTrainedTokenizerBase, texts: list[str], **sizes: int) -> str | None:
    try:
        tokenize_windows(tokenizer, texts, **sizes)
    except CalibrationError as error:
        return str(error)
    return None


def count_refusal(model_dir: Path, texts: list[str], *, causal: bool = True, **sizes: int) -> str | None:
    try:
        check_calibration_size(iter(texts), model_dir, causal=causal, **sizes)
    except CalibrationError as error:
        return str(error)
    return None


def test_the_count_agrees_with_the_worker_at_the_boundary(worker_tokenizer: PreTrainedTokenizerBase) -> None:
    # The worker's own message says how many windows of 16 tokens the texts give.
    message = worker_refusal(worker_tokenizer, TEXTS, seq_len=16, n_calibration=1, n_heldout=100_000)
    assert message is not None
    found = re.search(r"= (\d+) windows", message)
    assert found is not None
    windows = int(found.group(1))
    exactly_enough = {"seq_len": 16, "n_calibration": 1, "n_heldout": windows - 1}
    one_too_many = exactly_enough | {"n_heldout": windows}
    assert worker_refusal(worker_tokenizer, TEXTS, **exactly_enough) is None
    assert count_refusal(REFERENCE_MODEL, TEXTS, **exactly_enough) is None
    expected = worker_refusal(worker_tokenizer, TEXTS, **one_too_many)
    assert expected is not None
    assert count_refusal(REFERENCE_MODEL, TEXTS, **one_too_many) == expected


def test_the_issues_case_short_inline_texts(worker_tokenizer: PreTrainedTokenizerBase) -> None:
    sizes = {"seq_len": 256, "n_calibration": 16, "n_heldout": 16}
    expected = worker_refusal(worker_tokenizer, TEXTS[:2], **sizes)
    assert expected is not None and "windows of 256; 32 are needed" in expected
    assert count_refusal(REFERENCE_MODEL, TEXTS[:2], **sizes) == expected


def test_truncation_saved_in_the_tokenizer_file_does_not_shorten_the_count(
    tmp_path: Path, worker_tokenizer: PreTrainedTokenizerBase
) -> None:
    truncating = Tokenizer.from_file(str(REFERENCE_MODEL / TOKENIZER_FILE))
    truncating.enable_truncation(8)
    truncating.save(str(tmp_path / TOKENIZER_FILE))
    shutil.copy2(REFERENCE_MODEL / "tokenizer_config.json", tmp_path)
    sizes = {"seq_len": 256, "n_calibration": 16, "n_heldout": 16}
    assert count_refusal(tmp_path, TEXTS[:2], **sizes) == worker_refusal(worker_tokenizer, TEXTS[:2], **sizes)


def test_encoders_count_paragraphs_like_the_worker(worker_tokenizer: PreTrainedTokenizerBase) -> None:
    texts = ["A paragraph long enough to be one calibration sample.\n\nAnother paragraph, also long enough here."]
    sizes = {"seq_len": 32, "n_calibration": 2, "n_heldout": 1}
    with pytest.raises(CalibrationError) as worker:
        tokenize_paragraphs(worker_tokenizer, texts, **sizes)
    assert count_refusal(Path("unused"), texts, causal=False, **sizes) == str(worker.value)
    assert count_refusal(Path("unused"), texts, causal=False, **(sizes | {"n_heldout": 0})) is None


def test_a_model_without_tokenizer_json_is_left_to_the_worker(tmp_path: Path) -> None:
    assert count_refusal(tmp_path, ["too short"], seq_len=256, n_calibration=16, n_heldout=16) is None
