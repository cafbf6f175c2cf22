"""Per-request acceptance (vLLM's metrics.speculative_decoding) before server-wide counters, decode
rate and warm-only gates, and what a record says about the server."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from bench_fakes import FakeServer, profile_with, request_result

from gh200.bench.client import BenchClient, Endpoint, RequestResult, probe
from gh200.bench.run import launch_args
from gh200.bench.smoke import RunResult, RunSet, SetPlan, Smoke, gate, plan_sets
from gh200.errors import BadInput
from gh200.profiles import load_profile
from gh200.profiles.schema import Expected


def _run(server: FakeServer, plans: list[SetPlan]) -> list[RunSet]:
    endpoint = Endpoint("http://fake", server.model, server.kind, context=server.context)  # type: ignore[arg-type]
    return asyncio.run(Smoke(endpoint, plans, transport=server.transport()).run())


def test_vllm_per_request_metrics_win_over_polluted_counters() -> None:
    # Another client's traffic moves the server-wide counters by 50 accepted / 50 drafted per read.
    server = FakeServer(kind="vllm", spec_metrics=True, draft_per_token=(4, 1), counter_noise=50.0)
    (run_set,) = _run(server, plan_sets([(16, 40)], [2], warm=1, real_output=None))
    run = run_set.runs[1]
    assert run.acceptance_from_responses == pytest.approx(0.25)  # 10 steps x (4 drafted, 1 accepted) x 2
    assert run.acceptance_from_counters == pytest.approx((20 + 50) / (80 + 50))
    assert run.acceptance == pytest.approx(0.25) and run.acceptance_source == "responses"
    assert run.acceptance_disagreement == pytest.approx(abs(0.25 - 70 / 130))
    assert run.acceptance_histogram == [0, 20, 0, 0, 0]  # 20 verify steps, each accepted one draft
    assert run.acceptance_by_position == pytest.approx([1.0, 0.0, 0.0, 0.0])
    assert run.acceptance_length == pytest.approx(2.0)
    summary = run_set.summary()
    assert summary.acceptance_sources == ["responses"]
    assert summary.acceptance_max_disagreement == pytest.approx(abs(0.25 - 70 / 130))
    assert summary.acceptance_histogram == [0, 40, 0, 0, 0]
    assert summary.as_json()["acceptance_by_position"] == [1.0, 0.0, 0.0, 0.0]


def test_counters_are_the_fallback_without_per_request_metrics() -> None:
    server = FakeServer(kind="vllm", draft_per_token=(4, 1), counter_noise=50.0)
    (run_set,) = _run(server, plan_sets([(16, 40)], [1], warm=0, real_output=None))
    run = run_set.runs[0]
    assert run.acceptance_from_responses is None and run.acceptance_disagreement is None
    assert run.acceptance == pytest.approx((10 + 50) / (40 + 50)) and run.acceptance_source == "counters"
    assert run.acceptance_by_position == pytest.approx([1.0, 0.0, 0.0, 0.0])  # from the per-position counters


def test_responses_count_only_when_every_response_has_them() -> None:
    # One response without figures: a partial sum would misstate the run, so the counters decide.
    with_figures = request_result(10.0)
    with_figures.draft_tokens, with_figures.accepted_tokens = 100, 90
    without = request_result(10.0)
    run = RunResult(
        0, True, 2, 1.0, [with_figures, without], {"draft_tokens": 200.0, "accepted_tokens": 100.0}
    )
    assert run.acceptance_from_responses is None
    assert run.acceptance == pytest.approx(0.5) and run.acceptance_source == "counters"


def _chat(server: FakeServer) -> RequestResult:
    endpoint = Endpoint("http://fake", server.model, server.kind)  # type: ignore[arg-type]

    async def go() -> RequestResult:
        async with BenchClient(endpoint, 10, server.transport()) as client:
            return await client.chat("think first", 12, seed=1)

    return asyncio.run(go())


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_reasoning_deltas_are_timed_as_output(field: str) -> None:
    # vLLM streams a thinking model's output as delta.reasoning; llama.cpp as reasoning_content.
    result = _chat(FakeServer(kind="vllm" if field == "reasoning" else "llama_cpp", reasoning_field=field))
    assert result.chunks == 12 and result.completion_tokens == 12


def test_probe_keeps_the_server_version() -> None:
    vllm = asyncio.run(probe("http://fake", transport=FakeServer(kind="vllm").transport()))
    assert vllm.server_version == "0.33.0"
    llama = asyncio.run(probe("http://fake", transport=FakeServer().transport()))
    assert llama.server_version == "b7000-fake"


def test_launch_args_from_a_label_else_the_container_command_with_secrets_masked() -> None:
    labelled = SimpleNamespace(
        labels={"io.gh200.argv": '["vllm", "serve", "m", "--api-key", "sk-1"]'}, attrs={}
    )
    assert launch_args(labelled) == ["vllm", "serve", "m", "--api-key", "***"]
    bare = SimpleNamespace(
        labels={"io.gh200.profile": "p"},
        attrs={"Config": {"Entrypoint": ["llama-server"], "Cmd": ["-m", "x.gguf", "--api-key=sk-2"]}},
    )
    assert launch_args(bare) == ["llama-server", "-m", "x.gguf", "--api-key=***"]
    assert launch_args(SimpleNamespace(labels={"io.gh200.argv": "not json"}, attrs=None)) is None


# --- gates that compare like with like --------------------------------------------------------------


def _cpu_run(index: int) -> RunResult:
    """Part 3's ik_llama.cpp row reproduced exactly: 256 prompt tokens at PP 51.54, 128 at TG 3.65."""
    ttft = 256 / 51.54
    decode = 127 / 3.65  # the first token arrives with prefill; 127 gaps follow
    request = RequestResult(
        prompt_tokens_asked=256,
        output_tokens_asked=128,
        prompt_tokens=256,
        completion_tokens=128,
        cached_tokens=0,
        ttft_s=ttft,
        e2e_s=ttft + decode,
        tpot_ms=decode * 1000 / 127,
        itl_ms_median=None,
        itl_ms_p90=None,
        itl_ms_max=None,
        chunks=128,
        finish_reason="length",
    )
    return RunResult(index, index == 0, 1, ttft + decode, [request])


