"""Paired differences over seeds with 95 % t-intervals (standard library only: no scipy here)."""

from __future__ import annotations

import math
import statistics
from typing import Any

# Two-sided 97.5 % quantiles of Student's t by degrees of freedom.
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t_quantile(df: int) -> float:
    usable = [d for d in T_975 if d <= df]
    return T_975[max(usable)] if usable else math.inf  # the nearest smaller df: a slightly wider interval


def paired_interval(a: list[float], b: list[float]) -> dict[str, Any]:
    """mean(a - b) with its 95 % t-interval over the pairs; `significant` only when the interval excludes 0."""
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    mean = statistics.fmean(diffs)
    if n < 2:
        return {"n": n, "mean": mean, "low": None, "high": None, "significant": False, "diffs": diffs}
    half = t_quantile(n - 1) * statistics.stdev(diffs) / math.sqrt(n)
    return {"n": n, "mean": mean, "low": mean - half, "high": mean + half,
            "significant": mean - half > 0 or mean + half < 0, "diffs": diffs}
