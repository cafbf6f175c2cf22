"""Walk the number of speculative tokens upward from MTP-0, redeploying each time; stop by the posts' rule.

Every depth runs every expected shape of the profile (one cold and N warm runs each); the rule in
`gh200.bench.rule` compares each depth with the one kept before it and stops the walk at the first
that makes any shape worse (median, p10, CV) or whose acceptance tail collapses. The previous depth
is kept. MTP-0 (the profile without speculative decoding) is the baseline every walk starts from.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gh200.bench.prompts import PromptMode
from gh200.bench.rule import Decision, Depth, ShapeFigures, decide
from gh200.bench.run import Outcome, print_report, run, target_for_profile
from gh200.bench.smoke import RunSet, SetPlan
from gh200.errors import BadInput, OperationFailed
from gh200.fsutil import atomic_write_bytes
from gh200.output import console
from gh200.paths import state_dir
from gh200.profiles.schema import Profile, SpeculativeSpec

MAX_SPEC_TOKENS = 16


class SweepFailed(OperationFailed):
    """A step of the sweep could not be deployed or measured."""


def parse_spec_tokens(text: str) -> list[int]:
    """`1..` (up to 16), `2..5`, or `1,2,4`. MTP-0 is always measured first, as the baseline."""
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
            f"--spec-tokens {text!r} must lie within 1..{MAX_SPEC_TOKENS}",
            "pick values from 1 to 16 (MTP-0, the baseline, is always measured first)",
        )
    return values


def with_spec_tokens(profile: Profile, tokens: int) -> Profile:
    """The profile with another number of speculative tokens, 0 for none (in memory only)."""
    spec = profile.settings.speculative
    if spec is None:
        raise BadInput(
            f"profile {profile.name} has no speculative decoding to sweep",
            "sweep a profile with settings.speculative set (method mtp or draft)",
        )
    new_spec = None if tokens == 0 else SpeculativeSpec(method=spec.method, num_speculative_tokens=tokens)
    settings = profile.settings.model_copy(update={"speculative": new_spec})
    return profile.model_copy(update={"settings": settings})


@dataclass
class Point:
    """One shape at one depth: the figures the rule and the table read."""

    tokens: int
    shape: str
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

    def figures(self) -> ShapeFigures:
        return ShapeFigures(self.median, self.p10, self.cv, self.runs, self.sub60_runs)


def points_for(tokens: int, sets: list[RunSet]) -> list[Point]:
    """The measured synthetic sets of one depth as points (real-prompt sets are reported, not walked)."""
    points: list[Point] = []
    for run_set in sets:
        summary = run_set.summary()
        if run_set.plan.kind != "synthetic" or summary.output_tok_s is None:
            continue
        tok = summary.output_tok_s
        points.append(
            Point(
                tokens=tokens,
                shape=run_set.plan.label,
                runs=summary.runs,
                median=tok.median,
                p10=tok.p10,
                p90=tok.p90,
                cv=tok.cv,
                acceptance=summary.acceptance.median if summary.acceptance else None,
                sub60_runs=summary.sub60_runs,
                tpot_ms=summary.tpot_ms.median if summary.tpot_ms else None,
            )
        )
    return points


def depths_of(points: list[Point]) -> list[Depth]:
    by: dict[int, dict[str, ShapeFigures]] = {}
    for p in points:
        by.setdefault(p.tokens, {})[p.shape] = p.figures()
    return [Depth(tokens, shapes) for tokens, shapes in sorted(by.items())]


def judge(points: list[Point]) -> Decision:
    """The rule over the points so far; marks each point's verdict."""
    decision = decide(depths_of(points))
    verdicts = {v.tokens: v for v in decision.verdicts}
    for p in points:
        verdict = verdicts.get(p.tokens)
        mine = [r for r in verdict.reasons if r.startswith(p.shape + ":")] if verdict else []
        p.verdict = (
            "; ".join(r.split(": ", 1)[1] for r in mine)
            if mine
            else ("ok" if verdict and verdict.ok else "depth stopped")
        )
    return decision


