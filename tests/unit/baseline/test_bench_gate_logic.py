"""The bench-gate's bookkeeping: the known slowdown is exact, and every trial is the right pair."""

from __future__ import annotations

from typing import Any

import pytest

from gh200.baseline.bench_gate import Deployment, slowed_runs, summarise, trials


def runs(base: float, jitter: list[float]) -> list[dict[str, Any]]:
    out = [{"cold": True, "output_tok_s": base * 0.5, "tpot_ms": 2000 / base, "ttft_ms": 20.0}]
    for j in jitter:
        out.append(
            {"cold": False, "output_tok_s": base * j, "tpot_ms": 1000 / (base * j), "ttft_ms": 10.0 / j}
        )
    return out


JITTER = [0.99, 1.0, 1.01, 0.995, 1.005, 0.98, 1.02, 0.997, 1.003, 1.0]


def test_slowed_runs_are_exactly_ten_percent_slower() -> None:
    original = runs(300.0, JITTER)
    slow = slowed_runs(original, 0.10)
    for a, b in zip(original, slow, strict=True):
        assert b["output_tok_s"] == pytest.approx(a["output_tok_s"] * 0.9)
        assert b["tpot_ms"] == pytest.approx(a["tpot_ms"] / 0.9)
        assert b["ttft_ms"] == pytest.approx(a["ttft_ms"] / 0.9)
        assert b["cold"] == a["cold"]
    assert original[1]["output_tok_s"] == pytest.approx(297.0)  # the input is left alone


def test_trials_pair_distinct_deployments_and_count_what_the_gate_flags() -> None:
    # Three unchanged deployments within 1% of each other, two slowed by 20%.
    deployments = [Deployment("unchanged", i, runs(300.0 * (1 + 0.005 * i), JITTER), 1.0) for i in range(3)]
    deployments += [Deployment("slowed", i, runs(240.0, JITTER), 1.0) for i in range(2)]
    deployments.append(Deployment("unchanged", 9, [], 1.0, error="connect"))  # failed: left out
    found = trials(deployments, "64:128")
    assert len(found["false_alarm"].verdicts) == 6  # 3 x 2 ordered pairs, never a deployment with itself
    assert len(found["known_10pct"].verdicts) == 6
    assert len(found["real_slowdown"].verdicts) == 6
    assert found["false_alarm"].flagged == 0
    assert found["known_10pct"].flagged == 6
    assert found["real_slowdown"].flagged == 6
    summary = summarise(deployments, "64:128", 0.4)
    assert summary["met"] is True
    assert summary["real_slowdown_measured"] == pytest.approx(0.2, abs=0.01)
    assert summary["errors"] == ["connect"]
