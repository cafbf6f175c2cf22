"""The bench-gate's bookkeeping: the known slowdown is exact, and every trial is the right pair."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gh200.baseline.bench_gate import (
    Deployment,
    main,
    noise,
    read_record,
    room_for_another_pair,
    slowed_runs,
    summarise,
    trials,
    write_record,
)


def runs(base: float, jitter: list[float]) -> list[dict[str, Any]]:
    out = [{"cold": True, "output_tok_s": base * 0.5, "tpot_ms": 2000 / base, "ttft_ms": 20.0}]
    for j in jitter:
        out.append(
            {"cold": False, "output_tok_s": base * j, "tpot_ms": 1000 / (base * j), "ttft_ms": 10.0 / j}
        )
    return out


JITTER = [0.99, 1.0, 1.01, 0.995, 1.005, 0.98, 1.02, 0.997, 1.003, 1.0]


def test_slowed_runs_decode_exactly_ten_percent_slower() -> None:
    original = runs(300.0, JITTER)
    slow = slowed_runs(original, 0.10)
    for a, b in zip(original, slow, strict=True):
        assert b["output_tok_s"] == pytest.approx(a["output_tok_s"] * 0.9)
        assert b["tpot_ms"] == pytest.approx(a["tpot_ms"] / 0.9)
        assert b["ttft_ms"] == a["ttft_ms"]  # a decode slowdown: detection must not ride on TTFT
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


def test_a_record_replays_to_the_same_rates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deployments = [
        Deployment("unchanged", i, runs(300.0 * (1 + 0.005 * i), JITTER), 1.0, load=2.5) for i in range(3)
    ]
    deployments += [Deployment("slowed", i, runs(240.0, JITTER), 1.0, load=3.5) for i in range(2)]
    record = tmp_path / "rec" / "gate.json"
    write_record(record, deployments, (64, 128), 10, 0.4)
    back, shape, warm, synth = read_record(record)
    assert (shape, warm, synth) == ("64:128", 10, 0.4)
    assert summarise(back, shape, synth) == summarise(deployments, shape, synth)
    assert main(["--replay", str(record)]) == 0
    out = capsys.readouterr().out
    assert "detection of a 10% slowdown: 6/6 = 100.0%" in out
    assert "false alarms on unchanged servers: 0/6 = 0.0%" in out
    assert "measured 20.4% slower" in out  # 240 against the unchanged median 301.5
    assert "load average (1 min) during the run: 2.5 min, 2.5 median, 3.5 max" in out


def test_a_file_that_is_not_a_record_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"deployments": [{"kind": "unchanged"}]}')
    assert main(["--replay", str(bad)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not a bench-gate record" in err


@pytest.mark.parametrize(
    ("spent", "pairs", "budget", "room"),
    [
        (0.0, 0, 1.0, True),  # the first pair always runs
        (500.0, 0, 1.0, True),
        (100.0, 2, 150.0, True),  # 50 s a pair: the third ends at 150 s, just inside
        (100.0, 2, 149.0, False),
        (300.0, 1, 1000.0, True),
        (600.0, 1, 1000.0, False),  # one more 600 s pair would end at 1200 s
    ],
)
def test_a_pair_starts_only_when_it_ends_within_the_budget(
    spent: float, pairs: int, budget: float, room: bool
) -> None:
    assert room_for_another_pair(spent, pairs, budget) is room


def test_noise_splits_within_and_between_deployments() -> None:
    # Identical runs inside each deployment, medians 300 and 330: all noise is between deployments.
    flat = [1.0] * 10
    deployments = [
        Deployment("unchanged", 0, runs(300.0, flat), 1.0),
        Deployment("unchanged", 1, runs(330.0, flat), 1.0),
    ]
    deployments.append(Deployment("slowed", 0, runs(100.0, JITTER), 1.0))  # not part of the unchanged noise
    found = noise(deployments, "output_tok_s")
    assert found["within_cv"] == 0.0
    assert found["between_cv"] == pytest.approx(21.213 / 315, abs=1e-4)


def test_native_argv_maps_mounts_to_host_paths_and_binds_loopback() -> None:
    from gh200.baseline.bench_gate import native_argv

    spec = {
        "command": ["llama-server", "-m", "/models/t/a.gguf", "--host", "0.0.0.0", "-md", "/models/t/b.gguf"],
        "volumes": {"/srv/cache/local--t": {"bind": "/models/t", "mode": "ro"}},
    }
    assert native_argv(spec) == [
        "-m",
        "/srv/cache/local--t/a.gguf",
        "--host",
        "127.0.0.1",
        "-md",
        "/srv/cache/local--t/b.gguf",
    ]
    # Only whole path components are mapped: /models/tx is not inside the /models/t mount.
    assert native_argv({**spec, "command": ["x", "/models/tx/c.gguf"]}) == ["/models/tx/c.gguf"]


def test_a_native_server_that_exits_is_a_failed_deployment_naming_its_log(tmp_path: Path) -> None:
    import sys

    from gh200.baseline.bench_gate import NativeServers
    from gh200.errors import OperationFailed
    from gh200.profiles import load_profile

    profile = load_profile("local-tiny")
    servers = NativeServers([sys.executable, "-c", "import sys; print('no model'); sys.exit(3)"], tmp_path)
    with pytest.raises(OperationFailed, match=r"exited with 3") as caught:
        servers.start(profile)
    assert str(tmp_path / "local-tiny.log") in caught.value.one_line()
    assert "no model" in (tmp_path / "local-tiny.log").read_text()
    servers.stop(profile)  # nothing left running: a no-op


def test_best_floor_is_the_smallest_that_keeps_false_alarms_in_target() -> None:
    from gh200.baseline.bench_gate import best_floor

    # Deployments 0%, 3%, 6%, 9% apart: any floor over the largest gap (9%) keeps false alarms at 0;
    # a floor at or under a gap between two deployments flags their slower-after-faster pairs.
    spread = [Deployment("unchanged", i, runs(300.0 * (1 + 0.03 * i), JITTER), 1.0) for i in range(4)]
    found = best_floor(spread, "64:128")
    assert found is not None
    assert found["false_alarms"] <= 0.05
    # The widest gap, 9% in TPOT (1.09 - 1), is flagged at any floor up to 9%: the smallest floor that
    # keeps it out is 10%. A 10% slowdown between deployments the same gap apart in the good direction
    # then moves TPOT by 1.11 / 1.09 - 1 < 10% and output tok/s likewise, so it is missed.
    assert found["floor"] == pytest.approx(0.10)
    assert found["detection"] < 1.0
    # Deployments within 0.5% of each other: the 1% floor already keeps false alarms at 0 and every
    # 10% slowdown is caught.
    tight = [Deployment("unchanged", i, runs(300.0 * (1 + 0.0025 * i), JITTER), 1.0) for i in range(3)]
    assert best_floor(tight, "64:128") == {"floor": 0.0, "false_alarms": 0.0, "detection": 1.0}
    assert best_floor([], "64:128") is None


def test_a_pinned_native_server_runs_on_the_profiles_cpus(tmp_path: Path) -> None:
    # --cpus becomes the profile's CPU placement; a container gets it as its cpuset, a native server
    # through taskset: the process itself reports the CPUs it may run on.
    import os
    import sys

    from gh200.baseline.bench_gate import NativeServers
    from gh200.errors import OperationFailed
    from gh200.profiles import load_profile
    from gh200.profiles.schema import CpuPlacement

    cpu = max(os.sched_getaffinity(0))
    base = load_profile("local-tiny")
    pinned = base.model_copy(
        update={
            "placement": base.placement.model_copy(update={"cpu": CpuPlacement(cpus=str(cpu), membind=False)})
        }
    )
    show = "import os, sys; print('cpus', sorted(os.sched_getaffinity(0))); sys.exit(3)"
    servers = NativeServers([sys.executable, "-c", show], tmp_path)
    with pytest.raises(OperationFailed, match=r"exited with 3"):
        servers.start(pinned)
    assert f"cpus [{cpu}]" in (tmp_path / "local-tiny.log").read_text()


def test_the_smallest_caught_slowdown_is_what_the_worst_pair_needs() -> None:
    from gh200.baseline.bench_gate import smallest_caught_slowdown

    # Deployments 0%, 3%, 6%, 9% apart, floor 10%: the hardest pair has the new deployment 9% faster,
    # so a slowdown S is flagged on it once its TPOT rises past the floor: 1 / (1.09 (1 - S)) >= 1.10,
    # S >= 16.6%. Every pair must be caught (95% of 12 pairs is all 12), so the answer is 17%.
    spread = [Deployment("unchanged", i, runs(300.0 * (1 + 0.03 * i), JITTER), 1.0) for i in range(4)]
    assert smallest_caught_slowdown(spread, "64:128", 0.10) == pytest.approx(0.17)
    assert smallest_caught_slowdown(spread, "64:128", 0.10, limit=0.16) is None
    # A floor of 0 on deployments 0.25% apart: the rank test decides. 1% on the pair whose new
    # deployment is 0.5% faster nets 0.5%, inside the runs' +-2% jitter, and is not significant; 2% is.
    tight = [Deployment("unchanged", i, runs(300.0 * (1 + 0.0025 * i), JITTER), 1.0) for i in range(3)]
    assert smallest_caught_slowdown(tight, "64:128", 0.0) == pytest.approx(0.02)
    assert smallest_caught_slowdown([], "64:128", 0.05) is None


def test_the_floor_line_ends_with_the_option_that_applies_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Deployments 3% apart need a 10% floor (see the test above): the line names the command for it.
    spread = [Deployment("unchanged", i, runs(300.0 * (1 + 0.03 * i), JITTER), 1.0) for i in range(4)]
    spread += [Deployment("slowed", i, runs(240.0, JITTER), 1.0) for i in range(2)]
    record = tmp_path / "gate.json"
    write_record(record, spread, (64, 128), 10, 0.4)
    assert main(["--replay", str(record)]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if "noise allows" in x]
    assert "here is 10%" in line
    assert line.endswith("pass --min-effect 0.10 to gh200 rollout on this host"), line
    # A floor of 0 is not one the option takes (0 < F < 1): the smallest step searched is named.
    from gh200.baseline.bench_gate import suggested_min_effect
    from gh200.baseline.gate import check_min_effect

    assert suggested_min_effect(0.0) == "0.01" and check_min_effect(suggested_min_effect(0.0)) == 0.01


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("--threads", "0", "--threads 0"),
        ("--threads", "-2", "--threads -2"),
        ("--cpus", "abc", "--cpus abc:"),
        ("--cpus", "3-1", "--cpus 3-1:"),
        ("--cpus", "", "--cpus :"),
    ],
)
def test_a_thread_count_under_one_or_a_cpu_list_that_is_not_one_is_refused_before_anything_runs(
    option: str, value: str, named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([option, value]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and named in err, err
