"""Metrics of one condition and paired effects between two conditions, from per-item rows.

A condition is a set of per-item rows {task, lang, index, gold, probs: {label: p}, pred} (gold and
pred label names): the base model, a steered base model, the base with W + α·ΔW, ... Item index i
is the same question in every language, so group effects use an item-cluster bootstrap (one draw
of items, used in every language of the group).

`paired_effects(rows_a, rows_b, groups)` is the one place localisation turns two conditions into
statistics (Δ = b − a). It is `paired.compare_runs` (exact McNemar per language, Holm and
Benjamini-Hochberg across the task's languages, paired bootstrap of each language's accuracy Δ,
item-cluster bootstrap of the group macro Δ of accuracy and balanced accuracy) plus, per group,
the item-cluster bootstrap of the macro Δ of two-label ROC-AUC and of each label's prediction share
(`_language_draws`, `_group_auc_shares`: the same draws as `paired.cluster_bootstrap_delta`), and the label-prior flag
(`prior_only`). When `alignlens.effects` (label-stratified bootstraps) exists, only this function
changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from alignlens import AlignlensError
from alignlens import metrics as M
from alignlens.effects import draw_counts, percentile_ci
from alignlens.paired import _resamples, compare_runs


def _label_id(v: str | int, labels: Sequence[str]) -> int:
    return labels.index(v) if isinstance(v, str) else int(v)


def task_cells(rows: Iterable[Mapping]) -> dict[str, dict[str, dict]]:
    """{task: {lang: {"labels", "index" [n], "gold" [n] ids, "probs" [n, L], "pred" [n] ids,
    "p_content_free" [L] or None}}} from per-item rows (label order: the first row's `probs`)."""
    out: dict[str, dict[str, dict]] = {}
    for row in rows:
        labels = list(row["probs"])
        cell = out.setdefault(row["task"], {}).setdefault(row["lang"], {
            "labels": labels, "index": [], "gold": [], "probs": [], "pred": [], "p_content_free": None})
        if labels != cell["labels"]:
            raise AlignlensError(f"task {row['task']} {row['lang']} item {row['index']}: labels {labels} differ from "
                                 f"the earlier rows' {cell['labels']}")
        cell["index"].append(int(row["index"]))
        cell["gold"].append(_label_id(row["gold"], labels))
        cell["probs"].append([float(row["probs"][k]) for k in labels])
        cell["pred"].append(_label_id(row["pred"], labels))
        if row.get("p_content_free") is not None:
            cell["p_content_free"] = [float(row["p_content_free"][k]) for k in labels]
    for langs in out.values():
        for cell in langs.values():
            cell["gold"], cell["pred"] = np.array(cell["gold"], dtype=np.int64), np.array(cell["pred"], dtype=np.int64)
            cell["probs"] = np.array(cell["probs"], dtype=np.float64).reshape(len(cell["gold"]), len(cell["labels"]))
    return out


def language_metrics(gold: np.ndarray, probs: np.ndarray, labels: Sequence[str], pred: np.ndarray | None = None,
                     p_content_free: Sequence[float] | None = None) -> dict:
    """One condition in one language: {"n", "accuracy", "balanced_accuracy", "roc_auc" (two labels,
    else None), "shares": {label: share of items predicted as it}, "calibrated_accuracy" (contextual
    calibration with `p_content_free` [L]; None without)}."""
    m = M.classification_metrics(gold, probs, labels, pred=pred)
    n = m["n"]
    calibrated = M.calibrated_accuracy(gold, probs, p_content_free) if p_content_free is not None and n else None
    return {"n": n, "accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"], "roc_auc": m["roc_auc"],
            "shares": {k: (c / n if n else None) for k, c in m["predicted_distribution"].items()},
            "calibrated_accuracy": calibrated}


def condition_metrics(rows: Iterable[Mapping], groups: Mapping[str, Sequence[str]] | None = None) -> dict:
    """{task: {"labels", "languages": {lang: language_metrics}, "groups": {group: macro means}}} of
    one condition's rows. A group's macro mean of a metric averages the group's languages where it is
    defined (None where none is); `groups` None: {"all": every language}."""
    out = {}
    for task, langs in task_cells(rows).items():
        labels = next(iter(langs.values()))["labels"]
        per = {lang: language_metrics(c["gold"], c["probs"], labels, c["pred"], c["p_content_free"])
               for lang, c in langs.items()}
        out[task] = {"labels": labels, "languages": per, "groups": group_means(per, groups or {"all": list(per)})}
    return out


