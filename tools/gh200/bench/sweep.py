"""Walk the number of speculative tokens upward, redeploying each time, and stop by the posts' rule.

Part 3's rule: walk upward and stop when the curve gets worse. Its stricter repeat adds the tail:
a depth whose acceptance collapses on too many runs (MTP-4 at 8192->512: 6 of 11 runs under 60%)
fails as a default even when its best runs are fast. So a step stops the walk when its median
output tok/s falls below the best so far, or when more than a quarter of its runs accept under 60%.
The chosen value is the best median among the steps that did neither.
"""

from __future__ import annotations

import datetime as dt
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gh200.bench.run import Outcome, print_report, run, target_for_profile
from gh200.bench.smoke import SetPlan
from gh200.errors import BadInput, OperationFailed
from gh200.fsutil import atomic_write_bytes
from gh200.output import console
from gh200.paths import state_dir
from gh200.profiles.schema import Profile, SpeculativeSpec

MAX_SPEC_TOKENS = 16
TAIL_COLLAPSE_SHARE = 0.25


class SweepFailed(OperationFailed):
    """A step of the sweep could not be deployed or measured."""


def parse_spec_tokens(text: str) -> list[int]:
    """`1..` (up to 16), `2..5`, or `1,2,4`."""
    text = text.strip()
    match = re.fullmatch(r"(\d+)\.\.(\d+)?", text)
    if match:
        start = int(match.group(1))
        end = int(match.group(2)) if match.group(2) else MAX_SPEC_TOKENS
        values = list(range(start, end + 1))
    elif re.fullmatch(r"\d+(,\d+)*", text):
        values = sorted({int(v) for v in text.split(",")})
    else:
        raise BadInput(f"bad --spec-tokens {text!r}", "write 1.. or 1..5 or 1,2,3")
    if not values or values[0] < 1 or values[-1] > MAX_SPEC_TOKENS:
        raise BadInput(
            f"--spec-tokens {text!r} must lie within 1..{MAX_SPEC_TOKENS}", "pick values from 1 to 16"
        )
    return values


def with_spec_tokens(profile: Profile, tokens: int) -> Profile:
    """The profile with another number of speculative tokens (in memory only)."""
    spec = profile.settings.speculative
    if spec is None:
        raise BadInput(
            f"profile {profile.name} has no speculative decoding to sweep",
            "sweep a profile with settings.speculative set (method mtp or draft)",
        )
    settings = profile.settings.model_copy(
        update={"speculative": SpeculativeSpec(method=spec.method, num_speculative_tokens=tokens)}
    )
    return profile.model_copy(update={"settings": settings})


@dataclass
class Point:
    tokens: int
    runs: int
    median: float
    p10: float
    p90: float
    cv: float
    acceptance: float | None
    sub60_runs: int
    tpot_ms: float | None
    verdict: str = "ok"

    def as_json(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def tail_collapsed(point: Point) -> bool:
    return point.runs > 0 and point.sub60_runs / point.runs > TAIL_COLLAPSE_SHARE


def decide(points: list[Point]) -> tuple[int | None, str]:
    """(chosen value, why the walk stopped) for the points measured so far, in order.

    Marks each point's verdict; the caller stops walking when the reason is not "continue".
    """
    best: Point | None = None
    for point in points:
        if tail_collapsed(point):
            point.verdict = "acceptance tail collapsed"
            return (best.tokens if best else None), (
                f"{point.tokens}: {point.sub60_runs} of {point.runs} runs accepted under 60%"
            )
        if best is not None and point.median < best.median:
            point.verdict = "worse median"
            return (
                best.tokens,
                f"{point.tokens}: median {point.median:.2f} below {best.median:.2f} at {best.tokens}",
            )
        point.verdict = "ok"
        best = point
    return (best.tokens if best else None), "continue"


@dataclass
class SweepResult:
    profile: str
    shape: str
    concurrency: int
    points: list[Point] = field(default_factory=list)
    chosen: int | None = None
    reason: str = ""
    plot: Path | None = None
    outcomes: list[Outcome] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "shape": self.shape,
            "concurrency": self.concurrency,
            "points": [p.as_json() for p in self.points],
            "chosen": self.chosen,
            "reason": self.reason,
            "plot": str(self.plot) if self.plot else None,
            "changed": True,
        }


