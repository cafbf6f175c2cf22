"""The sweep rule's edges the posts' tables do not reach: missing figures, the reasons it gives, its JSON.

Written against what a reader of `gh200 sweep decide` sees: which depth is kept, which stopped the
walk, and why, in words and in --json.
"""

from __future__ import annotations

from gh200.bench.rule import CV_BOUND, Depth, ShapeFigures, check, decide, depth_name

STEADY = ShapeFigures(median=40.0, p10=35.0, cv=0.10, runs=11, sub60_runs=0)


def test_a_tail_with_unknown_runs_or_counts_never_collapses() -> None:
    # Tables that give no run count or no sub-60 count cannot show a collapsed tail (and must not
    # divide by a missing count).
    assert ShapeFigures(40.0, runs=0, sub60_runs=0).tail_collapsed() is False
    assert ShapeFigures(40.0, runs=None, sub60_runs=3).tail_collapsed() is False
    assert ShapeFigures(40.0, runs=11, sub60_runs=None).tail_collapsed() is False
    assert (
        decide([Depth(1, {"s": ShapeFigures(40.0, runs=11)}), Depth(2, {"s": ShapeFigures(41.0)})]).chosen
        == 2
    )


def test_a_shape_new_at_this_depth_does_not_hide_a_worse_one_after_it() -> None:
    # The new shape comes first in the row order; the shape measured at both depths still counts.
    worse = ShapeFigures(median=30.0, p10=25.0, cv=0.05, runs=11, sub60_runs=0)
    reasons = check(Depth(2, {"new": STEADY, "s": worse}), Depth(1, {"s": STEADY}))
    assert reasons == ["s: median 30.00 below 40.00 at MTP-1", "s: p10 25.00 below 35.00 at MTP-1"]


def test_cv_exactly_at_the_bound_or_unchanged_above_it_does_not_stop() -> None:
    at_bound = ShapeFigures(median=45.0, p10=40.0, cv=CV_BOUND, runs=11, sub60_runs=0)
    assert check(Depth(2, {"s": at_bound}), Depth(1, {"s": STEADY})) == []
    noisy = ShapeFigures(median=40.0, p10=35.0, cv=0.30, runs=11, sub60_runs=0)
    same_noise = ShapeFigures(median=45.0, p10=40.0, cv=0.30, runs=11, sub60_runs=0)
    assert check(Depth(2, {"s": same_noise}), Depth(1, {"s": noisy})) == []


def test_the_cv_reason_names_the_previous_cv_or_says_it_was_not_reported() -> None:
    rising = ShapeFigures(median=45.0, p10=40.0, cv=0.25, runs=11, sub60_runs=0)
    assert check(Depth(3, {"s": rising}), Depth(2, {"s": STEADY})) == [
        "s: CV 0.250 above 0.2 (was 0.100 at MTP-2)"
    ]
    no_cv = ShapeFigures(median=40.0, p10=35.0)
    assert check(Depth(1, {"s": rising}), Depth(0, {"s": no_cv})) == [
        "s: CV 0.250 above 0.2 (was n/a at MTP-0)"
    ]


def test_depth_names() -> None:
    assert depth_name(0) == "MTP-0 (no speculative decoding)"
    assert depth_name(1) == "MTP-1"
    assert depth_name(4) == "MTP-4"


def test_the_bounds_passed_to_decide_are_the_ones_used() -> None:
    four_of_eleven = ShapeFigures(median=45.0, p10=40.0, cv=0.10, runs=11, sub60_runs=4)  # 36%
    depths = [Depth(1, {"s": STEADY}), Depth(2, {"s": four_of_eleven})]
    assert decide(depths).chosen == 1
    assert decide(depths, tail_share=0.5).chosen == 2
    rising = ShapeFigures(median=45.0, p10=40.0, cv=0.15, runs=11, sub60_runs=0)
    assert decide([Depth(1, {"s": STEADY}), Depth(2, {"s": rising})]).chosen == 2
    assert decide([Depth(1, {"s": STEADY}), Depth(2, {"s": rising})], cv_bound=0.12).chosen == 1


def test_a_failing_first_depth_keeps_nothing_and_says_why() -> None:
    collapsed = ShapeFigures(median=50.0, p10=45.0, cv=0.05, runs=4, sub60_runs=2)
    also = ShapeFigures(median=50.0, p10=45.0, cv=0.05, runs=4, sub60_runs=3)
    decision = decide([Depth(0, {"a": collapsed, "b": also}), Depth(1, {"a": STEADY})])
    assert decision.as_json() == {
        "chosen": None,
        "reason": "MTP-0 (no speculative decoding) failed: a: 2 of 4 runs accepted under 60%; "
        "b: 3 of 4 runs accepted under 60%",
        "stopped_at": 0,
        "verdicts": [
            {
                "tokens": 0,
                "ok": False,
                "reasons": ["a: 2 of 4 runs accepted under 60%", "b: 3 of 4 runs accepted under 60%"],
            }
        ],
    }


def test_a_stopped_walk_joins_every_reason() -> None:
    worse = ShapeFigures(median=30.0, p10=25.0, cv=0.05, runs=11, sub60_runs=0)
    decision = decide([Depth(1, {"s": STEADY}), Depth(2, {"s": worse})])
    assert decision.reason == (
        "MTP-2 stopped the walk: s: median 30.00 below 40.00 at MTP-1; s: p10 25.00 below 35.00 at MTP-1"
    )
    assert [(v.tokens, v.ok) for v in decision.verdicts] == [(1, True), (2, False)]


def test_nothing_measured_and_a_walk_that_never_stopped() -> None:
    empty = decide([])
    assert (empty.chosen, empty.reason, empty.stopped_at, empty.verdicts) == (
        None,
        "no depth measured",
        None,
        [],
    )
    assert empty.as_json() == {
        "chosen": None,
        "reason": "no depth measured",
        "stopped_at": None,
        "verdicts": [],
    }
    better = ShapeFigures(median=45.0, p10=40.0, cv=0.10, runs=11, sub60_runs=0)
    walk = decide([Depth(3, {"s": better}), Depth(0, {"s": STEADY})])  # any order: walked upward
    assert walk.as_json() == {
        "chosen": 3,
        "reason": "no depth stopped the walk up to MTP-3",
        "stopped_at": None,
        "verdicts": [{"tokens": 0, "ok": True, "reasons": []}, {"tokens": 3, "ok": True, "reasons": []}],
    }
