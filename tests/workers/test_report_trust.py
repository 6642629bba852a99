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
    assert job_report["verification"]["ladder"][-1]["sequences"] == 8
    assert (settings.data_dir / "metanet" / "llama.jsonl").is_file()