def save_plot(result: SweepResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p.tokens for p in result.points]
    medians = [p.median for p in result.points]
    low = [p.median - p.p10 for p in result.points]
    high = [p.p90 - p.median for p in result.points]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.errorbar(xs, medians, yerr=[low, high], marker="o", capsize=4, label="median output tok/s (p10-p90)")
    ax.set_xlabel("speculative tokens")
    ax.set_ylabel("output tok/s")
    ax.set_xticks(xs)
    if result.chosen is not None and result.chosen in xs:
        i = xs.index(result.chosen)
        ax.scatter(
            [xs[i]], [medians[i]], s=160, facecolors="none", edgecolors="green", linewidths=2, label="chosen"
        )
    acceptances = [(p.tokens, p.acceptance * 100) for p in result.points if p.acceptance is not None]
    if acceptances:
        ax2 = ax.twinx()
        ax2.plot(
            [a[0] for a in acceptances],
            [a[1] for a in acceptances],
            "s--",
            color="tab:orange",
            label="median acceptance %",
        )
        ax2.axhline(60, color="tab:red", linestyle=":", linewidth=1)
        ax2.set_ylabel("acceptance %")
        ax2.set_ylim(0, 105)
        ax2.legend(loc="lower right", fontsize=8)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(f"{result.profile}: {result.shape} c{result.concurrency}, chosen {result.chosen}")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue(), 0o644)
    return path


def default_plot_path(profile: str) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return state_dir() / "sweeps" / f"{profile}-{stamp}.png"


def sweep(
    client: Any,
    profile: Profile,
    values: list[int],
    *,
    shape: tuple[int, int],
    concurrency: int = 1,
    warm: int = 10,
    results_path: Path | None = None,
    plot_path: Path | None = None,
    show_progress: bool = True,
    timeout_s: float = 600.0,
    restore: bool = True,
    unlocked: bool = False,
) -> SweepResult:
    from gh200.deploy.deploy import deploy

    result = SweepResult(profile.name, f"{shape[0]}:{shape[1]}", concurrency)
    plan = SetPlan("synthetic", shape[0], shape[1], concurrency, warm)
    variants = [with_spec_tokens(profile, tokens) for tokens in values]  # bad input fails before any change
    failure: BaseException | None = None
    deployed_any = False
    try:
        for tokens, variant in zip(values, variants, strict=True):
            if show_progress:
                console.rule(f"{profile.name}: {tokens} speculative tokens")
            deployed_any = True
            deploy(client, variant, progress=show_progress, smoke=None, unlocked=unlocked)
            target = target_for_profile(variant, client)
            target.label = f"{profile.name} spec={tokens}"
            outcome = run(
                target, [plan], results_path=results_path, show_progress=show_progress, timeout_s=timeout_s
            )
            result.outcomes.append(outcome)
            if show_progress:
                print_report(outcome, markdown_to_stdout=False)
            run_set = outcome.sets[0]
            if run_set.error or not run_set.runs:
                raise SweepFailed(f"sweep step {tokens} stopped: {run_set.error}", "see `gh200 logs`")
            summary = run_set.summary()
            assert summary.output_tok_s is not None
            result.points.append(
                Point(
                    tokens=tokens,
                    runs=summary.runs,
                    median=summary.output_tok_s.median,
                    p10=summary.output_tok_s.p10,
                    p90=summary.output_tok_s.p90,
                    cv=summary.output_tok_s.cv,
                    acceptance=summary.acceptance.median if summary.acceptance else None,
                    sub60_runs=summary.sub60_runs,
                    tpot_ms=summary.tpot_ms.median if summary.tpot_ms else None,
                )
            )
            chosen, reason = decide(result.points)
            result.chosen, result.reason = chosen, reason
            if reason != "continue":
                break
        else:
            result.reason = f"walked every value up to {values[-1]}"
    except BaseException as err:
        failure = err
        raise
    finally:
        if restore and deployed_any:
            try:
                deploy(client, profile, progress=show_progress, smoke=None, unlocked=unlocked)
            except (OperationFailed, BadInput) as err:
                if failure is None:
                    raise
                console.print(f"[yellow]note:[/] restoring {profile.name} failed too: {err.one_line()}")
    if result.points:
        result.plot = save_plot(result, plot_path or default_plot_path(profile.name))
    return result
