"""The job specification: what a user asks for, validated without torch.

The API validates submissions with ``JobSpec`` and ``check_model``; the worker and the CLI read
the same object, so a job that was accepted is a job the search library can run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from search.arch import ModelShape
from search.errors import BudgetInfeasible, InvalidJobSpec
from search.repair import DEFAULT_TOLERANCE as REPAIR_TOLERANCE

# Proxy names are listed here (torch-free) and resolved to classes in ``search.proxies``.
PROXY_NAMES: tuple[str, ...] = ("tracenas",)
SAMPLER_NAMES: tuple[str, ...] = ("tpe", "random", "nsga2", "cmaes")
MAX_TRIALS_HARD_LIMIT = 100_000

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Target(_Strict):
    param_ratio: Annotated[
        float,
        Field(gt=0.0, le=1.0, allow_inf_nan=False, description="Fraction of the dense model's parameters to keep."),
    ]


class Calibration(_Strict):
    """Where calibration and held-out tokens come from.

    ``source`` is a text file or a directory of ``.txt``/``.md``/``.rst`` files; ``texts`` gives them
    inline. With neither, the Python documentation's topic reference bundled with CPython is used,
    so a job runs offline out of the box.
    """

    source: str | None = None
    texts: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    n_samples: Annotated[int, Field(ge=1, le=4096, description="Calibration sequences.")] = 16
    seq_len: Annotated[int, Field(ge=16, le=8192, description="Tokens per sequence.")] = 256
    heldout_samples: Annotated[int, Field(ge=1, le=4096, description="Held-out sequences for verification.")] = 16

    @model_validator(mode="after")
    def _one_source(self) -> Calibration:
        if self.source is not None and self.texts is not None:
            raise ValueError("give either 'source' or 'texts', not both")
        return self


class SearchSpace(_Strict):
    ffn_alignment: Annotated[int, Field(ge=1, le=4096, description="FFN channels are kept in multiples of this.")] = 32


class JobSpec(_Strict):
    """A compression job. Every field except ``model`` and ``target`` has a default."""

    model: Annotated[str, Field(min_length=1, max_length=4096, description="Local model directory or hub id.")]
    revision: Annotated[str | None, Field(max_length=256)] = None
    target: Target
    n_trials: Annotated[int, Field(ge=1, le=MAX_TRIALS_HARD_LIMIT)] = 100
    proxy: str = "tracenas"
    sampler: str = "tpe"
    seed: Annotated[int | None, Field(ge=0, le=2**32 - 1)] = None
    calibration: Calibration = Calibration()
    search_space: SearchSpace = SearchSpace()
    verify_top_k: Annotated[int, Field(ge=0, le=100)] = 5

    @field_validator("proxy")
    @classmethod
    def _known_proxy(cls, value: str) -> str:
        if value not in PROXY_NAMES:
            raise ValueError(f"unknown proxy {value!r}; available: {', '.join(PROXY_NAMES)}")
        return value

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str) -> str:
        if value not in SAMPLER_NAMES:
            raise ValueError(f"unknown sampler {value!r}; available: {', '.join(SAMPLER_NAMES)}")
        return value


ModelKind = Literal["local", "hub"]


def model_kind(model: str) -> ModelKind:
    """A path that exists, or that looks like one (absolute, ``./``, ``~``), is local; else a hub id."""
    if model.startswith(("/", ".", "~")) or Path(model).exists():
        return "local"
    if _HUB_ID.match(model):
        return "hub"
    raise InvalidJobSpec(f"model {model!r} is neither an existing directory nor a valid hub id (owner/name)")


def read_local_config(model: str) -> dict[str, Any]:
    """Read ``config.json`` of a local model directory, with an error message a user can act on."""
    path = Path(model).expanduser()
    if not path.is_dir():
        raise InvalidJobSpec(f"model directory {model!r} does not exist")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise InvalidJobSpec(f"model directory {model!r} has no config.json")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as error:
        raise InvalidJobSpec(f"cannot read {config_file}: {error}") from error
    if not isinstance(config, dict):
        raise InvalidJobSpec(f"{config_file} is not a JSON object")
    return config


def check_job(spec: JobSpec) -> ModelShape | None:
    """Check what can be checked before a worker loads the model.

    The calibration source exists. For a local model directory: it exists, its family is supported
    and the budget is reachable; returns its shape. A hub id can only be checked by the worker that
    downloads it; returns ``None``.
    """
    source = spec.calibration.source
    if source is not None and not Path(source).expanduser().exists():
        raise InvalidJobSpec(f"calibration source {source!r} does not exist")
    if model_kind(spec.model) == "hub":
        return None
    shape = ModelShape.from_config(read_local_config(spec.model))
    check_budget(shape, spec.target.param_ratio, ffn_alignment=spec.search_space.ffn_alignment)
    return shape


def check_budget(shape: ModelShape, param_ratio: float, *, ffn_alignment: int) -> None:
    """Refuse budgets that repair cannot meet within its tolerance."""
    floor = shape.min_param_ratio()
    if param_ratio <= floor * (1 + REPAIR_TOLERANCE):
        raise BudgetInfeasible(
            f"param_ratio {param_ratio} is unreachable: embeddings alone are {floor:.3f} of this model's parameters"
        )
    window = 2 * REPAIR_TOLERANCE * param_ratio * shape.dense_params()
    unit = 3 * shape.hidden_size * min(ffn_alignment, shape.intermediate_size)  # gate, up, down columns
    if unit > window:
        finest = max(1, int(window // (3 * shape.hidden_size)))
        raise BudgetInfeasible(
            f"search_space.ffn_alignment={ffn_alignment} is too coarse to land within ±{REPAIR_TOLERANCE:.0%} "
            f"of the budget on this model; use {finest} or less"
        )
