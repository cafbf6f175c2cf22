"""The streaming client's own logic: timing, exact-length checks, acceptance, faults, engine detection."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from bench_fakes import FakeServer

from gh200.bench.client import BenchClient, Endpoint, RequestFailed, RequestResult, parse_counters, probe
from gh200.errors import BadInput


def _complete(server: FakeServer, prompt: list[int], out: int, timeout: float = 30.0) -> RequestResult:
    endpoint = Endpoint("http://fake", server.model, server.kind)  # type: ignore[arg-type]

    async def go() -> RequestResult:
        async with BenchClient(endpoint, timeout, server.transport()) as client:
            return await client.complete(prompt, out, seed=7)

    return asyncio.run(go())


def test_llama_stream_timing_and_server_figures() -> None:
    server = FakeServer(first_token_delay=0.03, token_delay=0.004)
    result = _complete(server, list(range(100, 164)), 32)
    assert result.completion_tokens == 32 and result.prompt_tokens == 64
    assert result.prompt_tokens_asked == 64 and result.output_tokens_asked == 32
    assert result.ttft_s >= 0.03
    # TPOT is (e2e - TTFT) / (n - 1), from the client's own clock.
    assert result.tpot_ms == pytest.approx((result.e2e_s - result.ttft_s) * 1000 / 31)
    assert 3.0 < result.tpot_ms < 40.0
    assert result.chunks == 32
    assert result.itl_ms_median is not None and result.itl_ms_median >= 3.0
    assert result.draft_tokens == 32 and result.accepted_tokens == 24  # 8 steps x (4 drafted, 3 accepted)
    assert result.server_tpot_ms == pytest.approx(4.0)
    assert result.cached_tokens == 0
    assert result.finish_reason == "length"
    sent = server.requests[0]
    assert sent["ignore_eos"] is True and sent["n_predict"] == 32 and sent["max_tokens"] == 32
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["prompt"] == list(range(100, 164)) and sent["seed"] == 7 and sent["temperature"] == 0
    assert "min_tokens" not in sent


def test_vllm_request_forces_length_with_min_tokens_and_reads_usage_chunk() -> None:
    server = FakeServer(kind="vllm")
    result = _complete(server, [1, 2, 3], 16)
    sent = server.requests[0]
    assert sent["min_tokens"] == 16 and sent["max_tokens"] == 16 and sent["ignore_eos"] is True
    assert "n_predict" not in sent
    assert result.completion_tokens == 16
    assert result.draft_tokens is None  # vLLM reports acceptance through its counters only


def test_output_shorter_than_asked_is_a_clear_failure() -> None:
    with pytest.raises(RequestFailed) as caught:
        _complete(FakeServer(short_by=5), [1, 2, 3], 20)
    assert caught.value.kind == "short"
    assert "returned 15 output tokens where 20 were asked" in caught.value.message


def test_stream_without_usage_cannot_be_checked() -> None:
    with pytest.raises(RequestFailed) as caught:
        _complete(FakeServer(omit_usage=True), [1, 2], 8)
    assert caught.value.kind == "usage"


def test_server_error_status_carries_its_message() -> None:
    with pytest.raises(RequestFailed) as caught:
        _complete(FakeServer(status=500), [1, 2], 8)
    assert (
        caught.value.kind == "http"
        and "500" in caught.value.message
        and "the fake says no" in caught.value.message
    )


def test_stream_dropped_mid_response() -> None:
    with pytest.raises(RequestFailed) as caught:
        _complete(FakeServer(drop_after=5), [1, 2], 20)
    assert caught.value.kind == "closed"
    assert "after 5 of 20 tokens" in caught.value.message


def test_request_timeout() -> None:
    with pytest.raises(RequestFailed) as caught:
        _complete(FakeServer(first_token_delay=2.0), [1, 2], 8, timeout=0.2)
    assert caught.value.kind == "timeout" and "0.2s" in caught.value.message


def test_unreachable_server() -> None:
    endpoint = Endpoint("http://127.0.0.1:9", "m", "llama_cpp")

    async def go() -> None:
        async with BenchClient(endpoint, 5) as client:
            await client.complete([1, 2], 4, seed=1)

    with pytest.raises(RequestFailed) as caught:
        asyncio.run(go())
    assert caught.value.kind == "connect"


def test_chat_request_for_real_prompts() -> None:
    server = FakeServer()
    endpoint = Endpoint("http://fake", "tiny", "llama_cpp")

    async def go() -> RequestResult:
        async with BenchClient(endpoint, 10, server.transport()) as client:
            return await client.chat("review this", 12, seed=3)

    result = asyncio.run(go())
    assert result.completion_tokens == 12 and result.prompt_tokens_asked is None
    assert server.requests[0]["messages"] == [{"role": "user", "content": "review this"}]


def test_parse_counters_sums_label_sets_and_ignores_per_position() -> None:
    text = """# HELP vllm:spec_decode_num_draft_tokens_total Number of draft tokens.
