"""Statistics across runs, as the posts report them: median, min, max, p10, p90 and CV.

Percentiles interpolate linearly between order statistics (numpy's default), so the p10 of eleven
runs is the second-smallest value. CV is the population standard deviation over the mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

SUB60_THRESHOLD = 0.60


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation; values need not be sorted."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = math.ceil(position)
    if low == high:
        return float(ordered[low])
    fraction = position - low
    return float(ordered[low] + (ordered[high] - ordered[low]) * fraction)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def cv(values: Sequence[float]) -> float:
    """Coefficient of variation: population standard deviation / mean (0 for a single value)."""
    if not values:
        raise ValueError("cv of no values")
    mean = sum(values) / len(values)
    if mean == 0:
        return 0.0
    variance = sum((v - mean) ** 2 for v in values) / len(values)
    return math.sqrt(variance) / abs(mean)


@dataclass(frozen=True)
class Stats:
    n: int
    mean: float
    median: float
    min: float
    max: float
    p10: float
    p90: float
    cv: float

    def as_json(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def describe(values: Sequence[float]) -> Stats | None:
    """Summary statistics of the values, or None when there are none."""
    clean = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not clean:
        return None
    return Stats(
        n=len(clean),
        mean=sum(clean) / len(clean),
        median=median(clean),
        min=min(clean),
        max=max(clean),
        p10=percentile(clean, 10),
        p90=percentile(clean, 90),
        cv=cv(clean),
    )


def sub60_count(acceptances: Sequence[float | None], threshold: float = SUB60_THRESHOLD) -> int:
    """How many runs accepted fewer than `threshold` of their draft tokens (runs without drafts: none)."""
    return sum(1 for a in acceptances if a is not None and a < threshold)