def group_means(per_language: Mapping[str, dict], groups: Mapping[str, Sequence[str]]) -> dict:
    """{group: {"languages", metric: macro mean, "shares": {label: macro mean}}} over the group's
    languages present in `per_language` (`language_metrics` entries)."""
    out = {}
    for name, langs in groups.items():
        present = [lang for lang in langs if lang in per_language]
        entry: dict = {"languages": present}
        for key in ("accuracy", "balanced_accuracy", "roc_auc", "calibrated_accuracy"):
            vals = [per_language[lang][key] for lang in present if per_language[lang][key] is not None]
            entry[key] = float(np.mean(vals)) if vals else None
        labels = list(per_language[present[0]]["shares"]) if present else []
        entry["shares"] = {k: float(np.mean([per_language[lang]["shares"][k] for lang in present])) for k in labels}
        out[name] = entry
    return out


# ---- two conditions -------------------------------------------------------------------------


def weighted_auc(gold: np.ndarray, scores: np.ndarray, w: np.ndarray) -> np.ndarray:
    """ROC-AUC of `scores` [n] for gold == 1 vs 0 under item weights w [c, n] (bootstrap counts):
    [c] values, Mann-Whitney with ties 1/2 (`metrics.roc_auc` when w is all ones); NaN where a
    resample has no item of one class."""
    return _AucPlan(gold, scores)(w)


class _AucPlan:
    """`weighted_auc` of fixed (gold, scores) for many weight blocks: the items' positive and
    negative indicators per distinct score, built once."""

    def __init__(self, gold: np.ndarray, scores: np.ndarray) -> None:
        _, rank = np.unique(scores, return_inverse=True)
        onehot = np.zeros((len(scores), int(rank.max()) + 1 if len(scores) else 0))
        onehot[np.arange(len(scores)), rank] = 1.0
        self.pos, self.neg = onehot * (gold == 1)[:, None], onehot * (gold == 0)[:, None]

    def __call__(self, w: np.ndarray) -> np.ndarray:
        wp, wn = w @ self.pos, w @ self.neg  # [c, distinct scores]: positive / negative weight at each score
        below = np.cumsum(wn, axis=1) - wn
        num = (wp * (below + 0.5 * wn)).sum(1)
        den = wp.sum(1) * wn.sum(1)
        return np.divide(num, den, out=np.full(len(num), np.nan), where=den > 0)


def _language_draws(gold: np.ndarray, scores_a: np.ndarray | None, scores_b: np.ndarray | None, pred_a: np.ndarray,
                    pred_b: np.ndarray, n_labels: int, n_resamples: int, seed: int) -> dict[str, np.ndarray]:
    """One language's AUC (two labels, `metrics.binary_scores`; else NaN, scores None) and label shares of a and b under the item-cluster
    draws of `paired.cluster_bootstrap_delta` (same seed, same gold labels: the same label-stratified
    resamples), on its n
    shared items: {"auc_a", "auc_b": [1 + n_resamples], "shares_a", "shares_b": [1 + n_resamples,
    n_labels]}, row 0 the point estimate (every item once)."""
    n = len(gold)
    aucs = (_AucPlan(gold, scores_a), _AucPlan(gold, scores_b)) if n_labels == 2 else None
    onehot_a, onehot_b = np.eye(n_labels)[pred_a], np.eye(n_labels)[pred_b]
    blocks = [np.ones((1, n))] + [draw_counts(idx, n) for idx in _resamples(n, n_resamples, seed, gold)]
    out: dict[str, list] = {"auc_a": [], "auc_b": [], "shares_a": [], "shares_b": []}
    for w in blocks:
        total = w.sum(1, keepdims=True)
        out["auc_a"].append(aucs[0](w) if aucs else np.full(len(w), np.nan))
        out["auc_b"].append(aucs[1](w) if aucs else np.full(len(w), np.nan))
        out["shares_a"].append(w @ onehot_a / total)
        out["shares_b"].append(w @ onehot_b / total)
    return {k: np.concatenate(v) for k, v in out.items()}


def _group_auc_shares(draws: list[dict[str, np.ndarray]], labels: Sequence[str]) -> dict:
    """The item-cluster bootstrap of the macro Δ (b − a) over a group's languages, from each
    language's `_language_draws` on the group's shared items: {"auc": {"delta", "ci95", "a", "b",
    "n_undefined"} or None (more than two labels, or undefined on the items), "shares": {label:
    {"delta", "ci95", "a", "b"}}}. Resamples where some language's AUC is undefined (one class
    drawn) are left out of the AUC interval and counted in n_undefined."""
    mean = {k: np.mean([d[k] for d in draws], axis=0) for k in draws[0]}
    d_auc, d_sh = mean["auc_b"] - mean["auc_a"], mean["shares_b"] - mean["shares_a"]
    auc = None
    if len(labels) == 2 and np.isfinite(d_auc[0]):
        ok = d_auc[1:][np.isfinite(d_auc[1:])]
        auc = {"delta": float(d_auc[0]), "ci95": percentile_ci(ok) if len(ok) else None, "a": float(mean["auc_a"][0]),
               "b": float(mean["auc_b"][0]), "n_undefined": int(len(d_auc) - 1 - len(ok))}
    shares = {lab: {"delta": float(d_sh[0, j]), "ci95": percentile_ci(d_sh[1:, j]), "a": float(mean["shares_a"][0, j]),
                    "b": float(mean["shares_b"][0, j])} for j, lab in enumerate(labels)}
    return {"auc": auc, "shares": shares}


