"""Command-line options generated from ``JobSpec``'s fields, so the CLI accepts what REST accepts.

Every leaf field of the spec becomes one option; nested models are walked (``target.param_ratio``
gives ``--param-ratio``, ``search_space.depth`` gives ``--depth``). A few fields keep the names the
CLI has always used (``--trials`` for ``n_trials``); recovery's read ``--recovery-*`` (``recovery.steps``
gives ``--recovery-steps``, and any of them asks for recovery). Choices come from the field's ``Literal`` type,
or for plain strings checked by a validator, from the spec's name lists; list fields are
repeatable and take comma-separated values; booleans get ``--x/--no-x``. An option left out is not
an override, so the ``--spec`` file's values and then the spec's defaults apply.
"""

from __future__ import annotations

import json
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import click
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from search import names
from search.spec import JobSpec

FieldPath = tuple[str, ...]  # a field's place in the spec: ("search_space", "depth")
Kind = Literal["value", "flag", "names", "list"]
F = TypeVar("F", bound=Callable[..., Any])

# Flags not named after their field: the names the CLI has always used, and one text per --text.
_FLAG_NAMES: dict[FieldPath, str] = {
    ("n_trials",): "--trials",
    ("calibration", "source"): "--calibration",
    ("calibration", "n_samples"): "--samples",
    ("calibration", "heldout_samples"): "--heldout",
    ("calibration", "texts"): "--text",
    # Recovery's fields share names with others (source, batch_size): all of them read --recovery-*.
    **{
        ("recovery", name): "--recovery-" + name.replace("_", "-")
        for name in ("method", "steps", "finalists", "lora_rank", "source", "learning_rate", "batch_size")
    },
    # Where latency is measured: --latency-phase, --latency-batch, --latency-context.
    **{("target", "latency", name): "--latency-" + name for name in ("phase", "batch", "context")},
    # The token schedule's: --token-schedule/--no-token-schedule and --schedule-*.
    ("token_schedule", "enabled"): "--token-schedule",
    **{
        ("token_schedule", name): "--schedule-" + name.replace("_", "-")
        for name in ("first_sequences", "growth", "promote", "full_trials")
    },
}
# Strings whose names a validator checks against search.names (no Literal type to read them from).
_NAMES: dict[FieldPath, tuple[str, ...]] = {
    ("proxy",): names.proxy_names(),
    ("sampler",): names.SAMPLERS,
    ("objectives",): names.OBJECTIVES,
    ("search_space", "depth"): names.DEPTH_MODES,
    ("search_space", "parameterization"): names.PARAMETERIZATIONS,
    ("search_space", "export_format"): names.EXPORT_FORMATS,
    ("search_space", "selection"): tuple(names.CRITERIA),
    ("search_space", "sparsity_selection"): names.SPARSITY_CRITERIA,
    ("recovery", "method"): names.RECOVERY_METHODS,
}
# Help for fields the spec does not describe.
_HELP: dict[FieldPath, str] = {
    ("revision",): "Model revision (hub models).",
    ("n_trials",): "Completed trials to run.",
    ("sampler",): "Optuna sampler.",
    ("seed",): "Seeds the sampler, the proxies and the audit; null in a spec file for none.",
    ("calibration", "source"): "Text file or directory of text files (default: Python's bundled docs).",
    ("calibration", "texts"): "Inline calibration text; repeat for several.",
    ("search_space", "sparsity_selection"): "Which weights the sparsity removes.",
    ("verify_top_k",): "Distinct proxy favourites verified on held-out tokens beside the baselines.",
}
# Free text may hold commas, so its values are never split.
_UNSPLIT: frozenset[FieldPath] = frozenset({("calibration", "texts")})
# The CLI's own defaults under the spec file: a local search is reproducible unless asked otherwise.
CLI_DEFAULTS: dict[str, Any] = {"seed": 0}


@dataclass(frozen=True)
class SpecOption:
    """One leaf field of ``JobSpec`` and the option that sets it."""

    path: FieldPath
    flag: str
    kind: Kind
    field: FieldInfo
    annotation: Any

    @property
    def param(self) -> str:
        """The click parameter name: unique, since it spells the whole path."""
        return "spec__" + "__".join(self.path)

    @property
    def dotted(self) -> str:
        return ".".join(self.path)

    def decorator(self) -> Callable[[F], F]:
        names = _NAMES.get(self.path)
        described = self.field.description or _HELP.get(self.path, "")
        if names and self.kind == "list" and not described:
            described = f"Names: {', '.join(names)}; several comma-separated."
        default = _default_text(self)
        help_text = f"{described} [spec: {self.dotted}{'; default: ' + default if default else ''}]".strip()
        decls = [f"{self.flag}/--no-{self.flag[2:]}" if self.kind == "flag" else self.flag, self.param]
        return click.option(
            *decls, type=self._click_type(names), default=None, multiple=self.kind == "list", help=help_text
        )

    def _click_type(self, names: tuple[str, ...] | None) -> click.ParamType | None:
        if self.kind == "flag":
            return None
        if get_origin(self.annotation) is Literal:
            return click.Choice([str(choice) for choice in get_args(self.annotation)])
        if self.kind == "value" and names:
            return click.Choice(names)
        return {int: click.INT, float: click.FLOAT}.get(self.annotation, click.STRING)

    def convert(self, given: Any) -> Any:
        """The JSON value of what the command line gave; ``None`` when the option was left out."""
        if given is None or given == ():
            return None
        if self.kind != "list":
            return given
        values = list(given) if self.path in _UNSPLIT else [v.strip() for item in given for v in item.split(",")]
        # A field that is "a name or a list of names" takes one name as itself.
        return values[0] if len(values) == 1 and _accepts(self.annotation, str) else values


