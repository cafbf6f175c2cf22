"""`gh200 rollout PROFILE`: deploy a new version, smoke it, gate it against this host's baseline.

The new version (the profile file as it is now, or `--image REF`) is deployed by `deploy`, whose
smoke callback here measures it the way the posts did (one cold + N warm runs per shape), records
the run with the host facts, and compares it with this host's accepted baseline for the profile and
shape (baseline.store.find_baseline, baseline.gate.compare_runs). A regression raises inside the
callback, so deploy's own roll-back removes the new container and restarts the previous one: there
is one roll-back path, deploy's. The result names the metric that moved (medians, %, p-value) and
what changed between the baseline's record and the new one (baseline.facts.fact_diff).

The gate's floor (the smallest shift that counts) is the gate's 5% unless `--min-effect` gives the
one this host's noise needs (`make bench-gate` measures it); one floor for every gated metric, named
in the message and the JSON.

A flagged run set is measured again (`--confirm N`, default 1) before anything is rolled back: a
regression is a version that every one of the 1 + N sets finds slower. One busy minute on a shared
machine (a neighbour's job, the engine restarting a container) can slow a whole set; a second set
right after rarely is slowed too, while a version that really is slower is slower every time. The
flagged sets that a later one did not confirm are named in the result; every set is recorded.

Every check on the input (profile, image, shape, runs) happens before anything is deployed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from docker import DockerClient
from docker.errors import DockerException, ImageNotFound

from gh200.baseline.facts import fact_changes, fact_diff
from gh200.baseline.gate import (
    DEFAULT_MIN_EFFECT,
    MIN_RUNS,
    MetricComparison,
    check_min_effect,
    compare_runs,
    floor_text,
    floors,
)
from gh200.baseline.store import Baseline, find_baseline, resolve_run, this_host
from gh200.baseline.store import accept as accept_baseline
from gh200.bench import run as bench_run
from gh200.bench.results import default_results_path
from gh200.bench.smoke import DEFAULT_SHAPES, SetPlan, parse_shapes
from gh200.bench.sweep import expected_plans
from gh200.deploy.deploy import DeployFailed, Target, deploy
from gh200.errors import BadInput, OperationFailed
from gh200.output import console
from gh200.profiles.schema import Profile
from gh200.served import running_containers

RolloutOutcome = Literal["passed", "accepted", "no_baseline", "rolled_back", "failed"]
EXIT_CODES: dict[str, int] = {
    "passed": 0,
    "accepted": 0,
    "no_baseline": 0,
    "rolled_back": 3,  # gh200.errors.Regression.exit_code
    "failed": 1,
}
DEFAULT_CONFIRM = 1
# A Docker image reference: [registry[:port]/]path[:tag][@sha256:digest], lower-case path.
IMAGE_REF_RE = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)


class _Regressed(DeployFailed):
    """Raised inside deploy's smoke callback so that deploy rolls the new version back."""


@dataclass(frozen=True)
class MetricRegression:
    """One gated metric of one shape that regressed: the gate's comparison and where."""

    shape: str
    concurrency: int
    comparison: MetricComparison

    def describe(self) -> str:
        c = self.comparison
        direction = "rose" if c.change > 0 else "fell"
        return (
            f"{c.metric} {direction} {abs(c.change):.1%} at {self.shape} c{self.concurrency} "
            f"(median {c.baseline_median:.4g} -> {c.new_median:.4g} {c.unit}, p={c.p_worse:.2g})"
        )

    def as_json(self) -> dict[str, Any]:
        c = self.comparison
        return {
            "metric": c.metric,
            "shape": self.shape,
            "concurrency": self.concurrency,
            "baseline_median": round(c.baseline_median, 6),
            "new_median": round(c.new_median, 6),
            "change_pct": round(c.change * 100, 3),
            "p_value": c.p_worse,
        }


@dataclass
class RolloutResult:
    outcome: RolloutOutcome
    profile: str
    host: str
    run_id: str | None = None
    baseline_run_id: str | None = None
    regressions: list[MetricRegression] = field(default_factory=list)
    changes: dict[str, list[Any]] = field(default_factory=dict)
    restored: str | None = None
    message: str = ""
    min_effect: float = DEFAULT_MIN_EFFECT  # the gate's floor on every gated metric
    # Run sets the gate flagged before the last one (a later set confirmed or overruled each).
    flagged_runs: list[str] = field(default_factory=list)
    # What Ansible reports (gh200_run reads the top-level `changed` of every --json command): a new
    # version deployed, a baseline written, or a new version started and rolled back.
    changed: bool = False

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.outcome]

    def as_json(self) -> dict[str, Any]:
        return {
            "changed": self.changed,
            "host": self.host,
            "profile": self.profile,
            "outcome": self.outcome,
            "message": self.message,
            "run_id": self.run_id,
            "baseline_run_id": self.baseline_run_id,
            "restored": self.restored,
            "min_effect": self.min_effect,
            "flagged_runs": list(self.flagged_runs),
            "regressions": [r.as_json() for r in self.regressions],
            "changes": self.changes,
        }


