"""Runs as arrays, and their metrics under resample weights (pure numpy/scipy): what `effects` resamples.

A *run* is a base model or one (arm, seed) of a study; per task it holds, for every language, the
item ids [n], gold label ids [n], label probabilities [n, L] and the content-free label
probabilities [k, L] of contextual calibration (`RunData`, `LangData`; `run_data` builds them from
parsed predictions.jsonl rows and summary.json). `point_metrics`: one run's metrics on all its items
(`metrics`); `mcnemar_by_language`: two runs' exact McNemar tests per language.

**Metrics**, each a function of fixed per-item values under item weights w [R, n] (w_ri = how often
resample r drew item i), computed for all R resamples at once:
  accuracy = Σ_i w_i 1[pred_i = gold_i] / Σ_i w_i;  calibrated accuracy: the same with
  pred_i = argmax `metrics.calibrate`(probs_i, p_cf) (Zhao et al. 2021; p_cf fixed per run and language,
  so the calibrated predictions are fixed and only re-weighted);  balanced accuracy = mean over the
  gold labels present of Σ_{i: gold=c} w_i 1[pred_i = c] / Σ_{i: gold=c} w_i;  label share of c =
  Σ_i w_i 1[pred_i = c] / Σ_i w_i;  AUC (two labels, score s = p1 / (p0 + p1)) =
  Σ_i Σ_j w_i w_j 1[gold_i = 1, gold_j = 0] (1[s_i > s_j] + ½ 1[s_i = s_j]) / (W1 W0), computed as
  the matrix product w_pos K w_neg with the fixed pair kernel K (up to 2^18 pairs), else by sorting
  the scores once and accumulating the weights of tied-score groups (O(R n) per resample block).
Primary metric (`primary_metric`): AUC for two-label tasks, calibrated accuracy otherwise.

`RunCell` holds one run's fixed per-item values in one language and gives each metric as a
function of the weights w [R, n]; `draw_counts` turns drawn positions into such weights, and
`percentile_ci` reads a 95% interval from the R values.

Undefined values are None (JSON null), never NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from alignlens import AlignlensError
from alignlens import metrics as M
from alignlens.stats import holm, mcnemar_exact

__all__ = [
    "LangData", "RunData", "index_rows", "label_id", "run_data",
    "draw_counts", "percentile_ci", "weighted_accuracy", "weighted_balanced_accuracy", "weighted_auc",
    "METRICS", "task_metrics", "primary_metric", "point_metrics", "mcnemar_by_language", "RunCell", "check_metric",
]  # fmt: skip

_QUANTILES = (0.025, 0.975)
#: Metric names of `RunCell.metric` and `effects.Resampler.effect`; "share:<label>" (a label's predicted share) besides.
METRICS = ("auc", "calibrated_accuracy", "accuracy", "balanced_accuracy")


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LangData:
    """One run's answers in one (task, language): indices [n] unique item ids, gold [n] label ids,
    probs [n, L] float64 label probabilities, content_free [k, L] content-free label probabilities
    (k ≥ 1 vectors, averaged by `metrics.content_free_probs`) or None, pred [n] recorded predictions
    (None: probs.argmax(1))."""

    indices: np.ndarray
    gold: np.ndarray
    probs: np.ndarray
    content_free: np.ndarray | None = None
    pred: np.ndarray | None = None

    def __post_init__(self) -> None:
        def set_(key: str, value: object) -> None:
            object.__setattr__(self, key, value)

        set_("indices", M._ids(self.indices, "indices"))
        set_("gold", M._ids(self.gold, "gold"))
        n = self.gold.size
        set_("probs", M._probs(self.probs) if n else np.zeros((0, np.shape(self.probs)[-1])))
        L = self.probs.shape[1]
        set_("pred", self.probs.argmax(1) if self.pred is None else M._ids(self.pred, "pred"))
        if not (self.indices.size == n == len(self.probs) == self.pred.size):
            raise ValueError(f"indices, gold, probs, pred differ in length ({self.indices.size}, {n}, {len(self.probs)}, {self.pred.size})")  # fmt: skip
        if np.unique(self.indices).size != n:
            raise ValueError("indices: repeated item id")
        for name, a in (("gold", self.gold), ("pred", self.pred)):
            if n and (a.min() < 0 or a.max() >= L):
                raise ValueError(f"{name}: label id out of range 0..{L - 1}")
        if self.content_free is not None:
            cf = np.atleast_2d(np.asarray(self.content_free, dtype=np.float64))
            if cf.ndim != 2 or cf.shape[1] != L or not len(cf):
                raise ValueError(f"content_free: expected shape [k, {L}], got {cf.shape}")
            set_("content_free", cf)

    @cached_property
    def calibrated_pred(self) -> np.ndarray | None:
        """[n] argmax of the contextually calibrated probabilities; None without content-free probabilities."""
        if self.content_free is None:
            return None
        return M.calibrate(self.probs, M.content_free_probs(list(self.content_free))).argmax(1)


@dataclass(frozen=True)
class RunData:
    """One run (a base model, or one (arm, seed)) on one task: labels and {lang: LangData}."""

    name: str
    labels: tuple[str, ...]
    langs: Mapping[str, LangData]
    seed: int | None = None


_KEYS = ("task", "lang", "index", "gold", "pred", "probs")


def index_rows(rows: Iterable[Mapping], run: str) -> tuple[dict, dict[str, list[str]]]:
    """predictions.jsonl rows -> ({(task, lang, index): row}, {task: labels in probs order}).
    Raises AlignlensError naming the row for a missing key, a repeated item, labels that differ
    from the task's earlier rows, a non-finite probability or a gold/pred that is no label."""
    out: dict = {}
    labels: dict[str, list[str]] = {}
    for no, row in enumerate(rows, start=1):
        for k in _KEYS:
            if not isinstance(row, Mapping) or k not in row:
                raise AlignlensError(f"run {run} prediction row {no}: missing key '{k}'")
        key = (str(row["task"]), str(row["lang"]), row["index"])
        where = f"run {run} prediction row {no} ({key[0]} {key[1]} item {key[2]})"
        if key in out:
            raise AlignlensError(f"{where}: item appears twice")
        probs = row["probs"]
        if not isinstance(probs, Mapping) or not probs:
            raise AlignlensError(f"{where}: 'probs' must map each label to its probability")
        labs = labels.setdefault(key[0], [str(k) for k in probs])
        if [str(k) for k in probs] != labs:
            raise AlignlensError(f"{where}: labels {list(probs)} differ from the task's earlier rows {labs}")
        vals = [probs[k] for k in probs]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in vals):
            raise AlignlensError(f"{where}: non-finite or non-numeric probability in 'probs'")
        for k in ("gold", "pred"):
            v = row[k]
            if not ((isinstance(v, str) and v in labs) or (isinstance(v, int) and not isinstance(v, bool) and 0 <= v < len(labs))):  # fmt: skip
                raise AlignlensError(f"{where}: {k} {v!r} is not one of the labels {labs}")
        out[key] = row
    return out, labels


