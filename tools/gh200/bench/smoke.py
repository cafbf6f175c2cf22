"""The smoke benchmark: per shape and concurrency, one cold run then N warm runs, as the posts did.

A run is `concurrency` simultaneous requests, each with its own unique prompt of exactly the asked
input length and exactly the asked output length. Per run: output tok/s and total tok/s (tokens over
the run's wall time), prompt tok/s, TTFT, TPOT = (e2e - TTFT)/(n - 1), ITL, and for speculative
decoding the acceptance rate and length. Across runs: median, min, max, p10, p90, CV, and the count
of runs whose acceptance fell below 60%.

A failure stops the benchmark with one clear line; the runs already measured are kept (in the
result, the report and the results file).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from gh200.bench import prompts
from gh200.bench.client import POSITION_PREFIX, BenchClient, Endpoint, RequestFailed, RequestResult
from gh200.bench.stats import SUB60_THRESHOLD, Stats, describe, median, sub60_count
from gh200.errors import BadInput, OperationFailed
from gh200.profiles.schema import SHAPE_RE, Profile

DEFAULT_SHAPES = ("256:512", "2048:512", "8192:512", "2048:64")
DEFAULT_WARM = 10
REAL_OUTPUT_TOKENS = 256
METRIC_LOWER_IS_BETTER = {"tpot_ms", "ttft_ms", "itl_ms"}
# A prompt reusing this many tokens (or this share) from the server's cache is not a cold prefill.
CACHED_TOKENS_ALLOWED = 8
CACHED_SHARE_ALLOWED = 0.01
# Real prompts go through the chat template, whose fixed preamble a server may rightly reuse.
CACHED_TOKENS_ALLOWED_CHAT = 64


class SmokeFailed(OperationFailed):
    """The benchmark stopped before measuring everything; what was measured is kept."""


@dataclass(frozen=True)
class SetPlan:
    """One run set: a shape (or the real prompts) at one concurrency."""

    kind: Literal["synthetic", "real"]
    input_tokens: int | None
    output_tokens: int
    concurrency: int
    warm: int

    @property
    def shape(self) -> str:
        return (
            f"{self.input_tokens}:{self.output_tokens}"
            if self.kind == "synthetic"
            else f"real:{self.output_tokens}"
        )

    @property
    def label(self) -> str:
        """The posts' notation: `2048->512`, `4 x 2048->512`, `real prompts->256`."""
        base = (
            f"{self.input_tokens}->{self.output_tokens}"
            if self.kind == "synthetic"
            else f"real prompts->{self.output_tokens}"
        )
        return base if self.concurrency == 1 else f"{self.concurrency} x {base}"


