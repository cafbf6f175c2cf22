"""Run sets: cold + warm, unique exact-length prompts, acceptance, failures that keep what was measured."""

from __future__ import annotations

import asyncio

import pytest
from bench_fakes import FakeServer, profile_with, run_result, run_set

from gh200.bench.client import Endpoint
from gh200.bench.run import Target, default_plans
from gh200.bench.smoke import RunSet, SetPlan, Smoke, gate, parse_shapes, plan_sets, summarise
from gh200.errors import BadInput
from gh200.profiles import load_profile
from gh200.profiles.schema import Expected


def _run(server: FakeServer, plans: list[SetPlan], **kwargs: object) -> list[RunSet]:
    endpoint = Endpoint("http://fake", server.model, server.kind, context=server.context)  # type: ignore[arg-type]
    smoke = Smoke(endpoint, plans, transport=server.transport(), **kwargs)  # type: ignore[arg-type]
    return asyncio.run(smoke.run())


def test_cold_plus_warm_runs_with_unique_exact_prompts() -> None:
    server = FakeServer()
    sets = _run(server, plan_sets([(48, 8)], [1, 3], warm=2, real_output=None))
    assert [len(s.runs) for s in sets] == [3, 3]
    assert all(s.complete for s in sets)
    assert [r.cold for r in sets[0].runs] == [True, False, False]
    prompts = [tuple(r["prompt"]) for r in server.requests]
    assert len(prompts) == 3 + 9
    assert all(len(p) == 48 for p in prompts)
    # Every request's prompt differs from the start: no shared prefix for a cache to reuse.
    assert len({p[:2] for p in prompts}) == len(prompts)
    first_set_seeds = [r["seed"] for r in server.requests[:3]]
    assert len(set(first_set_seeds)) == 3
    assert server.max_in_flight == 3  # concurrency 3 really ran three at once
    assert sets[1].runs[0].concurrency == 3 and len(sets[1].runs[0].requests) == 3


def test_run_figures_and_acceptance_from_timings_and_counters() -> None:
    sets = _run(FakeServer(draft_per_token=(3, 2)), plan_sets([(16, 40)], [2], warm=1, real_output=None))
    run = sets[0].runs[1]
    assert run.output_tokens == 80 and run.prompt_tokens == 32
    assert run.output_tok_s == pytest.approx(80 / run.wall_s)
    assert run.total_tok_s == pytest.approx(112 / run.wall_s)
    # 10 steps of (3 drafted, 2 accepted) per request, seen both in the responses and the counters.
    assert run.acceptance_from_responses == pytest.approx(2 / 3)
    assert run.acceptance_from_counters == pytest.approx(2 / 3)
    assert run.counters == {
        "draft_tokens": 60.0,
        "accepted_tokens": 40.0,
        "drafts": 20.0,
        "accepted_tokens_pos_0": 20.0,
        "accepted_tokens_pos_1": 20.0,
        "accepted_tokens_pos_2": 0.0,
    }
    assert run.acceptance_length == pytest.approx(1 + 40 / 20)
    # llama.cpp gives no histogram: positions come from the per-position counters over drafts.
    assert run.acceptance_by_position == pytest.approx([1.0, 1.0, 0.0])
    assert run.acceptance_source == "responses" and run.acceptance_disagreement == pytest.approx(0.0)


def test_vllm_acceptance_comes_from_counter_differences() -> None:
    sets = _run(
        FakeServer(kind="vllm", draft_per_token=(4, 1)), plan_sets([(16, 20)], [1], warm=0, real_output=None)
    )
    run = sets[0].runs[0]
    assert run.acceptance_from_responses is None
    assert run.acceptance == pytest.approx(0.25)


def test_real_prompts_cycle_through_the_fixed_set() -> None:
    server = FakeServer()
    sets = _run(server, plan_sets([], [1], warm=0, real_output=8, real_repeats=2))
    assert sets[0].plan.kind == "real" and len(sets[0].runs) == 8
    names = [r.prompt_names[0] for r in sets[0].runs if r.prompt_names]
    assert sorted(set(names)) == ["benchmark-design", "code-review", "summarisation", "systems-reasoning"]
    texts = [r["messages"][0]["content"] for r in server.requests]
    assert len(set(texts)) == 8  # the same prompt twice still differs by its leading tag


