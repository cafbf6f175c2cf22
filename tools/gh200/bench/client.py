"""An async, streaming OpenAI-compatible client that times every token as it arrives (httpx).

It speaks to llama.cpp's `llama-server` (and ik_llama.cpp) and to vLLM. Both get exact output
lengths (ignore_eos, plus n_predict for llama.cpp and min_tokens for vLLM) and report usage in the
stream, which the client checks against what it asked. Acceptance of draft tokens comes from
llama.cpp's per-response `timings` and, for both engines, from the difference of the Prometheus
counters `<prefix>:spec_decode_num_{draft_tokens,accepted_tokens,drafts}_total`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import httpx

from gh200.bench.stats import median, percentile
from gh200.errors import BadInput, OperationFailed

ServerKind = Literal["llama_cpp", "vllm", "openai"]
COUNTER_SUFFIXES = {
    "draft_tokens": "spec_decode_num_draft_tokens_total",
    "accepted_tokens": "spec_decode_num_accepted_tokens_total",
    "drafts": "spec_decode_num_drafts_total",
}


async def sse_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """Server-sent-event lines: split on LF (CR LF / CR), nothing else.

    httpx's aiter_lines() follows str.splitlines(), which also breaks on U+2028, NEL and other
    separators that a model's tokens may well contain inside a JSON string.
    """
    buffer = b""
    async for chunk in chunks:
        buffer += chunk
        *complete, buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        for raw in complete:
            yield raw.decode("utf-8", errors="replace")
    if buffer:
        yield buffer.decode("utf-8", errors="replace")


class RequestFailed(OperationFailed):
    """One benchmark request did not complete as asked. `kind` says how, for reports and tests."""

    def __init__(self, kind: str, message: str, fix: str | None = None) -> None:
        super().__init__(message, fix)
        self.kind = kind


class ModelNotServed(RequestFailed):
    """The server answers but does not serve the asked model; `served` is what it listed."""

    def __init__(self, message: str, served: list[str], fix: str | None = None) -> None:
        super().__init__("model", message, fix)
        self.served = served


@dataclass(frozen=True)
class Endpoint:
    """Where the server is and how to talk to it. The key never appears in repr or records."""

    url: str
    model: str
    kind: ServerKind
    api_key: str | None = field(default=None, repr=False)
    context: int | None = None  # tokens one request may use (llama.cpp: per slot), when the server says
    server_version: str | None = None  # vLLM's /version, llama.cpp's /props build_info
    vocab_size: int | None = None  # llama.cpp lists it (meta.n_vocab); vLLM does not

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


@dataclass
class RequestResult:
    """One streamed request: what was asked, what came back, and when."""

    prompt_tokens_asked: int | None
    output_tokens_asked: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int | None
    ttft_s: float
    e2e_s: float
    tpot_ms: float | None
    itl_ms_median: float | None
    itl_ms_p90: float | None
    itl_ms_max: float | None
    chunks: int
    finish_reason: str | None
    draft_tokens: int | None = None
    accepted_tokens: int | None = None
    server_tpot_ms: float | None = None
    server_prompt_ms: float | None = None
    seed: int | None = None
    # vLLM's per-request speculative metrics (`--per-request-spec-decode-metrics summary`):
    # verify steps, and how many steps accepted exactly j draft tokens (index j).
    spec_steps: int | None = None
    acceptance_histogram: list[int] | None = None

    def as_json(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


POSITION_PREFIX = "accepted_tokens_pos_"
_PER_POSITION_SUFFIX = "spec_decode_num_accepted_tokens_per_pos_total"


def _matches(name: str, suffix: str) -> bool:
    # The suffix must follow the engine prefix (`vllm:`, `llamacpp:`) directly, so that
    # `..._per_pos_total` is not read as `..._accepted_tokens_total`.
    return name.endswith(":" + suffix) or name == suffix


def parse_counters(text: str) -> dict[str, float]:
    """Speculative-decoding counters from a Prometheus text page, summed over their label sets.

    Per-position accepted counts come back as `accepted_tokens_pos_<i>`. The page is read by
    prometheus_client's parser (a sample's timestamp is not its value).
    """
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, float] = {}
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError:
        return found
    for family in families:
        for sample in family.samples:
            if _matches(sample.name, _PER_POSITION_SUFFIX):
                position = sample.labels.get("position")
                if position is not None and position.isdigit():
                    key = f"{POSITION_PREFIX}{int(position)}"
                    found[key] = found.get(key, 0.0) + float(sample.value)
                continue
            for key, suffix in COUNTER_SUFFIXES.items():
                if _matches(sample.name, suffix):
                    found[key] = found.get(key, 0.0) + float(sample.value)
    return found


def _error_detail(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode(errors="replace").strip()[:300]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message") or err)[:300]
        return str(err)[:300]
    return str(data)[:300]


class BenchClient:
    """One connection pool to one server; every method is a coroutine."""

    def __init__(
        self, endpoint: Endpoint, timeout_s: float = 600.0, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._http = httpx.AsyncClient(
            transport=transport,
            base_url=endpoint.url.rstrip("/"),
            headers=endpoint.headers(),
            timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=512),
        )

    async def __aenter__(self) -> BenchClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- small endpoints -------------------------------------------------------------------------

    async def _post_json(self, path: str, body: dict[str, Any]) -> Any:
        try:
            answer = await self._http.post(path, json=body)
        except httpx.TimeoutException as err:
            raise RequestFailed("timeout", f"{path} timed out after {self.timeout_s:g}s") from err
        except httpx.HTTPError as err:
            raise RequestFailed(
                "connect", f"cannot reach {self.endpoint.url}{path}: {err}", "check that the server runs"
            ) from err
        if answer.status_code != 200:
            raise RequestFailed(
                "http", f"{path} answered {answer.status_code}: {_error_detail(answer.content)}"
            )
        return answer.json()

    async def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` without special tokens, as the server itself tokenizes it."""
        if self.endpoint.kind == "llama_cpp":
            data = await self._post_json("/tokenize", {"content": text, "add_special": False})
        elif self.endpoint.kind == "vllm":
            body = {"model": self.endpoint.model, "prompt": text, "add_special_tokens": False}
            data = await self._post_json("/tokenize", body)
        else:
            raise BadInput(
                f"{self.endpoint.url} offers no known /tokenize endpoint",
                "exact prompt lengths need llama.cpp's or vLLM's server",
            )
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise RequestFailed("protocol", f"/tokenize gave no token list: {str(data)[:200]}")
        return tokens

    async def counters(self) -> dict[str, float] | None:
        """The server's speculative-decoding counters, or None where /metrics is off or absent."""
        try:
            answer = await self._http.get("/metrics", timeout=30)
        except httpx.HTTPError:
            return None
        if answer.status_code != 200:
            return None
        found = parse_counters(answer.text)
        return found or None

    # --- the timed request -------------------------------------------------------------------------

    def _sampling(self, output_tokens: int, seed: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.endpoint.model,
            "max_tokens": output_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0,
            "seed": seed,
            "ignore_eos": True,
        }
        if self.endpoint.kind == "llama_cpp":
            body["n_predict"] = output_tokens
        elif self.endpoint.kind == "vllm":
            body["min_tokens"] = output_tokens
        return body

    async def complete(self, prompt_ids: list[int], output_tokens: int, seed: int) -> RequestResult:
        """/v1/completions with a prompt of token ids; exactly `output_tokens` must come back."""
        body = {"prompt": prompt_ids, **self._sampling(output_tokens, seed)}
        return await self._stream("/v1/completions", body, len(prompt_ids), output_tokens, seed)

    async def chat(self, text: str, output_tokens: int, seed: int) -> RequestResult:
        """/v1/chat/completions with one user message (the real prompts)."""
        body = {"messages": [{"role": "user", "content": text}], **self._sampling(output_tokens, seed)}
        return await self._stream("/v1/chat/completions", body, None, output_tokens, seed)

    async def _stream(
        self, path: str, body: dict[str, Any], prompt_asked: int | None, output_asked: int, seed: int
    ) -> RequestResult:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._stream_inner(path, body, prompt_asked, output_asked, seed)
        except TimeoutError as err:
            raise RequestFailed(
                "timeout",
                f"request to {self.endpoint.url}{path} timed out after {self.timeout_s:g}s",
                "raise --timeout, or shorten the shape",
            ) from err

    async def _stream_inner(
        self, path: str, body: dict[str, Any], prompt_asked: int | None, output_asked: int, seed: int
    ) -> RequestResult:
        started = time.perf_counter()
        content_times: list[float] = []
        usage: dict[str, Any] | None = None
        timings: dict[str, Any] | None = None
        spec_metrics: dict[str, Any] | None = None
        finish_reason: str | None = None
        ended: float | None = None
        try:
            async with self._http.stream("POST", path, json=body) as answer:
                if answer.status_code != 200:
                    detail = _error_detail(await answer.aread())
                    raise RequestFailed("http", f"{path} answered {answer.status_code}: {detail}")
                async for line in sse_lines(answer.aiter_bytes()):
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        break
                    now = time.perf_counter()
                    try:
                        chunk = json.loads(payload)
                    except ValueError as err:
                        raise RequestFailed("protocol", f"unparsable stream chunk: {payload[:120]}") from err
                    if "error" in chunk:
                        raise RequestFailed(
                            "http", f"server error mid-stream: {_error_detail(payload.encode())}"
                        )
                    for choice in chunk.get("choices") or []:
                        delta = choice.get("delta") or {}
                        # vLLM streams thinking as `reasoning`; llama.cpp as `reasoning_content`.
                        text = (
                            choice.get("text")
                            or delta.get("content")
                            or delta.get("reasoning")
                            or delta.get("reasoning_content")
                        )
                        if text:
                            content_times.append(now)
                        if choice.get("finish_reason"):
                            finish_reason = str(choice["finish_reason"])
                            ended = now
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                        ended = ended or now
                    if chunk.get("timings"):
                        timings = chunk["timings"]
                    metrics = chunk.get("metrics")
                    if isinstance(metrics, dict) and isinstance(metrics.get("speculative_decoding"), dict):
                        spec_metrics = metrics["speculative_decoding"]
        except httpx.TimeoutException as err:
            raise RequestFailed(
                "timeout", f"request to {self.endpoint.url}{path} timed out after {self.timeout_s:g}s"
            ) from err
        except (httpx.RemoteProtocolError, httpx.ReadError) as err:
            raise RequestFailed(
                "closed",
                f"{self.endpoint.url} closed the stream after {len(content_times)} of {output_asked} tokens "
                f"({type(err).__name__}); the server may have died",
                "see `gh200 logs PROFILE`",
            ) from err
        except httpx.ConnectError as err:
            raise RequestFailed(
                "connect", f"cannot connect to {self.endpoint.url}: {err}", "check that the server runs"
            ) from err
        except httpx.HTTPError as err:
            raise RequestFailed("closed", f"request to {self.endpoint.url}{path} failed: {err}") from err
        end = ended if ended is not None else time.perf_counter()
        if usage is None:
            raise RequestFailed(
                "usage",
                f"{self.endpoint.url} streamed no usage, so output lengths cannot be checked",
                "use a server that honours stream_options.include_usage (llama.cpp, vLLM)",
            )
        completion = int(usage.get("completion_tokens") or 0)
        prompt = int(usage.get("prompt_tokens") or 0)
        if completion != output_asked:
            raise RequestFailed(
                "short",
                f"server returned {completion} output tokens where {output_asked} were asked "
                f"(finish_reason={finish_reason})",
                "check the context size per slot (input + output must fit) and that ignore_eos is honoured",
            )
        if prompt_asked is not None and prompt != prompt_asked:
            raise RequestFailed(
                "prompt", f"server counted {prompt} prompt tokens where {prompt_asked} were sent"
            )
        if not content_times:
            raise RequestFailed("protocol", f"{self.endpoint.url} streamed no content chunks")
        cached: int | None = None
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict) and details.get("cached_tokens") is not None:
            cached = int(details["cached_tokens"])
        elif timings and timings.get("cache_n") is not None:
            cached = int(timings["cache_n"])
        ttft = content_times[0] - started
        e2e = end - started
        gaps = [(b - a) * 1000.0 for a, b in itertools.pairwise(content_times)]
        result = RequestResult(
            prompt_tokens_asked=prompt_asked,
            output_tokens_asked=output_asked,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=cached,
            ttft_s=ttft,
            e2e_s=e2e,
            tpot_ms=(e2e - ttft) * 1000.0 / (completion - 1) if completion > 1 else None,
            itl_ms_median=median(gaps) if gaps else None,
            itl_ms_p90=percentile(gaps, 90) if gaps else None,
            itl_ms_max=max(gaps) if gaps else None,
            chunks=len(content_times),
            finish_reason=finish_reason,
            seed=seed,
        )
        if spec_metrics is not None:
            _read_spec_metrics(result, spec_metrics)
        if timings:
            if timings.get("draft_n") is not None:
                result.draft_tokens = int(timings["draft_n"])
                result.accepted_tokens = int(timings.get("draft_n_accepted") or 0)
            per_token = timings.get("predicted_per_token_ms")
            if isinstance(per_token, int | float) and math.isfinite(per_token) and per_token > 0:
                result.server_tpot_ms = float(per_token)
            prompt_ms = timings.get("prompt_ms")
            if isinstance(prompt_ms, int | float):
                result.server_prompt_ms = float(prompt_ms)
        return result


