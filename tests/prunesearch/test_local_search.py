"""`prunesearch search` as a new user runs it, in a real process on the tiny Llama (issue 17, items 7-11):
it saves the verified best, shows it beside the baselines, is reproducible, points at the dashboard
extra and the export command, and prints no warning that needs no attention."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest

from prunesearch import load_pruned

REPO = Path(__file__).resolve().parents[2]
TOO_LONG_WARNING = "Token indices sequence length is longer than the specified maximum"
# Small and fast, with sparsity so that all three baselines (uniform, Block Influence, OWL) are seeded.
SEARCH = [
    *["--param-ratio", "0.6", "--trials", "6", "--samples", "4", "--seq-len", "64", "--heldout", "4"],
    *["--ffn-alignment", "8", "--verify-top-k", "2", "--audit-size", "0", "--sparsity", "0.3"],
]


@dataclass(frozen=True)
class Run:
    output: str  # stdout and stderr
    data_dir: Path
    out: Path


def prunesearch(args: list[str], data_dir: Path, **settings: str) -> str:
    env = os.environ | {"PRUNESEARCH_DATA_DIR": str(data_dir), "COLUMNS": "200"} | settings
    done = subprocess.run(
        [sys.executable, "-m", "prunesearch", *args], env=env, capture_output=True, text=True, timeout=600, cwd=REPO
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def model(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama whose tokenizer declares a 64-token maximum, as real ones do (1024 for
    ref-llama-13m): the calibration documents are longer, which made transformers warn every time."""
    copy = Path(shutil.copytree(tiny_llama_dir, tmp_path_factory.mktemp("model") / "tiny"))
    config = copy / "tokenizer_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"model_max_length": 64}))
    return copy


@pytest.fixture(scope="module")
def run(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("search")
    out = root / "best"
    args = ["search", "--model", str(model), *SEARCH, "--study-name", "first", "--out", str(out)]
    return Run(prunesearch(args, root / "data"), root / "data", out)


def best_trial(output: str) -> int:
    match = re.search(r"Verified best architecture \(trial (\d+),", output)
    assert match, output
    return int(match.group(1))


def verified_rows(output: str) -> list[str]:
    table = output[output.index("Verified on") :]
    table = table[: table.index("└")]  # the tables after it (the export's speed) vary from run to run
    return [line for line in table.splitlines() if line.startswith("│")]


def test_out_saves_the_verified_best_and_the_printed_command_exports_any_trial(run: Run, tmp_path: Path) -> None:
    best = best_trial(run.output)
    provenance = json.loads((run.out / "provenance.json").read_text())
    assert provenance["trial_number"] == best and provenance["study_name"] == "first"
    assert provenance["verified"]["primary"] == "kl" and provenance["job_spec"]["seed"] == 0
    assert load_pruned(run.out) is not None
    assert "Speed on cpu in float32" in run.output and "decode batch 1" in run.output  # the speed table

    (command,) = [line.split(": ", 1)[1] for line in run.output.splitlines() if line.startswith("Export any of")]
    other = 1 if best != 1 else 2
    args = shlex.split(command.replace(" N ", f" {other} ").replace("DIR", str(tmp_path / "other")))
    assert args[:2] == ["prunesearch", "export"]
    exported = prunesearch(args[1:], run.data_dir)
    assert f"Exported trial {other}" in exported and TOO_LONG_WARNING not in exported
    assert json.loads((tmp_path / "other" / "provenance.json").read_text())["trial_number"] == other


def test_the_verified_best_is_shown_beside_every_baseline_and_labelled(run: Run) -> None:
    rows = verified_rows(run.output)
    labels = [row.split("│")[1].strip() for row in rows]
    assert labels[0] == "dense model" and labels[1].startswith("verified best")
    for baseline in ("uniform width", "Block Influence depth", "OWL sparsity"):
        assert sum(baseline in label for label in labels) == 1, labels
    assert "proxy's best kl=" in run.output  # the bar's best is the proxy's, the table's the verified one
    assert "Verified best architecture" in run.output


def test_a_fixed_seed_by_default_makes_a_rerun_identical(run: Run, model: Path) -> None:
    assert "Seed 0:" in run.output and "--seed N" in run.output
    again = prunesearch(["search", "--model", str(model), *SEARCH, "--study-name", "second"], run.data_dir)
    assert verified_rows(again) == verified_rows(run.output)


def test_the_dashboard_hint_names_the_extra_that_installs_it(run: Run) -> None:
    assert "optuna-dashboard sqlite:///" in run.output and "pip install -e '.[dashboard]'" in run.output
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in ("dashboard", "dev"):
        assert any(requirement.startswith("optuna-dashboard") for requirement in extras[extra]), extra


def test_no_warning_for_calibration_documents_longer_than_the_model_maximum(run: Run) -> None:
    assert TOO_LONG_WARNING not in run.output


def _complete_trials(storage: str, study_name: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=study_name, storage=storage)
    return study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))


def test_study_name_resumes_the_study_up_to_more_trials_and_never_fewer(run: Run, model: Path) -> None:
    """Last in the module: it adds trials to study "first" (search.resume, shared with the service's resume)."""
    match = re.search(r"Study first in (\S+)", run.output)
    assert match, run.output
    storage = match.group(1)
    before = _complete_trials(storage, "first")

    def search(trials: int) -> list[str]:
        args = list(SEARCH)
        args[args.index("--trials") + 1] = str(trials)
        return ["search", "--model", str(model), *args, "--study-name", "first"]

    env = os.environ | {"PRUNESEARCH_DATA_DIR": str(run.data_dir)}
    refused = subprocess.run(
        [sys.executable, "-m", "prunesearch", *search(len(before) - 1)], env=env, capture_output=True, text=True
    )
    assert refused.returncode != 0 and f"below the {len(before)} complete trials" in refused.stderr, refused.stderr
    assert len(_complete_trials(storage, "first")) == len(before)  # refused before touching the study

    # The worker setting that scores trials in rounds reaches a local search (two trials per round).
    prunesearch(search(len(before) + 3), run.data_dir, PRUNESEARCH_TRIAL_BATCH="2")
    after = _complete_trials(storage, "first")
    assert len(after) == len(before) + 3
    assert [(t.number, t.params) for t in after[: len(before)]] == [(t.number, t.params) for t in before]
    archs = [json.dumps(t.user_attrs["arch"], sort_keys=True) for t in after]
    assert len(set(archs)) == len(archs)  # the resume ran new candidates, not the study's first ones again
