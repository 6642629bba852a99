"""``GET /v1/options``: the names the submit form offers are exactly the ones a job spec accepts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient

from search import names
from search.spec import JobSpec
from service.settings import Settings
from tests.service.helpers import job_spec


def test_options_list_what_a_spec_accepts(
    client_for: Callable[[Settings], TestClient], sqlite_settings: Settings, tiny_model_config_dir: Path
) -> None:
    response = client_for(sqlite_settings).get("/v1/options")

    assert response.status_code == 200, response.text
    options = response.json()
    assert options["proxies"] == list(names.proxy_names())
    assert options["samplers"] == list(names.SAMPLERS)
    assert options["objectives"] == list(names.OBJECTIVES)
    assert options["export_formats"] == list(names.EXPORT_FORMATS)
    assert {"wanda", "prunenet"} <= set(options["selections"])
    defaults = JobSpec.model_validate(job_spec(tiny_model_config_dir))
    assert options["defaults"] == {
        "proxy": defaults.proxy,
        "sampler": defaults.sampler,
        "selection": defaults.search_space.selection,
        "export_format": defaults.search_space.export_format,
    }
    for proxy in options["proxies"]:
        JobSpec.model_validate(job_spec(tiny_model_config_dir, proxy=proxy))
    JobSpec.model_validate(job_spec(tiny_model_config_dir, proxy=options["member_proxies"]))
    for sampler in options["samplers"]:
        JobSpec.model_validate(job_spec(tiny_model_config_dir, sampler=sampler))
    for selection in options["selections"]:
        space = {"ffn_alignment": 8, "selection": selection}
        JobSpec.model_validate(job_spec(tiny_model_config_dir, search_space=space))
    for export_format in options["export_formats"]:
        space = {"ffn_alignment": 8, "export_format": export_format}
        JobSpec.model_validate(job_spec(tiny_model_config_dir, search_space=space))
