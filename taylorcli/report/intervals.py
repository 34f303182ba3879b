"""Summaries over seeds: mean, sample sd and a two-sided 95% Student t interval, for one
quantity (one-sample t) or a difference (paired t on shared seeds, else Welch's t)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

LEVEL = 0.95


@dataclass
class Interval:
    """A summary over seeds: mean, sample sd, n, the test and its 95% interval."""

    mean: float
    sd: float
    n: int
    test: str
    low: float
    high: float


def t_quantile(df: float, level: float = LEVEL) -> float:
    """The two-sided Student t quantile t_{(1+level)/2, df}."""
    from scipy.stats import t

    return float(t.ppf((1 + level) / 2, df))


def one_sample(values: Sequence[float], test: str = "one-sample t") -> Interval:
    """Mean, sample sd and the t interval of values (NaN interval for fewer than 2)."""
    x = np.asarray([v for v in values if np.isfinite(v)], np.float64)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, 0, test, math.nan, math.nan)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, n, test, math.nan, math.nan)
    sd = float(x.std(ddof=1))
    half = t_quantile(n - 1) * sd / math.sqrt(n)
    return Interval(mean, sd, n, test, mean - half, mean + half)


def difference(a: dict[int, float], b: dict[int, float]) -> Interval:
    """a − b over seeds: paired t on the seeds both have (when they are the same seeds),
    else Welch's t interval of the difference of the means."""
    a = {s: v for s, v in a.items() if np.isfinite(v)}
    b = {s: v for s, v in b.items() if np.isfinite(v)}
    if set(a) == set(b):
        return one_sample([a[s] - b[s] for s in sorted(a)], "paired t")
    x, y = np.asarray(list(a.values())), np.asarray(list(b.values()))
    mean = float(x.mean() - y.mean()) if len(x) and len(y) else math.nan
    if len(x) < 2 or len(y) < 2:
        return Interval(mean, math.nan, min(len(x), len(y)), "Welch t", math.nan, math.nan)
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(vx + vy)
    if se == 0:
        return Interval(mean, 0.0, min(len(x), len(y)), "Welch t", mean, mean)
    df = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1))
    half = t_quantile(df) * se
    # the sd of one draw of a minus one draw of b: both settings' spreads together
    sd = math.sqrt(x.var(ddof=1) + y.var(ddof=1))
    return Interval(mean, sd, min(len(x), len(y)), "Welch t", mean - half, mean + half)