def test_cpu_profile_passes_a_perfect_reproduction_of_the_post() -> None:
    profile = load_profile("glm52-iq2xxs-cpu")
    run_set = RunSet(SetPlan("synthetic", 256, 128, 1, 2))
    run_set.runs = [_cpu_run(i) for i in range(3)]
    results = gate(profile, [run_set])
    assert [(g.metric, g.passed) for g in results] == [("decode_tok_s", True), ("prompt_tok_s", True)]
    assert results[0].measured == pytest.approx(3.65) and results[1].measured == pytest.approx(51.54)
    # Output tok/s pays for the prefill too: gated on it, the same perfect run would fail.
    assert run_set.summary().output_tok_s is not None
    assert run_set.summary().output_tok_s.max == pytest.approx(128 / (256 / 51.54 + 127 / 3.65))
    as_output = profile_with(
        [Expected(shape="256:128", metric="output_tok_s", statistic="best", value=3.65, source="p")]
    )
    assert not gate(as_output, [run_set])[0].passed


def test_lower_is_better_metrics_gate_upward() -> None:
    run_set = RunSet(SetPlan("synthetic", 2048, 512, 1, 2))
    run_set.runs = [RunResult(i, i == 0, 1, 10.0, [request_result(20.0)]) for i in range(3)]

    def passed(value: float, statistic: str = "median") -> bool:
        expected = Expected(shape="2048:512", metric="tpot_ms", statistic=statistic, value=value, source="p")  # type: ignore[arg-type]
        return gate(profile_with([expected]), [run_set], tolerance=0.10)[0].passed

    assert passed(20.0) and passed(18.5)  # 20 ms <= 18.5 * 1.1: within tolerance above
    assert not passed(18.0)  # 20 > 19.8: slower than expected by more than 10%
    assert passed(40.0)  # faster than expected always passes for a time
    assert passed(18.5, "best")


