"""Reports in the posts' layout, results records, and the sweep's rule and plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_fakes import run_result, run_set

from gh200.bench import report
from gh200.bench.results import RECORD_VERSION, append_records, make_record, read_records
from gh200.bench.smoke import RunSet, SetPlan
from gh200.bench.sweep import Point, SweepResult, judge, parse_spec_tokens, save_plot, with_spec_tokens
from gh200.errors import BadInput
from gh200.profiles import load_profile, profile_hash

# The header of Part 3's sweep table, column for column.
POSTS_HEADER = (
    "| Profile | Shape | Runs | Median output tok/s | Min | Max | P10 | P90 | CV | Median TPOT "
    "| Median acceptance | Sub-60 acceptance runs |"
)


def test_markdown_uses_the_posts_columns_and_notation() -> None:
    sets = [run_set((2048, 512), 1, [40.0, 43.39, 45.0]), run_set((2048, 512), 4, [50.0, 54.92, 56.0])]
    text = report.markdown("AWQ + MTP-3", sets)
    lines = text.splitlines()
    assert lines[0] == POSTS_HEADER
    assert lines[1] == "|---|---|---|---|---|---|---|---|---|---|---|---|"
    assert lines[2].startswith("| AWQ + MTP-3 | 2048->512 | 3 | 43.39 | 40.00 | 45.00 |")
    assert lines[2].endswith("| 10.00 ms | 90.00% | 0 |")
    assert lines[3].startswith("| AWQ + MTP-3 | 4 x 2048->512 | 3 | 54.92 |")


def test_report_marks_unfinished_sets_and_missing_acceptance() -> None:
    unfinished = RunSet(SetPlan("synthetic", 256, 512, 1, 10))
    unfinished.runs = [run_result(0, 4.0, None), run_result(1, 4.0, None)]
    unfinished.error = "server closed the stream"
    row = report.rows("p", [unfinished])[0]
    assert row[2] == "2 of 11"
    assert row[-2] == "n/a" and row[-1] == "0"
    assert "Stopped at 256->512: server closed the stream" in report.markdown("p", [unfinished])
    assert report.rich_tables("p", [unfinished])[0].row_count == 1


def test_records_are_versioned_lines_appended(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "smoke.jsonl"
    s = run_set((128, 64), 1, [100.0, 110.0])
    context = {
        "profile": "local-tiny",
        "image": "localhost/gh200-llama_cpp:abc",
        "model_revision": "generated",
    }
    append_records(path, [make_record(s, context, "run1")])
    unfinished = RunSet(SetPlan("synthetic", 512, 128, 1, 3))
    unfinished.runs = [run_result(0, 1.0, 80)]
    unfinished.error, unfinished.error_kind = "timed out", "timeout"
    append_records(path, [make_record(unfinished, context, "run2")])
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line) for line in lines)
    records = read_records(path)
    assert [r["run_id"] for r in records] == ["run1", "run2"]
    first, second = records
    assert first["version"] == RECORD_VERSION and first["record"] == "gh200.smoke"
    assert first["profile"] == "local-tiny" and first["image"].startswith("localhost/")
    assert first["shape"] == "128:64" and first["complete"] is True and len(first["runs"]) == 2
    assert first["summary"]["output_tok_s"]["median"] == pytest.approx(105.0)
    assert set(first["host"]) >= {"hostname", "machine", "cpus"}
    assert second["complete"] is False and second["error_kind"] == "timeout" and len(second["runs"]) == 1
    # Lines of another version or kind are skipped, not misread.
    with open(path, "a") as handle:
        handle.write(json.dumps({"record": "gh200.smoke", "version": 99}) + "\nnot json\n")
    assert len(read_records(path)) == 2


def test_results_path_must_be_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(BadInput):
        append_records(blocker / "smoke.jsonl", [{"x": 1}])


def test_spec_tokens_syntax() -> None:
    assert parse_spec_tokens("1..") == list(range(1, 17))
    assert parse_spec_tokens("2..4") == [2, 3, 4]
    assert parse_spec_tokens("3,1,2") == [1, 2, 3]
    for bad in ("0..", "1..17", "x", "1-3", ""):
        with pytest.raises(BadInput):
            parse_spec_tokens(bad)


def _point(tokens: int, median: float, sub60: int = 0, runs: int = 11, shape: str = "2048->512") -> Point:
    return Point(tokens, shape, runs, median, median * 0.9, median * 1.1, 0.1, 0.8, sub60, 10.0)


def test_walk_stops_when_the_median_gets_worse_part2() -> None:
    # Part 2, Canada checkpoint: MTP1..4 = 152.7, 179.9, 193.0, 162.1 -> MTP3.
    points = [_point(1, 152.7), _point(2, 179.9), _point(3, 193.0), _point(4, 162.1)]
    decision = judge(points[:3])
    assert (decision.chosen, decision.stopped_at) == (3, None)
    decision = judge(points)
    assert decision.chosen == 3 and decision.stopped_at == 4 and "below 193.00" in decision.reason
    assert [p.verdict.startswith("median") for p in points] == [False, False, False, True]
    assert [p.verdict for p in points[:3]] == ["ok", "ok", "ok"]


def test_walk_stops_when_the_acceptance_tail_collapses_part3() -> None:
    # Part 3 at 8192->512: MTP-4 had 6 of 11 runs under 60% acceptance; even a better median
    # would not save it.
    points = [_point(3, 35.69, sub60=1), _point(4, 36.0, sub60=6)]
    decision = judge(points)
    assert decision.chosen == 3 and "6 of 11 runs accepted under 60%" in decision.reason
    assert points[1].verdict == "6 of 11 runs accepted under 60%"
    # Two sub-60 runs of eleven (MTP-3 at 2048->512) is noise, not collapse.
    decision = judge([_point(3, 43.39, sub60=2)])
    assert (decision.chosen, decision.stopped_at) == (3, None)


def test_variant_profile_changes_only_the_speculative_tokens() -> None:
    profile = load_profile("glm52-awq-mtp3")
    variant = with_spec_tokens(profile, 4)
    assert (
        variant.settings.speculative is not None and variant.settings.speculative.num_speculative_tokens == 4
    )
    assert variant.settings.speculative.method == "mtp"
    assert profile_hash(variant) != profile_hash(profile)
    assert variant.model_copy(update={"settings": profile.settings}) == profile
    with pytest.raises(BadInput):
        with_spec_tokens(load_profile("glm52-awq"), 2)
    # MTP-0, the sweep's baseline, is the profile without speculative decoding.
    baseline = with_spec_tokens(profile, 0)
    assert baseline.settings.speculative is None
    assert baseline.model_copy(update={"settings": profile.settings}) == profile


def test_plot_is_a_png_written_atomically(tmp_path: Path) -> None:
    points = [
        _point(t, m, shape=shape) for shape in ("2048->512", "8192->512") for t, m in ((0, 20.0), (1, 25.0))
    ]
    result = SweepResult("p", ["2048->512", "8192->512"], points=points, chosen=1)
    out = save_plot(result, tmp_path / "plots" / "sweep.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["sweep.png"]
