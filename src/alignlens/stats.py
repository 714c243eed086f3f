"""Small statistics helpers shared by evaluation and analyses (pure numpy/scipy)."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps


def bootstrap_ci(
    values: np.ndarray, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (shape [n]).

    Returns (nan, nan) for an empty input and (v, v) when all values are equal.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return (float("nan"), float("nan"))
    if np.all(values == values[0]):
        return (float(values[0]), float(values[0]))
    res = sps.bootstrap(
        (values,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def mean_ci(values: np.ndarray, confidence: float = 0.95, axis: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and Student-t interval along `axis`. Returns (mean, low, high), each reduced over `axis`.

    With fewer than two values the interval collapses to the mean.
    """
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[axis]
    mean = values.mean(axis=axis) if n else np.full(np.delete(values.shape, axis), np.nan)
    if n < 2:
        return mean, mean.copy(), mean.copy()
    sem = values.std(axis=axis, ddof=1) / np.sqrt(n)
    half = sem * sps.t.ppf(0.5 + confidence / 2, df=n - 1)
    return mean, mean - half, mean + half


def clip_interval(interval, lo: float = 0.0, hi: float = 1.0) -> list[float]:
    """An interval [l, u] clipped to [lo, hi] (e.g. a probability's to [0, 1]); None/NaN become NaN."""
    return [math.nan if v is None or v != v else min(max(float(v), lo), hi) for v in interval]
