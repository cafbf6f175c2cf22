"""An in-process stand-in for llama-server / vLLM's HTTP API, for unit tests of the client's own logic.

It speaks through httpx.MockTransport, so no socket is opened. Behaviour switches let a test make
the server short-change output, drop the stream, omit usage, answer errors or report cached tokens.
The engine tests run the same client against the real llama-server.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from gh200.bench.client import RequestResult
from gh200.bench.smoke import RunResult, RunSet, SetPlan
from gh200.profiles import load_profile
from gh200.profiles.schema import Expected, Profile


@dataclass
class FakeServer:
    kind: str = "llama_cpp"  # or "vllm"
    model: str = "tiny"
    context: int = 4096
    first_token_delay: float = 0.0
    token_delay: float = 0.0
    draft_per_token: tuple[int, int] = (4, 3)  # drafted, accepted per 4 tokens (llama.cpp timings)
    short_by: int = 0
    drop_after: int | None = None  # tokens sent before the connection drops
    drop_on_request: int | None = None  # the n-th completion request (1-based) drops
    omit_usage: bool = False
    status: int = 200
    cached_tokens: int = 0
    api_key: str | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    completions: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    vocab: dict[str, int] = field(default_factory=dict)
    vocab_size: int = 32000
    tokenize_calls: int = 0
    report_cached: bool = True  # vLLM reports cached_tokens only with --enable-prompt-tokens-details
    spec_metrics: bool = False  # vLLM: per-request metrics.speculative_decoding in the usage chunk
    reasoning_field: str | None = None  # chat: stream text as delta[reasoning_field] instead of content
    counter_noise: float = 0.0  # added to the accepted and drafted counters at every /metrics read
    metrics_missing_reads: int = 0  # the first N /metrics reads answer 404 (a server still starting)
    # Per-position counters appear only once counted, as prometheus_client shows a labelled child.
    positions_when_counted: bool = False
    tokenize_cap: int | None = None  # /tokenize returns at most this many tokens (a short tokenizer)
    metrics_reads: int = 0
    counters: dict[str, float] = field(
        default_factory=lambda: {"draft_tokens": 0.0, "accepted_tokens": 0.0, "drafts": 0.0}
    )

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    # --- routes -------------------------------------------------------------------------------

    async def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        authorised = request.headers.get("authorization") == f"Bearer {self.api_key}"
        if self.api_key and path != "/health" and not authorised:
            return httpx.Response(401, json={"error": {"message": "Invalid API Key"}})
        if path == "/v1/models":
            entry: dict[str, Any] = {"id": self.model}
            if self.kind == "vllm":
                entry["max_model_len"] = self.context
            else:
                entry["meta"] = {"n_vocab": self.vocab_size, "n_ctx": self.context}
            return httpx.Response(200, json={"object": "list", "data": [entry]})
        if path == "/props":
            if self.kind != "llama_cpp":
                return httpx.Response(404)
            return httpx.Response(
                200, json={"default_generation_settings": {"n_ctx": self.context}, "build_info": "b7000-fake"}
            )
        if path == "/version":
            return (
                httpx.Response(200, json={"version": "0.33.0"})
                if self.kind == "vllm"
                else httpx.Response(404)
            )
        if path == "/tokenize":
            self.tokenize_calls += 1
            body = json.loads(request.content)
            text = body.get("content") if self.kind == "llama_cpp" else body.get("prompt")
            # One token per word; a word keeps its id and distinct words never share one, as in a
            # real vocabulary (a hash would collide on the random prompt nonces).
            tokens = [self._id(w) for w in str(text).split()]
            return httpx.Response(200, json={"tokens": tokens[: self.tokenize_cap]})
        if path == "/metrics":
            self.metrics_reads += 1
            if self.metrics_reads <= self.metrics_missing_reads:
                return httpx.Response(404)
            prefix = "llamacpp" if self.kind == "llama_cpp" else "vllm"
            lines = [
                f'{prefix}:spec_decode_num_draft_tokens_total{{model_name="{self.model}"}} '
                f"{self.counters['draft_tokens']}",
                f"{prefix}:spec_decode_num_accepted_tokens_total {self.counters['accepted_tokens']}",
                f"{prefix}:spec_decode_num_drafts_total {self.counters['drafts']}",
            ]
            lines += [
                f'{prefix}:spec_decode_num_accepted_tokens_per_pos_total{{position="{i}"}} '
                f"{self.counters.get(f'pos_{i}', 0.0)}"
                for i in range(self.draft_per_token[0])
                if f"pos_{i}" in self.counters or not self.positions_when_counted
            ]
            # Traffic the benchmark did not send (another client of the same server).
            self.counters["accepted_tokens"] += self.counter_noise
            self.counters["draft_tokens"] += self.counter_noise
            return httpx.Response(200, text="\n".join(lines) + "\n")
        if path in ("/v1/completions", "/v1/chat/completions"):
            if self.status != 200:
                return httpx.Response(
                    self.status, json={"error": {"message": "the fake says no", "code": self.status}}
                )
            body = json.loads(request.content)
            self.requests.append(body)
            self.completions += 1
            return httpx.Response(200, stream=_Stream(self, body, path, self.completions))
        return httpx.Response(404)

    def _id(self, word: str) -> int:
        return self.vocab.setdefault(word, 100 + len(self.vocab))


class _Stream(httpx.AsyncByteStream):
    def __init__(self, server: FakeServer, body: dict[str, Any], path: str, number: int) -> None:
        self.server = server
        self.body = body
        self.chat = path.endswith("chat/completions")
        self.number = number

    async def __aiter__(self) -> AsyncIterator[bytes]:
        s = self.server
        s.in_flight += 1
        s.max_in_flight = max(s.max_in_flight, s.in_flight)
        done = False
        try:
            asked = int(self.body.get("n_predict") or self.body["max_tokens"])
            n = asked - s.short_by
            prompt = self.body.get("prompt")
            prompt_tokens = len(prompt) if isinstance(prompt, list) else 20
            drop = s.drop_after if (s.drop_on_request in (None, self.number)) else None
            await asyncio.sleep(s.first_token_delay)
            for i in range(n):
                if drop is not None and i >= drop:
                    raise httpx.ReadError("connection reset by peer")
                if i:
                    await asyncio.sleep(s.token_delay)
                if self.chat:
                    choice: dict[str, Any] = {
                        "index": 0,
                        "delta": {s.reasoning_field or "content": f"t{i} "},
                        "finish_reason": None,
                    }
                else:
                    choice = {"index": 0, "text": f"t{i} ", "finish_reason": None}
                yield _sse({"choices": [choice]})
            drafted = (n // 4) * s.draft_per_token[0]
            accepted = (n // 4) * s.draft_per_token[1]
            s.counters["draft_tokens"] += drafted
            s.counters["accepted_tokens"] += accepted
            s.counters["drafts"] += n // 4
            for position in range(s.draft_per_token[1]):
                s.counters[f"pos_{position}"] = s.counters.get(f"pos_{position}", 0.0) + n // 4
            final: dict[str, Any] = {
                "choices": [
                    {
                        "index": 0,
                        ("delta" if self.chat else "text"): ({} if self.chat else ""),
                        "finish_reason": "length",
                    }
                ]
            }
            if not s.omit_usage:
                usage = {
                    "completion_tokens": n,
                    "prompt_tokens": prompt_tokens,
                    "total_tokens": n + prompt_tokens,
                }
                if s.report_cached:
                    usage["prompt_tokens_details"] = {"cached_tokens": s.cached_tokens}
                if s.kind == "vllm":
                    yield _sse(final)
                    final = {"choices": [], "usage": usage}
                    if s.spec_metrics:
                        # vllm/v1/metrics/stats.py RequestSpecDecodeMetrics.to_dict: histogram[j] =
                        # verify steps that accepted exactly j drafts.
                        k, a = s.draft_per_token
                        steps = n // 4
                        histogram = [0] * (k + 1)
                        histogram[a] = steps
                        final["metrics"] = {
                            "speculative_decoding": {
                                "mean_acceptance_length": 1 + a if steps else 1.0,
                                "draft_acceptance_rate": a / k if steps else 0.0,
                                "acceptance_histogram": histogram,
                                "num_spec_steps": steps,
                                "num_accepted_draft_tokens": accepted,
                                "num_draft_tokens": drafted,
                                "num_spec_tokens": k,
                            }
                        }
                else:
                    final["usage"] = usage
            if s.kind == "llama_cpp":
                final["timings"] = {
                    **({"cache_n": s.cached_tokens} if s.report_cached else {}),
                    "predicted_n": n,
                    "predicted_per_token_ms": max(s.token_delay * 1000.0, 0.001),
                    "prompt_ms": 1.0,
                    "draft_n": drafted,
                    "draft_n_accepted": accepted,
                }
            # Done generating: the client may stop reading at [DONE] without closing this generator.
            s.in_flight -= 1
            done = True
            yield _sse(final)
            yield b"data: [DONE]\n\n"
        finally:
            if not done:
                s.in_flight -= 1


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


# --- builders for run sets with known figures -----------------------------------------------------


def request_result(tpot: float) -> RequestResult:
    return RequestResult(
        prompt_tokens_asked=10,
        output_tokens_asked=100,
        prompt_tokens=10,
        completion_tokens=100,
        cached_tokens=0,
        ttft_s=0.1,
        e2e_s=1.0,
        tpot_ms=tpot,
        itl_ms_median=tpot,
        itl_ms_p90=tpot,
        itl_ms_max=tpot,
        chunks=100,
        finish_reason="length",
    )


def run_result(index: int, wall: float, accepted: int | None) -> RunResult:
    counters = (
        None
        if accepted is None
        else {"draft_tokens": 100.0, "accepted_tokens": float(accepted), "drafts": 40.0}
    )
    return RunResult(
        index=index,
        cold=index == 0,
        concurrency=1,
        wall_s=wall,
        requests=[request_result(10.0)],
        counters=counters,
    )


def profile_with(expected: list[Expected]) -> Profile:
    return load_profile("local-tiny").model_copy(update={"expected": expected})


def run_set(shape: tuple[int, int], concurrency: int, tok_s: list[float]) -> RunSet:
    s = RunSet(SetPlan("synthetic", shape[0], shape[1], concurrency, len(tok_s) - 1))
    s.runs = [run_result(i, 100 / t, 90) for i, t in enumerate(tok_s)]
    return s
