"""Statistics across runs: the posts' median, p10, p90 and CV, checked against numpy and by property."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gh200.bench.stats import cv, describe, median, percentile, sub60_count

finite = st.floats(min_value=0.01, max_value=1e4, allow_nan=False, allow_infinity=False)


@given(st.lists(finite, min_size=1, max_size=40), st.floats(min_value=0, max_value=100))
def test_percentile_agrees_with_numpy_linear(values: list[float], q: float) -> None:
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-9, abs=1e-9)


@given(st.lists(finite, min_size=1, max_size=40))
def test_order_of_the_summary(values: list[float]) -> None:
    s = describe(values)
    assert s is not None
    assert s.min <= s.p10 <= s.median <= s.p90 <= s.max
    assert s.n == len(values)
    assert s.cv >= 0
    assert s.cv == pytest.approx(float(np.std(values) / np.mean(values)), rel=1e-9, abs=1e-12)


def test_eleven_runs_p10_is_the_second_smallest() -> None:
    # The posts' runs: 1 cold + 10 warm. The AWQ non-MTP 256->512 row has min 23.94 (the cold run)
    # and p10 25.12: with 11 values the 10th percentile falls exactly on the second-smallest.
    runs = [23.94, 25.12, 25.13, 25.14, 25.15, 25.15, 25.16, 25.17, 25.18, 25.18, 25.19]
    s = describe(runs)
    assert s is not None
    assert s.p10 == 25.12
    assert s.median == 25.15
    assert s.min == 23.94 and s.max == 25.19


def test_cv_single_value_and_zero_mean() -> None:
    assert cv([5.0]) == 0.0
    assert cv([0.0, 0.0]) == 0.0
    assert median([3.0, 1.0, 2.0]) == 2.0


def test_describe_ignores_missing_and_non_finite() -> None:
    assert describe([]) is None
    s = describe([1.0, math.nan, 3.0, math.inf])
    assert s is not None and s.n == 2 and s.median == 2.0


def test_sub60_counts_only_runs_with_drafts() -> None:
    assert sub60_count([0.59, 0.60, 0.9, None, 0.1]) == 2
    assert sub60_count([None, None]) == 0


def test_percentile_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_percentile_bounds_are_inclusive() -> None:
    # q=0 and q=100 are the min and the max, not errors; just outside either end is refused.
    values = [3.0, 1.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 3.0
    for q in (-0.001, 100.001):
        with pytest.raises(ValueError) as err:
            percentile(values, q)
        assert str(err.value) == f"percentile {q} outside 0..100"


def test_no_values_errors_say_what_was_asked() -> None:
    with pytest.raises(ValueError) as err:
        percentile([], 50)
    assert str(err.value) == "percentile of no values"
    with pytest.raises(ValueError) as err:
        cv([])
    assert str(err.value) == "cv of no values"


def test_summary_json_rounds_floats_to_six_places_and_keeps_the_count_an_int() -> None:
    s = describe([1.23456789, 1.23456789])
    assert s is not None
    out = s.as_json()
    assert out["n"] == 2 and isinstance(out["n"], int)
    assert out["median"] == 1.234568 and out["p10"] == 1.234568
    assert isinstance(out["median"], float)
    assert out["cv"] == 0.0
