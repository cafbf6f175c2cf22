"""One smoke benchmark end to end: find the server, run the sets, report, record, gate.

Shared by `gh200 smoke`, `gh200 sweep`, `gh200 demo` and the client-overhead benchmark, so the demo
runs the very code a GH200 profile does.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gh200.baseline.facts import collect_facts
from gh200.bench import report
from gh200.bench.client import Endpoint, ModelNotServed, probe
from gh200.bench.prompts import PromptMode
from gh200.bench.results import append_records, default_results_path, make_record
from gh200.bench.smoke import (
    DEFAULT_SHAPES,
    GateResult,
    RunResult,
    RunSet,
    SetPlan,
    Smoke,
    SmokeFailed,
    gate,
    parse_shapes,
    plan_sets,
    require_vocab,
)
from gh200.errors import BadInput, OperationFailed
from gh200.output import console, progress, table_console
from gh200.profiles.schema import Profile


class GateFailed(OperationFailed):
    """A measured median fell below the profile's expected value by more than the tolerance."""


@dataclass
class Target:
    """What is benchmarked: an endpoint, and what the record says about it."""

    endpoint: Endpoint
    label: str
    context: dict[str, Any]
    profile: Profile | None = None


@dataclass
class Outcome:
    target: Target
    sets: list[RunSet]
    results_path: Path | None
    gates: list[GateResult] = field(default_factory=list)
    run_id: str = ""

    @property
    def failed_set(self) -> RunSet | None:
        return next((s for s in self.sets if s.error), None)

    def as_json(self) -> dict[str, Any]:
        failed = self.failed_set
        return {
            "ok": failed is None and all(g.passed for g in self.gates),
            "run_id": self.run_id,
            "target": self.target.label,
            "url": self.target.endpoint.url,
            "engine": self.target.endpoint.kind,
            "model": self.target.endpoint.model,
            **{k: v for k, v in self.target.context.items() if k not in ("url",)},
            "results_path": str(self.results_path) if self.results_path else None,
            "error": failed.error if failed else None,
            "sets": [
                {
                    "shape": s.plan.shape,
                    "label": s.plan.label,
                    "concurrency": s.plan.concurrency,
                    "complete": s.complete,
                    "error": s.error,
                    "summary": s.summary().as_json(),
                    "runs": [r.as_json() for r in s.runs],
                }
                for s in self.sets
            ],
            "gate": [g.as_json() for g in self.gates],
            "markdown": report.markdown(self.target.label, self.sets, self.gates or None),
        }


def target_for_profile(profile: Profile, client: Any | None = None) -> Target:
    """The deployed container of `profile` (found by label): its URL, image and model revision."""
    from gh200.engine import connect
    from gh200.profiles import profile_hash
    from gh200.served import L_HASH, L_IMAGE_TAG, api_key_for, base_url, engine_kind, running_containers

    client = client or connect()
    running = running_containers(client, profile.name)
    if not running:
        raise BadInput(
            f"profile {profile.name} is not deployed here",
            f"run `gh200 deploy {profile.name}` first, or pass --url",
        )
    labels = dict(running[0].labels or {})
    api_key = api_key_for(profile)
    endpoint = asyncio.run(probe(base_url(profile), api_key=api_key, model=profile.model.served_name))
    if endpoint.kind != engine_kind(profile.engine) and endpoint.kind != "openai":
        console.print(
            f"[yellow]note:[/] {endpoint.url} answers like {endpoint.kind}, the profile says {profile.engine}"
        )
    context = {
        "profile": profile.name,
        "profile_hash": labels.get(L_HASH),
        "profile_file_matches": labels.get(L_HASH) == profile_hash(profile),
        "image": labels.get(L_IMAGE_TAG) or labels.get("io.gh200.image"),
        # The image ID the container runs: a rebuilt tag shows up here when the tag does not change.
        "image_digest": (running[0].attrs or {}).get("Image"),
        "model": profile.model.repo,
        "model_revision": labels.get("io.gh200.model-revision"),
        "served_model": profile.model.served_name,
        "speculative": profile.settings.speculative.model_dump() if profile.settings.speculative else None,
        "container": running[0].name,
        "url": endpoint.url,
        "engine": endpoint.kind,
        "server_version": endpoint.server_version,
        "launch_args": launch_args(running[0]),
    }
    return Target(endpoint, profile.name, context, profile)


SECRET_FLAGS = ("--api-key", "--hf-token")


