"""What a run set's record says, key by key: the results file and `--json` are read back by the report,
`gh200 sweep decide` and scripts, so a renamed key, a lost figure or a changed rounding is a format break.
"""

from __future__ import annotations

from typing import Any

import pytest
from bench_fakes import profile_with, run_set

from gh200.bench.client import RequestResult
from gh200.bench.smoke import GateResult, RunResult, gate, summarise
from gh200.bench.stats import describe
from gh200.profiles.schema import Expected


def _request(
    prompt: int,
    out: int,
    *,
    cached: int,
    ttft: float,
    tpot: float,
    itl: float,
    server_tpot: float,
    drafted: int,
    accepted: int,
    steps: int,
    histogram: list[int],
) -> RequestResult:
    return RequestResult(
        prompt_tokens_asked=prompt,
        output_tokens_asked=out,
        prompt_tokens=prompt,
        completion_tokens=out,
        cached_tokens=cached,
        ttft_s=ttft,
        e2e_s=1.0,
        tpot_ms=tpot,
        itl_ms_median=itl,
        itl_ms_p90=itl,
        itl_ms_max=itl,
        chunks=out,
        finish_reason="length",
        draft_tokens=drafted,
        accepted_tokens=accepted,
        server_tpot_ms=server_tpot,
        spec_steps=steps,
        acceptance_histogram=histogram,
    )


COUNTERS = {"draft_tokens": 30.0, "accepted_tokens": 10.0, "drafts": 7.0, "accepted_tokens_pos_0": 5.0}


def _run(index: int = 0) -> RunResult:
    # Figures chosen so that every derived value has more than six decimals before rounding.
    return RunResult(
        index=index,
        cold=index == 0,
        concurrency=2,
        wall_s=7.0,
        requests=[
            _request(
                10,
                7,
                cached=1,
                ttft=0.3,
                tpot=10 / 3,
                itl=1 / 3,
                server_tpot=2 / 3,
                drafted=9,
                accepted=7,
                steps=3,
                histogram=[0, 1, 2],
            ),
            _request(
                20,
                11,
                cached=2,
                ttft=0.7,
                tpot=10 / 7,
                itl=1 / 7,
                server_tpot=1 / 7,
                drafted=6,
                accepted=2,
                steps=3,
                histogram=[1, 2],
            ),
        ],
        counters=dict(COUNTERS),
        prompt_names=["a", "b"],
    )


def test_a_run_record_names_every_figure_rounded_to_six_places() -> None:
    run = _run()
    record = run.as_json()
    assert record.pop("requests") == [q.as_json() for q in run.requests]
    assert record == {
        "index": 0,
        "cold": True,
        "concurrency": 2,
        "wall_s": 7.0,
        "output_tokens": 18,
        "prompt_tokens": 30,
        "output_tok_s": 2.571429,  # 18 / 7
        "total_tok_s": 6.857143,  # 48 / 7
        "prompt_tok_s": 42.857143,  # 30 prompt tokens by the last first token at 0.7 s
        "ttft_ms": 500.0,
        "tpot_ms": 2.380952,  # mean of 10/3 and 10/7
        "decode_tok_s": 1000.0,  # 300 + 700
        "itl_ms": 0.238095,  # median of 1/3 and 1/7
        "server_tpot_ms": 0.404762,
        "cached_tokens": 3,
        "acceptance": 0.6,  # the responses' 9 of 15, not the counters' 10 of 30
        "acceptance_from_responses": 0.6,
        "acceptance_from_counters": 0.333333,
        "acceptance_source": "responses",
        "acceptance_disagreement": 0.266667,
        "acceptance_histogram": [1, 3, 2],
        "acceptance_by_position": [0.833333, 0.333333],
        "acceptance_length": 2.5,  # 1 + 9 accepted over 6 verify steps
        "counters": COUNTERS,
        "prompt_names": ["a", "b"],
    }


def test_a_run_without_speculative_figures_records_none_not_empty() -> None:
    bare = RunResult(
        0, True, 1, 2.0, [RequestResult(4, 8, 4, 8, None, 0.5, 1.0, None, None, None, None, 8, "length")]
    )
    record = bare.as_json()
    for key in (
        "tpot_ms", "decode_tok_s", "itl_ms", "server_tpot_ms", "cached_tokens", "acceptance",
        "acceptance_from_responses", "acceptance_from_counters", "acceptance_source",
        "acceptance_disagreement", "acceptance_histogram", "acceptance_by_position", "acceptance_length",
        "counters", "prompt_names",
    ):  # fmt: skip
        assert record[key] is None, key
    assert (record["output_tok_s"], record["prompt_tok_s"]) == (4.0, 8.0)


