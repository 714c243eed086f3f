"""Classification metrics that survive label bias, and contextual calibration (pure numpy).

Inputs follow the rest of alignlens: `gold` [n] label ids, `probs` [n, n_labels] float64 (summed
probability of each label's token set), `labels` the label names; predictions are
`probs.argmax(1)` (ties go to the first label, as numpy's argmax).

Undefined values are returned as None (JSON null), never as NaN: e.g. every metric of an empty
item set, and ROC-AUC for more than two labels or when gold holds one class only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import rankdata

from alignlens import NumericalError

__all__ = [
    "accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "binary_scores", "classification_metrics",
    "content_free_probs", "calibrate", "calibrated_accuracy",
]  # fmt: skip


def _ids(gold: ArrayLike, name: str = "gold") -> np.ndarray:
    g = np.asarray(gold)
    if g.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of label ids, got shape {g.shape}")
    if g.size and not np.issubdtype(g.dtype, np.integer) and not np.issubdtype(g.dtype, np.bool_):
        raise ValueError(f"{name}: expected integer label ids, got dtype {g.dtype}")
    return g.astype(np.int64)


def _probs(probs: ArrayLike, n_labels: int | None = None) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or (n_labels is not None and p.shape[1] != n_labels):
        raise ValueError(f"probs: expected shape [n_items, {n_labels or 'n_labels'}], got {p.shape}")
    bad = ~np.isfinite(p)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise NumericalError(f"probs: non-finite value {p[r, c]} at item row {r}, label column {c}")
    return p


def accuracy(gold: ArrayLike, pred: ArrayLike) -> float | None:
    """Share of items with pred == gold (both [n] label ids); None for n = 0."""
    g, p = _ids(gold), _ids(pred, "pred")
    if g.shape != p.shape:
        raise ValueError(f"gold has {g.size} items, pred {p.size}")
    return float(np.mean(g == p)) if g.size else None


def balanced_accuracy(gold: ArrayLike, pred: ArrayLike) -> float | None:
    """Mean per-class recall over the classes present in `gold` ([n] label ids); None for n = 0.

    Always-predict-one-class scores 1/k on k present classes, whatever the class shares.
    """
    g, p = _ids(gold), _ids(pred, "pred")
    if g.shape != p.shape:
        raise ValueError(f"gold has {g.size} items, pred {p.size}")
    if not g.size:
        return None
    recalls = [float(np.mean(p[g == c] == c)) for c in np.unique(g)]
    return float(np.mean(recalls))


def macro_f1(gold: ArrayLike, pred: ArrayLike, n_labels: int) -> float | None:
    """Unweighted mean of per-label F1 over labels 0..n_labels-1; None for n = 0.

    Per label F1 = 2TP / (2TP + FP + FN). Convention: a label that is neither gold nor predicted
    for any item (TP + FP + FN = 0, F1 undefined) is left out of the mean; a label that is gold
    but never predicted (or predicted but never gold) counts with F1 = 0.
    """
    g, p = _ids(gold), _ids(pred, "pred")
    if g.shape != p.shape:
        raise ValueError(f"gold has {g.size} items, pred {p.size}")
    if not g.size:
        return None
    f1s = []
    for c in range(n_labels):
        tp = int(np.sum((g == c) & (p == c)))
        fp = int(np.sum((g != c) & (p == c)))
        fn = int(np.sum((g == c) & (p != c)))
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s))


def binary_scores(probs: ArrayLike) -> np.ndarray:
    """[n, 2] label probabilities -> [n] score p1 / (p0 + p1) of the second label (0.5 where p0 + p1 = 0)."""
    p = _probs(probs, 2)
    s = p[:, 0] + p[:, 1]
    return np.divide(p[:, 1], s, out=np.full(len(p), 0.5), where=s > 0)


def roc_auc(gold: ArrayLike, scores: ArrayLike) -> float | None:
    """ROC-AUC of `scores` [n] for gold == 1 vs gold == 0 ([n] ids in {0, 1}).

    Mann-Whitney form: P(score of a random positive > score of a random negative), ties counted
    1/2. None when gold holds one class only (or n = 0).
    """
    g = _ids(gold)
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != g.shape:
        raise ValueError(f"gold has {g.size} items, scores {s.size}")
    if np.any((g != 0) & (g != 1)):
        raise ValueError("roc_auc: gold must hold label ids 0 and 1 only")
    n1, n0 = int(np.sum(g == 1)), int(np.sum(g == 0))
    if n1 == 0 or n0 == 0:
        return None
    ranks = rankdata(s)  # average ranks: a tie between a positive and a negative counts 1/2
    return float((ranks[g == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def classification_metrics(
    gold: ArrayLike, probs: ArrayLike, labels: Sequence[str], pred: ArrayLike | None = None
) -> dict:
    """Metrics of one (task, language) run: gold [n] label ids, probs [n, len(labels)].

    Returns {"n", "accuracy", "balanced_accuracy", "macro_f1", "roc_auc",
    "predicted_distribution": {label: count}, "gold_distribution": {label: count}}.
    pred [n] label ids defaults to probs.argmax(1) (pass it to use predictions recorded
    elsewhere, e.g. predictions.jsonl's "pred"; probs then serve only the AUC). roc_auc (two-label tasks only) ranks p1 / (p0 + p1), label 1 being
    the positive class (the AUC of label 0 is the same number); None for > 2 labels or when gold
    holds one class only. Every metric is None for n = 0 (see `macro_f1` for its convention).
    """
    labels = list(labels)
    g = _ids(gold)
    p = _probs(probs, len(labels)) if g.size else np.zeros((0, len(labels)))
    if len(p) != g.size:
        raise ValueError(f"gold has {g.size} items, probs {len(p)} rows")
    if g.size and (g.min() < 0 or g.max() >= len(labels)):
        raise ValueError(f"gold: label id out of range 0..{len(labels) - 1}")
    if pred is None:
        pred = p.argmax(1) if g.size else np.zeros(0, dtype=np.int64)
    pred = _ids(pred, "pred")
    if pred.shape != g.shape:
        raise ValueError(f"gold has {g.size} items, pred {pred.size}")
    if pred.size and (pred.min() < 0 or pred.max() >= len(labels)):
        raise ValueError(f"pred: label id out of range 0..{len(labels) - 1}")
    auc = roc_auc(g, binary_scores(p)) if len(labels) == 2 and g.size else None
    return {
        "n": int(g.size),
        "accuracy": accuracy(g, pred),
        "balanced_accuracy": balanced_accuracy(g, pred),
        "macro_f1": macro_f1(g, pred, len(labels)),
        "roc_auc": auc,
        "predicted_distribution": {lab: int(np.sum(pred == j)) for j, lab in enumerate(labels)},
        "gold_distribution": {lab: int(np.sum(g == j)) for j, lab in enumerate(labels)},
    }


# --------------------------------------------------------------------------------------------------
# Contextual calibration (Zhao et al. 2021, "Calibrate before use")
# --------------------------------------------------------------------------------------------------


def _normalise_rows(p: np.ndarray, what: str) -> np.ndarray:
    if np.any(p < 0):
        raise NumericalError(f"{what}: negative probability")
    s = p.sum(axis=-1, keepdims=True)
    if np.any(s <= 0):
        raise NumericalError(f"{what}: a row has no probability mass on any label (sum 0)")
    return p / s


def content_free_probs(vectors: Sequence[ArrayLike]) -> np.ndarray:
    """Content-free label distribution p_cf [n_labels] from one or more content-free inputs.

    Each vector (label probabilities for a prompt whose query is e.g. "N/A", "" or "[MASK]") is
    normalised to the label simplex, the vectors are averaged and the mean is renormalised, as in
    Zhao et al.'s code (`get_p_content_free`).
    """
    v = np.asarray([np.asarray(x, dtype=np.float64) for x in vectors])
    if v.ndim != 2 or len(v) == 0:
        raise ValueError(f"content_free_probs: expected one or more [n_labels] vectors, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise NumericalError("content-free probabilities: non-finite value")
    mean = _normalise_rows(v, "content-free probabilities").mean(axis=0)
    return mean / mean.sum()


def calibrate(probs: ArrayLike, p_content_free: ArrayLike) -> np.ndarray:
    """Contextually calibrated label probabilities, same shape as `probs` ([n, L] or [L]).

    Each row is normalised to the label simplex (p̂), multiplied by W = diag(p_cf)^-1 with b = 0,
    where p_cf [L] is the normalised content-free distribution, and renormalised. Zhao et al. write
    softmax(W p̂ + b) but their code takes the argmax of W p̂; renormalising keeps that argmax and
    gives a distribution. A label the content-free input favours is thereby scaled down: a model
    that answers label k for everything because of its prompt prior stops doing so.
    Raises NumericalError for non-finite values, a zero p_cf entry or a row with no mass.
    """
    p = np.asarray(probs, dtype=np.float64)
    cf = np.asarray(p_content_free, dtype=np.float64)
    if cf.ndim != 1 or p.shape[-1] != cf.shape[0]:
        raise ValueError(f"calibrate: probs shape {p.shape} does not match p_content_free shape {cf.shape}")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(cf))):
        raise NumericalError("calibrate: non-finite probability")
    cf = _normalise_rows(cf, "content-free probabilities")
    if np.any(cf <= 0):
        raise NumericalError(f"calibrate: content-free probability 0 for label column {int(np.argmin(cf))} (W = diag(p_cf)^-1 undefined)")
    return _normalise_rows(_normalise_rows(p, "probs") / cf, "calibrated probs")


def calibrated_accuracy(gold: ArrayLike, probs: ArrayLike, p_content_free: ArrayLike) -> float | None:
    """Accuracy of argmax(calibrate(probs, p_content_free)) against gold [n]; None for n = 0."""
    g = _ids(gold)
    if not g.size:
        return None
    return accuracy(g, calibrate(probs, p_content_free).argmax(1))
