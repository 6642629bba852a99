"""``proxy`` in a job spec: one name (as before) or a list whose ranks are aggregated."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from search.names import DEFAULT_ENSEMBLE
from search.spec import JobSpec


def _spec(**fields: object) -> JobSpec:
    return JobSpec(model="owner/model", target={"param_ratio": 0.5}, **fields)


def test_single_names_keep_working_and_lists_are_ensembles() -> None:
    assert _spec().proxy == "kl" and _spec().proxy_members == ("kl",)
    assert _spec(proxy="prunenet").proxy_label == "prunenet"
    assert _spec(proxy="ensemble").proxy_members == DEFAULT_ENSEMBLE == ("prunenet", "tracenas")
    both = _spec(proxy=["tracenas", "prunenet"])
    assert both.proxy == ["tracenas", "prunenet"] and both.proxy_label == "ensemble"
    assert _spec(proxy=["metanet"]).proxy == "metanet"  # a list of one is that proxy
    assert JobSpec.model_validate(both.model_dump(mode="json")) == both
    assert _spec(search_space={"selection": "prunenet"}).search_space.selection == "prunenet"


@pytest.mark.parametrize(
    ("proxy", "message"),
    [
        ("vibes", "unknown proxy 'vibes'; available: tracenas, prunenet, metanet, kl, ensemble"),
        (["tracenas", "vibes"], "unknown proxies ['vibes']"),
        (["ensemble", "tracenas"], "unknown proxies ['ensemble']"),
        (["tracenas", "tracenas"], "names each proxy once"),
        ([], "at least one name"),
    ],
)
def test_bad_proxies_are_refused_with_a_reason(proxy: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _spec(proxy=proxy)