# --- input ---------------------------------------------------------------------------------------


def request_context(profile: Profile) -> int | None:
    """Tokens one request may use on the profile's server, as far as the profile says.

    llama-server splits --ctx-size over its --parallel slots; vLLM gives each request max_model_len.
    """
    settings = profile.settings
    if profile.engine == "vllm":
        return settings.max_model_len
    if settings.ctx_size is None:
        return None
    return settings.ctx_size // (settings.parallel or 1)


def rollout_plans(profile: Profile, shape: tuple[int, int] | None, warm_runs: int) -> list[SetPlan]:
    """The sets a rollout measures; BadInput for runs or a shape the gate or the profile cannot use."""
    if warm_runs < MIN_RUNS:
        raise BadInput(
            f"--warm {warm_runs}: the gate compares warm runs and needs at least {MIN_RUNS}",
            "pass --warm 10 (the posts' one cold + 10 warm), or at least 3",
        )
    limit = request_context(profile)
    if shape is not None:
        inp, out = shape
        if inp < 1 or out < 2:
            raise BadInput(f"shape {inp}:{out} is empty", "pass --shape INPUT:OUTPUT, e.g. 2048:512")
        plans = [SetPlan("synthetic", inp, out, 1, warm_runs)]
    elif profile.expected:
        plans = expected_plans(profile, warm_runs)
    else:
        # No expected values: the posts' 2048->512 where it fits, else the first smoke shape that does.
        candidates = [(2048, 512), *parse_shapes(list(DEFAULT_SHAPES))]
        fitting = [c for c in candidates if limit is None or c[0] + c[1] < limit]
        if not fitting:
            raise BadInput(
                f"{profile.name} offers {limit} tokens per request; no default shape fits",
                "pass --shape INPUT:OUTPUT that fits",
            )
        plans = [SetPlan("synthetic", fitting[0][0], fitting[0][1], 1, warm_runs)]
    for plan in plans:
        need = (plan.input_tokens or 0) + plan.output_tokens
        if limit is not None and need >= limit:
            raise BadInput(
                f"shape {plan.shape} needs {need} tokens of context; "
                f"{profile.name} offers {limit} per request",
                "pass a smaller --shape, or give the profile a larger context",
            )
    return plans


def check_confirm(confirm: int | str) -> int:
    """How many more run sets must confirm a flagged one (a count, or its text): 0 or more, or BadInput."""
    try:
        count = int(str(confirm).strip())
    except ValueError:
        count = -1
    if isinstance(confirm, bool) or count < 0:
        raise BadInput(
            f"--confirm {confirm}: the run sets that must confirm a regression are a count, 0 or more",
            "pass --confirm 1 (the default: one more run set before a roll-back) or 0 (roll back at once)",
        )
    return count


def with_image(profile: Profile, image: str) -> Profile:
    """The profile running `image` as it is (no recipe build on top): what `--image` deploys."""
    spec = profile.image.model_copy(update={"ref": image, "recipe": None})
    return profile.model_copy(update={"image": spec})


def check_image(client: DockerClient, image: str) -> None:
    if not IMAGE_REF_RE.match(image):
        raise BadInput(f"--image {image!r} is not an image reference", "pass e.g. gh200-vllm:0.34.0")
    try:
        client.images.get(image)
    except ImageNotFound as err:
        raise BadInput(
            f"image {image} is not on this host",
            "build it (`gh200 images build`) or pull it first; rollout never pulls mid-way",
        ) from err
    except DockerException as err:
        raise OperationFailed(
            f"looking up image {image} failed: {err}", "check the container engine"
        ) from err


# --- the gate after deploy ------------------------------------------------------------------------


@dataclass
class _Measured:
    run_id: str | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    baselines: dict[tuple[str, int], Baseline] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    regressions: list[MetricRegression] = field(default_factory=list)
    changes: dict[str, list[Any]] = field(default_factory=dict)
    change_lines: list[str] = field(default_factory=list)
    passed_lines: list[str] = field(default_factory=list)
    min_effect: float = DEFAULT_MIN_EFFECT
    # The sets measured before this one, each flagged: (run id, what moved).
    flagged: list[tuple[str, str]] = field(default_factory=list)

    def flagged_text(self) -> str:
        return "; ".join(f"run {run_id}: {moved}" for run_id, moved in self.flagged)

    def flagged_ids(self) -> list[str]:
        return [run_id for run_id, _ in self.flagged]

    def moved(self) -> str:
        """What this set's regressions moved, in one line."""
        return "; ".join(r.describe() for r in self.regressions)