def test_a_summary_record_rounds_and_keeps_every_column() -> None:
    first, second = _run(0), _run(1)
    second.counters = {"draft_tokens": 30.0, "accepted_tokens": 3.0, "drafts": 7.0}
    summary = summarise([first, second])
    record = summary.as_json()
    assert record["runs"] == 2 and record["sub60_runs"] == 0
    stats_of: dict[str, Any] = {
        "output_tok_s": [18 / 7] * 2,
        "total_tok_s": [48 / 7] * 2,
        "prompt_tok_s": [30 / 0.7] * 2,
        "ttft_ms": [500.0] * 2,
        "tpot_ms": [(10 / 3 + 10 / 7) / 2] * 2,
        "decode_tok_s": [1000.0] * 2,
        "itl_ms": [(1 / 3 + 1 / 7) / 2] * 2,
        "acceptance": [0.6] * 2,
        "acceptance_length": [2.5] * 2,
    }
    for key, values in stats_of.items():
        expected = describe(values)
        assert expected is not None
        assert record[key] == pytest.approx(expected.as_json()), key
    assert record["acceptance_sources"] == ["responses"]
    assert record["acceptance_max_disagreement"] == 0.5  # |0.6 - 3/30| beats |0.6 - 1/3|
    assert record["acceptance_by_position"] == [0.833333, 0.333333]
    assert record["acceptance_histogram"] == [2, 6, 4]
    assert sorted(record) == sorted(["runs", "sub60_runs", *stats_of, "acceptance_sources",
        "acceptance_max_disagreement", "acceptance_by_position", "acceptance_histogram"])  # fmt: skip


def test_a_summary_record_without_speculative_figures() -> None:
    bare = RunResult(
        0, True, 1, 2.0, [RequestResult(4, 8, 4, 8, None, 0.5, 1.0, None, None, None, None, 8, "length")]
    )
    record = summarise([bare]).as_json()
    assert record["acceptance"] is None and record["tpot_ms"] is None
    assert record["acceptance_sources"] == []
    assert record["acceptance_max_disagreement"] is None
    assert record["acceptance_by_position"] is None and record["acceptance_histogram"] is None
    assert summarise([bare]).acceptance_by_position is None and summarise([bare]).acceptance_histogram is None


def test_the_max_disagreement_is_rounded() -> None:
    run = _run()
    run.counters = {"draft_tokens": 7.0, "accepted_tokens": 1.0, "drafts": 7.0}
    assert summarise([run]).as_json()["acceptance_max_disagreement"] == 0.457143  # 0.6 - 1/7


def test_runs_of_different_widths_summarise_position_by_position() -> None:
    # A run with fewer draft positions (or a shorter histogram) counts only where it has a figure.
    wide, narrow = _run(0), _run(1)
    narrow.requests = [
        _request(
            10,
            7,
            cached=1,
            ttft=0.3,
            tpot=10 / 3,
            itl=1 / 3,
            server_tpot=2 / 3,
            drafted=9,
            accepted=7,
            steps=3,
            histogram=[4],
        )
    ]
    summary = summarise([wide, narrow])
    assert summary.acceptance_histogram == [1 + 4, 3, 2]
    assert wide.acceptance_by_position == pytest.approx([5 / 6, 2 / 6])
    assert narrow.acceptance_by_position == []  # one position-less histogram: no draft position
    three = _run(2)
    three.requests = [
        _request(
            10,
            7,
            cached=1,
            ttft=0.3,
            tpot=10 / 3,
            itl=1 / 3,
            server_tpot=2 / 3,
            drafted=9,
            accepted=7,
            steps=3,
            histogram=[0, 0, 1, 1],
        )
    ]
    assert three.acceptance_by_position == pytest.approx([1.0, 1.0, 0.5])
    summary = summarise([wide, three])
    assert summary.acceptance_by_position == pytest.approx([(5 / 6 + 1.0) / 2, (2 / 6 + 1.0) / 2, 0.5])


