"""The posts' rule for the number of speculative tokens: a pure function of run-set summaries.

Part 3 walked the depth upward and kept MTP-3 over MTP-4 although MTP-4 had the higher median at
2048->512: at 8192->512 its median and p10 fell, its CV was higher, and six of its eleven runs
accepted under 60%. Part 2 stopped at MTP3 when MTP4's throughput fell. So a depth stops the walk
(the previous depth is kept) when, on any shape measured at both depths:
- its median output tok/s falls below the previous depth's,
- its p10 falls below the previous depth's p10,
- its CV rises above the previous depth's and past CV_BOUND,
or when more than TAIL_SHARE of its runs on any shape accepted under 60% of their drafts.
Nothing here measures or deploys; the sweep and `gh200 sweep decide` feed it figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gh200.bench.stats import SUB60_THRESHOLD

# Part 3's MTP-3 rows reach 0.147, its rejected MTP-4 rows 0.196-0.211: a default must stay below.
CV_BOUND = 0.20
# "More than a quarter": 2 of 11 (MTP-3 at 2048->512) passes, 6 of 11 (MTP-4 at 8192->512) stops.
TAIL_SHARE = 0.25


@dataclass(frozen=True)
class ShapeFigures:
    """One shape's run set at one depth, as the posts' table columns give it."""

    median: float
    p10: float | None = None
    cv: float | None = None
    runs: int | None = None
    sub60_runs: int | None = None  # runs known to have accepted under 60% (a lower bound)

    def tail_collapsed(self, share: float = TAIL_SHARE) -> bool:
        if not self.runs or self.sub60_runs is None:
            return False
        return self.sub60_runs / self.runs > share


@dataclass(frozen=True)
class Depth:
    """Every measured shape at one number of speculative tokens (0: no speculative decoding)."""

    tokens: int
    shapes: dict[str, ShapeFigures]


@dataclass(frozen=True)
class Verdict:
    tokens: int
    reasons: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.reasons


@dataclass(frozen=True)
class Decision:
    chosen: int | None
    reason: str
    stopped_at: int | None
    verdicts: list[Verdict] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen,
            "reason": self.reason,
            "stopped_at": self.stopped_at,
            "verdicts": [{"tokens": v.tokens, "ok": v.ok, "reasons": list(v.reasons)} for v in self.verdicts],
        }


def depth_name(tokens: int) -> str:
    return "MTP-0 (no speculative decoding)" if tokens == 0 else f"MTP-{tokens}"


def check(
    step: Depth, previous: Depth | None, cv_bound: float = CV_BOUND, tail_share: float = TAIL_SHARE
) -> list[str]:
    """Why `step` must not replace `previous` (empty when it may)."""
    reasons: list[str] = []
    for shape, now in step.shapes.items():
        if now.tail_collapsed(tail_share):
            reasons.append(
                f"{shape}: {now.sub60_runs} of {now.runs} runs accepted under {SUB60_THRESHOLD:.0%}"
            )
        before = previous.shapes.get(shape) if previous is not None else None
        if before is None or previous is None:
            continue
        was = f"MTP-{previous.tokens}"
        if now.median < before.median:
            reasons.append(f"{shape}: median {now.median:.2f} below {before.median:.2f} at {was}")
        if now.p10 is not None and before.p10 is not None and now.p10 < before.p10:
            reasons.append(f"{shape}: p10 {now.p10:.2f} below {before.p10:.2f} at {was}")
        if now.cv is not None and now.cv > cv_bound and (before.cv is None or now.cv > before.cv):
            was_cv = "n/a" if before.cv is None else f"{before.cv:.3f}"
            reasons.append(f"{shape}: CV {now.cv:.3f} above {cv_bound:g} (was {was_cv} at {was})")
    return reasons


def decide(depths: list[Depth], cv_bound: float = CV_BOUND, tail_share: float = TAIL_SHARE) -> Decision:
    """Walk the depths upward from the lowest; stop at the first that fails `check`."""
    verdicts: list[Verdict] = []
    kept: Depth | None = None
    for step in sorted(depths, key=lambda d: d.tokens):
        reasons = check(step, kept, cv_bound, tail_share)
        verdicts.append(Verdict(step.tokens, tuple(reasons)))
        if reasons:
            if kept is None:
                return Decision(
                    None, f"{depth_name(step.tokens)} failed: " + "; ".join(reasons), step.tokens, verdicts
                )
            return Decision(
                kept.tokens,
                f"{depth_name(step.tokens)} stopped the walk: " + "; ".join(reasons),
                step.tokens,
                verdicts,
            )
        kept = step
    if kept is None:
        return Decision(None, "no depth measured", None, verdicts)
    return Decision(kept.tokens, f"no depth stopped the walk up to {depth_name(kept.tokens)}", None, verdicts)
