"""Resuming a search: the same study continues up to its ``n_trials`` (or a new one), keeping every trial.

Torch-free, so the API checks a resume with it before the worker runs it. Both ways in use it: the
service's ``POST /v1/jobs/{id}/resume`` (``service.resumption``) and ``prunesearch search
--study-name`` on an existing study. What follows is the ordinary search: ``run_search`` opens the
study with ``load_if_exists`` and ``search.trials.remaining_trials`` counts what is left under the
spec this returns.
"""

from __future__ import annotations

from search.errors import InvalidJobSpec
from search.spec import JobSpec


def resumed_spec(spec: JobSpec, *, complete: int, n_trials: int | None = None) -> JobSpec:
    """``spec`` with ``n_trials`` (unchanged when ``None``), for a study that holds ``complete`` trials.

    ``InvalidJobSpec`` naming ``n_trials`` when a new one is below ``complete``: a resume keeps every
    trial, so it cannot ask for fewer. Without a new one the spec is kept as it is, even when the
    study already has its trials (a resume then verifies and reports again)."""
    if n_trials is None:
        return spec
    if n_trials < complete:
        raise InvalidJobSpec(
            f"n_trials {n_trials} is below the {complete} complete trials the study already holds; "
            f"a resume keeps every trial, so ask for at least {complete}",
            field="n_trials",
        )
    # Validated again (not model_copy), so the field's own bounds hold for the new value.
    return JobSpec.model_validate(spec.model_dump(mode="json") | {"n_trials": n_trials})
