"""Recovery after the search (search.recovery): distillation into the verified finalists, the winner
picked after it, exported with its recovered weights; LoRA merged; cancel; resume from the study."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from search.candidates import SearchContext, prepare
from search.errors import InvalidJobSpec
from search.export import export_model, load_pruned
from search.loading import LoadedModel
from search.recovery import recover, recovery_finalists, training_tokens
from search.results import JobReport, RecoveryReport, SearchResult
from search.spec import Recovery, check_job
from search.study import run_search
from search.trials import SearchHooks
from tests.conftest import tiny_job_spec

SEARCH: dict[str, Any] = dict(n_trials=4, seed=0, proxy="prunenet", audit_size=0, verify_top_k=2)


def _with_recovery(context: SearchContext, **recovery: Any) -> SearchContext:
    spec = context.spec.model_copy(update={"recovery": Recovery(**({"steps": 8, "batch_size": 2} | recovery))})
    return dataclasses.replace(context, spec=spec)


@pytest.fixture(scope="module")
def searched(tiny_loaded: LoadedModel, tiny_llama_dir: Path) -> tuple[SearchContext, SearchResult]:
    context = prepare(tiny_loaded, tiny_job_spec(tiny_llama_dir, **SEARCH))
    return context, run_search(context, study_name="recovery")


def test_recovery_lowers_the_heldout_kl_and_the_export_holds_the_recovered_weights(
    searched: tuple[SearchContext, SearchResult], tmp_path: Path
) -> None:
    context, result = searched
    context = _with_recovery(context, finalists=2)
    seen: list[tuple[int, int]] = []
    outcome = recover(context, result, hooks=SearchHooks(on_recover=lambda done, total: seen.append((done, total))))
    report = outcome.report
    assert [f.trial_number for f in report.finalists] == [t.number for t in recovery_finalists(result, 2)]
    for finalist in report.finalists:  # "before" is the verifier's own figure of the candidate
        assert finalist.before["kl"] == pytest.approx(result.verified[finalist.trial_number].value, rel=1e-4)
        assert finalist.steps == 8 and finalist.after is not None
    winner = next(f for f in report.finalists if f.trial_number == report.winner)
    assert winner.after is not None and winner.after["kl"] < winner.before["kl"]  # type: ignore[operator]
    assert winner.after["kl"] == min(f.after["kl"] for f in report.finalists if f.after)  # type: ignore[type-var]
    assert seen[0] == (0, 16) and seen[-1] == (16, 16)
    assert outcome.winner is not None and outcome.winner.trial_number == report.winner

    info = export_model(context.loaded, outcome.winner.selection, tmp_path / "best", weights=outcome.winner.state)
    exported = load_pruned(info.directory)
    for name, tensor in exported.state_dict().items():
        assert torch.equal(tensor, outcome.winner.state[name].to(tensor.dtype)), name
    # The export is not the sliced dense model: recovery changed its weights.
    sliced = load_pruned(export_model(context.loaded, outcome.winner.selection, tmp_path / "sliced").directory)
    recovered = exported.state_dict()
    assert any(not torch.equal(tensor, recovered[name]) for name, tensor in sliced.state_dict().items())
    # The report section round-trips through the JSON the service stores.
    stored = JobReport(verification=None, export=None, pareto=[], trust=None, recovery=report).model_dump(mode="json")
    assert RecoveryReport.model_validate(stored["recovery"]) == report


def test_lora_is_merged_before_export(searched: tuple[SearchContext, SearchResult], tmp_path: Path) -> None:
    context, result = searched
    outcome = recover(_with_recovery(context, finalists=1, lora_rank=4), result)
    finalist = outcome.report.finalists[0]
    assert outcome.report.lora_rank == 4 and outcome.report.learning_rate == Recovery(lora_rank=4).rate
    assert finalist.after is not None and finalist.after["kl"] < finalist.before["kl"]  # type: ignore[operator]
    assert outcome.winner is not None
    assert not [name for name in outcome.winner.state if "parametrizations" in name or "lora" in name]
    info = export_model(context.loaded, outcome.winner.selection, tmp_path / "lora", weights=outcome.winner.state)
    stored = {k for file in info.directory.glob("*.safetensors") for k in load_file(file)}
    assert stored and not [k for k in stored if "parametrizations" in k or k.endswith((".a", ".b"))]
    model = load_pruned(info.directory)
    name, tensor = next((n, t) for n, t in model.state_dict().items() if "q_proj" in n)
    assert torch.equal(tensor, outcome.winner.state[name].to(tensor.dtype))


def test_cancel_during_recovery_stops_it_and_a_rerun_resumes_from_the_verified_finalists(
    tiny_loaded: LoadedModel, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    spec = tiny_job_spec(tiny_llama_dir, **SEARCH, recovery={"steps": 6, "batch_size": 2, "finalists": 1})
    context = prepare(tiny_loaded, spec)
    first = run_search(context, study_name="resume", storage=storage)
    steps: list[int] = []
    stopped = recover(
        context,
        first,
        hooks=SearchHooks(on_recover=lambda done, _total: steps.append(done), should_stop=lambda: len(steps) > 3),
    )
    assert stopped.stopped and stopped.winner is None and stopped.report.winner is None
    assert stopped.report.finalists[0].after is None and stopped.report.finalists[0].steps < 6
    # A worker that died here reruns the job: the study's trials are kept, verification and recovery rerun.
    again = run_search(context, study_name="resume", storage=storage)
    assert [t.number for t in again.trials] == [t.number for t in first.trials]
    resumed = recover(context, again)
    assert not resumed.stopped and resumed.report.winner == stopped.report.finalists[0].trial_number


def test_training_never_sees_a_heldout_sequence(searched: tuple[SearchContext, SearchResult]) -> None:
    context, _ = searched
    training = training_tokens(context, Recovery())
    heldout = {tuple(row) for row in context.tokens.heldout.tolist()}
    assert len(training.ids) > len(context.tokens.calibration)  # every window that is not held out
    assert not heldout & {tuple(row) for row in training.ids.tolist()}


def test_lora_rank_above_the_head_size_is_refused_naming_the_field(tiny_model_config_dir: Path) -> None:
    spec = tiny_job_spec(tiny_model_config_dir, recovery={"lora_rank": 17})  # head size 64 / 4 = 16
    with pytest.raises(InvalidJobSpec, match=r"lora_rank=17 .* at most 16") as error:
        check_job(spec)
    assert error.value.field == "recovery.lora_rank"
    check_job(tiny_job_spec(tiny_model_config_dir, recovery={"lora_rank": 16}))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"recovery": {"learning_rate": 0}}, "greater than 0"),
        ({"recovery": {"learning_rate": -1e-4}}, "greater than 0"),
        ({"recovery": {"steps": 0}}, "greater than or equal to 1"),
        ({"recovery": {"finalists": 3}, "verify_top_k": 2}, "verify_top_k is 2"),
        ({"recovery": {"method": "prune-more"}}, "unknown recovery method"),
    ],
)
def test_bad_recovery_specs_are_refused(tiny_model_config_dir: Path, fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_job_spec(tiny_model_config_dir, **fields)