def test_best_is_the_fastest_time_and_the_highest_rate() -> None:
    slow = RunResult(
        2, False, 1, 1.0, [RequestResult(4, 8, 4, 8, None, 0.5, 1.0, 50.0, None, None, None, 8, "length")]
    )
    summary = summarise([_run(0), slow])
    assert summary.metric("tpot_ms", "best") == pytest.approx((10 / 3 + 10 / 7) / 2)
    assert summary.metric("tpot_ms", "best") != summary.metric("tpot_ms", "median")
    assert summary.metric("output_tok_s", "best") == pytest.approx(8.0)


# --- gate results --------------------------------------------------------------------------------


def test_a_gate_record_and_line() -> None:
    profile = profile_with(
        [
            Expected(
                shape="2048:512", metric="output_tok_s", value=40.0, source="part 3, table 2", tolerance=0.2
            ),
            Expected(
                shape="2048:512", metric="output_tok_s", statistic="warm_median", value=30.0, source="p"
            ),
            Expected(shape="256:512", metric="output_tok_s", value=10.0, source="p2"),
        ]
    )
    results = gate(profile, [run_set((2048, 512), 1, [10.0, 33.333333333, 34.0])], tolerance=0.10)
    first, warm, missing = results
    assert first.as_json() == {
        "shape": "2048:512",
        "concurrency": 1,
        "metric": "output_tok_s",
        "statistic": "median",
        "expected": 40.0,
        "measured": 33.3333,
        "tolerance": 0.2,  # the expectation's own tolerance beats the gate's default
        "passed": True,  # 33.33 >= 40 * 0.8
        "source": "part 3, table 2",
        "warm_only": False,
    }
    assert first.describe() == "2048:512 c1 output_tok_s: median 33.33, expected 40 (tolerance 20%)"
    assert warm.as_json()["warm_only"] is True and warm.as_json()["statistic"] == "warm_median"
    assert warm.measured == pytest.approx((33.333333333 + 34.0) / 2)  # the cold 10.0 left out
    assert missing.as_json() == {
        "shape": "256:512",
        "concurrency": 1,
        "metric": "output_tok_s",
        "statistic": "median",
        "expected": 10.0,
        "measured": None,
        "tolerance": 0.1,
        "passed": False,
        "source": "p2",
        "warm_only": False,
    }
    assert missing.passed is False
    assert missing.describe() == "256:512 c1 output_tok_s: median not measured, expected 10 (tolerance 10%)"
    assert isinstance(first, GateResult)


def test_warm_mean_and_warm_best_leave_the_cold_run_out() -> None:
    sets = [run_set((2048, 512), 1, [50.0, 10.0, 20.0])]  # cold run fastest: it must not count

    def measured(statistic: str) -> float | None:
        expected = Expected(
            shape="2048:512", metric="output_tok_s", statistic=statistic, value=1.0, source="p"
        )  # type: ignore[arg-type]
        return gate(profile_with([expected]), sets)[0].measured

    assert measured("warm_mean") == pytest.approx(15.0)
    assert measured("warm_best") == pytest.approx(20.0)
    assert measured("warm_median") == pytest.approx(15.0)
    assert measured("best") == pytest.approx(50.0)
    assert measured("mean") == pytest.approx(80.0 / 3)


def test_exactly_on_the_tolerance_edge_passes_both_ways() -> None:
    # 10 tok/s against 20 at 50%: exactly the floor. 30 ms against 20 ms at 50%: exactly the ceiling.
    rate = Expected(shape="2048:512", metric="output_tok_s", value=20.0, source="p", tolerance=0.5)
    assert gate(profile_with([rate]), [run_set((2048, 512), 1, [10.0, 10.0])])[0].passed
    assert not gate(profile_with([rate]), [run_set((2048, 512), 1, [9.99, 9.99])])[0].passed
    tpot = Expected(shape="2048:512", metric="tpot_ms", value=20.0, source="p", tolerance=0.5)
    runs = run_set((2048, 512), 1, [10.0, 10.0])
    for r in runs.runs:
        r.requests = [_tpot(30.0)]
    assert gate(profile_with([tpot]), [runs])[0].passed
    for r in runs.runs:
        r.requests = [_tpot(30.01)]
    assert not gate(profile_with([tpot]), [runs])[0].passed


def _tpot(ms: float) -> RequestResult:
    return RequestResult(10, 100, 10, 100, 0, 0.1, 1.0, ms, ms, ms, ms, 100, "length")