def _read_spec_metrics(result: RequestResult, spec: dict[str, Any]) -> None:
    """vLLM's `metrics.speculative_decoding` (vllm/v1/metrics/stats.py RequestSpecDecodeMetrics.to_dict)."""
    drafted, accepted = spec.get("num_draft_tokens"), spec.get("num_accepted_draft_tokens")
    if isinstance(drafted, int) and isinstance(accepted, int):
        result.draft_tokens, result.accepted_tokens = drafted, accepted
    steps = spec.get("num_spec_steps")
    if isinstance(steps, int):
        result.spec_steps = steps
    histogram = spec.get("acceptance_histogram")
    if isinstance(histogram, list) and all(isinstance(n, int) for n in histogram):
        result.acceptance_histogram = [int(n) for n in histogram]


async def probe(
    url: str,
    api_key: str | None = None,
    model: str | None = None,
    timeout_s: float = 10.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Endpoint:
    """Which engine answers at `url`, and which model it serves (checked against `model` if given)."""
    base = url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    kind: ServerKind = "openai"
    async with httpx.AsyncClient(
        base_url=base, headers=headers, timeout=timeout_s, transport=transport
    ) as http:
        try:
            models = await http.get("/v1/models")
        except httpx.HTTPError as err:
            raise RequestFailed(
                "connect", f"cannot reach {base}: {err}", "check the URL and that the server runs"
            ) from err
        if models.status_code == 401:
            raise BadInput(f"{base} wants an API key", "pass --api-key-file (a 0600 file holding the key)")
        if models.status_code != 200:
            raise RequestFailed("http", f"{base}/v1/models answered {models.status_code}")
        listed = [m for m in (models.json().get("data") or []) if isinstance(m, dict)]
        ids = [str(m.get("id")) for m in listed]
        if model is not None and model not in ids:
            raise ModelNotServed(
                f"{base} serves {', '.join(ids) or 'no model'}, not {model!r}", ids, "deploy the profile"
            )
        chosen = model or (ids[0] if ids else None)
        if chosen is None:
            raise RequestFailed("model", f"{base} lists no model under /v1/models")
        meta = next((m for m in listed if m.get("id") == chosen), {}).get("meta")
        n_vocab = meta.get("n_vocab") if isinstance(meta, dict) else None
        vocab_size = n_vocab if isinstance(n_vocab, int) and n_vocab > 1 else None
        context: int | None = None
        server_version: str | None = None
        with_props = await _get_json(http, "/props")
        if isinstance(with_props, dict) and "default_generation_settings" in with_props:
            kind = "llama_cpp"
            n_ctx = (with_props.get("default_generation_settings") or {}).get("n_ctx")
            context = int(n_ctx) if isinstance(n_ctx, int) and n_ctx > 0 else None
            build = with_props.get("build_info")
            server_version = str(build) if build else None
        else:
            version = await _get_json(http, "/version")
            if isinstance(version, dict) and "version" in version:
                kind = "vllm"
                server_version = str(version["version"])
            entry = next((m for m in listed if m.get("id") == chosen), {})
            max_len = entry.get("max_model_len")
            context = int(max_len) if isinstance(max_len, int) and max_len > 0 else None
    return Endpoint(
        url=base,
        model=chosen,
        kind=kind,
        api_key=api_key,
        context=context,
        server_version=server_version,
        vocab_size=vocab_size,
    )


async def _get_json(http: httpx.AsyncClient, path: str) -> Any:
    try:
        answer = await http.get(path)
    except httpx.HTTPError:
        return None
    if answer.status_code != 200:
        return None
    try:
        return answer.json()
    except ValueError:
        return None
