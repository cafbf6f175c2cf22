"""Results records written by the real results code from run sets with known figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gh200.bench.client import RequestResult
from gh200.bench.results import append_records, make_record
from gh200.bench.smoke import RunResult, RunSet, SetPlan

CONTEXT = {
    "profile": "local-tiny",
    "image": "gh200/llama_cpp:abc",
    "profile_hash": "h1",
    "model_revision": "r",
}
STEADY = [300.0, 301.0, 302.0, 303.0, 304.0, 305.0, 306.0, 307.0, 308.0, 309.0, 310.0]


def run_set(
    tok_s: list[float],
    shape: tuple[int, int] = (64, 128),
    error: str | None = None,
    acceptance: float | None = None,
    concurrency: int = 1,
) -> RunSet:
    plan = SetPlan("synthetic", shape[0], shape[1], concurrency, len(tok_s) - 1 + (1 if error else 0))
    s = RunSet(plan, error=error, error_kind="closed" if error else None)
    for i, t in enumerate(tok_s):
        wall = shape[1] / t
        request = RequestResult(
            prompt_tokens_asked=shape[0],
            output_tokens_asked=shape[1],
            prompt_tokens=shape[0],
            completion_tokens=shape[1],
            cached_tokens=0,
            ttft_s=0.01,
            e2e_s=wall,
            tpot_ms=(wall - 0.01) * 1000 / (shape[1] - 1),
            itl_ms_median=None,
            itl_ms_p90=None,
            itl_ms_max=None,
            chunks=shape[1],
            finish_reason="length",
        )
        counters = None
        if acceptance is not None:
            counters = {"draft_tokens": 300.0, "accepted_tokens": 300.0 * acceptance, "drafts": 100.0}
        s.runs.append(
            RunResult(index=i, cold=i == 0, concurrency=1, wall_s=wall, requests=[request], counters=counters)
        )
    return s


def record_run(path: Path, run_id: str, sets: list[RunSet], at: str | None = None, **context: Any) -> None:
    records = [make_record(s, {**CONTEXT, **context}, run_id) for s in sets]
    for record in records:
        record["time"] = at or record["time"]
    append_records(path, records)


def history(path: Path) -> None:
    """Eight run sets of glm52-awq-mtp3 at 2048:512 over two weeks: a driver upgrade on the fifth
    (about 12% slower from then on), a new image on the seventh. The second is accepted by callers."""
    for day in range(8):
        slow = 0.88 if day >= 4 else 1.0
        facts = {"driver": "570.86.15" if day < 4 else "575.51.03", "kernel": "6.8.0-1021-nvidia-64k"}
        record_run(
            path,
            f"{day:04d}aaaa0000",
            [run_set([t / 7.0 * slow for t in STEADY], (2048, 512), acceptance=0.72 - 0.01 * (day % 3))],
            at=f"2026-11-{10 + 2 * day:02d}T09:00:00+00:00",
            profile="glm52-awq-mtp3",
            image="gh200/vllm:v0.33.0-p1" if day < 6 else "gh200/vllm:v0.33.0-p2",
            facts=facts,
        )
