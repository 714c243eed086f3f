"""Effects of training arms with a label-stratified item × seed bootstrap (pure numpy/scipy).

A *run* is a base model or one (arm, seed) of a study; per task it holds, for every language, the
item ids [n], gold label ids [n], label probabilities [n, L] and the content-free label
probabilities [k, L] of contextual calibration (`RunData`, `LangData`; `run_data` builds them from
parsed predictions.jsonl rows and summary.json). An *arm* is a list of replicate runs (training
seeds); a base model is an arm of one run.

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

**Resampling** (`Resampler`, one per (task, language group), so every effect, contrast and trend of the
group uses the same draws and their differences are paired). Items: the item ids shared by every
language of the group and every run; within each gold-label stratum, the stratum's size is drawn
with replacement (label-stratified: every resample keeps the label counts, so AUC and balanced
accuracy are always defined and label-share noise does not enter); the same draw serves every
language and every run (clustered: item i is the same question in every language, so the errors of
one item are correlated across languages and runs). Seeds: for every arm of ≥ 2 replicates, its
seeds are drawn with replacement and the arm's metric is the mean over the drawn seeds (base runs
have no seed level; one seed makes it a no-op). Draws are deterministic given `seed` (the item
draws do not depend on which arms are in the plan); they are generated in blocks of `chunk`
resamples, so memory is O(chunk · n) plus R floats per (run, language, metric).

**Effects** (`Effect`): Δ = mean over the languages of metric(arm a) − metric(arm b) ("macro");
a contrast is the difference of two effects on the same draws; a trend is the OLS slope of effects
against x (e.g. log2 of the number of training languages), slope = Σ (x−x̄) Δ / Σ (x−x̄)², per draw.
Each carries: estimate (on the observed data, every seed once), ci95 (2.5 and 97.5 percentiles of the
R draws), se (their standard deviation), p = 2 min(P*(Δ ≤ 0), P*(Δ ≥ 0)) floored at 1/R and capped
at 1 (two-sided bootstrap), mde80 = (z_0.975 + z_0.80) se ≈ 2.80 se (the true effect that a test at
α = 0.05 detects with 80 % power, normal approximation).

**Verdict** (`Effect.verdict(direction)`, the claim being "Δ has the sign of `direction`"):
"not testable" when fewer than `MIN_ITEMS` shared items, fewer than two gold labels among them, the
metric undefined (e.g. AUC of > 2 labels, calibrated accuracy without content-free probabilities) or
a zero-width interval (every resample gave the same Δ, e.g. two runs with identical answers);
else "supported" when the whole interval lies on the claimed side of 0 (0 excluded), "contradicted"
when it lies wholly on the other side, "inconclusive" when it contains 0: the data cannot tell,
effects smaller than ±mde80 would go undetected (never a refutation).

Undefined values are None (JSON null), never NaN.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from scipy.stats import norm

from alignlens import AlignlensError
from alignlens import metrics as M
from alignlens.stats import holm, mcnemar_exact

__all__ = [
    "LangData", "RunData", "index_rows", "label_id", "run_data",
    "draw_counts", "percentile_ci", "weighted_accuracy", "weighted_balanced_accuracy", "weighted_auc",
    "METRICS", "task_metrics", "primary_metric", "point_metrics", "mcnemar_by_language",
    "Resampler", "Effect", "compare_groups", "MIN_ITEMS", "Z_MDE80", "LEVEL_ITEMS", "LEVEL_SEEDS",
]  # fmt: skip

_QUANTILES = (0.025, 0.975)
_BATCH_BYTES = 64 << 20  # metric functions (AUC pair kernels) held during one pass over the draws
#: Fewer shared items than this: every effect is "not testable".
MIN_ITEMS = 10
#: MDE80 = Z_MDE80 · se: z_{0.975} + z_{0.80} (two-sided α = 0.05, power 0.80).
Z_MDE80 = float(norm.ppf(0.975) + norm.ppf(0.80))
LEVEL_ITEMS = "items (label-stratified, clustered over languages)"
LEVEL_SEEDS = "training seeds"
#: Metric names of `Resampler.effect`; "share:<label>" (a label's predicted share) besides.
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


class _Cell:
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


def _check_metric(metric: str) -> None:
    if metric not in METRICS and not metric.startswith("share:"):
        raise ValueError(f"metric: unknown name {metric!r} ({', '.join(METRICS)} or share:<label>)")


def _num(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


# --------------------------------------------------------------------------------------------------
# Effects
# --------------------------------------------------------------------------------------------------


@dataclass
class Effect:
    """An effect (macro Δ of arm a − arm b over languages), a contrast (effect − effect) or a trend
    (OLS slope of effects against x), with its bootstrap distribution `draws` [R] on one
    `Resampler`'s draws. Statistics are None where undefined; `not_testable` says why the verdict is
    "not testable" (None: testable)."""

    kind: str  # "effect" | "contrast" | "trend"
    label: str  # "zh-de vs base", "(zh-de vs base) − (copy vs base)", "slope of ..."
    metric: str
    languages: list[str]
    estimate: float | None
    ci95: list[float] | None
    se: float | None
    p: float | None
    mde80: float | None
    n_items: int
    n_resamples: int
    seeds: dict[str, list[int]]  # arm -> its replicate seeds (arms whose runs have seeds)
    levels: list[str]  # what was resampled, in words
    not_testable: str | None
    a: str | None = None  # effect: the two arms
    b: str | None = None
    values: dict[str, float | None] = field(default_factory=dict)  # effect: macro metric of a and of b
    per_seed: list[dict] = field(default_factory=list)  # effect: [{seed, estimate, ci95, se}] of a's seeds alone
    missing_languages: list[str] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)  # contrast, trend: labels of the effects combined
    x: list[float] | None = None  # trend
    draws: np.ndarray | None = field(default=None, repr=False, compare=False)
    plan: int = field(default=-1, repr=False, compare=False)

    def verdict(self, direction: int = 1) -> str:
        """For the claim "Δ has the sign of `direction`" (+1 or −1): "not testable" when
        `not_testable`; "supported" when direction·lo > 0 (the whole 95% interval on the claimed side,
        0 excluded); "contradicted" when direction·hi < 0; else "inconclusive" (0 in the interval)."""
        if direction not in (1, -1):
            raise ValueError(f"direction must be +1 or -1, got {direction!r}")
        if self.not_testable or self.ci95 is None:
            return "not testable"
        lo, hi = sorted(direction * v for v in self.ci95)
        return "supported" if lo > 0 else "contradicted" if hi < 0 else "inconclusive"

    def sentence(self, direction: int = 1) -> str:
        """One sentence saying what the test shows (an inconclusive result is never a refutation)."""
        v = self.verdict(direction)
        if v == "not testable":
            return f"{self.label}: not testable ({self.not_testable})."
        what = (f"{self.label}: {'slope' if self.kind == 'trend' else 'Δ'} {self.metric} {self.estimate:+.3f} "
                f"(95% CI {self.ci95[0]:+.3f} to {self.ci95[1]:+.3f}, p = {self.p:.2g}, {self.n_items} items)")
        if v == "inconclusive":
            return (f"{what}: cannot tell at this n, the interval includes 0; effects smaller than "
                    f"±{self.mde80:.3f} (MDE80) would go undetected.")
        side = "above" if (self.estimate > 0) else "below"
        return f"{what}: {side} 0, {'as claimed' if v == 'supported' else 'against the claim'}."

    def to_json(self, direction: int = 1) -> dict:
        """JSON-able dict (no NaN): every field but draws/plan, plus n_languages, verdict and text
        for the claim direction."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("draws", "plan")}
        out.update(n_languages=len(self.languages), verdict=self.verdict(direction), text=self.sentence(direction))
        return out


