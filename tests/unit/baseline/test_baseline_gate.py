"""The baseline gate: one-sided rank test in the metric's bad direction, plus an effect-size floor.

Each test is aimed at one wrong version of the rule: the wrong direction for a latency, no floor,
a two-sided test where a one-sided one belongs, a median-only rule that ignores the spread, and
the cold run mixed in with the warm ones.
"""

from __future__ import annotations

from typing import Any

import pytest
from scipy.stats import mannwhitneyu

from gh200.baseline.gate import RULES, compare_metric, compare_runs, run_values

BASE = [100.0, 101.0, 102.0, 103.0, 104.0, 105.0, 106.0, 107.0, 108.0, 109.0]


def runs(metric: str, values: list[float], cold: float | None = None) -> list[dict[str, Any]]:
    out = [{"cold": True, metric: cold}] if cold is not None else []
    return out + [{"cold": False, metric: v} for v in values]


def scaled(values: list[float], factor: float) -> list[float]:
    return [v * factor for v in values]


def verdict(metric: str, base: list[float], new: list[float], **kwargs: Any) -> Any:
    return compare_runs(
        runs(metric, base),
        runs(metric, new),
        profile="p",
        shape="64:64",
        concurrency=1,
        rules=[RULES[metric]],
        **kwargs,
    )


def test_tok_s_ten_percent_lower_is_a_regression_naming_the_metric_and_amount() -> None:
    v = verdict("output_tok_s", BASE, scaled(BASE, 0.9))
    assert v.status == "regression"
    assert v.headline is not None and v.headline.metric == "output_tok_s"
    assert v.headline.worse_by == pytest.approx(0.10, abs=1e-9)
    assert v.as_json()["metric"] == "output_tok_s"
    assert "output_tok_s fell 10.0%" in v.describe()


def test_tok_s_higher_is_never_a_regression() -> None:
    v = verdict("output_tok_s", BASE, scaled(BASE, 1.2))
    assert v.status == "pass"
    assert v.comparisons[0].improved


@pytest.mark.parametrize("metric", ["tpot_ms", "ttft_ms"])
def test_latency_higher_is_a_regression_and_lower_is_not(metric: str) -> None:
    # A rule that treats every metric as higher-is-better passes the slower one and fails the faster.
    slower = verdict(metric, BASE, scaled(BASE, 1.2))
    faster = verdict(metric, BASE, scaled(BASE, 0.8))
    assert slower.status == "regression" and slower.headline is not None and slower.headline.metric == metric
    assert slower.headline.worse_by == pytest.approx(0.2)
    assert "rose 20.0%" in slower.describe()
    assert faster.status == "pass" and faster.comparisons[0].improved


def test_a_consistent_shift_below_the_floor_passes() -> None:
    # 3% lower on every run: the rank test is as sure as it can be (p ~ 1e-5), the floor says no.
    new = scaled(BASE, 0.97)
    assert mannwhitneyu(new, BASE, alternative="less").pvalue < 0.05
    v = verdict("output_tok_s", BASE, new)
    assert v.comparisons[0].significant
    assert v.status == "pass"


def test_the_floor_is_a_parameter_and_applies_per_metric() -> None:
    new = scaled(BASE, 0.97)
    assert verdict("output_tok_s", BASE, new, min_effect={"output_tok_s": 0.02}).status == "regression"
    assert verdict("output_tok_s", BASE, new, min_effect={"tpot_ms": 0.02}).status == "pass"


def test_one_sided_p_between_alpha_half_and_alpha_is_caught() -> None:
    # Median 9.6% lower; one-sided p 0.032 but two-sided 0.064: a two-sided test would let it through.
    new = [90.0, 91.0, 92.0, 93.0, 94.0, 95.0, 103.5, 104.5, 106.5, 108.5]
    one = mannwhitneyu(new, BASE, alternative="less").pvalue
    two = mannwhitneyu(new, BASE, alternative="two-sided").pvalue
    assert 0.025 < one < 0.05 < two < 0.1
    v = verdict("output_tok_s", BASE, new)
    assert v.comparisons[0].p_worse == pytest.approx(one)
    assert v.status == "regression"


def test_a_large_median_shift_within_the_noise_passes() -> None:
    # Median 5.5% lower but half the runs are as fast as ever: p 0.09, not evidence of a slowdown.
    new = [90.0, 91.0, 92.0, 93.0, 94.0, 103.5, 104.5, 105.5, 106.5, 109.5]
    v = verdict("output_tok_s", BASE, new)
    assert v.comparisons[0].worse_by > 0.05
    assert not v.comparisons[0].significant
    assert v.status == "pass"