def label_id(v: str | int, labels: Sequence[str]) -> int:
    """A row's gold/pred (label name or id) as a label id."""
    return list(labels).index(v) if isinstance(v, str) else int(v)


def run_data(rows: Iterable[Mapping], summary: Mapping | None = None, *, name: str = "run",
             seed: int | None = None) -> dict[str, RunData]:
    """{task: RunData} of one run from its parsed predictions.jsonl rows ({task, lang, index, gold,
    pred, probs: {label: p}}) and parsed summary.json, of which only
    tasks.<task>.languages.<lang>.p_content_free ({label: p}, the averaged content-free distribution)
    is read; without it a language's content_free is None (calibrated accuracy undefined).
    `name` and `seed` label the run (seed: its training replicate; None for a base model)."""
    by_key, labels = index_rows(rows, name)
    cells: dict[str, dict[str, list[Mapping]]] = {}
    for (task, lang, _), row in by_key.items():
        cells.setdefault(task, {}).setdefault(lang, []).append(row)
    out = {}
    for task, langs in cells.items():
        labs = labels[task]
        per_lang = {}
        for lang, rs in langs.items():
            entry = ((summary or {}).get("tasks", {}).get(task, {}).get("languages", {}).get(lang) or {})
            cf = entry.get("p_content_free")
            if cf is not None:
                if not isinstance(cf, Mapping) or sorted(map(str, cf)) != sorted(labs):
                    raise AlignlensError(f"run {name} summary task {task} {lang}: p_content_free must map the labels {labs} to probabilities")  # fmt: skip
                cf = np.array([[float(cf[k]) for k in labs]])
            idx = [r["index"] for r in rs]
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in idx):
                raise AlignlensError(f"run {name} task {task} {lang}: item indices must be integers")
            per_lang[lang] = LangData(
                np.array(idx, dtype=np.int64), np.array([label_id(r["gold"], labs) for r in rs], dtype=np.int64),
                np.array([[float(r["probs"][k]) for k in labs] for r in rs]), cf,
                np.array([label_id(r["pred"], labs) for r in rs], dtype=np.int64))
        out[task] = RunData(name, tuple(labs), per_lang, seed)
    return out


