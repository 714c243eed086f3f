"""Outlier dimensions of the residual stream and the robust variant of the similarity measures.

`outlier_dimensions` finds, at one layer, the residual dimensions that hold most of the pooled
states' squared norm (summed over items and languages; flagged from `OUTLIER_FACTOR` / d_model, at
most `MAX_OUTLIER_DIMS`); `robust_states` gives the states of the robust variant computed beside
the paper's measure (`ROBUST_METHODS`: those dimensions zeroed, or every dimension standardised).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from alignlens import AlignlensError
from alignlens.config import SIMILARITY_ROBUST
from alignlens.similarity.measures import ArrayLike, _f64

#: The robust variant computed beside the paper's measure (`robust_states`).
ROBUST_METHODS = SIMILARITY_ROBUST
#: A residual dimension is an outlier at a layer when it holds at least OUTLIER_FACTOR / d_model of
#: the pooled states' squared norm (summed over items and languages); at most MAX_OUTLIER_DIMS.
OUTLIER_FACTOR = 20.0
MAX_OUTLIER_DIMS = 8
TOP_DIMS = 5


def outlier_dimensions(mats: Sequence[ArrayLike], factor: float = OUTLIER_FACTOR, top: int = TOP_DIMS) -> dict:
    """Residual dimensions holding most of the pooled states' squared norm at one layer.

    ``mats``: each language's states [n_items, d] (uncentred). share_j = sum over items and
    languages of x_ij^2 / sum of all x^2. Returns {"top_dims": [top] (largest shares first),
    "top_shares": [top], "flagged": dims with share >= factor / d (at most MAX_OUTLIER_DIMS),
    "threshold": factor / d}."""
    sq = sum(np.square(_f64(m)).sum(axis=0) for m in mats)
    total = float(sq.sum())
    share = sq / total if total > 0 else np.zeros_like(sq)
    order = np.argsort(-share, kind="stable")
    thr = factor / share.shape[0]
    flagged = [int(j) for j in order[:MAX_OUTLIER_DIMS] if share[j] >= thr]
    return {"top_dims": [int(j) for j in order[:top]], "top_shares": [float(share[j]) for j in order[:top]],
            "flagged": flagged, "threshold": float(thr)}


def robust_states(mats: Mapping[str, np.ndarray], method: str, flagged: Sequence[int] = ()) -> dict[str, np.ndarray]:
    """The robust variant's states at one layer (lang -> [n_items, d]; fitted on all items and
    languages given, then fixed): "standardize" z-scores each dimension (mean and standard deviation
    over items x languages; constant dimensions become 0; Timkey & van Schijndel 2021), "drop-outliers"
    zeroes the ``flagged`` dimensions (`outlier_dimensions`), "none" returns the states."""
    if method not in ROBUST_METHODS:
        raise AlignlensError(f"unknown robust similarity variant {method!r} (use {', '.join(ROBUST_METHODS)})")
    if method == "none":
        return dict(mats)
    if method == "drop-outliers":
        out = {}
        for lang, m in mats.items():
            m = m.copy()
            m[:, list(flagged)] = 0.0
            out[lang] = m
        return out
    allm = np.concatenate(list(mats.values()), axis=0)
    mu, sd = allm.mean(axis=0), allm.std(axis=0)
    live = sd > 1e-12 * max(float(sd.max()), 1e-300)
    inv = np.where(live, 1.0 / np.where(live, sd, 1.0), 0.0)
    return {lang: (m - mu) * inv for lang, m in mats.items()}
