"""The short smoke `gh200 deploy` runs on each new container before it counts as deployed."""

from __future__ import annotations

import asyncio
from typing import Any

from gh200.bench.client import Endpoint
from gh200.bench.smoke import SetPlan, Smoke
from gh200.deploy.deploy import DeployFailed, Target
from gh200.served import base_url, engine_kind


def short_smoke(target: Target, api_key: str | None) -> dict[str, Any]:
    """One small streamed request pair against the new server: it must answer as a benchmark would."""
    endpoint = Endpoint(
        url=base_url(target.profile),
        model=target.profile.model.served_name,
        kind="vllm" if engine_kind(target.profile.engine) == "vllm" else "llama_cpp",
        api_key=api_key,
    )
    smoke = Smoke(endpoint, [SetPlan("synthetic", 32, 16, 1, 1)], timeout_s=300)
    sets = asyncio.run(smoke.run())
    run_set = sets[0]
    if run_set.error:
        raise DeployFailed(f"{target.name}: the short smoke failed: {run_set.error}", "see `gh200 logs`")
    summary = run_set.summary()
    return {
        "profile": target.name,
        "runs": summary.runs,
        "output_tok_s": summary.output_tok_s.median if summary.output_tok_s else None,
    }