def test_failure_keeps_measured_runs_and_stops() -> None:
    # The 4th completion request (run index 3 of the first shape) drops after 3 tokens.
    server = FakeServer(drop_after=3, drop_on_request=4)
    sets = _run(server, plan_sets([(16, 10), (32, 10)], [1], warm=4, real_output=None))
    assert len(sets) == 1  # the second shape never started
    first = sets[0]
    assert len(first.runs) == 3 and not first.complete
    assert first.error_kind == "closed" and "after 3 of 10 tokens" in (first.error or "")
    assert first.summary().runs == 3


def test_cached_prefix_is_refused() -> None:
    sets = _run(FakeServer(cached_tokens=40), plan_sets([(64, 8)], [1], warm=0, real_output=None))
    assert sets[0].error_kind == "cached" and "reused 40 cached prompt tokens" in (sets[0].error or "")
    ok = _run(FakeServer(cached_tokens=3), plan_sets([(64, 8)], [1], warm=0, real_output=None))
    assert ok[0].complete


def test_summary_matches_the_posts_columns() -> None:
    # Eleven runs whose order statistics are the posts' AWQ + MTP-3 256->512 row.
    walls = [100 / t for t in (34.5, 47.0, 47.3, 50.0, 55.06, 36.35, 45.0, 48.0, 52.09, 47.27, 46.0)]
    accepted = [92, 95, 40, 91, 90, 93, 94, 55, 96, 92, 91]
    summary = summarise([run_result(i, w, a) for i, (w, a) in enumerate(zip(walls, accepted, strict=True))])
    assert summary.runs == 11
    tok = summary.output_tok_s
    assert tok is not None
    assert (tok.median, tok.min, tok.max) == pytest.approx((47.27, 34.5, 55.06))
    assert (tok.p10, tok.p90) == pytest.approx((36.35, 52.09))
    assert summary.sub60_runs == 2
    assert summary.acceptance is not None and summary.acceptance.median == pytest.approx(0.92)
    assert summary.acceptance_length is not None and summary.acceptance_length.median == pytest.approx(
        1 + 92 / 40
    )
    no_spec = summarise([run_result(0, 4.0, None)])
    assert no_spec.acceptance is None and no_spec.sub60_runs == 0


def test_gate_passes_within_tolerance_and_names_shape_and_metric() -> None:
    profile = profile_with(
        [
            Expected(shape="2048:512", metric="output_tok_s", value=43.39, source="post"),
            Expected(shape="2048:512", concurrency=4, metric="output_tok_s", value=54.92, source="post"),
            Expected(shape="2048:512", metric="tpot_ms", value=8.5, source="post"),
            Expected(shape="256:512", metric="output_tok_s", value=10, source="post"),
        ]
    )
    sets = [run_set((2048, 512), 1, [40.0, 40.0, 39.5]), run_set((2048, 512), 4, [45.0, 48.0, 47.0])]
    results = gate(profile, sets, tolerance=0.10)
    by = {(g.shape, g.concurrency, g.metric): g for g in results}
    assert by[("2048:512", 1, "output_tok_s")].passed  # 40.0 >= 43.39 * 0.9
    assert not by[("2048:512", 4, "output_tok_s")].passed  # 47 < 49.43
    assert "2048:512 c4 output_tok_s" in by[("2048:512", 4, "output_tok_s")].describe()
    assert not by[("2048:512", 1, "tpot_ms")].passed  # 10 ms > 8.5 * 1.1: lower is better
    missing = by[("256:512", 1, "output_tok_s")]
    assert not missing.passed and missing.measured is None and "not measured" in missing.describe()
    tight = gate(profile, sets, tolerance=0.05)
    assert not {(g.shape, g.concurrency, g.metric): g for g in tight}[("2048:512", 1, "output_tok_s")].passed


