"""Is a new run set slower than the accepted baseline? A rank test on the runs plus an effect floor.

A median alone cannot tell a real 10% slowdown from two unlucky runs, and a rank test alone flags
every 1% drift between two deployments once there are enough runs (the runs of one deployment are
correlated, so the test is over-confident about deployment-to-deployment differences). A metric
regresses only when both hold:

- Mann-Whitney U, one-sided in the metric's bad direction (lower tok/s, higher TPOT/TTFT), gives
  p < alpha: the new runs are stochastically worse, not just their median;
- the shift in the bad direction is at least the metric's floor (5% by default): the change is
  large enough to matter and larger than ordinary deployment-to-deployment drift.

The shift is the Hodges-Lehmann estimate on the log scale: the median of the ratios of every new
run to every baseline run, minus one. It is the estimate that belongs to the rank test (the shift
that makes the test balanced); with 10 runs a side it varies about an eighth less than the ratio
of the two medians under normal noise, and far less when a set's runs fall in two clusters (as
runs on a shared machine do), where the median jumps across the gap. Its confidence interval,
at the test's level on each side, comes with it (Hollander & Wolfe's rank bounds, normal
approximation of the rank statistic).

Why 5%: a deployment-to-deployment difference d is flagged when the estimate exceeds the floor,
and a 10% slowdown is missed when its estimate falls under it. With the floor at half the smallest
slowdown the gate must catch, both errors need the same size of estimation error (5 points), so
neither rate is favoured; the floor is the effect's midpoint, not a figure fitted to one machine.

A host noisier than that (a shared VM, a CPU-only runner) needs a higher floor: `make bench-gate`
prints the smallest floor that keeps false alarms within target there, and `--min-effect` (rollout,
upgrade, baseline check, fleet) applies it to every gated metric (`floors`).

Improvements never fail the gate; they are reported. Cold runs are left out where warm runs exist:
the first run after a deployment carries warm-up that the warm runs do not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from gh200.errors import BadInput

DEFAULT_ALPHA = 0.05
DEFAULT_MIN_EFFECT = 0.05
MIN_RUNS = 3


@dataclass(frozen=True)
class MetricRule:
    name: str
    higher_is_better: bool
    unit: str
    min_effect: float = DEFAULT_MIN_EFFECT


GATED_METRICS: tuple[MetricRule, ...] = (
    MetricRule("output_tok_s", higher_is_better=True, unit="tok/s"),
    MetricRule("tpot_ms", higher_is_better=False, unit="ms"),
    MetricRule("ttft_ms", higher_is_better=False, unit="ms"),
)
RULES = {rule.name: rule for rule in GATED_METRICS}
MIN_EFFECT_OPTION = "--min-effect"


def check_min_effect(value: float | str, option: str = MIN_EFFECT_OPTION) -> float:
    """A floor the user gave (a number or its text): a fraction strictly between 0 and 1, or BadInput.

    0 would flag every significant drift however small (what the floor exists to prevent), and a
    floor of 1 or more could never flag a slower tok/s at all (it would have to fall by 100%).
    """
    try:
        floor = float(value)
    except (TypeError, ValueError):
        floor = math.nan
    if not 0.0 < floor < 1.0:  # NaN fails this too
        raise BadInput(
            f"{option} {value}: the gate's floor is a fraction between 0 and 1 (0.05 is a 5% shift)",
            f"pass e.g. {option} 0.18, the floor `make bench-gate` prints for this host",
        )
    return floor


def floor_text(min_effect: float) -> str:
    """0.15 -> '15%', 0.125 -> '12.5%': the floor as the user wrote it, in percent."""
    return f"{min_effect * 100:g}%"


def floors(min_effect: float | None = None) -> dict[str, float]:
    """The floor of every gated metric: `min_effect` on all of them, else each rule's own."""
    return {rule.name: rule.min_effect if min_effect is None else min_effect for rule in GATED_METRICS}


Status = Literal["pass", "regression", "insufficient"]


