"""The sweep's measurement side: depths, points, the posts' rule over them, the plot.

The walk itself (redeploying at each depth) is gh200.orchestrate.sweep; this module deploys nothing.

Every depth runs every expected shape of the profile (one cold and N warm runs each); the rule in
`gh200.bench.rule` compares each depth with the one kept before it and stops the walk at the first
that makes any shape worse (median, p10, CV) or whose acceptance tail collapses. The previous depth
is kept. MTP-0 (the profile without speculative decoding) is the baseline every walk starts from.
"""

from __future__ import annotations

import datetime as dt
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gh200.bench.rule import Decision, Depth, ShapeFigures, decide
from gh200.bench.run import Outcome
from gh200.bench.smoke import RunSet, SetPlan
from gh200.errors import BadInput
from gh200.fsutil import atomic_write_bytes
from gh200.paths import state_dir
from gh200.profiles.schema import Profile, SpeculativeSpec

MAX_SPEC_TOKENS = 16


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


def expected_plans(profile: Profile, warm: int) -> list[SetPlan]:
    """Every (shape, concurrency) the profile expects, else the posts' 2048->512 at concurrency 1."""
    pairs = sorted({(e.input_tokens, e.output_tokens, e.concurrency) for e in profile.expected})
    return [SetPlan("synthetic", i, o, c, warm) for i, o, c in pairs] or [
        SetPlan("synthetic", 2048, 512, 1, warm)
    ]
