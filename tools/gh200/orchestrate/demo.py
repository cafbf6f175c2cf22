"""`gh200 demo`: the README's first command, the whole path on a laptop-class machine.

Engine up (Docker, or Podman started here), the llama.cpp image built if missing, the tiny model
generated, `local-tiny` deployed, smoke-benchmarked, and the report printed. The same functions run
a GH200 profile; only the data differ.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from gh200.output import console

DEMO_PROFILE = "local-tiny"
DEMO_SHAPES = ["128:64", "512:128"]
DEMO_CONCURRENCY = [1, 4]
DEMO_WARM = 5
DEMO_REAL_OUTPUT = 64


@dataclass
class DemoResult:
    steps: dict[str, Any]
    outcome: Any

    def as_json(self) -> dict[str, Any]:
        return {
            "changed": bool(self.steps.get("deploy", {}).get("changed")),
            "steps": self.steps,
            "smoke": self.outcome.as_json(),
        }


def demo(
    *,
    show_progress: bool = True,
    warm: int = DEMO_WARM,
    shapes: list[str] | None = None,
    concurrency: list[int] | None = None,
) -> DemoResult:
    from gh200.bench.run import default_plans, run, target_for_profile
    from gh200.deploy.deploy import deploy, resolve_image
    from gh200.deploy.tinymodel import ensure_tiny_model
    from gh200.engine import connect, ensure_base_image
    from gh200.orchestrate.smoke_check import short_smoke
    from gh200.profiles import load_profile

    steps: dict[str, Any] = {}
    started = time.monotonic()

    def step(name: str, text: str) -> None:
        if show_progress:
            console.rule(f"[bold]{name}[/]: {text}")

    step("1/5 engine", "Docker if it answers, else Podman started here")
    client = connect()
    from gh200.engine import is_podman

    steps["engine"] = {"podman": is_podman(client)}
    ensure_base_image(client)

    profile = load_profile(DEMO_PROFILE)
    step("2/5 image", "the CPU llama.cpp server, built from the pinned llama-cpp-python sdist once")
    t0 = time.monotonic()
    steps["image"] = {
        "tag": resolve_image(client, profile, progress=show_progress),
        "seconds": round(time.monotonic() - t0, 1),
    }

    step("3/5 model", "tiny llama: real llama-spm vocab, random weights, plus a one-layer draft")
    tiny = ensure_tiny_model(profile)
    steps["model"] = tiny.as_json()
    if show_progress:
        console.print(
            f"{'generated' if tiny.changed else 'reused'} {tiny.directory} ({tiny.size_bytes / 1e6:.1f} MB)",
            highlight=False,
        )

    step("4/5 deploy", f"{DEMO_PROFILE}: start, wait for /health and /v1/models, short smoke")
    deployed = deploy(client, profile, progress=show_progress, smoke=short_smoke)
    steps["deploy"] = deployed.as_json()
    if show_progress:
        row = deployed.targets[0]
        state = "started" if deployed.changed else "already running (same profile hash)"
        console.print(f"{DEMO_PROFILE} {state} at {row['url']} ({row['container']})", highlight=False)

    step("5/5 smoke", "one cold + warm runs per shape, unique prompts, exact lengths, real prompts too")
    target = target_for_profile(profile, client)
    plans = default_plans(
        target,
        shapes=shapes or DEMO_SHAPES,
        concurrencies=concurrency or DEMO_CONCURRENCY,
        warm=warm,
        real_output=DEMO_REAL_OUTPUT,
    )
    outcome = run(target, plans, show_progress=show_progress)
    steps["seconds"] = round(time.monotonic() - started, 1)
    return DemoResult(steps, outcome)
