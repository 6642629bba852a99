"""``/v1/options``: the names a job spec accepts (proxies, samplers, selection criteria, objectives).

The submit form and clients read them here instead of repeating them; they come from ``search``'s
torch-free name lists, the same ones the spec validates against.
"""

from __future__ import annotations

from fastapi import APIRouter

from service.api.schemas import API_PREFIX, SpecOptions

router = APIRouter(prefix=API_PREFIX, tags=["options"])

_OPTIONS = SpecOptions.from_spec()


@router.get("/options", response_model=SpecOptions, summary="The names a job spec accepts")
def get_options() -> SpecOptions:
    return _OPTIONS