def _stats(estimate: float | None, draws: np.ndarray | None) -> tuple[dict, str | None]:
    """({ci95, se, p, mde80}, why not testable) of an estimate and its draws [R] (None: not computable)."""
    if draws is None or estimate is None:
        return {"ci95": None, "se": None, "p": None, "mde80": None}, None
    if not np.all(np.isfinite(draws)):
        return {"ci95": None, "se": None, "p": None, "mde80": None}, "the metric was undefined in some resample"
    ci = percentile_ci(draws)
    se = float(np.std(draws, ddof=1))
    p = 2 * min(np.mean(draws <= 0), np.mean(draws >= 0))
    zero = ci[1] - ci[0] <= 1e-12 * max(1.0, abs(estimate))
    return ({"ci95": ci, "se": se, "p": float(min(1.0, max(1.0 / draws.size, p))), "mde80": Z_MDE80 * se},
            f"zero-width interval: every resample gave {estimate:+.4g}" if zero else None)


def _effect(kind: str, label: str, metric: str, langs: list[str], estimate: float | None,
            draws: np.ndarray | None, reason: str | None, n_items: int, **extra) -> Effect:
    """An Effect from its point estimate and draws [R] (None: not computable); `reason`: why it is
    not testable (a zero-width interval or undefined draws add theirs)."""
    stats, why = _stats(estimate, draws)
    return Effect(kind=kind, label=label, metric=metric, languages=langs, estimate=_num(estimate),
                  n_items=n_items, not_testable=reason or why, draws=draws if stats["se"] is not None else None,
                  **stats, **extra)


