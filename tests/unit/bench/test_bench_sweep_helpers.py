"""The sweep's pure helpers (they stay in gh200.bench.sweep; the deploying walk lives in orchestrate):
points from run sets, verdicts per point, the record, the plot's content, plans and bad input."""

from __future__ import annotations

import datetime as dt
import re
import time
from pathlib import Path
from typing import Any

import pytest
from bench_fakes import profile_with, run_result

from gh200.bench.client import RequestResult
from gh200.bench.rule import ShapeFigures
from gh200.bench.smoke import RunResult, RunSet, SetPlan
from gh200.bench.sweep import (
    Point,
    SweepResult,
    default_plot_path,
    depths_of,
    expected_plans,
    judge,
    parse_spec_tokens,
    points_for,
    save_plot,
    with_spec_tokens,
)
from gh200.errors import BadInput
from gh200.profiles import load_profile
from gh200.profiles.schema import Expected


def _set(kind: str, tok_s: list[float], accepted: int | None = 90, concurrency: int = 1) -> RunSet:
    plan = (
        SetPlan("synthetic", 2048, 512, concurrency, len(tok_s) - 1)
        if kind == "synthetic"
        else SetPlan("real", None, 256, 1, len(tok_s) - 1)
    )
    s = RunSet(plan)
    s.runs = [run_result(i, 100 / t, accepted) for i, t in enumerate(tok_s)]
    return s


def test_a_point_carries_the_sets_figures_and_real_prompt_sets_do_not_stop_the_walk() -> None:
    # The real-prompt set comes first: the synthetic set after it is still a point.
    points = points_for(3, [_set("real", [5.0, 6.0]), _set("synthetic", [20.0, 30.0, 40.0], concurrency=2)])
    assert points == [
        Point(
            tokens=3,
            shape="2 x 2048->512",
            runs=3,
            median=30.0,
            p10=22.0,
            p90=38.0,
            cv=pytest.approx(0.272166, abs=1e-6),  # type: ignore[arg-type]
            acceptance=0.9,
            sub60_runs=0,
            tpot_ms=10.0,
        )
    ]
    assert points[0].figures() == ShapeFigures(30.0, 22.0, pytest.approx(0.272166, abs=1e-6), 3, 0)  # type: ignore[arg-type]
    # Without drafts or TPOT figures the point says so.
    bare = RunSet(SetPlan("synthetic", 16, 8, 1, 0))
    bare.runs = [
        RunResult(
            0,
            True,
            1,
            2.0,
            [RequestResult(16, 8, 16, 8, None, 0.5, 1.0, None, None, None, None, 8, "length")],
        )
    ]
    (point,) = points_for(0, [bare])
    assert (point.acceptance, point.tpot_ms, point.median) == (None, None, 4.0)


def test_depths_read_the_points_p10_and_cv() -> None:
    points = [
        Point(1, "s", 11, 40.0, 35.0, 45.0, 0.10, 0.9, 0, 10.0),
        Point(2, "s", 11, 45.0, 34.0, 50.0, 0.25, 0.9, 0, 10.0),  # better median, worse p10 and CV
    ]
    assert depths_of(points)[1].shapes["s"] == ShapeFigures(45.0, 34.0, 0.25, 11, 0)
    decision = judge(points)
    assert decision.chosen == 1
    assert points[1].verdict == "p10 34.00 below 35.00 at MTP-1; CV 0.250 above 0.2 (was 0.100 at MTP-1)"


def test_verdicts_per_point_name_only_their_own_shape() -> None:
    a, b = "2 x 2048->512", "8192->512"
    points = [
        Point(1, a, 11, 40.0, 35.0, 45.0, 0.1, 0.9, 0, 10.0),
        Point(1, b, 11, 40.0, 35.0, 45.0, 0.1, 0.9, 0, 10.0),
        Point(2, a, 11, 30.0, 35.0, 45.0, 0.1, 0.9, 0, 10.0),
        Point(2, b, 11, 41.0, 36.0, 45.0, 0.1, 0.9, 0, 10.0),
        Point(3, a, 11, 50.0, 45.0, 55.0, 0.1, 0.9, 0, 10.0),  # measured past the stop: never judged
    ]
    decision = judge(points)
    assert (decision.chosen, decision.stopped_at) == (1, 2)
    assert [p.verdict for p in points] == [
        "ok",
        "ok",
        "median 30.00 below 40.00 at MTP-1",
        "depth stopped",
        "depth stopped",
    ]