def _excludes_zero(ci: Sequence[float] | None) -> bool:
    return ci is not None and (ci[0] > 0 or ci[1] < 0)


def prior_only(group: Mapping) -> bool | None:
    """The label-prior flag of one group entry of `paired_effects`: True when some label's
    prediction-share macro Δ is significant (its 95% item-cluster interval excludes 0) while the
    AUC macro Δ is not (its interval includes 0): the condition moves which label the model
    prefers, not how well it ranks the items. False otherwise; None when the task has more than
    two labels or the AUC (or its interval) is undefined."""
    auc = group.get("auc")
    if auc is None or auc.get("ci95") is None:
        return None
    shifted = any(_excludes_zero(s["ci95"]) for s in group["shares"].values())
    return bool(shifted and not _excludes_zero(auc["ci95"]))


def paired_effects(rows_a: Sequence[Mapping], rows_b: Sequence[Mapping],
                   groups: Mapping[str, Sequence[str]] | None = None, *, n_resamples: int = 2000,
                   seed: int = 0) -> dict:
    """Paired effects of condition b against condition a (Δ = b − a) on the items both answered.

    Returns {task: {"labels", "languages": {lang: {"n", "acc_a", "acc_b", "delta", "delta_ci95",
    "mcnemar", "p_holm", "p_bh", "balanced_acc_a", "balanced_acc_b", "auc_a", "auc_b", "shares_a",
    "shares_b"}}, "groups": {group: {"accuracy", "balanced_accuracy" (`paired.cluster_bootstrap_delta`
    entries), "auc" ({"delta", "ci95", "a", "b", "n_undefined"}, None for > 2 labels), "shares":
    {label: {"delta", "ci95", "a", "b"}}, "prior_only" (`prior_only`), "accuracy_moved" (the accuracy
    interval excludes 0)}}}}. Holm/BH adjust across the task's languages. `groups` None: {"all":
    every language}. AlignlensError when the two conditions share no item."""
    comp = compare_runs(rows_a, rows_b, groups, n_resamples=n_resamples, seed=seed)
    cells_a, cells_b = task_cells(rows_a), task_cells(rows_b)
    out = {}
    for task, entry in comp["tasks"].items():
        labels = entry["labels"]
        langs_out, cols = {}, {}
        for lang, e in entry["languages"].items():
            ma, mb = e["metrics_a"], e["metrics_b"]
            langs_out[lang] = {k: e[k] for k in ("n", "acc_a", "acc_b", "delta", "delta_ci95", "mcnemar", "p_holm",
                                                 "p_bh", "balanced_acc_a", "balanced_acc_b")}
            langs_out[lang].update(auc_a=ma["roc_auc"], auc_b=mb["roc_auc"],
                                   shares_a={k: c / ma["n"] for k, c in ma["predicted_distribution"].items()},
                                   shares_b={k: c / mb["n"] for k, c in mb["predicted_distribution"].items()})
            ca, cb = cells_a[task][lang], cells_b[task][lang]
            pos_b = {i: k for k, i in enumerate(cb["index"])}
            cols[lang] = {i: (ca["gold"][k], ca["probs"][k], cb["probs"][pos_b[i]], ca["pred"][k], cb["pred"][pos_b[i]])
                          for k, i in enumerate(ca["index"]) if i in pos_b}
        group_out, cache = {}, {}
        for name, g in entry["groups"].items():
            used = g["accuracy"]["languages"]
            res = {"accuracy": g["accuracy"], "balanced_accuracy": g["balanced_accuracy"], "auc": None, "shares": {},
                   "n_items": g["accuracy"]["n_items"], "languages": used}
            if used and res["n_items"]:
                # the shared items in the order cluster_bootstrap_delta uses (the first language's order)
                shared = tuple(i for i in cols[used[0]] if all(i in cols[lang] for lang in used[1:]))
                for lang in used:  # groups with the same shared items reuse a language's draws
                    if (lang, shared) not in cache:
                        gold, pa, pb, qa, qb = (np.array(x) for x in zip(*(cols[lang][i] for i in shared)))
                        two = len(labels) == 2  # AUC: two labels only
                        cache[(lang, shared)] = _language_draws(
                            gold, M.binary_scores(pa) if two else None, M.binary_scores(pb) if two else None, qa, qb,
                            len(labels), n_resamples, seed)
                res.update(_group_auc_shares([cache[(lang, shared)] for lang in used], labels))
            res["prior_only"] = prior_only(res) if res["shares"] else None
            res["accuracy_moved"] = _excludes_zero(g["accuracy"]["ci95"])
            group_out[name] = res
        out[task] = {"labels": labels, "languages": langs_out, "groups": group_out}
    return out