@dataclass
class RunResult:
    index: int
    cold: bool
    concurrency: int
    wall_s: float
    requests: list[RequestResult]
    counters: dict[str, float] | None = None
    prompt_names: list[str] | None = None

    @property
    def output_tokens(self) -> int:
        return sum(r.completion_tokens for r in self.requests)

    @property
    def prompt_tokens(self) -> int:
        return sum(r.prompt_tokens for r in self.requests)

    @property
    def output_tok_s(self) -> float:
        return self.output_tokens / self.wall_s

    @property
    def total_tok_s(self) -> float:
        return (self.output_tokens + self.prompt_tokens) / self.wall_s

    @property
    def prompt_tok_s(self) -> float:
        # Prefill of every prompt in the run is done by the last first token.
        last_first = max(r.ttft_s for r in self.requests)
        return self.prompt_tokens / last_first if last_first > 0 else 0.0

    @property
    def ttft_ms(self) -> float:
        return 1000.0 * sum(r.ttft_s for r in self.requests) / len(self.requests)

    @property
    def tpot_ms(self) -> float | None:
        values = [r.tpot_ms for r in self.requests if r.tpot_ms is not None]
        return sum(values) / len(values) if values else None

    @property
    def itl_ms(self) -> float | None:
        values = [r.itl_ms_median for r in self.requests if r.itl_ms_median is not None]
        return median(values) if values else None

    @property
    def server_tpot_ms(self) -> float | None:
        values = [r.server_tpot_ms for r in self.requests if r.server_tpot_ms is not None]
        return sum(values) / len(values) if len(values) == len(self.requests) else None

    @property
    def cached_tokens(self) -> int | None:
        values = [r.cached_tokens for r in self.requests if r.cached_tokens is not None]
        return sum(values) if values else None

    @property
    def decode_tok_s(self) -> float | None:
        """Tokens per second of decoding alone (prefill excluded): the sum of each request's 1000/TPOT.

        This is what a TG figure (llama-bench, the posts' CPU table) measures; output tok/s also
        pays for prefill, so it is lower at every shape with a prompt.
        """
        values = [r.tpot_ms for r in self.requests]
        if not values or any(v is None or v <= 0 for v in values):
            return None
        return sum(1000.0 / v for v in values if v is not None)

    @property
    def acceptance_from_responses(self) -> float | None:
        """Accepted / drafted from each response's own figures; None unless every response has them."""
        drafted = [r.draft_tokens for r in self.requests]
        if any(d is None for d in drafted) or not sum(d or 0 for d in drafted):
            return None
        accepted = sum(r.accepted_tokens or 0 for r in self.requests)
        return accepted / sum(d or 0 for d in drafted)

    @property
    def acceptance_from_counters(self) -> float | None:
        if not self.counters or not self.counters.get("draft_tokens"):
            return None
        return self.counters.get("accepted_tokens", 0.0) / self.counters["draft_tokens"]

    @property
    def acceptance_source(self) -> str | None:
        if self.acceptance_from_responses is not None:
            return "responses"
        return "counters" if self.acceptance_from_counters is not None else None

    @property
    def acceptance(self) -> float | None:
        """Accepted / drafted tokens: the responses' own figures where the server gives them (they
        count this run's requests only), else the server-wide counters' difference (which other
        traffic on the same server also moves)."""
        found = self.acceptance_from_responses
        return found if found is not None else self.acceptance_from_counters

    @property
    def acceptance_disagreement(self) -> float | None:
        """|responses - counters| when both exist: other traffic on the server shows up here."""
        a, b = self.acceptance_from_responses, self.acceptance_from_counters
        return None if a is None or b is None else abs(a - b)

    @property
    def acceptance_histogram(self) -> list[int] | None:
        """Verify steps that accepted exactly j draft tokens, summed over the run's responses."""
        histograms = [r.acceptance_histogram for r in self.requests]
        if not histograms or any(h is None for h in histograms):
            return None
        width = max(len(h or []) for h in histograms)
        return [sum((h or [])[j] if j < len(h or []) else 0 for h in histograms) for j in range(width)]

    @property
    def acceptance_by_position(self) -> list[float] | None:
        """Share of verify steps whose draft token at position i was accepted (i = 0, 1, ...)."""
        histogram = self.acceptance_histogram
        if histogram is not None and sum(histogram) > 0:
            steps = sum(histogram)
            return [sum(histogram[i + 1 :]) / steps for i in range(len(histogram) - 1)]
        if not self.counters or not self.counters.get("drafts"):
            return None
        positions = sorted(
            int(k[len(POSITION_PREFIX) :]) for k in self.counters if k.startswith(POSITION_PREFIX)
        )
        if not positions:
            return None
        drafts = self.counters["drafts"]
        return [self.counters.get(f"{POSITION_PREFIX}{i}", 0.0) / drafts for i in range(positions[-1] + 1)]

    @property
    def acceptance_length(self) -> float | None:
        """Mean tokens per target step: 1 + accepted / verify steps (responses, else counters)."""
        steps = [r.spec_steps for r in self.requests]
        if steps and all(s is not None for s in steps) and sum(s or 0 for s in steps):
            accepted = sum(r.accepted_tokens or 0 for r in self.requests)
            return 1.0 + accepted / sum(s or 0 for s in steps)
        if not self.counters or not self.counters.get("drafts"):
            return None
        return 1.0 + self.counters.get("accepted_tokens", 0.0) / self.counters["drafts"]

    def as_json(self) -> dict[str, Any]:
        def r(value: float | None) -> float | None:
            return None if value is None else round(value, 6)

        return {
            "index": self.index,
            "cold": self.cold,
            "concurrency": self.concurrency,
            "wall_s": r(self.wall_s),
            "output_tokens": self.output_tokens,
            "prompt_tokens": self.prompt_tokens,
            "output_tok_s": r(self.output_tok_s),
            "total_tok_s": r(self.total_tok_s),
            "prompt_tok_s": r(self.prompt_tok_s),
            "ttft_ms": r(self.ttft_ms),
            "tpot_ms": r(self.tpot_ms),
            "decode_tok_s": r(self.decode_tok_s),
            "itl_ms": r(self.itl_ms),
            "server_tpot_ms": r(self.server_tpot_ms),
            "cached_tokens": self.cached_tokens,
            "acceptance": r(self.acceptance),
            "acceptance_from_responses": r(self.acceptance_from_responses),
            "acceptance_from_counters": r(self.acceptance_from_counters),
            "acceptance_source": self.acceptance_source,
            "acceptance_disagreement": r(self.acceptance_disagreement),
            "acceptance_histogram": self.acceptance_histogram,
            "acceptance_by_position": [round(v, 6) for v in self.acceptance_by_position or []] or None,
            "acceptance_length": r(self.acceptance_length),
            "counters": self.counters,
            "prompt_names": self.prompt_names,
            "requests": [q.as_json() for q in self.requests],
        }