@dataclass(frozen=True)
class MetricComparison:
    """One metric of one shape: baseline against new, with the test and the effect size."""

    metric: str
    unit: str
    higher_is_better: bool
    baseline_median: float
    new_median: float
    n_baseline: int
    n_new: int
    change: float  # new / baseline - 1 (Hodges-Lehmann), signed as measured
    worse_by: float  # the change in the bad direction (negative: an improvement)
    p_worse: float  # one-sided Mann-Whitney p for "new is worse"
    p_better: float  # the mirror test, for reporting improvements
    alpha: float
    min_effect: float
    change_low: float = math.nan  # the change's confidence interval, 1 - alpha on each side
    change_high: float = math.nan

    @property
    def significant(self) -> bool:
        return self.p_worse < self.alpha

    @property
    def regressed(self) -> bool:
        return self.significant and self.worse_by >= self.min_effect

    @property
    def improved(self) -> bool:
        # The mirror test: new is better with the same confidence and the same floor.
        return self.worse_by <= -self.min_effect and self.p_better < self.alpha

    @property
    def ci_level(self) -> float:
        return 1.0 - 2.0 * self.alpha

    def describe(self) -> str:
        direction = "rose" if self.change > 0 else "fell"
        return (
            f"{self.metric} {direction} {abs(self.change):.1%} "
            f"({self.ci_level:.0%} CI {self.change_low:+.1%} to {self.change_high:+.1%}; "
            f"median {self.baseline_median:.4g} -> {self.new_median:.4g} {self.unit}, "
            f"p={self.p_worse:.2g}, n={self.n_baseline}/{self.n_new})"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "unit": self.unit,
            "higher_is_better": self.higher_is_better,
            "baseline_median": round(self.baseline_median, 6),
            "new_median": round(self.new_median, 6),
            "n_baseline": self.n_baseline,
            "n_new": self.n_new,
            "change": round(self.change, 6),
            "change_ci": [round(self.change_low, 6), round(self.change_high, 6)],
            "ci_level": round(self.ci_level, 6),
            "estimate": "hodges-lehmann",
            "worse_by": round(self.worse_by, 6),
            "p_worse": self.p_worse,
            "p_better": self.p_better,
            "alpha": self.alpha,
            "min_effect": self.min_effect,
            "regressed": self.regressed,
            "improved": self.improved,
        }