def test_point_and_sweep_records() -> None:
    point = Point(1, "2048->512", 11, 43.123456789, 40.0, 45.0, 1 / 7, None, 2, 12.5)
    assert point.as_json() == {
        "tokens": 1,
        "shape": "2048->512",
        "runs": 11,
        "median": 43.123457,
        "p10": 40.0,
        "p90": 45.0,
        "cv": 0.142857,
        "acceptance": None,
        "sub60_runs": 2,
        "tpot_ms": 12.5,
        "verdict": "ok",
    }
    assert isinstance(point.as_json()["runs"], int)
    result = SweepResult("p", ["2048->512"], points=[point], chosen=1, reason="why", plot=Path("/x/p.png"))
    assert result.as_json() == {
        "profile": "p",
        "shapes": ["2048->512"],
        "points": [point.as_json()],
        "chosen": 1,
        "reason": "why",
        "plot": "/x/p.png",
        "changed": True,
    }
    assert SweepResult("p", []).as_json()["plot"] is None


def test_plot_shows_each_shape_with_its_p10_p90_bars_and_rings_the_chosen_depth(
    tmp_path: Path, plot_axes: list[Any]
) -> None:
    made = plot_axes
    points = [
        Point(t, shape, 11, m, m - 2, m + 3, 0.1, None, 0, None)
        for shape, ms in (("2048->512", (20.0, 30.0, 25.0)), ("8192->512", (10.0, 15.0, 12.0)))
        for t, m in zip((0, 2, 3), ms, strict=True)
    ]
    path = save_plot(SweepResult("glm", [], points=points, chosen=2), tmp_path / "s.png")
    assert path == tmp_path / "s.png" and (path.stat().st_mode & 0o777) == 0o644
    (ax,) = made
    assert ax.get_xlabel() == "speculative tokens (0: none)" and ax.get_ylabel() == "output tok/s"
    assert ax.get_title() == "glm: chosen MTP-2"
    assert list(ax.get_xticks()) == [0, 2, 3]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "2048->512 median (p10-p90)",
        "8192->512 median (p10-p90)",
    ]
    lines = [c.lines[0] for c in ax.containers]  # one error-bar series per shape
    assert [list(line.get_xdata()) for line in lines] == [[0, 2, 3], [0, 2, 3]]
    assert [list(line.get_ydata()) for line in lines] == [[20.0, 30.0, 25.0], [10.0, 15.0, 12.0]]
    # Each bar runs from the p10 (median - 2) to the p90 (median + 3).
    segments = ax.containers[0].lines[2][0].get_segments()
    assert [(s[0][1], s[1][1]) for s in segments] == [(18.0, 23.0), (28.0, 33.0), (23.0, 28.0)]
    from matplotlib.collections import PathCollection

    rings = [c.get_offsets().tolist() for c in ax.collections if isinstance(c, PathCollection)]
    assert rings == [[[2.0, 30.0]], [[2.0, 15.0]]]


def test_the_default_plot_path_is_stamped_in_utc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GH200_STATE", str(tmp_path))
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # a local clock 5:30 ahead must not leak into the stamp
    time.tzset()
    try:
        before = dt.datetime.now(dt.UTC).replace(microsecond=0)
        path = default_plot_path("glm")
        after = dt.datetime.now(dt.UTC)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert path.parent == tmp_path / "sweeps"
    match = re.fullmatch(r"glm-(\d{8}T\d{6}Z)\.png", path.name)
    assert match, path.name
    stamp = dt.datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    assert before <= stamp <= after


def test_plans_are_the_expected_shapes_else_the_posts_2048_to_512() -> None:
    profile = profile_with(
        [
            Expected(shape="8192:512", metric="output_tok_s", value=1, source="p"),
            Expected(shape="2048:512", concurrency=4, metric="output_tok_s", value=1, source="p"),
            Expected(shape="2048:512", concurrency=4, metric="tpot_ms", value=1, source="p"),
        ]
    )
    assert expected_plans(profile, 3) == [
        SetPlan("synthetic", 2048, 512, 4, 3),
        SetPlan("synthetic", 8192, 512, 1, 3),
    ]
    assert expected_plans(profile_with([]), 5) == [SetPlan("synthetic", 2048, 512, 1, 5)]


def test_bad_spec_tokens_and_profiles_say_what_to_do() -> None:
    with pytest.raises(BadInput) as caught:
        parse_spec_tokens("1-3")
    assert caught.value.one_line() == "bad --spec-tokens '1-3' (fix: write 1.. or 1..5 or 1,2,3)"
    with pytest.raises(BadInput) as caught:
        parse_spec_tokens("0,2")
    assert caught.value.one_line() == (
        "--spec-tokens '0,2' must lie within 1..16 "
        "(fix: pick values from 1 to 16 (MTP-0, the baseline, is always measured first))"
    )
    with pytest.raises(BadInput) as caught:
        with_spec_tokens(load_profile("glm52-awq"), 2)
    assert caught.value.one_line() == (
        "profile glm52-awq has no speculative decoding to sweep "
        "(fix: sweep a profile with settings.speculative set (method mtp or draft))"
    )