def test_warm_only_expectations_leave_the_cold_run_out() -> None:
    # Part 3's FP8 MTP-3 warm runs (25.61, 25.66; warm mean 25.64) after a cold run paying JIT.
    run_set = RunSet(SetPlan("synthetic", 2048, 512, 1, 2))
    run_set.runs = [
        RunResult(i, i == 0, 1, 100 / t, [request_result(20.0)]) for i, t in enumerate([12.0, 25.61, 25.66])
    ]
    profile = load_profile("glm52-fp8-mtp3")
    mean = next(e for e in profile.expected if e.statistic == "warm_mean")
    assert mean.warm_only
    (result,) = gate(profile.model_copy(update={"expected": [mean]}), [run_set])
    assert result.passed and result.measured == pytest.approx((25.61 + 25.66) / 2)
    assert "warm mean" in result.describe()
    with_cold = mean.model_copy(update={"statistic": "mean"})
    assert not gate(profile.model_copy(update={"expected": [with_cold]}), [run_set])[0].passed


# --- random-token prompts, like `vllm bench`'s random dataset -------------------------------------


def test_random_prompts_are_uniform_ids_of_exact_length_without_tokenizing() -> None:
    server = FakeServer(vocab_size=500)
    endpoint = asyncio.run(probe("http://fake", transport=server.transport()))
    assert endpoint.vocab_size == 500
    plans = plan_sets([(64, 8)], [2], warm=2, real_output=None)
    asyncio.run(Smoke(endpoint, plans, transport=server.transport(), prompt_mode="random").run())
    prompts = [r["prompt"] for r in server.requests]
    assert len(prompts) == 6 and all(len(p) == 64 for p in prompts)
    assert all(0 <= t < 500 for p in prompts for t in p)
    assert len({tuple(p[:4]) for p in prompts}) == 6  # each request its own prompt from the start
    assert server.tokenize_calls == 0
    # Uniform over the vocabulary, not a few prose words: 384 draws from 500 ids spread wide.
    assert len({t for p in prompts for t in p}) > 200


def test_random_prompts_need_a_vocabulary_size() -> None:
    server = FakeServer(kind="vllm")
    endpoint = asyncio.run(probe("http://fake", transport=server.transport()))
    assert endpoint.vocab_size is None
    plans = plan_sets([(16, 8)], [1], warm=0, real_output=None)
    with pytest.raises(BadInput) as caught:
        Smoke(endpoint, plans, transport=server.transport(), prompt_mode="random")
    assert "--vocab-size" in caught.value.one_line()
    assert server.completions == 0


def test_report_shows_decode_rate_positions_sources_and_notes() -> None:
    from gh200.bench import report

    server = FakeServer(kind="vllm", spec_metrics=True, draft_per_token=(4, 1), counter_noise=50.0)
    sets = _run(server, plan_sets([(16, 40)], [1], warm=1, real_output=None))
    text = report.markdown("p", sets)
    lines = text.splitlines()
    detail = lines[lines.index("| " + " | ".join(report.DETAIL_COLUMNS) + " |") + 2]
    cells = [c.strip() for c in detail.strip("|").split("|")]
    header = list(report.DETAIL_COLUMNS)
    assert cells[header.index("Acceptance by position")] == "100% / 0% / 0% / 0%"
    assert cells[header.index("Acceptance histogram")] == "0 / 20 / 0 / 0 / 0"
    assert cells[header.index("Acceptance from")] == "responses"
    assert float(cells[header.index("Median decode tok/s")]) > 0
    assert "per-response acceptance and the server's counters differ by up to" in text
    assert "reported no cached prompt tokens" not in text
    quiet = _run(
        FakeServer(kind="vllm", report_cached=False), plan_sets([(16, 8)], [1], warm=0, real_output=None)
    )
    assert "--enable-prompt-tokens-details" in report.markdown("p", quiet)