@dataclass
class Summary:
    runs: int
    output_tok_s: Stats | None
    total_tok_s: Stats | None
    prompt_tok_s: Stats | None
    ttft_ms: Stats | None
    tpot_ms: Stats | None
    itl_ms: Stats | None
    acceptance: Stats | None
    acceptance_length: Stats | None
    sub60_runs: int
    decode_tok_s: Stats | None = None
    acceptance_sources: list[str] = field(default_factory=list)
    acceptance_max_disagreement: float | None = None
    acceptance_by_position: list[float] | None = None  # median over runs, per draft position
    acceptance_histogram: list[int] | None = None  # summed over runs

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"runs": self.runs, "sub60_runs": self.sub60_runs}
        for name in (
            "output_tok_s",
            "total_tok_s",
            "prompt_tok_s",
            "ttft_ms",
            "tpot_ms",
            "decode_tok_s",
            "itl_ms",
            "acceptance",
            "acceptance_length",
        ):
            stats: Stats | None = getattr(self, name)
            out[name] = stats.as_json() if stats else None
        out["acceptance_sources"] = self.acceptance_sources
        out["acceptance_max_disagreement"] = (
            None if self.acceptance_max_disagreement is None else round(self.acceptance_max_disagreement, 6)
        )
        out["acceptance_by_position"] = (
            None
            if self.acceptance_by_position is None
            else [round(v, 6) for v in self.acceptance_by_position]
        )
        out["acceptance_histogram"] = self.acceptance_histogram
        return out

    def metric(self, name: str, statistic: str = "median") -> float | None:
        """One statistic (median, mean, or best) of one of the gate's metrics."""
        stats: Stats | None = getattr(self, name, None)
        if stats is None:
            return None
        if statistic == "mean":
            return stats.mean
        if statistic == "best":
            return stats.min if name in METRIC_LOWER_IS_BETTER else stats.max
        return stats.median


def summarise(runs: list[RunResult]) -> Summary:
    def values(getter: Callable[[RunResult], float | None]) -> list[float]:
        return [v for v in (getter(run) for run in runs) if v is not None]

    acceptances = [run.acceptance for run in runs]
    disagreements = values(lambda r: r.acceptance_disagreement)
    positions = [p for p in (run.acceptance_by_position for run in runs) if p]
    by_position: list[float] | None = None
    if positions:
        width = max(len(p) for p in positions)
        by_position = [median([p[i] for p in positions if i < len(p)]) for i in range(width)]
    histograms = [h for h in (run.acceptance_histogram for run in runs) if h]
    histogram: list[int] | None = None
    if histograms:
        width = max(len(h) for h in histograms)
        histogram = [sum(h[j] for h in histograms if j < len(h)) for j in range(width)]
    return Summary(
        runs=len(runs),
        output_tok_s=describe(values(lambda r: r.output_tok_s)),
        total_tok_s=describe(values(lambda r: r.total_tok_s)),
        prompt_tok_s=describe(values(lambda r: r.prompt_tok_s)),
        ttft_ms=describe(values(lambda r: r.ttft_ms)),
        tpot_ms=describe(values(lambda r: r.tpot_ms)),
        itl_ms=describe(values(lambda r: r.itl_ms)),
        acceptance=describe([a for a in acceptances if a is not None]),
        acceptance_length=describe(values(lambda r: r.acceptance_length)),
        sub60_runs=sub60_count(acceptances, SUB60_THRESHOLD),
        decode_tok_s=describe(values(lambda r: r.decode_tok_s)),
        acceptance_sources=sorted({s for s in (run.acceptance_source for run in runs) if s}),
        acceptance_max_disagreement=max(disagreements) if disagreements else None,
        acceptance_by_position=by_position,
        acceptance_histogram=histogram,
    )