def gate_records(records: list[dict[str, Any]], host: str, measured: _Measured) -> None:
    """Compare each recorded set with this host's baseline for its shape, at `measured.min_effect`
    on every gated metric; fill `measured`."""
    for record in records:
        shape, concurrency = str(record.get("shape")), int(record.get("concurrency") or 1)
        base = find_baseline(host, str(record.get("profile")), shape, concurrency)
        if base is None:
            measured.missing.append(f"{shape} c{concurrency}")
            continue
        measured.baselines[(shape, concurrency)] = base
        verdict = compare_runs(
            base.runs,
            [r for r in record.get("runs") or [] if isinstance(r, dict)],
            profile=str(record.get("profile")),
            shape=shape,
            concurrency=concurrency,
            min_effect=floors(measured.min_effect),
            changes=fact_changes(base.record, record),
        )
        if verdict.status == "insufficient":
            raise DeployFailed(
                f"{shape} c{concurrency} could not be compared with its baseline ({verdict.reason})",
                "rerun with more warm runs",
            )
        measured.regressions += [MetricRegression(shape, concurrency, c) for c in verdict.regressions]
        if not measured.changes:
            measured.changes = {k: list(v) for k, v in fact_diff(base.record, record).items()}
            measured.change_lines = list(verdict.changes)
        tok = next((c for c in verdict.comparisons if c.metric == "output_tok_s"), None)
        if tok is not None:
            measured.passed_lines.append(
                f"{shape} c{concurrency} {tok.new_median:.4g} vs {tok.baseline_median:.4g} tok/s"
                f" ({tok.change:+.1%})"
            )


def regression_message(
    profile: str, measured: _Measured, restored: str | None, rolled_out: bool = True
) -> str:
    """One line: which metric moved and by how much, what changed, what runs now."""
    moved = measured.moved()
    changed = ", ".join(measured.change_lines) if measured.change_lines else "no recorded fact"
    floor = f"gate floor {floor_text(measured.min_effect)}"
    if measured.flagged:
        # The message leads with the last set; the ones it confirmed follow.
        floor += f"; confirms the {len(measured.flagged)} set(s) before ({measured.flagged_text()})"
    if not rolled_out:
        return (
            f"{profile} is slower than its baseline (nothing was rolled out: this version was already"
            f" running): {moved}; {floor}; changed: {changed}"
        )
    where = f"restored {restored}" if restored else "nothing to restore (no previous container)"
    return (
        f"{profile} is slower than its baseline and was rolled back: {moved}; {floor}; changed: {changed};"
        f" {where}"
    )


# --- rollout ---------------------------------------------------------------------------------------