def launch_args(container: Any) -> list[str] | None:
    """The server's argv: a label carrying it (JSON list) if the deploy set one, else the container's
    entrypoint and command. Values of secret flags are masked."""
    argv: list[str] | None = None
    for key, value in (getattr(container, "labels", None) or {}).items():
        if key.rsplit(".", 1)[-1] in ("argv", "args", "launch-args", "command"):
            try:
                parsed = json.loads(value)
            except (TypeError, ValueError):
                parsed = None
            if isinstance(parsed, list) and all(isinstance(a, str) for a in parsed):
                argv = list(parsed)
                break
    if argv is None:
        attrs = getattr(container, "attrs", None)
        config = (attrs.get("Config") if isinstance(attrs, dict) else None) or {}
        parts: list[str] = []
        for field_name in ("Entrypoint", "Cmd"):
            value = config.get(field_name)
            if isinstance(value, str):
                parts.append(value)
            elif isinstance(value, list):
                parts += [str(v) for v in value]
        argv = parts or None
    if argv is None:
        return None
    masked: list[str] = []
    for i, arg in enumerate(argv):
        if i > 0 and argv[i - 1] in SECRET_FLAGS:
            masked.append("***")
        elif any(arg.startswith(flag + "=") for flag in SECRET_FLAGS):
            masked.append(arg.split("=", 1)[0] + "=***")
        else:
            masked.append(arg)
    return masked


def target_for_url(url: str, api_key: str | None = None, model: str | None = None) -> Target:
    try:
        endpoint = asyncio.run(probe(url, api_key=api_key, model=model))
    except ModelNotServed as err:
        # The user named the model: their input is wrong, and the fix is one the server listed.
        served = ", ".join(err.served)
        fix = f"pass --model with one it lists: {served}" if err.served else "the server lists no model"
        raise BadInput(err.message, fix) from err
    context = {
        "profile": None,
        "image": None,
        "model": endpoint.model,
        "model_revision": None,
        "served_model": endpoint.model,
        "url": endpoint.url,
        "engine": endpoint.kind,
        "server_version": endpoint.server_version,
        "launch_args": None,
    }
    return Target(endpoint, url, context)


def default_plans(
    target: Target,
    *,
    shapes: list[str] | None,
    concurrencies: list[int] | None,
    warm: int,
    real_output: int | None,
    real_repeats: int = 1,
    for_gate: bool = False,
) -> list[SetPlan]:
    """Explicit shapes, else the profile's expected shapes (always under --gate), else the posts' four."""
    profile = target.profile
    if (for_gate or not shapes) and profile is not None and profile.expected:
        pairs = sorted({(e.shape, e.concurrency) for e in profile.expected})
        explicit = parse_shapes(shapes) if shapes else []
        plans = [
            SetPlan("synthetic", inp, out, c, warm)
            for shape, c in pairs
            for inp, out in parse_shapes([shape])
        ]
        plans += [
            SetPlan("synthetic", inp, out, c, warm)
            for inp, out in explicit
            for c in (concurrencies or [1])
            if not any(p.input_tokens == inp and p.output_tokens == out and p.concurrency == c for p in plans)
        ]
        if real_output:
            plans += plan_sets([], [1], warm, real_output, real_repeats)
        return _fit(target, plans, explicit=bool(shapes))
    chosen = parse_shapes(shapes or list(DEFAULT_SHAPES))
    plans = plan_sets(chosen, concurrencies or [1], warm, real_output, real_repeats)
    return _fit(target, plans, explicit=bool(shapes))


def _fit(target: Target, plans: list[SetPlan], explicit: bool) -> list[SetPlan]:
    """Shapes must fit the server's context; explicit ones that do not are an input error."""
    limit = target.endpoint.context
    if limit is None:
        return plans
    kept: list[SetPlan] = []
    for plan in plans:
        need = (plan.input_tokens or 0) + plan.output_tokens
        if plan.kind == "synthetic" and need >= limit:
            message = (
                f"shape {plan.shape} needs {need} tokens of context; "
                f"{target.endpoint.url} offers {limit} per request"
            )
            if explicit:
                raise BadInput(message, "pass a smaller --shape, or give the server a larger context")
            console.print(f"[yellow]skipped:[/] {message}")
            continue
        kept.append(plan)
    if not kept:
        raise BadInput(f"no shape fits the server's context of {limit} tokens", "pass --shape IN:OUT")
    return kept


