"""Small statistics helpers shared by evaluation and analyses (pure numpy/scipy): a percentile
bootstrap of a mean, Student-t intervals, and the paired tests of two runs on the same items (exact
McNemar) with Holm / Benjamini-Hochberg adjustment across languages. Undefined adjusted p-values
stay None (JSON null)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as sps
from scipy.stats import binomtest


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


# ---- paired tests and multiplicity ----------------------------------------------------------


def _bools(x: ArrayLike, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {a.shape}")
    if a.size and not (np.issubdtype(a.dtype, np.bool_) or np.all((a == 0) | (a == 1))):
        raise ValueError(f"{name}: expected booleans (or 0/1)")
    return a.astype(bool)


def mcnemar_exact(correct_a: ArrayLike, correct_b: ArrayLike) -> dict:
    """Exact McNemar test of two runs on the same n items (correct_a, correct_b: bool [n]).

    Returns {"b01": a wrong & b right, "b10": a right & b wrong, "n": items, "p_value"}: the
    two-sided exact binomial test of b01 out of b01 + b10 discordant pairs against 1/2
    (scipy.stats.binomtest); p_value = 1.0 when there is no discordant pair.
    """
    a, b = _bools(correct_a, "correct_a"), _bools(correct_b, "correct_b")
    if a.shape != b.shape:
        raise ValueError(f"correct_a has {a.size} items, correct_b {b.size}")
    b01, b10 = int(np.sum(~a & b)), int(np.sum(a & ~b))
    p = float(binomtest(b01, b01 + b10, 0.5, alternative="two-sided").pvalue) if b01 + b10 else 1.0
    return {"b01": b01, "b10": b10, "n": int(a.size), "p_value": min(p, 1.0)}


def _valid_p(p_values: Iterable[float | None]) -> tuple[list, list[int], np.ndarray]:
    vals = list(p_values)
    keep = [i for i, p in enumerate(vals) if p is not None and not math.isnan(float(p))]
    arr = np.array([float(vals[i]) for i in keep], dtype=np.float64)
    if np.any((arr < 0) | (arr > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {arr[(arr < 0) | (arr > 1)][0]}")
    return vals, keep, arr


def _scatter(vals: list, keep: list[int], adjusted: np.ndarray) -> list[float | None]:
    out: list[float | None] = [None if v is None else float("nan") for v in vals]
    for i, a in zip(keep, adjusted):
        out[i] = float(a)
    return out


def holm(p_values: Iterable[float | None]) -> list[float | None]:
    """Holm step-down adjusted p-values, in input order, capped at 1.

    With the m valid p-values sorted p(1) <= ... <= p(m): adj(i) = max_{j<=i} min(1, (m-j+1) p(j)).
    None and NaN entries pass through unchanged and do not count in m.
    """
    vals, keep, p = _valid_p(p_values)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adj_sorted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    adj = np.empty(m)
    adj[order] = adj_sorted
    return _scatter(vals, keep, adj)


def benjamini_hochberg(p_values: Iterable[float | None]) -> list[float | None]:
    """Benjamini-Hochberg step-up adjusted p-values (FDR), in input order, capped at 1.

    With the m valid p-values sorted: adj(i) = min_{j>=i} min(1, m p(j) / j).
    None and NaN entries pass through unchanged and do not count in m.
    """
    vals, keep, p = _valid_p(p_values)
    m = len(p)
    order = np.argsort(p, kind="stable")
    raw = m * p[order] / np.arange(1, m + 1)
    adj_sorted = np.minimum(1.0, np.minimum.accumulate(raw[::-1])[::-1])
    adj = np.empty(m)
    adj[order] = adj_sorted
    return _scatter(vals, keep, adj)
