"""`prunesearch search` takes every ``JobSpec`` field as an option, and ``--spec FILE`` plus options
builds the spec the API builds from the same JSON, so the CLI and REST cannot drift (issue 13)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from prunesearch.cli import main
from search.spec import JobSpec

FieldPath = tuple[str, ...]


def leaf_fields(model: type[BaseModel] = JobSpec, prefix: FieldPath = ()) -> Iterator[FieldPath]:
    """Every field of the spec that holds a value, nested models walked (independently of the CLI's walker)."""
    for name, field in model.model_fields.items():
        members = get_args(field.annotation) or (field.annotation,)
        nested = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
        if nested:
            yield from leaf_fields(nested[0], (*prefix, name))
        else:
            yield (*prefix, name)


def samples(model_dir: Path, text_file: Path) -> dict[FieldPath, tuple[list[str], Any]]:
    """For each field: options that set it to a value other than its default, and that value in JSON."""
    return {
        ("model",): (["--model", str(model_dir)], str(model_dir)),
        ("revision",): (["--revision", "main"], "main"),
        ("target", "param_ratio"): (["--param-ratio", "0.7"], 0.7),
        ("target", "min_param_ratio"): (["--min-param-ratio", "0.5"], 0.5),
        ("target", "scope"): (["--scope", "blocks"], "blocks"),
        ("target", "latency_ratio"): (["--latency-ratio", "0.5", "--latency-context", "64"], 0.5),
        ("target", "latency", "phase"): (["--latency-phase", "prefill"], "prefill"),
        ("target", "latency", "batch"): (["--latency-batch", "16"], 16),
        ("target", "latency", "context"): (["--latency-context", "64"], 64),
        ("n_trials",): (["--trials", "7"], 7),
        ("proxy",): (["--proxy", "prunenet,tracenas"], ["prunenet", "tracenas"]),
        ("sampler",): (["--sampler", "random"], "random"),
        ("seed",): (["--seed", "5"], 5),
        ("calibration", "source"): (["--calibration", str(text_file)], str(text_file)),
        ("calibration", "texts"): (["--text", "one, with a comma", "--text", "two"], ["one, with a comma", "two"]),
        ("calibration", "n_samples"): (["--samples", "3"], 3),
        ("calibration", "seq_len"): (["--seq-len", "32"], 32),
        ("calibration", "heldout_samples"): (["--heldout", "2"], 2),
        ("search_space", "depth"): (["--depth", "layer"], "layer"),
        ("search_space", "width"): (["--no-width"], False),
        ("search_space", "sparsity"): (["--sparsity", "0.3"], 0.3),
        ("search_space", "parameterization"): (["--parameterization", "compact"], "compact"),
        ("search_space", "selection"): (["--selection", "prunenet"], "prunenet"),
        ("search_space", "sparsity_selection"): (["--sparsity-selection", "magnitude"], "magnitude"),
        ("search_space", "ffn_alignment"): (["--ffn-alignment", "4"], 4),
        ("search_space", "export_format"): (["--export-format", "standard"], "standard"),
        ("verify_top_k",): (["--verify-top-k", "1"], 1),
        ("audit_size",): (["--audit-size", "0"], 0),
        ("neighbourhood_size",): (["--neighbourhood-size", "0"], 0),
        ("objectives",): (["--objectives", "score,params"], ["score", "params"]),
        ("token_schedule", "enabled"): (["--no-token-schedule"], False),
        ("token_schedule", "first_sequences"): (["--schedule-first-sequences", "2"], 2),
        ("token_schedule", "growth"): (["--schedule-growth", "3"], 3),
        ("token_schedule", "promote"): (["--schedule-promote", "0.5"], 0.5),
        ("token_schedule", "full_trials"): (["--schedule-full-trials", "3"], 3),
        ("recovery", "method"): (["--recovery-method", "distill", "--recovery-steps", "5"], "distill"),
        ("recovery", "steps"): (["--recovery-steps", "5"], 5),
        ("recovery", "finalists"): (["--recovery-finalists", "1"], 1),
        ("recovery", "lora_rank"): (["--recovery-lora-rank", "4"], 4),
        ("recovery", "source"): (["--recovery-source", str(text_file)], str(text_file)),
        ("recovery", "learning_rate"): (["--recovery-learning-rate", "0.01"], 0.01),
        ("recovery", "batch_size"): (["--recovery-batch-size", "2"], 2),
    }


def print_spec(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["search", *args, "--print-spec"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def at(data: dict[str, Any] | None, path: FieldPath) -> Any:
    for name in path:
        if data is None:  # an optional section left out (recovery): none of its fields is set
            return None
        data = data[name]
    return data


def base_args(model_dir: Path) -> list[str]:
    return ["--model", str(model_dir), "--param-ratio", "0.6", "--ffn-alignment", "8"]


def test_every_spec_field_can_be_set_from_the_command_line(tiny_model_config_dir: Path, tmp_path: Path) -> None:
    text_file = tmp_path / "calibration.txt"
    text_file.write_text("calibration text\n")
    table = samples(tiny_model_config_dir, text_file)
    # A new JobSpec field fails here until the CLI can set it (and a sample says how).
    assert set(leaf_fields()) == set(table)
    defaults = JobSpec(model="m", target={"param_ratio": 0.6}).model_dump(mode="json")
    for path, (args, expected) in table.items():
        printed = print_spec(*base_args(tiny_model_config_dir), *args)
        assert at(printed, path) == expected, path
        if path != ("model",):
            assert at(defaults, path) != expected, f"the sample for {path} does not change the default"


def test_spec_file_plus_overrides_is_the_spec_the_api_builds(tiny_model_config_dir: Path, tmp_path: Path) -> None:
    body = {
        "model": str(tiny_model_config_dir),
        "target": {"param_ratio": 0.6, "scope": "blocks"},
        "n_trials": 20,
        "seed": 3,
        "search_space": {"ffn_alignment": 8, "depth": "layer"},
    }
    job = tmp_path / "job.json"
    job.write_text(json.dumps(body))

    printed = print_spec("--spec", str(job), "--trials", "5", "--sparsity", "0.2")

    # What POST /v1/jobs builds from the body with the same two fields changed (its `spec: JobSpec`).
    expected = JobSpec.model_validate(
        body | {"n_trials": 5, "search_space": body["search_space"] | {"sparsity": 0.2}}  # type: ignore[operator]
    )
    assert JobSpec.model_validate(printed) == expected
    assert expected.search_space.depth == "layer" and expected.target.scope == "blocks"  # siblings kept


def test_a_standard_search_left_without_depth_drops_whole_layers(tiny_model_config_dir: Path) -> None:
    printed = print_spec(*base_args(tiny_model_config_dir), "--export-format", "standard")
    assert (printed["search_space"]["export_format"], printed["search_space"]["depth"]) == ("standard", "layer")
    result = CliRunner().invoke(
        main, ["search", *base_args(tiny_model_config_dir), "--export-format", "standard", "--depth", "sublayer"]
    )
    assert result.exit_code != 0 and "search_space.export_format" in result.output and "Traceback" not in result.output


def test_the_flags_the_cli_always_had_still_work(tiny_model_config_dir: Path) -> None:
    printed = print_spec(
        *base_args(tiny_model_config_dir),
        *["--trials", "9", "--proxy", "prunenet", "--sampler", "nsga2", "--samples", "8", "--heldout", "6"],
        *["--seq-len", "128", "--verify-top-k", "2", "--depth", "none", "--parameterization", "compact"],
        *["--selection", "magnitude", "--pareto", "--min-param-ratio", "0.4", "--no-width", "--sparsity", "0.1"],
    )
    assert printed["n_trials"] == 9 and printed["proxy"] == "prunenet" and printed["sampler"] == "nsga2"
    calibration = printed["calibration"]
    assert (calibration["n_samples"], calibration["seq_len"], calibration["heldout_samples"]) == (8, 128, 6)
    assert printed["objectives"] == ["score", "params"] and printed["target"]["min_param_ratio"] == 0.4
    space = printed["search_space"]
    assert (space["depth"], space["parameterization"], space["selection"], space["width"]) == (
        "none",
        "compact",
        "magnitude",
        False,
    )
    assert printed["verify_top_k"] == 2 and space["sparsity"] == 0.1


def test_the_default_seed_is_fixed_and_a_spec_file_may_unset_it(tiny_model_config_dir: Path, tmp_path: Path) -> None:
    assert print_spec(*base_args(tiny_model_config_dir))["seed"] == 0
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"model": str(tiny_model_config_dir), "target": {"param_ratio": 0.6}, "seed": None}))
    assert print_spec("--spec", str(job), "--ffn-alignment", "8")["seed"] is None
    assert print_spec("--spec", str(job), "--ffn-alignment", "8", "--seed", "11")["seed"] == 11


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--param-ratio", "1.5"], "--param-ratio (target.param_ratio): Input should be less than or equal to 1"),
        (["--param-ratio", "0.6", "--sampler", "grid"], "Invalid value for '--sampler'"),
        (["--param-ratio", "0.6", "--proxy", "tracenas,nope"], "--proxy (proxy)"),
        (["--param-ratio", "0.6", "--seed", "-1"], "--seed (seed)"),
    ],
)
def test_invalid_options_are_named_by_their_flag(tiny_model_config_dir: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["search", "--model", str(tiny_model_config_dir), *args, "--print-spec"])
    assert result.exit_code == 2 and message in result.output, result.output


def test_a_missing_model_or_an_unreadable_spec_file_says_which_option(tmp_path: Path) -> None:
    missing = CliRunner().invoke(main, ["search", "--param-ratio", "0.5", "--print-spec"])
    assert missing.exit_code == 2 and "--model (model): Field required" in missing.output
    broken = tmp_path / "job.json"
    broken.write_text("{not json")
    unreadable = CliRunner().invoke(main, ["search", "--spec", str(broken), "--print-spec"])
    assert unreadable.exit_code == 2 and "--spec" in unreadable.output and "JSON" in unreadable.output