def rollout(
    profile: Profile,
    *,
    image: str | None = None,
    accept: bool = False,
    shape: tuple[int, int] | None = None,
    warm_runs: int = 10,
    min_effect: float | None = None,
    confirm: int = DEFAULT_CONFIRM,
    client: DockerClient | None = None,
    progress: bool = True,
) -> RolloutResult:
    """Deploy, measure, gate, roll back on a regression (see the module doc). Raises BadInput before
    any deploy for bad input; every other ending is a RolloutResult. `min_effect`: the gate's floor
    on every gated metric (None: the gate's default); `confirm`: how many more run sets must find a
    flagged version slower too before it is rolled back."""
    floor = DEFAULT_MIN_EFFECT if min_effect is None else check_min_effect(min_effect)
    confirm = check_confirm(confirm)
    plans = rollout_plans(profile, shape, warm_runs)
    if client is None:
        from gh200.engine import connect

        client = connect()
    if image is not None:
        check_image(client, image)
        profile = with_image(profile, image)
    host = this_host()
    results_path = default_results_path()
    previous = [c.name for c in running_containers(client, profile.name)]
    measured = _Measured(min_effect=floor)

    def measure_and_gate(fresh_server: bool) -> dict[str, Any]:
        nonlocal measured
        flagged: list[tuple[str, str]] = []
        for attempt in range(confirm + 1):
            measured = _Measured(min_effect=floor, flagged=list(flagged))
            # Only the first set may use seeded prompts: the next ones find them in the prefix cache.
            run_id = measure_once(fresh_server and attempt == 0)
            if not measured.regressions:
                return {"profile": profile.name, "run_id": run_id}
            moved = measured.moved()
            flagged.append((run_id, moved))
            if attempt < confirm and progress:
                console.print(
                    f"{profile.name}: run {run_id} is slower than the baseline ({moved}); measuring again"
                    f" to confirm ({attempt + 1} of {confirm})",
                    highlight=False,
                    soft_wrap=True,
                )
        raise _Regressed(regression_message(profile.name, measured, None), "see the rollout's message")

    def measure_once(fresh_server: bool) -> str:
        target = bench_run.target_for_profile(profile, client)
        if progress:
            console.rule(f"{profile.name}: {', '.join(p.label for p in plans)}, 1 cold + {warm_runs} warm")
        # A container deploy just started has an empty prefix cache: seeded prompts, the same as the
        # baseline's when it came from a rollout too, so the two sets differ by the server, not the text.
        outcome = bench_run.run(
            target, plans, results_path=results_path, show_progress=progress, fresh_server=fresh_server
        )
        measured.run_id = outcome.run_id
        if progress:
            bench_run.print_report(outcome, markdown_to_stdout=False)
        failed = outcome.failed_set
        if failed is not None:
            raise DeployFailed(
                f"the rollout's benchmark stopped at {failed.plan.label}: {failed.error}", "see `gh200 logs`"
            )
        measured.records = resolve_run(outcome.run_id, results_path)
        gate_records(measured.records, host, measured)
        return outcome.run_id

    def smoke(_target: Target, _api_key: str | None) -> dict[str, Any]:
        return measure_and_gate(fresh_server=True)

    result = RolloutResult("failed", profile.name, host, min_effect=floor)
    in_place = False
    try:
        if progress:
            console.rule(f"{profile.name}: deploy" + (f" {image}" if image else ""))
        deployed = deploy(client, profile, progress=progress, smoke=smoke)
        result.changed = bool(deployed.changed)
        if not deployed.changed:
            # This very version already runs healthy, so deploy started nothing: measure it in place.
            in_place = True
            if progress:
                console.print(
                    f"{profile.name}: this version already runs; measuring it in place", highlight=False
                )
            measure_and_gate(fresh_server=False)
    except _Regressed:
        result = _ended(result, measured, client, previous)
        if in_place:
            # Nothing new was started, so nothing was rolled back: slower, but not by this rollout.
            result.restored = None
            result.message = regression_message(profile.name, measured, None, rolled_out=False)
            return result
        result.outcome = "rolled_back"
        result.changed = True
        result.message = regression_message(profile.name, measured, result.restored)
        return result
    except OperationFailed as err:
        # Not healthy, benchmark stopped, image build failed...: deploy restored what it had stopped.
        result = _ended(result, measured, client, previous)
        result.message = err.one_line()
        return result
    return _passed(result, measured, profile.name, accept, results_path)


def _ended(
    result: RolloutResult, measured: _Measured, client: DockerClient, previous: list[str]
) -> RolloutResult:
    """Fill what a rolled-back or failed rollout knows; `restored` is the previous container if it runs."""
    running = {c.name for c in running_containers(client, result.profile)}
    result.restored = next((name for name in previous if name in running), None)
    result.run_id = measured.run_id
    result.flagged_runs = measured.flagged_ids()
    result.regressions = measured.regressions
    result.changes = measured.changes
    base = next(iter(measured.baselines.values()), None)
    result.baseline_run_id = base.run_id if base else None
    return result


def _passed(
    result: RolloutResult, measured: _Measured, profile: str, accept: bool, results_path: Path
) -> RolloutResult:
    """A run that did not regress: passed, accepted as the new baseline, or passed without a baseline."""
    result.run_id = measured.run_id
    result.flagged_runs = measured.flagged_ids()
    result.changes = measured.changes
    base = next(iter(measured.baselines.values()), None)
    result.baseline_run_id = base.run_id if base else None
    # A flagged set that the next one did not confirm: named, since the user may want to look.
    overruled = (
        f"; not confirmed: {measured.flagged_text()}, then run {measured.run_id} passed"
        if measured.flagged
        else ""
    )
    if accept:
        written = accept_baseline(measured.records, source=str(results_path))
        result.changed = True
        result.outcome = "accepted"
        shapes = ", ".join(f"{b.shape} c{b.concurrency}" for b in written)
        result.message = f"{profile} run {measured.run_id} is now the baseline on {result.host} for {shapes}"
        if measured.passed_lines:
            result.message += f" (against the previous one: {'; '.join(measured.passed_lines)})"
        result.message += overruled
        return result
    if measured.missing:
        result.outcome = "no_baseline"
        result.message = (
            f"{profile} deployed and measured (run {measured.run_id}); no accepted baseline on {result.host} "
            f"for {', '.join(measured.missing)}: `gh200 rollout {profile} --accept` or "
            f"`gh200 baseline accept {measured.run_id}` makes one"
        )
        return result
    result.outcome = "passed"
    result.message = (
        f"{profile} passed the gate (floor {floor_text(measured.min_effect)}) against baseline run"
        f" {result.baseline_run_id}: " + "; ".join(measured.passed_lines) + overruled
    )
    return result