def test_gate_statistic_best_and_mean() -> None:
    profile = profile_with(
        [
            Expected(shape="256:512", metric="output_tok_s", statistic="best", value=20.31, source="p"),
            Expected(shape="256:512", metric="output_tok_s", statistic="mean", value=20.0, source="p"),
        ]
    )
    results = gate(profile, [run_set((256, 512), 1, [15.0, 16.0, 20.5])], tolerance=0.01)
    assert [g.passed for g in results] == [True, False]


def test_shapes_and_plans_reject_bad_input() -> None:
    assert parse_shapes(["2048:512", " 64:2 "]) == [(2048, 512), (64, 2)]
    for bad in ("2048", "a:b", "10:1", "0:5", "2048->512"):
        with pytest.raises(BadInput):
            parse_shapes([bad])
    with pytest.raises(BadInput):
        plan_sets([(1, 2)], [0], 1, None)
    with pytest.raises(BadInput):
        plan_sets([(1, 2)], [1], -1, None)
    plans = plan_sets([(8, 4)], [1, 2], 3, 64)
    assert [p.label for p in plans] == ["8->4", "2 x 8->4", "real prompts->64"]
    assert plans[-1].warm == 3  # four real prompts: the first is the cold run


def test_default_plans_use_expected_shapes_and_fit_the_context() -> None:
    profile = profile_with(
        [
            Expected(shape="1024:512", metric="output_tok_s", value=1, source="p"),
            Expected(shape="1024:512", concurrency=2, metric="output_tok_s", value=1, source="p"),
        ]
    )
    target = Target(Endpoint("http://x", "m", "llama_cpp", context=2048), "x", {}, profile)
    plans = default_plans(target, shapes=None, concurrencies=None, warm=2, real_output=None)
    assert [(p.shape, p.concurrency) for p in plans] == [("1024:512", 1), ("1024:512", 2)]
    # Without expected values the posts' four shapes apply, minus those that do not fit.
    bare = Target(Endpoint("http://x", "m", "llama_cpp", context=2048), "x", {}, load_profile("local-tiny"))
    plans = default_plans(bare, shapes=None, concurrencies=None, warm=1, real_output=None)
    assert [p.shape for p in plans] == ["256:512"]
    with pytest.raises(BadInput) as caught:
        default_plans(bare, shapes=["1900:300"], concurrencies=None, warm=1, real_output=None)
    assert "needs 2200 tokens of context" in caught.value.message


def test_a_fresh_server_gets_the_same_seeded_prompts_every_time() -> None:
    # Two measurements of freshly started servers with one seed send the very same prompts, so their
    # runs compare like for like; inside one measurement every request still differs from its start.
    plans = plan_sets([(48, 8)], [1, 2], warm=2, real_output=4, real_repeats=1)
    first, second, other_seed = FakeServer(), FakeServer(), FakeServer()
    _run(first, plans, fresh_server=True, seed=7)
    _run(second, plans, fresh_server=True, seed=7)
    _run(other_seed, plans, fresh_server=True, seed=8)

    def sent(server: FakeServer) -> list[object]:
        return [tuple(r["prompt"]) if "prompt" in r else r["messages"][0]["content"] for r in server.requests]

    assert sent(first) == sent(second)
    assert len(set(sent(first))) == len(sent(first))
    synthetic = [p for p in sent(first) if isinstance(p, tuple)]
    assert len({p[:2] for p in synthetic}) == len(synthetic)
    assert not set(sent(first)) & set(sent(other_seed))


def test_a_server_that_may_have_cached_earlier_prompts_gets_fresh_ones() -> None:
    plans = plan_sets([(48, 8)], [1], warm=1, real_output=None)
    first, second = FakeServer(), FakeServer()
    _run(first, plans, seed=7)
    _run(second, plans, seed=7)
    assert not {tuple(r["prompt"]) for r in first.requests} & {tuple(r["prompt"]) for r in second.requests}
