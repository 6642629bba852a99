"""The errors that come out of ``search``.

Callers (the CLI, the worker, the API's validation) catch ``SearchError`` and show its message:
each message is written for the person who submitted the job.
"""

from __future__ import annotations


class SearchError(Exception):
    """Base class of every error raised on purpose by the search library."""


class InvalidJobSpec(SearchError):
    """The job specification cannot be run (unknown model path, unsupported family, ...)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        # The spec field at fault, dotted ("recovery.lora_rank"), so the API's 422 can name it.
        self.field = field


class UnsupportedModel(InvalidJobSpec):
    """The model's architecture has no adapter."""


class BudgetInfeasible(InvalidJobSpec):
    """No architecture of this model reaches the requested parameter budget."""


class InvalidArchConfig(SearchError):
    """An architecture does not fit the model it is applied to."""


class CalibrationError(SearchError):
    """The calibration texts cannot provide the requested tokens."""


class ProxyError(SearchError):
    """A proxy could not score a candidate."""


class ModelLoadError(SearchError):
    """The model or its tokenizer could not be loaded."""


class MissingDependency(SearchError):
    """An optional capability needs packages that are not installed (the message names the extra)."""