def run(
    target: Target,
    plans: list[SetPlan],
    *,
    results_path: Path | None = None,
    write_results: bool = True,
    show_progress: bool = True,
    timeout_s: float = 600.0,
    seed: int = 0,
    do_gate: bool = False,
    tolerance: float = 0.10,
    prompt_mode: PromptMode = "words",
    fresh_server: bool = False,
) -> Outcome:
    """Run the plans; append one record per set (finished or not) to the results file.

    `fresh_server`: the server was started for this measurement, so its prompts are the seeded ones
    (Smoke's `fresh_server`) and the record says so: two such records compare like for like."""
    require_vocab(target.endpoint, prompt_mode)
    run_id = uuid.uuid4().hex[:12]
    target.context["prompt_mode"] = prompt_mode
    target.context["prompts"] = "seeded" if fresh_server else "fresh"
    # What explains a change in speed beside the profile: driver, CUDA, kernel, page size, bundle and
    # the server's version (read once by the client's probe), in every record of this run.
    target.context["facts"] = collect_facts(target.endpoint.kind, target.endpoint.server_version).as_json()
    path = (results_path or default_results_path()) if write_results else None
    with progress(show_progress) as bar:
        tasks: dict[int, Any] = {}

        def on_run(run_set: RunSet, run: RunResult | None) -> None:
            key = id(run_set)
            if key not in tasks:
                tasks[key] = bar.add_task(f"{target.label} {run_set.plan.label}", total=run_set.planned_runs)
            if run is not None:
                extra = f" acc {run.acceptance:.0%}" if run.acceptance is not None else ""
                bar.update(
                    tasks[key],
                    advance=1,
                    description=f"{target.label} {run_set.plan.label}: {run.output_tok_s:.1f} tok/s{extra}",
                )

        smoke = Smoke(
            target.endpoint,
            plans,
            timeout_s=timeout_s,
            seed=seed,
            on_run=on_run,
            prompt_mode=prompt_mode,
            fresh_server=fresh_server,
        )
        try:
            sets = asyncio.run(smoke.run())
        except KeyboardInterrupt:
            sets = smoke.sets
            if sets and not sets[-1].error:
                sets[-1].error, sets[-1].error_kind = "interrupted", "interrupted"
            _record(path, sets, target, run_id)
            raise
    _record(path, sets, target, run_id)
    outcome = Outcome(target, sets, path, run_id=run_id)
    if do_gate and target.profile is not None and outcome.failed_set is None:
        outcome.gates = gate(target.profile, sets, tolerance)
    return outcome


def _record(path: Path | None, sets: list[RunSet], target: Target, run_id: str) -> None:
    if path is None:
        return
    append_records(path, [make_record(s, target.context, run_id) for s in sets if s.runs or s.error])


def print_report(outcome: Outcome, markdown_to_stdout: bool = True) -> None:
    screen = table_console()
    for table in report.rich_tables(outcome.target.label, outcome.sets, outcome.gates or None):
        screen.print(table)
    if markdown_to_stdout:
        print(report.markdown(outcome.target.label, outcome.sets, outcome.gates or None), end="")
    if outcome.results_path:
        console.print(f"results appended to {outcome.results_path}", highlight=False)


def raise_for_outcome(outcome: Outcome) -> None:
    """The failure line for a stopped benchmark or a failed gate (the measured runs are kept)."""
    failed = outcome.failed_set
    if failed is not None:
        kept = sum(len(s.runs) for s in outcome.sets)
        where = f"{failed.plan.label} run {len(failed.runs) + 1} of {failed.planned_runs}"
        saved = f"; {kept} measured runs kept in {outcome.results_path}" if outcome.results_path else ""
        raise SmokeFailed(f"smoke stopped at {where}: {failed.error}{saved}", _fix_for(failed.error_kind))
    bad = [g for g in outcome.gates if not g.passed]
    if bad:
        raise GateFailed(
            "below expectation: " + "; ".join(g.describe() for g in bad),
            "compare with `gh200 status` and the profile's source; rerun to rule out noise",
        )


def _fix_for(kind: str | None) -> str:
    return {
        "connect": "check that the server runs (`gh200 status`, `gh200 logs PROFILE`)",
        "closed": "the server went away mid-run: see `gh200 logs PROFILE`",
        "timeout": "raise --timeout or use a smaller shape",
        "short": "give each request enough context (input + output) and check ignore_eos support",
        "cached": "the server reused a cached prefix; check its prefix-cache settings",
        "http": "read the server's message; check the model name and the request size",
    }.get(kind or "", "see the message")