# TYPE vllm:spec_decode_num_draft_tokens_total counter
vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="m"} 300.0
vllm:spec_decode_num_draft_tokens_total{engine="1",model_name="m"} 100.0
vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="m"} 250.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{position="0"} 99.0
vllm:spec_decode_num_drafts_total 130
llamacpp:requests_processing 1
"""
    # Per-position counts are kept apart: they never add to the accepted total.
    assert parse_counters(text) == {
        "draft_tokens": 400.0,
        "accepted_tokens": 250.0,
        "drafts": 130.0,
        "accepted_tokens_pos_0": 99.0,
    }
    assert parse_counters("llamacpp:prompt_tokens_total 5\n") == {}


def test_parse_counters_does_not_read_a_timestamp_as_the_value() -> None:
    # The exposition format allows `name{labels} value timestamp_ms`; the value is the middle field.
    text = (
        "llamacpp:spec_decode_num_draft_tokens_total 120 1764680000000\n"
        'vllm:spec_decode_num_accepted_tokens_total{engine="0"} 90 1764680000000\n'
        'vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",position="1"} 40 1764680000000\n'
    )
    assert parse_counters(text) == {
        "draft_tokens": 120.0,
        "accepted_tokens": 90.0,
        "accepted_tokens_pos_1": 40.0,
    }


def test_probe_detects_llama_cpp_and_its_slot_context() -> None:
    server = FakeServer(context=2048)
    endpoint = asyncio.run(probe("http://fake/", transport=server.transport()))
    assert endpoint.kind == "llama_cpp" and endpoint.model == "tiny" and endpoint.context == 2048
    assert endpoint.url == "http://fake"


def test_probe_detects_vllm_and_max_model_len() -> None:
    server = FakeServer(kind="vllm", model="glm-5.2", context=9216)
    endpoint = asyncio.run(probe("http://fake", model="glm-5.2", transport=server.transport()))
    assert endpoint.kind == "vllm" and endpoint.context == 9216


def test_probe_model_mismatch_and_missing_key() -> None:
    with pytest.raises(RequestFailed) as caught:
        asyncio.run(probe("http://fake", model="other", transport=FakeServer().transport()))
    assert "not 'other'" in caught.value.message
    secret = "sk-test-7f3a9c"
    with pytest.raises(BadInput) as key:
        asyncio.run(probe("http://fake", transport=FakeServer(api_key=secret).transport()))
    assert "API key" in key.value.message
    ok = asyncio.run(probe("http://fake", api_key=secret, transport=FakeServer(api_key=secret).transport()))
    assert ok.api_key == secret and secret not in repr(ok)


def test_tokenize_body_per_engine() -> None:
    for kind in ("llama_cpp", "vllm"):
        server = FakeServer(kind=kind)
        endpoint = Endpoint("http://fake", "tiny", kind)  # type: ignore[arg-type]

        async def go(s: FakeServer = server, e: Endpoint = endpoint) -> list[int]:
            async with BenchClient(e, 10, s.transport()) as client:
                return await client.tokenize("one two three")

        assert len(asyncio.run(go())) == 3


def test_tokenize_unknown_server_is_bad_input() -> None:
    endpoint = Endpoint("http://fake", "m", "openai")

    async def go() -> None:
        async with BenchClient(endpoint, 10, FakeServer().transport()) as client:
            await client.tokenize("x")

    with pytest.raises(BadInput):
        asyncio.run(go())


def _lines(chunks: list[bytes]) -> list[str]:
    from gh200.bench.client import sse_lines

    async def feed() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    async def collect() -> list[str]:
        return [line async for line in sse_lines(feed())]

    return asyncio.run(collect())


def test_sse_lines_keep_unicode_separators_inside_a_json_string() -> None:
    # A random-weight model emitted NEL / U+2028 inside a token: str.splitlines() would cut the
    # JSON there (this is what httpx's aiter_lines() does), an SSE parser must not.
    # Serialised as llama-server does: control characters escaped, NEL and U+2028 left raw.
    text = "a\u2028b\x85c\x1cd"
    event = ("data: " + json.dumps({"choices": [{"text": text}]}, ensure_ascii=False)).encode()
    assert "\u2028".encode() in event and "\x85".encode() in event
    lines = _lines([event[:17], event[17:30], event[30:] + b"\n\n", b"data: [DONE]\r\n\r\n"])
    payloads = [line for line in lines if line.startswith("data:")]
    assert json.loads(payloads[0][5:])["choices"][0]["text"] == text
    assert payloads[1] == "data: [DONE]"


def test_sse_lines_join_a_line_split_across_reads_and_crlf() -> None:
    assert [x for x in _lines([b"data: 1\r", b"\ndata: 2\n", b"data: 3"]) if x] == [
        "data: 1",
        "data: 2",
        "data: 3",
    ]