@dataclass
class RunSet:
    plan: SetPlan
    runs: list[RunResult] = field(default_factory=list)
    error: str | None = None
    error_kind: str | None = None

    @property
    def complete(self) -> bool:
        return self.error is None and len(self.runs) == self.planned_runs

    @property
    def planned_runs(self) -> int:
        return 1 + self.plan.warm

    def summary(self) -> Summary:
        return summarise(self.runs)


def parse_shapes(shapes: list[str]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for shape in shapes:
        match = SHAPE_RE.match(shape.strip())
        if not match or int(match.group(1)) < 1 or int(match.group(2)) < 2:
            raise BadInput(
                f"bad shape {shape!r}", "write INPUT:OUTPUT tokens, e.g. --shape 2048:512 (output at least 2)"
            )
        out.append((int(match.group(1)), int(match.group(2))))
    return out


def plan_sets(
    shapes: list[tuple[int, int]],
    concurrencies: list[int],
    warm: int,
    real_output: int | None,
    real_repeats: int = 1,
) -> list[SetPlan]:
    if warm < 0:
        raise BadInput(f"--warm {warm} is negative", "pass 0 or more warm runs")
    if any(c < 1 for c in concurrencies):
        raise BadInput("--concurrency must be at least 1", "pass a positive number")
    plans = [SetPlan("synthetic", inp, out, c, warm) for inp, out in shapes for c in concurrencies]
    if real_output:
        # Each run sends one real prompt; every prompt runs `real_repeats` times, cold first.
        runs = len(prompts.REAL_PROMPTS) * real_repeats
        plans.append(SetPlan("real", None, real_output, 1, runs - 1))
    return plans


ProgressHook = Callable[[RunSet, RunResult | None], None]


def require_vocab(endpoint: Endpoint, prompt_mode: prompts.PromptMode) -> None:
    if prompt_mode == "random" and not endpoint.vocab_size:
        raise BadInput(
            f"random-token prompts need the vocabulary size; {endpoint.url} does not list it",
            "pass --vocab-size N (the tokenizer's size), or --prompts words",
        )


class Smoke:
    """Runs the planned sets against one endpoint. `run()` returns every set, finished or not."""

    def __init__(
        self,
        endpoint: Endpoint,
        plans: list[SetPlan],
        *,
        timeout_s: float = 600.0,
        seed: int = 0,
        on_run: ProgressHook | None = None,
        check_cache: bool = True,
        transport: Any | None = None,
        prompt_mode: prompts.PromptMode = "words",
        fresh_server: bool = False,
    ) -> None:
        require_vocab(endpoint, prompt_mode)
        self.prompt_mode = prompt_mode
        # A server started for this measurement has an empty prefix cache, so the prompts can be
        # fixed by the seed (prompts.seeded_tag) instead of fresh nonces: same seed, same prompts.
        self.fresh_server = fresh_server
        self.transport = transport
        self.endpoint = endpoint
        self.plans = plans
        self.timeout_s = timeout_s
        self.seed = seed
        self.on_run = on_run
        self.check_cache = check_cache
        self.sets: list[RunSet] = []

    async def run(self) -> list[RunSet]:
        async with BenchClient(self.endpoint, self.timeout_s, self.transport) as client:
            for number, plan in enumerate(self.plans):
                run_set = RunSet(plan)
                self.sets.append(run_set)
                for index in range(run_set.planned_runs):
                    try:
                        run = await self._one_run(client, plan, index, number)
                    except RequestFailed as err:
                        run_set.error = err.one_line()
                        run_set.error_kind = err.kind
                        if self.on_run:
                            self.on_run(run_set, None)
                        return self.sets
                    run_set.runs.append(run)
                    if self.on_run:
                        self.on_run(run_set, run)
        return self.sets

    def _tag(self, seed: int) -> str:
        return prompts.seeded_tag(seed) if self.fresh_server else prompts.nonce()

    async def _prompt_ids(self, client: BenchClient, length: int, seed: int) -> list[int]:
        tag = self._tag(seed)
        if self.prompt_mode == "random":
            assert self.endpoint.vocab_size is not None
            return prompts.random_ids(tag, length, self.endpoint.vocab_size, seed)
        words = max(16, length)
        for _ in range(6):
            tokens = await client.tokenize(prompts.synthetic_text(tag, words, seed))
            if len(tokens) >= length:
                return tokens[:length]
            words = int(words * 1.5) + 16
        raise RequestFailed("prompt", f"could not build a {length}-token prompt from {words} words")

    async def _one_run(self, client: BenchClient, plan: SetPlan, index: int, set_number: int) -> RunResult:
        # Every request of the measurement gets its own seed (sets x runs x concurrency): with seeded
        # prompts (fresh_server) a repeated seed would repeat a prompt, and the server's cache with it.
        base_seed = self.seed + 1_000_000 * set_number + 1000 * index
        names: list[str] | None = None
        if plan.kind == "synthetic":
            assert plan.input_tokens is not None
            prompt_ids = [
                await self._prompt_ids(client, plan.input_tokens, base_seed + i)
                for i in range(plan.concurrency)
            ]
        else:
            all_names = list(prompts.REAL_PROMPTS)
            names = [all_names[(index + i) % len(all_names)] for i in range(plan.concurrency)]
        before = await client.counters()
        started = time.perf_counter()
        if plan.kind == "synthetic":
            coros = [
                client.complete(ids, plan.output_tokens, base_seed + i) for i, ids in enumerate(prompt_ids)
            ]
        else:
            assert names is not None
            coros = [
                client.chat(
                    prompts.real_prompt(name, self._tag(base_seed + i)), plan.output_tokens, base_seed + i
                )
                for i, name in enumerate(names)
            ]
        results = await _gather_or_cancel(coros)
        wall = time.perf_counter() - started
        after = await client.counters()
        counters = None
        if before is not None and after is not None:
            counters = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
        if self.check_cache:
            for result in results:
                floor = CACHED_TOKENS_ALLOWED if plan.kind == "synthetic" else CACHED_TOKENS_ALLOWED_CHAT
                allowed = max(floor, int(CACHED_SHARE_ALLOWED * result.prompt_tokens))
                if result.cached_tokens is not None and result.cached_tokens > allowed:
                    raise RequestFailed(
                        "cached",
                        f"the server reused {result.cached_tokens} cached prompt tokens of "
                        f"{result.prompt_tokens} for a unique prompt, so prefill was not measured",
                        "report it: every prompt starts with a fresh nonce",
                    )
        return RunResult(
            index=index,
            cold=index == 0,
            concurrency=plan.concurrency,
            wall_s=wall,
            requests=results,
            counters=counters,
            prompt_names=names,
        )


async def _gather_or_cancel(coros: list[Any]) -> list[RequestResult]:
    """All requests of a run, or the first failure with the others cancelled (no stray requests)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


# --- gate -------------------------------------------------------------------------------------------


@dataclass
class GateResult:
    shape: str
    concurrency: int
    metric: str
    statistic: str
    expected: float
    measured: float | None
    tolerance: float
    passed: bool
    source: str
    warm_only: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "concurrency": self.concurrency,
            "metric": self.metric,
            "statistic": self.statistic,
            "expected": self.expected,
            "measured": None if self.measured is None else round(self.measured, 4),
            "tolerance": self.tolerance,
            "passed": self.passed,
            "source": self.source,
            "warm_only": self.warm_only,
        }

    def describe(self) -> str:
        got = "not measured" if self.measured is None else f"{self.measured:.2f}"
        statistic = self.statistic.replace("_", " ")
        return (
            f"{self.shape} c{self.concurrency} {self.metric}: {statistic} {got}, "
            f"expected {self.expected:g} (tolerance {self.tolerance:.0%})"
        )


def gate(profile: Profile, sets: list[RunSet], tolerance: float = 0.10) -> list[GateResult]:
    """Compare the measured statistics with the profile's expected values (warm runs only where the
    post reported warm runs only). Lower is better for times (`METRIC_LOWER_IS_BETTER`)."""
    results: list[GateResult] = []
    for expected in profile.expected:
        tol = expected.tolerance if expected.tolerance is not None else tolerance
        match = next(
            (
                s
                for s in sets
                if s.plan.kind == "synthetic"
                and s.plan.shape == expected.shape
                and s.plan.concurrency == expected.concurrency
                and s.runs
            ),
            None,
        )
        runs = [] if match is None else [r for r in match.runs if not (expected.warm_only and r.cold)]
        statistic = expected.statistic.removeprefix("warm_")
        measured = summarise(runs).metric(expected.metric, statistic) if runs else None
        if measured is None:
            passed = False
        elif expected.metric in METRIC_LOWER_IS_BETTER:
            passed = measured <= expected.value * (1 + tol)
        else:
            passed = measured >= expected.value * (1 - tol)
        results.append(
            GateResult(
                shape=expected.shape,
                concurrency=expected.concurrency,
                metric=expected.metric,
                statistic=expected.statistic,
                expected=expected.value,
                measured=measured,
                tolerance=tol,
                passed=passed,
                source=expected.source,
                warm_only=expected.warm_only,
            )
        )
    return results
