"""The trust statistics (pure Python): rank correlations, bootstrap intervals, stratified audits."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from search.correlation import kendall, ranks, spearman
from search.trust import bootstrap_interval, leading_proxy, stratified_sample, trust_report, verdict


def test_rank_correlations_match_scipy_with_ties() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(0)
    for _ in range(20):
        x = [rng.choice([0.0, 1.0, 2.0, rng.random()]) for _ in range(25)]
        y = [v + rng.gauss(0, 0.7) if rng.random() < 0.8 else 3.0 for v in x]
        assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
        assert kendall(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    assert ranks([3.0, 1.0, 3.0, 2.0]) == [2.5, 0.0, 2.5, 1.0]


def test_undefined_correlations_are_none_not_nan() -> None:
    assert spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None
    assert kendall([1.0, 2.0], [2.0, 1.0]) is None
    assert bootstrap_interval([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0], spearman) is None


def test_bootstrap_interval_covers_the_estimate_and_is_seeded() -> None:
    rng = random.Random(1)
    x = [rng.random() for _ in range(30)]
    y = [v + rng.gauss(0, 0.3) for v in x]
    low, high = bootstrap_interval(x, y, spearman, seed=3)  # type: ignore[misc]
    assert low <= spearman(x, y) <= high  # type: ignore[operator]
    assert bootstrap_interval(x, y, spearman, seed=3) == (low, high)


def test_stratified_sample_takes_one_candidate_per_quantile() -> None:
    items = [(n, float(n)) for n in range(100)]
    chosen = stratified_sample(items, 10, seed=0)
    assert sorted(n // 10 for n in chosen) == list(range(10))  # one per decile of the score
    assert stratified_sample(items, 10, seed=0) == chosen
    assert sorted(stratified_sample(items[:5], 10)) == [0, 1, 2, 3, 4]


def test_report_flags_a_poor_proxy_and_shows_the_depth_bias() -> None:
    rng = random.Random(2)
    depth = [float(rng.randint(8, 16)) for _ in range(40)]
    metric = [rng.random() for _ in range(40)]  # verified: lower is better, unrelated to depth
    good = [-m + rng.gauss(0, 0.05) for m in metric]
    depth_biased = [d + rng.gauss(0, 0.1) for d in depth]
    report = trust_report(
        {"good": good, "summed": depth_biased, "partial": [None, *good[1:]]},
        metric,
        params=[1.0] * 40,
        depth=depth,
        objective="summed",
        metric="kl",
    )
    assert report["proxies"]["good"]["spearman"] > 0.9 and not report["proxies"]["good"]["poor"]
    assert report["proxies"]["summed"]["depth_spearman"] > 0.9 and report["proxies"]["summed"]["poor"]
    assert report["proxies"]["summed"]["params_spearman"] is None  # constant parameter count
    assert report["proxies"]["partial"]["n"] == 39
    assert report["flagged"] and "summed" in report["flags"][0]
    low, high = report["proxies"]["good"]["spearman_ci"]
    assert low <= report["proxies"]["good"]["spearman"] <= high


def test_the_leading_proxy_is_uncertain_when_its_interval_reaches_low_or_overlaps() -> None:
    def entry(rho: float | None, low: float, high: float) -> dict[str, object]:
        return {"spearman": rho, "spearman_ci": [low, high], "poor": rho is None or rho < 0.3}

    clear = {"a": entry(0.9, 0.8, 0.97), "b": entry(0.4, 0.1, 0.6), "a_view": entry(0.99, 0.95, 1.0)}
    leader = leading_proxy(clear, {"a", "b"})  # a view of a proxy is not a proxy one can choose
    assert leader is not None and leader.name == "a" and leader.doubts == []
    assert verdict(clear["a"]) == "strong" and verdict(clear["b"]) == "weak"
    close = clear | {"b": entry(0.85, 0.6, 0.95)}
    leader = leading_proxy(close, {"a", "b"})
    assert leader is not None and leader.name == "a" and "overlaps b's: Spearman 0.85 [0.60, 0.95]" in leader.doubts[0]
    assert verdict(close["a"], doubtful=True) == "uncertain"
    wide = {"a": entry(0.6, 0.1, 0.9)}
    leader = leading_proxy(wide, {"a"})
    assert leader is not None and leader.doubts == ["its interval reaches below 0.3"]
    assert verdict(wide["a"]) == "uncertain" and verdict(entry(0.2, -0.3, 0.6)) == "poor"
    assert leading_proxy({"a": entry(None, 0, 0)}, {"a"}) is None


def test_trust_and_spec_import_without_torch() -> None:
    code = "import sys, search.trust, search.spec; assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