@dataclass(frozen=True)
class Verdict:
    """The gate's answer for one profile, shape and concurrency."""

    profile: str
    shape: str
    concurrency: int
    status: Status
    comparisons: tuple[MetricComparison, ...] = ()
    reason: str = ""
    changes: tuple[str, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    @property
    def regressions(self) -> list[MetricComparison]:
        return [c for c in self.comparisons if c.regressed]

    @property
    def headline(self) -> MetricComparison | None:
        """The regression to name first: metrics in rule order (output tok/s, then TPOT, then TTFT),
        since a slower decode moves tok/s and TPOT together and tok/s is what people compare."""
        found = self.regressions
        return found[0] if found else None

    def describe(self) -> str:
        where = f"{self.profile} {self.shape} c{self.concurrency}"
        if self.status == "insufficient":
            return f"{where}: not compared ({self.reason})"
        if self.status == "pass":
            return f"{where}: as fast as the baseline"
        text = f"{where}: " + "; ".join(c.describe() for c in self.regressions)
        if self.changes:
            text += "; changed: " + ", ".join(self.changes)
        return text

    def as_json(self) -> dict[str, Any]:
        worst = self.headline
        return {
            "profile": self.profile,
            "shape": self.shape,
            "concurrency": self.concurrency,
            "status": self.status,
            "passed": self.passed,
            "reason": self.reason,
            "metric": worst.metric if worst else None,
            "worse_by": round(worst.worse_by, 6) if worst else None,
            "comparisons": [c.as_json() for c in self.comparisons],
            "changes": list(self.changes),
            "summary": self.describe(),
        }


def mann_whitney_worse(baseline: Sequence[float], new: Sequence[float], higher_is_better: bool) -> float:
    """One-sided p-value that `new` is stochastically worse than `baseline` (exact for small samples)."""
    from scipy.stats import mannwhitneyu

    # "Worse" for tok/s means new tends to be smaller; for latencies, larger.
    alternative = "less" if higher_is_better else "greater"
    result = mannwhitneyu(list(new), list(baseline), alternative=alternative, method="auto")
    return float(result.pvalue)


def shift_estimate(
    baseline: Sequence[float], new: Sequence[float], alpha: float
) -> tuple[float, float, float]:
    """Hodges-Lehmann relative shift new/baseline - 1 and its interval (1 - alpha each side).

    Log ratios make the shift relative and symmetric (10% slower reads the same at any speed).
    The interval is [D(C), D(nm + 1 - C)] of the sorted pairwise differences D with
    C = nm/2 - z(1 - alpha) * sqrt(nm(n + m + 1)/12), the rank bounds of Hollander & Wolfe.
    """
    from scipy.stats import norm

    diffs = sorted(math.log(b) - math.log(a) for a in baseline for b in new)
    count = len(diffs)
    n, m = len(baseline), len(new)
    rank = round(count / 2 - float(norm.ppf(1 - alpha)) * math.sqrt(n * m * (n + m + 1) / 12))
    rank = min(max(rank, 1), (count + 1) // 2)
    return (
        math.expm1(_median(diffs)),
        math.expm1(diffs[rank - 1]),
        math.expm1(diffs[count - rank]),
    )


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0


def compare_metric(
    rule: MetricRule,
    baseline: Sequence[float],
    new: Sequence[float],
    *,
    alpha: float = DEFAULT_ALPHA,
    min_effect: float | None = None,
) -> MetricComparison:
    floor = rule.min_effect if min_effect is None else min_effect
    change, low, high = shift_estimate(baseline, new, alpha)
    worse_by = -change if rule.higher_is_better else change
    return MetricComparison(
        metric=rule.name,
        unit=rule.unit,
        higher_is_better=rule.higher_is_better,
        baseline_median=_median(baseline),
        new_median=_median(new),
        n_baseline=len(baseline),
        n_new=len(new),
        change=change,
        worse_by=worse_by,
        p_worse=mann_whitney_worse(baseline, new, rule.higher_is_better),
        p_better=mann_whitney_worse(baseline, new, not rule.higher_is_better),
        alpha=alpha,
        min_effect=floor,
        change_low=low,
        change_high=high,
    )


def run_values(runs: Sequence[Mapping[str, Any]], metric: str) -> list[float]:
    """The metric of each warm run (the cold run only when there is nothing else)."""
    warm = [r for r in runs if not r.get("cold")]
    chosen = warm if len(warm) >= MIN_RUNS else list(runs)
    out: list[float] = []
    for run in chosen:
        value = run.get(metric)
        if isinstance(value, int | float) and math.isfinite(value) and value > 0:
            out.append(float(value))
    return out


def compare_runs(
    baseline_runs: Sequence[Mapping[str, Any]],
    new_runs: Sequence[Mapping[str, Any]],
    *,
    profile: str,
    shape: str,
    concurrency: int,
    alpha: float = DEFAULT_ALPHA,
    min_effect: Mapping[str, float] | None = None,
    rules: Sequence[MetricRule] = GATED_METRICS,
    changes: Sequence[str] = (),
) -> Verdict:
    """The verdict for one shape: regression when any gated metric regressed (see the module doc)."""
    comparisons: list[MetricComparison] = []
    missing: list[str] = []
    for rule in rules:
        base = run_values(baseline_runs, rule.name)
        new = run_values(new_runs, rule.name)
        if len(base) < MIN_RUNS or len(new) < MIN_RUNS:
            missing.append(f"{rule.name} has {len(base)}/{len(new)} runs, needs {MIN_RUNS} each")
            continue
        floor = (min_effect or {}).get(rule.name)
        comparisons.append(compare_metric(rule, base, new, alpha=alpha, min_effect=floor))
    if not comparisons:
        return Verdict(
            profile, shape, concurrency, "insufficient", reason="; ".join(missing), changes=tuple(changes)
        )
    status: Status = "regression" if any(c.regressed for c in comparisons) else "pass"
    return Verdict(
        profile,
        shape,
        concurrency,
        status,
        tuple(comparisons),
        reason="; ".join(missing),
        changes=tuple(changes),
    )