@dataclass
class SweepResult:
    profile: str
    shapes: list[str]
    points: list[Point] = field(default_factory=list)
    chosen: int | None = None
    reason: str = ""
    plot: Path | None = None
    outcomes: list[Outcome] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "shapes": self.shapes,
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

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    shapes = list(dict.fromkeys(p.shape for p in result.points))
    for shape in shapes:
        mine = [p for p in result.points if p.shape == shape]
        xs = [p.tokens for p in mine]
        medians = [p.median for p in mine]
        err = [[p.median - p.p10 for p in mine], [p.p90 - p.median for p in mine]]
        ax.errorbar(xs, medians, yerr=err, marker="o", capsize=4, label=f"{shape} median (p10-p90)")
        if result.chosen in xs:
            i = xs.index(result.chosen)
            ax.scatter([xs[i]], [medians[i]], s=160, facecolors="none", edgecolors="green", linewidths=2)
    ax.set_xlabel("speculative tokens (0: none)")
    ax.set_ylabel("output tok/s")
    ax.set_xticks(sorted({p.tokens for p in result.points}))
    ax.legend(loc="lower left", fontsize=7)
    ax.set_title(f"{result.profile}: chosen MTP-{result.chosen}")
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
    plans: list[SetPlan] | None = None,
    warm: int = 10,
    results_path: Path | None = None,
    plot_path: Path | None = None,
    show_progress: bool = True,
    timeout_s: float = 600.0,
    restore: bool = True,
    unlocked: bool = False,
    prompt_mode: PromptMode = "words",
    vocab_size: int | None = None,
) -> SweepResult:
    """MTP-0, then each value in turn, every shape at each; `plans` default to the expected shapes."""
    from gh200.deploy.deploy import deploy

    depths = [0, *[v for v in values if v != 0]]
    variants = [with_spec_tokens(profile, tokens) for tokens in depths]  # bad input fails before any change
    chosen_plans = plans or expected_plans(profile, warm)
    result = SweepResult(profile.name, [p.label for p in chosen_plans])
    failure: BaseException | None = None
    deployed_any = False
    try:
        for tokens, variant in zip(depths, variants, strict=True):
            if show_progress:
                console.rule(f"{profile.name}: MTP-{tokens}")
            deployed_any = True
            deploy(client, variant, progress=show_progress, smoke=None, unlocked=unlocked)
            target = target_for_profile(variant, client)
            target.label = f"{profile.name} spec={tokens}"
            if vocab_size is not None:
                target.endpoint = dataclasses.replace(target.endpoint, vocab_size=vocab_size)
            outcome = run(
                target,
                chosen_plans,
                results_path=results_path,
                show_progress=show_progress,
                timeout_s=timeout_s,
                prompt_mode=prompt_mode,
            )
            result.outcomes.append(outcome)
            if show_progress:
                print_report(outcome, markdown_to_stdout=False)
            failed = outcome.failed_set
            if failed is not None:
                raise SweepFailed(
                    f"sweep step MTP-{tokens} stopped at {failed.plan.label}: {failed.error}",
                    "see `gh200 logs`",
                )
            result.points += points_for(tokens, outcome.sets)
            decision = judge(result.points)
            result.chosen, result.reason = decision.chosen, decision.reason
            if decision.stopped_at is not None:
                break
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


def expected_plans(profile: Profile, warm: int) -> list[SetPlan]:
    """Every (shape, concurrency) the profile expects, else the posts' 2048->512 at concurrency 1."""
    pairs = sorted({(e.input_tokens, e.output_tokens, e.concurrency) for e in profile.expected})
    return [SetPlan("synthetic", i, o, c, warm) for i, o, c in pairs] or [
        SetPlan("synthetic", 2048, 512, 1, warm)
    ]