# --------------------------------------------------------------------------------------------------
# Metrics under resample weights
# --------------------------------------------------------------------------------------------------


def draw_counts(idx: np.ndarray, n: int) -> np.ndarray:
    """[c, m] drawn positions in 0..n-1 -> [c, n] float counts of how often each was drawn."""
    c = idx.shape[0]
    flat = (idx + (np.arange(c) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=c * n).reshape(c, n).astype(np.float64)


def percentile_ci(values: np.ndarray) -> list[float]:
    """95% percentile interval [lo, hi] of bootstrap values [R]."""
    lo, hi = np.quantile(values, _QUANTILES)
    return [float(lo), float(hi)]


def weighted_accuracy(correct: np.ndarray, w: np.ndarray) -> np.ndarray:
    """correct [n] (bool or 0/1), w [R, n] -> [R] weighted share correct."""
    return w @ np.asarray(correct, dtype=np.float64) / w.sum(axis=1)


def _balanced_fn(gold: np.ndarray, pred: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """w [R, n] -> balanced accuracy [R] (one-hot gold and hits prepared once)."""
    classes, g = np.unique(gold, return_inverse=True)
    both = np.zeros((len(gold), 2 * len(classes)))
    both[np.arange(len(gold)), g] = 1.0  # [:, :C] gold one-hot, [:, C:] the hits among them
    both[np.arange(len(gold)), len(classes) + g] = np.asarray(gold) == np.asarray(pred)

    def balanced(w: np.ndarray) -> np.ndarray:
        sums = w @ both
        den, num = sums[:, : len(classes)], sums[:, len(classes):]
        present = den > 0
        return np.where(present, num / np.where(present, den, 1.0), 0.0).sum(axis=1) / present.sum(axis=1)
    return balanced


def weighted_balanced_accuracy(gold: np.ndarray, pred: np.ndarray, w: np.ndarray) -> np.ndarray:
    """gold, pred [n] label ids, w [R, n] -> [R] mean weighted recall over the labels of positive weight."""
    return _balanced_fn(gold, pred)(w)


def _ties(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order sorting the scores, start of each group of equal scores in that order)."""
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    return order, np.flatnonzero(np.r_[True, s[1:] != s[:-1]])


def _auc_sorted(positive: np.ndarray, order: np.ndarray, starts: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted AUC [R] from `_ties` of the scores; positive [n] bool; NaN where W1 or W0 is 0."""
    ws = w[:, order]
    pos = positive[order]
    P = np.add.reduceat(ws * pos, starts, axis=1)  # positive weight per tied-score group [R, G]
    N = np.add.reduceat(ws * ~pos, starts, axis=1)
    below = np.cumsum(N, axis=1) - N  # negative weight with a strictly smaller score
    w1, w0 = P.sum(axis=1), N.sum(axis=1)
    den = w1 * w0
    return np.where(den > 0, (P * (below + 0.5 * N)).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)


#: Up to this many (positive, negative) pairs the AUC is a matrix product w_pos K w_neg (BLAS, faster
#: for the usual n); above, the sort-based form (memory O(n)).
_KERNEL_MAX_PAIRS = 1 << 18


def _auc_fn(scores: np.ndarray, positive: np.ndarray) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    """(w [R, n] -> weighted AUC [R], bytes held): the pair kernel K[i, j] = 1[s_i > s_j] + ½ 1[s_i = s_j]
    (positives i, negatives j) when small enough, else the sort of the scores."""
    s_pos, s_neg = scores[positive], scores[~positive]
    if s_pos.size * s_neg.size > _KERNEL_MAX_PAIRS:
        ties = _ties(scores)
        return (lambda w: _auc_sorted(positive, *ties, w)), 16 * scores.size
    K = (s_pos[:, None] > s_neg[None, :]) + 0.5 * (s_pos[:, None] == s_neg[None, :])

    def auc(w: np.ndarray) -> np.ndarray:
        wp, wn = w[:, positive], w[:, ~positive]
        den = wp.sum(axis=1) * wn.sum(axis=1)
        num = np.einsum("rj,rj->r", wp @ K, wn)
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return auc, K.nbytes


def weighted_auc(scores: np.ndarray, gold: np.ndarray, w: np.ndarray) -> np.ndarray:
    """AUC of scores [n] for gold == 1 vs gold == 0 under item weights w [R, n] -> [R]:
    Σ_i Σ_j w_i w_j [gold_i = 1, gold_j = 0] (1[s_i > s_j] + ½ 1[s_i = s_j]) / (W1 W0);
    NaN where a resample has no positive or no negative weight."""
    s, g = np.asarray(scores, dtype=np.float64), M._ids(gold)
    return _auc_fn(s, g == 1)[0](np.asarray(w, dtype=np.float64))


def task_metrics(labels: Sequence[str]) -> tuple[str, ...]:
    """The `METRICS` defined for a task: AUC only for two labels."""
    return METRICS if len(labels) == 2 else METRICS[1:]


def primary_metric(labels: Sequence[str]) -> str:
    """AUC for two-label tasks, calibrated accuracy otherwise."""
    return "auc" if len(labels) == 2 else "calibrated_accuracy"


def point_metrics(run: RunData, lang: str) -> dict:
    """One run's metrics on all its items of `lang` (`metrics` functions): {n, accuracy,
    balanced_accuracy, auc, calibrated_accuracy, label_shares: {label: share}, majority_label,
    majority_share}; None where undefined."""
    d = run.langs[lang]
    n = d.gold.size
    shares = np.bincount(d.pred, minlength=len(run.labels)) / n if n else np.zeros(len(run.labels))
    cal = d.calibrated_pred
    return {
        "n": int(n), "accuracy": M.accuracy(d.gold, d.pred), "balanced_accuracy": M.balanced_accuracy(d.gold, d.pred),
        "auc": M.roc_auc(d.gold, M.binary_scores(d.probs)) if len(run.labels) == 2 and n else None,
        "calibrated_accuracy": M.accuracy(d.gold, cal) if cal is not None and n else None,
        "label_shares": {lab: float(s) for lab, s in zip(run.labels, shares)} if n else None,
        "majority_label": run.labels[int(shares.argmax())] if n else None,
        "majority_share": float(shares.max()) if n else None,
    }  # fmt: skip


def mcnemar_by_language(a: RunData, b: RunData, languages: Sequence[str] | None = None) -> dict[str, dict]:
    """Exact McNemar of accuracy per language on the items the two runs share there, Holm-adjusted
    across the languages: {lang: {"n", "b01" (a wrong, b right), "b10", "p", "p_holm"}}; languages
    without a shared item are left out."""
    out = {}
    for lang in languages if languages is not None else list(a.langs):
        if lang not in a.langs or lang not in b.langs:
            continue
        da, db = a.langs[lang], b.langs[lang]
        shared, ia, ib = np.intersect1d(da.indices, db.indices, return_indices=True)
        if shared.size:
            r = mcnemar_exact(da.pred[ia] == da.gold[ia], db.pred[ib] == db.gold[ib])
            out[lang] = {"n": r["n"], "b01": r["b01"], "b10": r["b10"], "p": r["p_value"]}
    for lang, p in zip(out, holm([v["p"] for v in out.values()])):
        out[lang]["p_holm"] = p
    return out


class RunCell:
    """One run's fixed per-item values in one language, on the plan's items (in plan order)."""

    def __init__(self, d: LangData, sel: np.ndarray, labels: Sequence[str]) -> None:
        self.gold, self.pred = d.gold[sel], d.pred[sel]
        self.cal = None if d.calibrated_pred is None else d.calibrated_pred[sel]
        self.labels = list(labels)
        self.scores = M.binary_scores(d.probs[sel]) if len(labels) == 2 else None

    def undefined(self, metric: str) -> str | None:
        """Why `metric` is undefined here (None: defined)."""
        if metric == "auc" and self.scores is None:
            return f"AUC is defined for two-label tasks only (this task has {len(self.labels)})"
        if metric == "calibrated_accuracy" and self.cal is None:
            return "no content-free probabilities (calibrated accuracy undefined)"
        if metric.startswith("share:") and metric[6:] not in self.labels:
            return f"no label {metric[6:]!r} (labels: {', '.join(self.labels)})"
        return None

    def metric(self, metric: str) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
        """(w [R, n] -> metric [R], bytes the function holds)."""
        if metric == "auc":
            return _auc_fn(self.scores, self.gold == 1)
        if metric == "balanced_accuracy":
            return _balanced_fn(self.gold, self.pred), 0
        hit = {"accuracy": self.pred == self.gold, "calibrated_accuracy": self.cal == self.gold}.get(metric)
        hit = self.pred == self.labels.index(metric[6:]) if hit is None else hit
        return (lambda w: weighted_accuracy(hit, w)), 0


def check_metric(metric: str) -> None:
    if metric not in METRICS and not metric.startswith("share:"):
        raise ValueError(f"metric: unknown name {metric!r} ({', '.join(METRICS)} or share:<label>)")