def spec_options(model: type[BaseModel] = JobSpec, prefix: FieldPath = ()) -> Iterator[SpecOption]:
    """One option per leaf field of ``model``, in declaration order."""
    for name, field in model.model_fields.items():
        path = (*prefix, name)
        annotation = _without_none(field.annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from spec_options(annotation, path)
            continue
        flag = _FLAG_NAMES.get(path, "--" + name.replace("_", "-"))
        yield SpecOption(path, flag, _kind(path, annotation), field, annotation)


def with_spec_options(command: F) -> F:
    """Add one option per ``JobSpec`` field to a click command (as ``spec__...`` keyword arguments)."""
    for option in reversed(OPTIONS):
        command = option.decorator()(command)
    return command


def build_spec(spec_file: Path | None, given: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> JobSpec:
    """The job spec of ``--spec FILE`` with the options given on the command line laid over it.

    ``given`` holds the command's ``spec__...`` arguments; ``extra`` overrides from CLI-only
    shortcuts (``--pareto``). Raises ``click.UsageError`` naming the flag of any invalid field.
    """
    data = _deep_merge(CLI_DEFAULTS, _read_spec_file(spec_file) if spec_file is not None else {})
    for option in OPTIONS:
        value = option.convert(given.get(option.param))
        if value is not None:
            data = _deep_merge(data, _nested(option.path, value))
    data = _deep_merge(data, dict(extra or {}))
    try:
        return JobSpec.model_validate(data)
    except ValidationError as error:
        raise click.UsageError(describe_errors(error)) from error


def describe_errors(error: ValidationError) -> str:
    """Pydantic's errors, each named by the flag that sets the field (``--param-ratio (target.param_ratio)``)."""
    by_path = {option.path: option for option in OPTIONS}
    problems = []
    for item in error.errors():
        loc = tuple(str(part) for part in item["loc"])
        option = next((by_path[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in by_path), None)
        where = f"{option.flag} ({option.dotted})" if option else ".".join(loc) or "spec"
        problems.append(f"{where}: {item['msg']}")
    return "; ".join(problems)


def _read_spec_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise click.BadParameter(f"cannot read {path} as JSON: {error}", param_hint="--spec") from error
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} is not a JSON object (a job spec as POSTed to /v1/jobs)", param_hint="--spec")
    return data


def _kind(path: FieldPath, annotation: Any) -> Kind:
    if annotation is bool:
        return "flag"
    if _accepts(annotation, list):
        return "list"
    if get_origin(annotation) is Literal or annotation in (int, float, str):
        return "value"
    raise TypeError(f"JobSpec field {'.'.join(path)} has a type the CLI cannot set yet: {annotation!r}")


def _without_none(annotation: Any) -> Any:
    """``X | None`` → ``X``; other annotations unchanged."""
    if _is_union(annotation):
        rest = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def _accepts(annotation: Any, kind: type) -> bool:
    """Whether ``annotation`` is ``kind`` (or ``kind[...]``), or a union with such a member."""
    members = get_args(annotation) if _is_union(annotation) else (annotation,)
    return any(member is kind or get_origin(member) is kind for member in members)


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


def _default_text(option: SpecOption) -> str:
    """The default as the help shows it ("" for none): the CLI's own, else the spec's."""
    field = option.field
    if field.is_required():
        return ""
    dotted = option.dotted
    default = CLI_DEFAULTS[dotted] if dotted in CLI_DEFAULTS else field.get_default(call_default_factory=True)
    if default is None:
        return ""
    if option.kind == "flag":
        return option.flag if default else f"--no-{option.flag[2:]}"
    return ",".join(map(str, default)) if isinstance(default, list) else str(default)


def _nested(path: FieldPath, value: Any) -> dict[str, Any]:
    for name in reversed(path):
        value = {name: value}
    return value


def _deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        below = merged.get(key)
        merged[key] = _deep_merge(below, value) if isinstance(below, dict) and isinstance(value, dict) else value
    return merged


OPTIONS: tuple[SpecOption, ...] = tuple(spec_options())
_FLAGS = [option.flag for option in OPTIONS]
if len(set(_FLAGS)) != len(_FLAGS):  # two nested fields of the same name: name one in _FLAG_NAMES
    raise RuntimeError(f"JobSpec fields give duplicate flags: {sorted(f for f in _FLAGS if _FLAGS.count(f) > 1)}")
