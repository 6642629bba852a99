"""The dense model a job prunes, read from its ``config.json``: what a job's widths are drawn against
(``GET /v1/jobs/{id}/model``, ``GET /v1/compare``)."""

from __future__ import annotations

from search.arch import ModelShape
from search.errors import SearchError
from search.families import read_shape
from search.spec import model_kind, read_local_config
from service.errors import NotFound


def dense_shape(model: str) -> ModelShape:
    """The dense model's shape; ``NotFound`` when this server cannot read its config."""
    # The path passed the submission's checks; a folder gone since or a hub id is simply not known here.
    try:
        if model_kind(model) == "local":
            return read_shape(read_local_config(model))
    except (SearchError, OSError) as error:
        raise NotFound(f"the config of model {model!r} cannot be read: {error}") from error
    raise NotFound(f"model {model!r} is a hub id: only the worker that downloads it reads its config")
