"""Whether a job's calibration texts give enough samples, counted before any worker loads the model.

Torch-free and transformers-free, so the API can refuse a job whose texts are too short instead of
accepting one that fails a minute later. Decoders count tokens with the model's ``tokenizer.json``
(the ``tokenizers`` library, which a fast tokenizer wraps) the way ``search.calibration`` builds its
windows: each text without special tokens, then the end-of-sequence token. Encoders count
paragraphs, which need no tokenizer. A model with only a slow tokenizer is left to the worker.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer

from search.calibration_texts import paragraphs, require_paragraphs, require_windows

TOKENIZER_FILE = "tokenizer.json"
# Where a fast tokenizer's end-of-sequence token is named, in the order transformers reads them.
_SPECIAL_TOKEN_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def check_calibration_size(
    texts: Iterable[str], model_dir: Path, *, causal: bool, seq_len: int, n_calibration: int, n_heldout: int
) -> None:
    """Raise ``CalibrationError`` (the worker's own message) when ``texts`` give too few samples.

    Counting stops as soon as there are enough, so a large source costs only what the job needs.
    """
    if not causal:
        found = 0
        for text in texts:
            found += len(paragraphs(text))
            if found >= n_calibration + n_heldout:
                return
        require_paragraphs(found, n_calibration=n_calibration, n_heldout=n_heldout)
        return
    tokenizer_file = model_dir / TOKENIZER_FILE
    if not tokenizer_file.is_file():
        return
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    # A tokenizer.json may carry truncation or padding settings; transformers turns them off for
    # untruncated calls like the worker's, and so must the count.
    tokenizer.no_truncation()
    tokenizer.no_padding()
    separator = 0 if _eos_token_id(model_dir, tokenizer) is None else 1
    enough = (n_calibration + n_heldout) * seq_len
    tokens = 0
    for text in texts:
        tokens += len(tokenizer.encode(text, add_special_tokens=False).ids) + separator
        if tokens >= enough:
            return
    require_windows(tokens, seq_len=seq_len, n_calibration=n_calibration, n_heldout=n_heldout)


def _eos_token_id(model_dir: Path, tokenizer: Tokenizer) -> int | None:
    """The id of the end-of-sequence token the tokenizer files name, if any."""
    for name in _SPECIAL_TOKEN_FILES:
        try:
            settings = json.loads((model_dir / name).read_text())
        except (OSError, ValueError):
            continue
        token = settings.get("eos_token") if isinstance(settings, dict) else None
        if isinstance(token, dict):  # an AddedToken written out: {"content": "</s>", ...}
            token = token.get("content")
        if isinstance(token, str):
            return tokenizer.token_to_id(token)
    return None
