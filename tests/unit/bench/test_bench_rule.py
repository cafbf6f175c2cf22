"""The sweep's rule on the posts' own tables (transcribed in data/), and each threshold on its edge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from bench_fakes import run_result

from gh200.bench import report
from gh200.bench.rule import CV_BOUND, TAIL_SHARE, Depth, ShapeFigures, decide
from gh200.bench.smoke import RunSet, SetPlan
from gh200.bench.stats import sub60_count
from gh200.bench.sweep import judge, points_for
from gh200.bench.tables import depth_of, read_depths
from gh200.errors import BadInput

DATA = Path(__file__).parent / "data"


def _decide_file(name: str) -> tuple[str, int | None, str]:
    text = (DATA / name).read_text()
    ((family, depths),) = read_depths(text).items()
    decision = decide(depths)
    return family, decision.chosen, decision.reason


def test_part3_awq_sweep_keeps_mtp3() -> None:
    family, chosen, reason = _decide_file("part3-awq-sweep.md")
    assert (family, chosen) == ("AWQ", 3)
    assert "MTP-4 stopped the walk" in reason and "8192->512: 6 of 11 runs accepted under 60%" in reason
    # The MTP-3 / MTP-4 rows alone (no non-MTP baseline) decide the same.
    text = (DATA / "part3-awq-sweep.md").read_text()
    rows = "\n".join(line for line in text.splitlines() if "non-MTP" not in line)
    ((_, depths),) = read_depths(rows).items()
    assert [d.tokens for d in depths] == [3, 4]
    assert decide(depths).chosen == 3


def test_one_shape_alone_would_pick_mtp4_as_the_old_sweep_did() -> None:
    # At 2048->512 alone MTP-4 is better on every figure the rule reads (median 46.87 > 43.39, p10
    # 35.86 > 34.43, CV 0.196 under the bound, 2 of 11 sub-60): only the other shapes stop it.
    text = (DATA / "part3-awq-sweep.md").read_text()
    rows = "\n".join(
        line
        for line in text.splitlines()
        if "| 256->512" not in line and "096->512" not in line and "8192->512" not in line
    )
    ((_, depths),) = read_depths(rows).items()
    assert [list(d.shapes) for d in depths] == [["2048->512"]] * 3
    assert decide(depths).chosen == 4


def test_part3_concurrency_rows_keep_mtp3_on_the_p10() -> None:
    _, chosen, reason = _decide_file("part3-awq-concurrency.md")
    assert chosen == 3
    assert "2 x 2048->512: p10 41.22 below 42.39 at MTP-3" in reason


def test_part2_tables_keep_mtp3() -> None:
    family, chosen, reason = _decide_file("part2-canada.md")
    assert (family, chosen) == ("Canada W4A16/FP8", 3)
    assert "median 162.10 below 193.00 at MTP-3" in reason
    family, chosen, _ = _decide_file("part2-official.md")
    assert (family, chosen) == ("Official DeepSeek V4 Flash", 3)


def test_part3_fp8_walk_stops_at_mtp3_on_warm_runs() -> None:
    ((_, depths),) = read_depths((DATA / "part3-fp8-walk.md").read_text()).items()
    assert [d.tokens for d in depths] == [1, 2, 3, 4]
    # Warm figures only, as the post judged them: MTP-2's cold 18.68 is not a run of the set.
    mtp2 = depths[1].shapes["2048->512"]
    assert mtp2.runs == 2 and mtp2.median == pytest.approx((23.78 + 23.00) / 2)
    decision = decide(depths)
    assert decision.chosen == 3 and decision.stopped_at == 4
    # 47.59-89.06% over two warm runs: one of two accepted under 60%.
    assert "2048->512: 1 of 2 runs accepted under 60%" in decision.reason


def test_the_reports_own_markdown_is_read_back() -> None:
    def set_at(tok_s: list[float], accepted: int | None) -> RunSet:
        s = RunSet(SetPlan("synthetic", 2048, 512, 1, len(tok_s) - 1))
        s.runs = [run_result(i, 100 / t, accepted) for i, t in enumerate(tok_s)]
        return s

    text = "\n".join(
        [
            report.markdown("glm52-awq-mtp3 spec=0", [set_at([24.0, 24.1, 24.0], None)]),
            report.markdown("glm52-awq-mtp3 spec=3", [set_at([43.0, 44.0, 45.0], 90)]),
            report.markdown("glm52-awq-mtp3 spec=4", [set_at([46.0, 47.0, 48.0], 50)]),
        ]
    )
    ((family, depths),) = read_depths(text).items()
    assert family == "glm52-awq-mtp3" and [d.tokens for d in depths] == [0, 3, 4]
    assert depths[2].shapes["2048->512"] == ShapeFigures(47.0, 46.2, pytest.approx(0.0174, abs=1e-3), 3, 3)
    decision = decide(depths)
    assert decision.chosen == 3 and "3 of 3 runs accepted under 60%" in decision.reason


def test_a_profile_without_mtp_in_its_name_is_the_baseline_of_its_family() -> None:
    def set_at(tok_s: float, accepted: int | None) -> RunSet:
        s = RunSet(SetPlan("synthetic", 2048, 512, 1, 1))
        s.runs = [run_result(i, 100 / tok_s, accepted) for i in range(2)]
        return s

    text = report.markdown("glm52-awq", [set_at(24.03, None)]) + report.markdown(
        "glm52-awq-mtp3", [set_at(43.39, 91)]
    )
    text += report.markdown("local-tiny", [set_at(300.0, None)])  # another family: left out
    ((family, depths),) = read_depths(text).items()
    assert family == "glm52-awq" and [d.tokens for d in depths] == [0, 3]
    assert decide(depths).chosen == 3


def test_depth_names() -> None:
    assert [
        depth_of(t) for t in ("AWQ non-MTP", "AWQ + MTP-3", "MTP4", "p spec=2", "glm52-awq-mtp3 MTP-4", "7")
    ] == [
        0,
        3,
        4,
        2,
        4,
        7,
    ]
    assert depth_of("Canada W4A16/FP8") is None


def test_tables_without_depths_are_bad_input() -> None:
    with pytest.raises(BadInput):
        read_depths("| Path | Measured bandwidth |\n|---|---|\n| Local HBM | about 3,700 GB/s |\n")
    with pytest.raises(BadInput) as caught:
        read_depths((DATA / "part2-canada.md").read_text() * 2)
    assert "two rows for Canada W4A16/FP8 MTP-0" in caught.value.message


# --- each threshold on its edge: a rule moved either way fails one of these -----------------------


def _walk(second: ShapeFigures, first: ShapeFigures | None = None) -> int | None:
    base = first or ShapeFigures(median=40.0, p10=35.0, cv=0.10, runs=11, sub60_runs=0)
    return decide([Depth(1, {"s": base}), Depth(2, {"s": second})]).chosen


def test_tail_share_is_more_than_a_quarter() -> None:
    better: dict[str, Any] = {"median": 45.0, "p10": 40.0, "cv": 0.10}
    assert TAIL_SHARE == 0.25
    assert _walk(ShapeFigures(**better, runs=11, sub60_runs=3)) == 1  # 27%: stops
    assert _walk(ShapeFigures(**better, runs=8, sub60_runs=2)) == 2  # exactly 25%: not more than a quarter
    assert _walk(ShapeFigures(**better, runs=11, sub60_runs=2)) == 2  # Part 3's MTP-3 at 2048->512


def test_sub60_counts_strictly_under_sixty_percent() -> None:
    assert sub60_count([0.5999, 0.60, 0.61, None]) == 1


def test_median_and_p10_must_not_fall() -> None:
    assert _walk(ShapeFigures(median=39.99, p10=36.0, cv=0.1, runs=11, sub60_runs=0)) == 1
    assert (
        _walk(ShapeFigures(median=40.0, p10=35.0, cv=0.1, runs=11, sub60_runs=0)) == 2
    )  # equal is not worse
    assert _walk(ShapeFigures(median=50.0, p10=34.99, cv=0.1, runs=11, sub60_runs=0)) == 1


def test_cv_stops_only_when_it_rises_past_the_bound() -> None:
    assert CV_BOUND == 0.20
    fast: dict[str, Any] = {"median": 50.0, "p10": 40.0, "runs": 11, "sub60_runs": 0}
    assert _walk(ShapeFigures(**fast, cv=0.21)) == 1  # rose past the bound
    assert (
        _walk(ShapeFigures(**fast, cv=0.19)) == 2
    )  # rose, but within it (Part 3's MTP-4 at 2048->512: 0.196)
    noisy = ShapeFigures(median=40.0, p10=35.0, cv=0.25, runs=11, sub60_runs=0)
    assert _walk(ShapeFigures(**fast, cv=0.21), first=noisy) == 2  # above the bound but fell


def test_any_shape_stops_the_walk_and_new_shapes_are_not_compared() -> None:
    good = ShapeFigures(median=50.0, p10=45.0, cv=0.05, runs=11, sub60_runs=0)
    worse = ShapeFigures(median=30.0, p10=25.0, cv=0.05, runs=11, sub60_runs=0)
    first = Depth(0, {"a": ShapeFigures(40.0, 35.0, 0.05, 11, 0), "b": ShapeFigures(40.0, 35.0, 0.05, 11, 0)})
    assert decide([first, Depth(1, {"a": good, "b": worse})]).chosen == 0
    assert decide([first, Depth(1, {"a": good, "c": worse})]).chosen == 1
    # A first depth whose tail collapsed leaves nothing to keep.
    collapsed = ShapeFigures(50.0, 45.0, 0.05, 4, 2)
    decision = decide([Depth(1, {"a": collapsed})])
    assert decision.chosen is None and decision.stopped_at == 1


def test_sweep_points_feed_the_rule_and_skip_real_prompts() -> None:
    synthetic = RunSet(SetPlan("synthetic", 256, 512, 1, 2))
    synthetic.runs = [run_result(i, 100 / t, 90) for i, t in enumerate([20.0, 21.0, 22.0])]
    real = RunSet(SetPlan("real", None, 256, 1, 3))
    real.runs = [run_result(i, 5.0, 10) for i in range(4)]
    points = points_for(2, [synthetic, real])
    assert [(p.tokens, p.shape, p.runs, p.median) for p in points] == [(2, "256->512", 3, 21.0)]
    assert judge(points).chosen == 2


# Part 3's medians and sub-60 counts per depth and shape (data/part3-awq-sweep.md).
PART3 = {
    0: {"256->512": (25.15, 0), "2048->512": (24.03, 0), "4096->512": (23.06, 0), "8192->512": (21.36, 0)},
    3: {"256->512": (47.27, 1), "2048->512": (43.39, 2), "4096->512": (42.97, 0), "8192->512": (35.69, 1)},
    4: {"256->512": (45.77, 2), "2048->512": (46.87, 2), "4096->512": (45.97, 0), "8192->512": (29.58, 6)},
}


def test_sweep_starts_at_mtp0_runs_every_expected_shape_and_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    from gh200.bench.client import Endpoint
    from gh200.bench.run import Outcome, Target
    from gh200.orchestrate import sweep as sweep_module
    from gh200.profiles import load_profile
    from gh200.profiles.schema import Profile

    deployed: list[int] = []
    measured: list[tuple[int, list[str]]] = []

    def fake_deploy(_client: object, profile: Profile, **_: object) -> None:
        spec = profile.settings.speculative
        deployed.append(0 if spec is None else spec.num_speculative_tokens)

    def fake_target(profile: Profile, _client: object) -> Target:
        return Target(Endpoint("http://x", "m", "vllm"), profile.name, {}, profile)

    def fake_run(target: Target, plans: list[SetPlan], **_: object) -> Outcome:
        tokens = deployed[-1]
        sets = []
        for plan in plans:
            median, sub60 = PART3[tokens][plan.label]
            s = RunSet(plan)
            accepted = [None if tokens == 0 else (50 if i < sub60 else 90) for i in range(11)]
            s.runs = [run_result(i, 100 / median, a) for i, a in enumerate(accepted)]
            sets.append(s)
        measured.append((tokens, [p.label for p in plans]))
        return Outcome(target, sets, None)

    monkeypatch.setattr(sweep_module, "deploy", fake_deploy)
    monkeypatch.setattr(sweep_module, "target_for_profile", fake_target)
    monkeypatch.setattr(sweep_module, "run", fake_run)
    monkeypatch.setattr(sweep_module, "save_plot", lambda result, path: path)
    profile = load_profile("glm52-awq-mtp3-bench")
    result = sweep_module.sweep(
        None, profile, [3, 4], show_progress=False, plot_path=Path("/nonexistent.png")
    )
    shapes = ["256->512", "2048->512", "4096->512", "8192->512"]
    assert measured == [(0, shapes), (3, shapes), (4, shapes)]
    assert deployed == [0, 3, 4, 3]  # the last deploy restores the profile as written
    assert result.chosen == 3 and "8192->512: 6 of 11 runs accepted under 60%" in result.reason
    verdicts = {(p.tokens, p.shape): p.verdict for p in result.points}
    assert verdicts[(3, "8192->512")] == "ok"
    assert "6 of 11 runs accepted under 60%" in verdicts[(4, "8192->512")]
    assert verdicts[(4, "4096->512")] == "depth stopped"