class Resampler:
    """The bootstrap draws of one (task, language group): every effect, contrast and trend taken from
    one Resampler is computed on the same draws (paired). See the module docstring for what is
    drawn.

    arms: name -> one RunData (a base model: no seed level) or a sequence of replicate runs (an arm's
    training seeds, `RunData.seed` unique; seed level when ≥ 2 and `resample_seeds`). languages: the
    group; those without items in some run go to `missing_languages`, the rest to `languages`.
    Items (`items`, `gold`): the item ids every run has in every language of `languages`, ascending.
    Raises AlignlensError when runs have different labels or an item's gold label differs between
    languages or runs."""

    _count = 0

    def __init__(self, arms: Mapping[str, RunData | Sequence[RunData]], languages: Sequence[str], *,
                 n_resamples: int = 2000, seed: int = 0, resample_seeds: bool = True, chunk: int = 256) -> None:
        for name, v, lo in (("n_resamples", n_resamples, 2), ("seed", seed, 0), ("chunk", chunk, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        self.arms = {a: [r] if isinstance(r, RunData) else list(r) for a, r in arms.items()}
        if not self.arms or not all(self.arms.values()):
            raise ValueError("arms: expected at least one arm, each with at least one run")
        runs = [(a, r) for a, rs in self.arms.items() for r in rs]
        self.labels = runs[0][1].labels
        for a, r in runs:
            if r.labels != self.labels:
                raise AlignlensError(f"run {r.name} (arm {a}) has labels {list(r.labels)}, run {runs[0][1].name} {list(self.labels)}")  # fmt: skip
        for a, rs in self.arms.items():
            if len({r.seed for r in rs}) != len(rs):
                raise ValueError(f"arm {a}: its runs' seeds {[r.seed for r in rs]} are not unique")
        langs = list(dict.fromkeys(languages))
        self.languages = [lang for lang in langs if all(lang in r.langs and r.langs[lang].gold.size for _, r in runs)]
        self.missing_languages = [lang for lang in langs if lang not in self.languages]
        self.n_resamples, self.seed, self.chunk, Resampler._count = n_resamples, seed, chunk, Resampler._count + 1
        self.id = Resampler._count
        cells = [(r, lang, r.langs[lang]) for _, r in runs for lang in self.languages]
        items = np.zeros(0, dtype=np.int64)
        if cells:
            items = cells[0][2].indices
            for _, _, d in cells[1:]:
                items = np.intersect1d(items, d.indices)
        self.items = np.sort(items)
        self._sel = {}
        for r, lang, d in cells:
            order = np.argsort(d.indices)
            self._sel[(id(r), lang)] = order[np.searchsorted(d.indices, self.items, sorter=order)]
        self.gold = cells[0][2].gold[self._sel[(id(cells[0][0]), cells[0][1])]] if cells else items
        for r, lang, d in cells:
            bad = np.flatnonzero(d.gold[self._sel[(id(r), lang)]] != self.gold)
            if bad.size:
                i = int(bad[0])
                raise AlignlensError(f"item {self.items[i]}: gold label {self.labels[d.gold[self._sel[(id(r), lang)]][i]]} in run {r.name} {lang}, {self.labels[self.gold[i]]} in run {cells[0][0].name} {cells[0][1]} (the items of a group must be the same questions)")  # fmt: skip
        self.strata = [np.flatnonzero(self.gold == c) for c in np.unique(self.gold)]
        self._seed_counts = {}
        for a, rs in self.arms.items():
            if resample_seeds and len(rs) > 1:
                rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, zlib.crc32(a.encode()))))
                self._seed_counts[a] = draw_counts(rng.integers(0, len(rs), (n_resamples, len(rs))), len(rs))
        self._cells: dict = {}
        self._cache: dict = {}

    @property
    def n_items(self) -> int:
        return int(self.items.size)

    def levels(self, arms: Iterable[str]) -> list[str]:
        """What the draws of effects between `arms` resample, in words."""
        return [LEVEL_ITEMS] + ([LEVEL_SEEDS] if any(a in self._seed_counts for a in arms) else [])

    def item_weights(self) -> Iterator[np.ndarray]:
        """The item draws in blocks of ≤ chunk resamples: float64 [c, n] counts; every row keeps each
        gold label's count; the same blocks on every call."""
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(0,)))
        for start in range(0, self.n_resamples, self.chunk):
            c = min(self.chunk, self.n_resamples - start)
            idx = [pos[rng.integers(0, len(pos), (c, len(pos)))] for pos in self.strata]
            yield draw_counts(np.concatenate(idx, axis=1), self.n_items) if idx else np.zeros((c, 0))

    def _cell(self, arm: str, k: int, lang: str) -> _Cell:
        key = (arm, k, lang)
        if key not in self._cells:
            r = self.arms[arm][k]
            self._cells[key] = _Cell(r.langs[lang], self._sel[(id(r), lang)], self.labels)
        return self._cells[key]

    def prepare(self, metrics: Sequence[str], arms: Sequence[str] | None = None) -> None:
        """Compute the draws of `metrics` for every run of `arms` (default all) in every language in
        one pass over the item draws (later effects on them cost no resampling)."""
        for m in metrics:
            _check_metric(m)
        self._fill([(a, k, lang, m) for a in (arms or self.arms) for k in range(len(self.arms[a]))
                    for lang in self.languages for m in metrics])

    def _fill(self, keys: list[tuple]) -> None:
        """Cache (point, draws [R]) of each (arm, run, lang, metric) key: in batches whose metric
        functions hold at most _BATCH_BYTES, each one pass over the (regenerated) item draws."""
        todo = [k for k in dict.fromkeys(keys) if k not in self._cache and self._cell(*k[:3]).undefined(k[3]) is None]
        if not self.n_items:
            return
        batch, held = [], 0
        for i, k in enumerate(todo):
            fn, nbytes = self._cell(*k[:3]).metric(k[3])
            batch.append((k, fn))
            held += nbytes
            if held < _BATCH_BYTES and i + 1 < len(todo):
                continue
            draws: dict = {k: [] for k, _ in batch}
            for w in self.item_weights():
                for k, fn in batch:
                    draws[k].append(fn(w))
            for k, fn in batch:
                self._cache[k] = (float(fn(np.ones((1, self.n_items)))[0]), np.concatenate(draws[k]))
            batch, held = [], 0

    def _arm(self, arm: str, lang: str, metric: str, seeds: bool = True) -> tuple[float, np.ndarray]:
        """(point: mean over the arm's runs, draws [R]: mean over the drawn seeds, or over all runs
        when `seeds` is False or the arm has no seed level)."""
        got = [self._cache[(arm, k, lang, metric)] for k in range(len(self.arms[arm]))]
        D = np.stack([g[1] for g in got], axis=1)
        counts = self._seed_counts.get(arm) if seeds else None
        draws = D.mean(axis=1) if counts is None else (D * counts).sum(axis=1) / D.shape[1]
        return float(np.mean([g[0] for g in got])), draws

    def _why_not(self, metric: str, langs: list[str], arms: Sequence[str]) -> tuple[str | None, bool]:
        """(why not testable or None, whether the effect can be computed at all)."""
        if not langs:
            return "no language of the group has items in every run", False
        if not self.n_items:
            return "no item is shared by every language and run of the group", False
        for a in arms:
            for k, r in enumerate(self.arms[a]):
                for lang in langs:
                    why = self._cell(a, k, lang).undefined(metric)
                    if why:
                        return f"run {r.name} {lang}: {why}", False
        if self.n_items < MIN_ITEMS:
            return f"{self.n_items} shared items (fewer than {MIN_ITEMS})", True
        if len(self.strata) < 2:
            return f"the shared items hold one gold label only ({self.labels[self.gold[0]]})", True
        return None, True

    def _languages(self, languages: Sequence[str] | None) -> tuple[list[str], list[str]]:
        if languages is None:
            return list(self.languages), list(self.missing_languages)
        unknown = [lang for lang in languages if lang not in self.languages + self.missing_languages]
        if unknown:
            raise ValueError(f"languages {unknown} are not in this Resampler's group")
        return ([lang for lang in self.languages if lang in languages],
                [lang for lang in self.missing_languages if lang in languages])

    def effect(self, a: str, b: str, metric: str, languages: Sequence[str] | None = None,
               label: str | None = None) -> Effect:
        """Macro Δ = mean over `languages` (default the group's) of metric(arm a) − metric(arm b), on
        this Resampler's items; per_seed: each of a's runs alone against b (items only)."""
        _check_metric(metric)
        for arm in (a, b):
            if arm not in self.arms:
                raise ValueError(f"arm {arm!r} is not in this Resampler (arms: {', '.join(self.arms)})")
        langs, missing = self._languages(languages)
        reason, computable = self._why_not(metric, langs, (a, b))
        common = dict(n_resamples=self.n_resamples, a=a, b=b, missing_languages=missing, plan=self.id,
                      levels=self.levels((a, b)),
                      seeds={x: [r.seed for r in self.arms[x]] for x in (a, b) if self.arms[x][0].seed is not None})
        label = label or f"{a} vs {b}" + ("" if languages is None else f" ({', '.join(langs + missing)})")
        if not computable:
            return _effect("effect", label, metric, langs, None, None, reason, self.n_items, **common)
        self._fill([(x, k, lang, metric) for x in (a, b) for k in range(len(self.arms[x])) for lang in langs])
        A = [self._arm(a, lang, metric) for lang in langs]
        B = [self._arm(b, lang, metric) for lang in langs]
        B_items = np.mean([self._arm(b, lang, metric, seeds=False)[1] for lang in langs], axis=0)
        per_seed = []
        for k, r in enumerate(self.arms[a] if self.arms[a][0].seed is not None else ()):
            got = [self._cache[(a, k, lang, metric)] for lang in langs]
            est = float(np.mean([g[0] for g in got]) - np.mean([x[0] for x in B]))
            st, _ = _stats(est, np.mean([g[1] for g in got], axis=0) - B_items)
            per_seed.append({"seed": r.seed, "estimate": _num(est), "ci95": st["ci95"], "se": st["se"]})
        va, vb = float(np.mean([x[0] for x in A])), float(np.mean([x[0] for x in B]))
        draws = np.mean([x[1] for x in A], axis=0) - np.mean([x[1] for x in B], axis=0)
        return _effect("effect", label, metric, langs, va - vb, draws, reason, self.n_items,
                       values={a: _num(va), b: _num(vb)}, per_seed=per_seed, **common)

    def _own(self, effects: Sequence[Effect]) -> None:
        if not effects or any(e.plan != self.id for e in effects):
            raise ValueError("contrast/trend: every effect must come from this Resampler (same draws)")
        if len({e.metric for e in effects}) != 1:
            raise ValueError(f"contrast/trend: effects of different metrics {sorted({e.metric for e in effects})}")

    @staticmethod
    def _merged(effects: Sequence[Effect]) -> dict:
        seeds: dict = {}
        for e in effects:
            seeds.update(e.seeds)
        return dict(
            levels=[lv for lv in (LEVEL_ITEMS, LEVEL_SEEDS) if any(lv in e.levels for e in effects)], seeds=seeds,
            parts=[e.label for e in effects], n_resamples=effects[0].n_resamples, plan=effects[0].plan,
            missing_languages=list(dict.fromkeys(x for e in effects for x in e.missing_languages)))

    def contrast(self, e1: Effect, e2: Effect, label: str | None = None) -> Effect:
        """e1 − e2 on the same draws (e.g. aligned vs base − copy-control vs base; trained − untrained)."""
        self._own([e1, e2])
        langs = list(dict.fromkeys(e1.languages + e2.languages))
        reason = e1.not_testable or e2.not_testable
        label = label or f"({e1.label}) − ({e2.label})"
        ok = e1.draws is not None and e2.draws is not None
        return _effect("contrast", label, e1.metric, langs, e1.estimate - e2.estimate if ok else None,
                       e1.draws - e2.draws if ok else None, reason, self.n_items, **self._merged([e1, e2]))

    def trend(self, effects: Sequence[Effect], x: Sequence[float], label: str | None = None) -> Effect:
        """OLS slope of the effects against x (e.g. log2 of each arm's number of training languages),
        per draw: Σ (x−x̄) Δ / Σ (x−x̄)²; two points give their difference over Δx."""
        self._own(effects)
        xs = np.asarray(x, dtype=np.float64)
        if xs.shape != (len(effects),) or np.unique(xs).size < 2 or not np.all(np.isfinite(xs)):
            raise ValueError(f"trend: x must hold one finite value per effect, at least two distinct, got {list(x)}")
        xc = (xs - xs.mean()) / np.sum((xs - xs.mean()) ** 2)
        reason = next((e.not_testable for e in effects if e.not_testable), None)
        ok = all(e.draws is not None for e in effects)
        langs = list(dict.fromkeys(lang for e in effects for lang in e.languages))
        return _effect("trend", label or f"slope of {', '.join(e.label for e in effects)}", effects[0].metric, langs,
                       float(np.dot(xc, [e.estimate for e in effects])) if ok else None,
                       np.stack([e.draws for e in effects], axis=1) @ xc if ok else None, reason, self.n_items,
                       x=[float(v) for v in xs], **self._merged(effects))


