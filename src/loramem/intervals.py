"""95% intervals for the numbers a report plots and a verdict reads (scipy's, not retyped formulas).

A share of items right (exact match, efficacy) gets the Wilson score interval, which stays inside [0, 1] and is
not zero-width at 0 or 1 the way the normal approximation is; a mean of graded per-item scores (token F1, a judge's
0-10, answer-token accuracy) or of per-seed values gets the Student t interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import mean, stdev

Interval = tuple[float, float]


def wilson(k: int, n: int) -> Interval | None:
    """95% Wilson interval of k successes in n trials; None when n is 0."""
    from scipy.stats import binomtest

    if n <= 0:
        return None
    k = min(max(int(round(k)), 0), int(n))
    ci = binomtest(k, int(n)).proportion_ci(0.95, method="wilson")
    return float(ci.low), float(ci.high)


def share_interval(share: float | None, n: int | None) -> Interval | None:
    """Wilson interval of a share measured on n items (k = share x n): rows that kept only the mean still get one."""
    if share is None or not n:
        return None
    return wilson(round(float(share) * n), int(n))


def mean_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and 95% Student t interval; with one value the interval is that value."""
    from scipy import stats

    m = mean(values)
    if len(values) < 2:
        return m, m, m
    t = float(stats.t.ppf(0.975, df=len(values) - 1))
    half = t * stdev(values) / math.sqrt(len(values))
    return m, m - half, m + half


def interval(values: Sequence[float | bool | None]) -> Interval | None:
    """95% interval of per-item scores: Wilson when every score is 0 or 1, else Student t; None without two items."""
    xs = [float(v) for v in values if v is not None]
    if len(xs) < 2:
        return None
    if all(x in (0.0, 1.0) for x in xs):
        return wilson(int(sum(xs)), len(xs))
    _, lo, hi = mean_interval(xs)
    return lo, hi


def rounded(ci: Interval | None, digits: int = 4) -> list[float] | None:
    """An interval as a JSON-able [lo, hi] (rows store it this way)."""
    return None if ci is None else [round(ci[0], digits), round(ci[1], digits)]


def paired_bootstrap(diffs: Sequence[float], clusters: Sequence | None = None, draws: int = 4000,
                     seed: int = 0) -> tuple[float, float, float]:
    """Mean of paired differences (arm A minus arm B on the same item) and its 95% percentile bootstrap interval.

    With `clusters` (the seed, paper or benchmark each item belongs to) the bootstrap is two-level: draw clusters
    with replacement, then items within each drawn cluster, so the interval carries the spread between seeds or
    papers and not only between questions. Identical differences give a zero-width interval."""
    import numpy as np

    d = np.asarray(diffs, dtype=float)
    if d.size == 0:
        raise ValueError("no paired items")
    m = float(d.mean())
    if d.size == 1 or np.all(d == d[0]):
        return m, m, m
    rng = np.random.default_rng(seed)
    groups = [d] if clusters is None else [d[np.asarray(clusters, dtype=object) == c] for c in dict.fromkeys(clusters)]
    means = np.empty(draws)
    for t in range(draws):
        picked = [groups[j] for j in rng.integers(0, len(groups), len(groups))] if len(groups) > 1 else groups
        means[t] = np.concatenate([g[rng.integers(0, g.size, g.size)] for g in picked]).mean()
    lo, hi = np.percentile(means, [2.5, 97.5])
    return m, float(lo), float(hi)
