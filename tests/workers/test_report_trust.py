"""The job report carries the verification ladder and the proxy trust section as JSON the API can serve."""

from __future__ import annotations

import json
from pathlib import Path

from search.candidates import prepare
from search.loading import load_model
from search.proxies import MetaNetStore
from search.study import run_search
from tests.conftest import tiny_job_spec
from workers.exports import report
from workers.settings import WorkerSettings


def test_report_has_trust_and_ladder(tiny_llama_dir: Path, tmp_path: Path) -> None:
    spec = tiny_job_spec(
        tiny_llama_dir,
        proxy="ensemble",
        n_trials=8,
        seed=2,
        verify_top_k=3,
        audit_size=6,
        calibration={"n_samples": 4, "seq_len": 64, "heldout_samples": 8},
    )
    settings = WorkerSettings(data_dir=tmp_path)
    context = prepare(load_model(str(tiny_llama_dir), device="cpu"), spec)
    result = run_search(context, study_name="report", metanet_store=MetaNetStore(settings.data_dir / "metanet"))
    written = report("job-1", context, result, settings=settings)
    job_report = json.loads(json.dumps(written.model_dump(mode="json"), allow_nan=False))
    trust = job_report["trust"]
    assert trust["objective"] == "ensemble" and {"tracenas", "tracenas_sum", "prunenet"} <= set(trust["proxies"])
    assert isinstance(trust["flagged"], bool) and trust["audit"]["size"] == 6
    nearby = trust["neighbourhood"]  # the default neighbourhood audit, beside the stratified one
    assert nearby["size"] == 12 and nearby["best_proxy"] in nearby["proxies"]
    assert job_report["verification"]["ladder"][-1]["sequences"] == 8
    assert (settings.data_dir / "metanet" / "llama.jsonl").is_file()


def test_a_recovered_job_exports_its_winner_with_the_recovered_weights(tiny_llama_dir: Path, tmp_path: Path) -> None:
    import torch

    from search.export import load_pruned
    from search.recovery import recover
    from service.artifacts import job_artifacts_dir

    recovery = {"steps": 4, "batch_size": 2, "finalists": 2}
    spec = tiny_job_spec(
        tiny_llama_dir, proxy="prunenet", n_trials=4, seed=0, verify_top_k=2, audit_size=0, recovery=recovery
    )
    settings = WorkerSettings(data_dir=tmp_path)
    context = prepare(load_model(str(tiny_llama_dir), device="cpu"), spec)
    result = run_search(context, study_name="recovered")
    outcome = recover(context, result)
    assert outcome.winner is not None
    written = report("job-2", context, result, settings=settings, recovery=outcome)
    stored = json.loads(json.dumps(written.model_dump(mode="json"), allow_nan=False))
    assert stored["recovery"]["winner"] == outcome.winner.trial_number and len(stored["recovery"]["finalists"]) == 2
    best = job_artifacts_dir(settings.artifacts_dir, "job-2") / "best"
    provenance = json.loads((best / "provenance.json").read_text())
    assert provenance["trial_number"] == outcome.winner.trial_number
    assert (
        provenance["recovery"]["after"]
        == stored["recovery"]["finalists"][
            [f["trial_number"] for f in stored["recovery"]["finalists"]].index(outcome.winner.trial_number)
        ]["after"]
    )
    for name, tensor in load_pruned(best).state_dict().items():
        assert torch.equal(tensor, outcome.winner.state[name].to(tensor.dtype)), name
