"""The smoke benchmark against the real llama-server: timing agrees with the server's own clock,
acceptance with its counters, the sub-60 count with synthetic acceptance; faults keep what was measured."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from deploy_testlib import variant

from gh200.bench import run as bench_run
from gh200.bench.client import Endpoint, probe
from gh200.bench.run import raise_for_outcome, target_for_profile
from gh200.bench.smoke import RunResult, RunSet, SetPlan, Smoke, SmokeFailed
from gh200.profiles.schema import Profile
from gh200.served import base_url

pytestmark = pytest.mark.engine


def _endpoint(profile: Profile, context: bool = True) -> Endpoint:
    endpoint = asyncio.run(probe(base_url(profile), model=profile.model.served_name))
    return endpoint if context else Endpoint(endpoint.url, endpoint.model, endpoint.kind)


def _smoke(endpoint: Endpoint, plans: list[SetPlan], **kwargs: Any) -> list[RunSet]:
    return asyncio.run(Smoke(endpoint, plans, **kwargs).run())


def test_client_tpot_agrees_with_the_server_at_concurrency_1(tiny_server: Profile) -> None:
    # 1024 tokens (about a second here): the tiny model decodes a token in ~1 ms, so a short
    # output would let one scheduling hiccup on a loaded 2-core machine decide the ratio.
    (run_set,) = _smoke(_endpoint(tiny_server), [SetPlan("synthetic", 128, 1024, 1, 3)])
    assert run_set.complete, run_set.error
    for run in run_set.runs:
        (request,) = run.requests
        assert request.server_tpot_ms is not None and request.tpot_ms is not None
        ratio = request.tpot_ms / request.server_tpot_ms
        assert 0.9 <= ratio <= 1.1, (
            f"run {run.index}: client {request.tpot_ms:.3f} ms, server {request.server_tpot_ms:.3f} ms"
        )
        assert request.completion_tokens == 1024 and request.prompt_tokens == 128


def test_acceptance_matches_the_server_counters(tiny_server: Profile) -> None:
    sets = _smoke(
        _endpoint(tiny_server), [SetPlan("synthetic", 64, 64, 1, 2), SetPlan("synthetic", 64, 64, 3, 1)]
    )
    for run_set in sets:
        assert run_set.complete, run_set.error
        for run in run_set.runs:
            drafted = sum(r.draft_tokens or 0 for r in run.requests)
            accepted = sum(r.accepted_tokens or 0 for r in run.requests)
            assert run.counters is not None
            assert run.counters["draft_tokens"] == drafted > 0
            assert run.counters["accepted_tokens"] == accepted
            assert run.acceptance_from_responses == pytest.approx(run.acceptance_from_counters)
            # A real draft model: it agrees with the target often, not always.
            assert run.acceptance is not None and 0.0 < run.acceptance < 1.0
            assert run.acceptance_length is not None and 1.0 < run.acceptance_length <= 4.0
            # Every prompt was unique: the server's prefix cache reused (almost) nothing.
            assert all((r.cached_tokens or 0) <= 8 for r in run.requests)


def test_sub60_count_with_synthetic_acceptance(deployed: Callable[..., Profile]) -> None:
    # Rates 0.6,0.6,0.6: the whole draft is accepted with probability 0.6, else none of it, so
    # short runs land on both sides of 60%. Seeds are fixed, so the outcome is too.
    profile = deployed("synth", settings={"extra_args": ["--spec-synth-rates", "0.6,0.6,0.6"]})
    (run_set,) = _smoke(_endpoint(profile), [SetPlan("synthetic", 32, 24, 1, 11)], seed=11)
    assert run_set.complete, run_set.error
    by_server = [run.acceptance_from_counters for run in run_set.runs]
    assert all(a is not None for a in by_server)
    expected = sum(1 for a in by_server if a is not None and a < 0.6)
    summary = run_set.summary()
    assert summary.sub60_runs == expected
    assert 0 < expected < summary.runs, f"server acceptances {by_server}"


def test_output_shorter_than_asked_keeps_measured_runs(tiny_server: Profile) -> None:
    # 1900 + 300 tokens do not fit the 2048-token slot: the server stops at its context limit.
    sets = _smoke(
        _endpoint(tiny_server, context=False),
        [SetPlan("synthetic", 64, 16, 1, 1), SetPlan("synthetic", 1900, 300, 1, 1)],
    )
    assert sets[0].complete and len(sets[0].runs) == 2
    assert sets[1].error_kind == "short" and not sets[1].runs
    assert "output tokens where 300 were asked" in (sets[1].error or "")


def test_request_timeout_keeps_measured_runs(tiny_server: Profile, tmp_path: Path) -> None:
    target = target_for_profile(tiny_server)
    results = tmp_path / "results.jsonl"
    plans = [SetPlan("synthetic", 32, 8, 1, 1), SetPlan("synthetic", 64, 1800, 1, 1)]
    outcome = bench_run.run(target, plans, results_path=results, show_progress=False, timeout_s=1.5)
    assert outcome.sets[0].complete
    assert outcome.sets[1].error_kind == "timeout"
    with pytest.raises(SmokeFailed) as caught:
        raise_for_outcome(outcome)
    assert "timed out after 1.5s" in caught.value.message and "2 measured runs kept" in caught.value.message
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["complete"] for r in records] == [True, False]
    assert records[0]["profile"] == tiny_server.name and records[0]["image"].startswith(
        "localhost/gh200-llama_cpp:"
    )
    assert records[0]["model_revision"] and len(records[0]["runs"]) == 2


def test_server_dies_mid_run(engine: Any, deployed: Callable[..., Profile]) -> None:
    from gh200.deploy.deploy import gh200_containers

    profile = deployed("dies")
    (container,) = gh200_containers(engine, profile=profile.name)
    killer: list[threading.Timer] = []

    def on_run(run_set: RunSet, run: RunResult | None) -> None:
        if run is not None and run_set.plan.output_tokens == 8 and not killer:
            # The long set's first request is mid-stream when the server is killed.
            killer.append(threading.Timer(0.3, container.kill))
            killer[0].start()

    plans = [SetPlan("synthetic", 32, 8, 1, 0), SetPlan("synthetic", 32, 1500, 1, 2)]
    sets = asyncio.run(Smoke(_endpoint(profile), plans, on_run=on_run).run())
    killer[0].join()
    assert sets[0].complete and len(sets[0].runs) == 1
    assert not sets[1].runs and not sets[1].complete
    assert sets[1].error_kind in ("closed", "connect"), sets[1].error
    assert str(profile.port) in (sets[1].error or "")


def test_real_prompts_run_through_chat(tiny_server: Profile) -> None:
    (run_set,) = _smoke(_endpoint(tiny_server), [SetPlan("real", None, 32, 1, 3)])
    assert run_set.complete, run_set.error
    assert {r.prompt_names[0] for r in run_set.runs if r.prompt_names} == {
        "code-review",
        "systems-reasoning",
        "summarisation",
        "benchmark-design",
    }
    assert all(r.requests[0].completion_tokens == 32 for r in run_set.runs)


def test_sweep_walks_redeploys_and_restores(engine: Any, prepared: str, tmp_path: Path) -> None:
    from gh200.deploy.deploy import gh200_containers, stop
    from gh200.orchestrate.sweep import sweep
    from gh200.profiles import profile_hash

    profile = variant("sweep")
    try:
        result = sweep(
            engine,
            profile,
            [1, 2, 3],
            plans=[SetPlan("synthetic", 32, 48, 1, 2), SetPlan("synthetic", 64, 32, 1, 2)],
            results_path=tmp_path / "r.jsonl",
            plot_path=tmp_path / "sweep.png",
            show_progress=False,
        )
        depths = sorted({p.tokens for p in result.points})
        assert depths[0] == 0 and depths == [0, 1, 2, 3][: len(depths)] and len(depths) >= 2
        # Every depth ran every shape; MTP-0 ran without a draft model.
        assert [(p.tokens, p.shape) for p in result.points] == [
            (t, s) for t in depths for s in ("32->48", "64->32")
        ]
        assert all(p.acceptance is None for p in result.points if p.tokens == 0)
        assert all(p.acceptance is not None for p in result.points if p.tokens > 0)
        assert result.chosen in depths and result.reason
        assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
        (container,) = [c for c in gh200_containers(engine, profile=profile.name) if c.status == "running"]
        assert container.labels["io.gh200.profile-hash"] == profile_hash(profile)  # restored as written
        records = [json.loads(r) for r in (tmp_path / "r.jsonl").read_text().splitlines()]
        assert len(records) == len(result.points)
        assert [(r["speculative"] or {}).get("num_speculative_tokens", 0) for r in records] == [
            p.tokens for p in result.points
        ]
    finally:
        stop(engine, profile.name)


def test_records_carry_server_version_and_launch_args(tiny_server: Profile, tmp_path: Path) -> None:
    target = target_for_profile(tiny_server)
    assert target.endpoint.server_version  # llama-server's /props build_info
    args = target.context["launch_args"]
    assert args and any(a.endswith(".gguf") for a in args), args
    results = tmp_path / "r.jsonl"
    bench_run.run(target, [SetPlan("synthetic", 16, 8, 1, 0)], results_path=results, show_progress=False)
    (record,) = [json.loads(line) for line in results.read_text().splitlines()]
    assert record["server_version"] == target.endpoint.server_version
    assert record["launch_args"] == args and record["prompt_mode"] == "words"


def test_random_token_prompts_against_the_real_server(tiny_server: Profile) -> None:
    endpoint = _endpoint(tiny_server)
    assert endpoint.vocab_size is not None and endpoint.vocab_size > 1000  # meta.n_vocab of the model
    plans = [SetPlan("synthetic", 96, 24, 2, 1)]
    (run_set,) = asyncio.run(Smoke(endpoint, plans, prompt_mode="random").run())
    assert run_set.complete, run_set.error
    for run in run_set.runs:
        # The server counted exactly the ids sent (the client checks it too) and drafted on them.
        assert all(r.prompt_tokens == 96 and r.completion_tokens == 24 for r in run.requests)
        assert run.acceptance is not None and run.acceptance_source == "responses"
        assert run.decode_tok_s is not None and run.decode_tok_s > run.output_tok_s


def test_cli_unknown_model_names_the_served_ones(
    tiny_server: Profile, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from gh200.cli import main

    url = base_url(tiny_server)
    monkeypatch.setattr(sys, "argv", ["gh200", "smoke", "--url", url, "--model", "nope", "--no-results"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main()
    err = capsys.readouterr().err
    assert done.value.code == 2, err
    assert "not 'nope'" in err and f"one it lists: {tiny_server.model.served_name}" in err
    assert "deploy the profile" not in err


def test_demo_end_to_end(engine: Any, prepared: str) -> None:
    """`gh200 demo` (what `make demo` runs): the real local-tiny profile, deployed and benchmarked."""
    from gh200.bench import report
    from gh200.deploy.deploy import is_running, stop
    from gh200.orchestrate.demo import DEMO_PROFILE, demo

    was_running = is_running(engine, DEMO_PROFILE)
    try:
        result = demo(show_progress=False, warm=1)
        outcome = result.outcome
        assert outcome.failed_set is None
        labels = [s.plan.label for s in outcome.sets]
        assert labels == ["128->64", "4 x 128->64", "512->128", "4 x 512->128", "real prompts->64"]
        assert all(s.complete for s in outcome.sets)
        assert result.steps["image"]["tag"] == prepared
        assert result.steps["model"]["directory"].endswith("local--tiny-llama-spm")
        table = report.markdown(DEMO_PROFILE, outcome.sets).splitlines()
        assert table[2].startswith("| local-tiny | 128->64 | 2 |")
        assert all(s.summary().acceptance is not None for s in outcome.sets)
    finally:
        if not was_running:
            stop(engine, DEMO_PROFILE)