def compare_groups(a_rows: Iterable[Mapping], b_rows: Iterable[Mapping], groups: Mapping[str, Sequence[str]] | None = None,
                   *, a_summary: Mapping | None = None, b_summary: Mapping | None = None,
                   metrics: Sequence[str] | None = None, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Macro Δ (run b − run a) per language group, label-stratified item-cluster bootstrap: what
    `paired.compare_runs`'s "groups" need. Rows: parsed predictions.jsonl; summaries: parsed
    summary.json (their p_content_free serve calibrated accuracy). groups=None: {"all": every
    language of the task}. metrics: default `task_metrics` of each task.

    Returns {task: {group: {metric: Effect.to_json() of "b" vs "a" plus "delta" (= estimate),
    "a" and "b" (each run's macro metric)}}} for the tasks both runs have."""
    ra, rb = run_data(a_rows, a_summary, name="a"), run_data(b_rows, b_summary, name="b")
    out: dict = {}
    for task in [t for t in ra if t in rb]:
        if ra[task].labels != rb[task].labels:
            raise AlignlensError(f"task {task}: run a has labels {list(ra[task].labels)}, run b {list(rb[task].labels)}")
        ms = list(metrics or task_metrics(ra[task].labels))
        task_groups = groups or {"all": list(dict.fromkeys([*ra[task].langs, *rb[task].langs]))}
        out[task] = {}
        for group, langs in task_groups.items():
            plan = Resampler({"a": ra[task], "b": rb[task]}, langs, n_resamples=n_resamples, seed=seed)
            plan.prepare(ms)
            entries = {}
            for m in ms:
                e = plan.effect("b", "a", m)
                entries[m] = {**e.to_json(), "delta": e.estimate, "a": e.values.get("a"), "b": e.values.get("b")}
            out[task][group] = entries
    return out