def test_the_cold_run_is_left_out() -> None:
    # A slow cold run in the new set (a first run after deploy) must not drag the comparison.
    assert run_values(runs("output_tok_s", BASE, cold=10.0), "output_tok_s") == BASE
    v = compare_runs(
        runs("output_tok_s", BASE, cold=95.0),
        runs("output_tok_s", BASE, cold=10.0),
        profile="p",
        shape="64:64",
        concurrency=1,
        rules=[RULES["output_tok_s"]],
    )
    assert v.status == "pass"


def test_too_few_runs_is_insufficient_not_a_pass() -> None:
    v = verdict("output_tok_s", BASE[:2], scaled(BASE[:2], 0.5))
    assert v.status == "insufficient" and not v.passed
    assert "needs 3" in v.reason


def test_any_regressing_metric_fails_and_the_first_is_named() -> None:
    base = [
        {"cold": False, "output_tok_s": b, "tpot_ms": 1000 / b, "ttft_ms": 5.0 + i % 3}
        for i, b in enumerate(BASE)
    ]
    new = [
        {"cold": False, "output_tok_s": b, "tpot_ms": 1000 / b, "ttft_ms": (5.0 + i % 3) * 1.3}
        for i, b in enumerate(BASE)
    ]
    v = compare_runs(base, new, profile="p", shape="64:64", concurrency=1, changes=["driver 1 -> 2"])
    assert v.status == "regression"
    assert [c.metric for c in v.regressions] == ["ttft_ms"]
    assert v.headline is not None and v.headline.worse_by == pytest.approx(0.3)
    assert "changed: driver 1 -> 2" in v.describe()


def test_compare_metric_reports_signed_change() -> None:
    c = compare_metric(RULES["tpot_ms"], BASE, scaled(BASE, 0.9))
    assert c.change == pytest.approx(-0.1)
    assert c.worse_by == pytest.approx(-0.1)
    assert not c.regressed


def test_a_slowdown_of_four_runs_in_ten_is_not_hidden_by_the_median() -> None:
    # Four runs ~12% slower, six ~2% slower: the mean falls 5.9%, the median only 3.8%. The median
    # rule passes it; the Hodges-Lehmann shift (5.1%) with p 0.009 does not.
    new = [90.0, 91.0, 92.0, 93.0, 100.0, 101.0, 102.0, 103.0, 104.0, 105.0]
    c = verdict("output_tok_s", BASE, new).comparisons[0]
    assert c.new_median / c.baseline_median - 1 == pytest.approx(-0.0383, abs=1e-3)
    assert c.worse_by == pytest.approx(0.0513, abs=1e-3)
    assert c.regressed


def test_a_median_jumping_across_a_gap_is_not_a_five_percent_slowdown() -> None:
    # Runs in two clusters; every run ~3 tok/s lower and one moved from the fast cluster to the slow.
    # The medians differ by 6.6% (p 0.03), the runs by about 3%: the median rule cries wolf.
    base = [100.0, 101.0, 102.0, 112.0, 113.0, 114.0, 115.0, 116.0, 117.0, 118.0]
    new = [97.0, 98.0, 99.0, 100.0, 101.0, 111.0, 112.0, 113.0, 114.0, 115.0]
    c = verdict("output_tok_s", base, new).comparisons[0]
    assert c.new_median / c.baseline_median - 1 == pytest.approx(-0.066, abs=1e-3)
    assert c.significant
    assert c.worse_by == pytest.approx(0.0296, abs=1e-3)
    assert not c.regressed


@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_the_interval_is_the_rank_bounds_of_the_pairwise_ratios(alpha: float) -> None:
    import math

    from scipy.stats import norm

    new = [91.0, 95.0, 96.0, 97.5, 99.0, 100.0, 101.0, 103.0, 104.0, 111.0]
    diffs = sorted(math.log(b / a) for a in BASE for b in new)
    rank = round(50 - norm.ppf(1 - alpha) * math.sqrt(100 * 21 / 12))  # 28 at 0.05, 17 at 0.01
    c = compare_metric(RULES["output_tok_s"], BASE, new, alpha=alpha)
    assert c.change == pytest.approx(math.expm1((diffs[49] + diffs[50]) / 2))
    assert c.change_low == pytest.approx(math.expm1(diffs[rank - 1]))
    assert c.change_high == pytest.approx(math.expm1(diffs[100 - rank]))
    assert c.change_low < c.change < c.change_high
    assert c.as_json()["ci_level"] == pytest.approx(1 - 2 * alpha)
    assert f"{1 - 2 * alpha:.0%} CI" in c.describe()
