"""Paired statistics for comparing two runs on the same items (pure numpy/scipy).

Two runs (e.g. base and aligned) answer the same items, and in alignlens the same item index
recurs, translated, in every language. Tests therefore pair items: exact McNemar per language
with Holm (or Benjamini-Hochberg) adjustment across languages, paired bootstrap intervals for
per-language differences, and an item-cluster bootstrap for differences averaged over languages
(an item is drawn once and used in every language, so the interval reflects that the languages
share their items). Bootstrap intervals are 95% percentile intervals. McNemar, Holm and BH live in
`alignlens.stats` (re-exported here); the weighted resampling pieces in `alignlens.effects`.

Undefined values are None (JSON null), never NaN.

A bootstrap interval is read as a test only when it can be one (`untestable`): on at least
`MIN_ITEMS` items, with at least one discordant item (a paired Δ with none is 0 in every
resample) and of non-zero width. Otherwise it is reported as "not testable (n=…)", never as an
interval.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from alignlens import AlignlensError, NumericalError
from alignlens import metrics as M
from alignlens.effects import MIN_ITEMS, Z_MDE80
from alignlens.weighted import (draw_counts, index_rows, label_id, percentile_ci, weighted_accuracy, weighted_auc,
                                weighted_balanced_accuracy)
from alignlens.stats import _bools, benjamini_hochberg, holm, mcnemar_exact

__all__ = [
    "mcnemar_exact", "holm", "benjamini_hochberg", "paired_delta_ci", "cluster_bootstrap_delta",
    "compare_runs", "MIN_ITEMS", "untestable",
]  # fmt: skip

Metric = Callable[[np.ndarray, np.ndarray], float]
#: compare_runs' "bootstrap": how its intervals resample (a comparison.json without it predates the
#: label-stratified bootstraps and the AUC group Δs, and the report recomputes it).
BOOTSTRAP = "label-stratified item-cluster"
_CHUNK = 256  # resamples drawn per block (bounds memory to _CHUNK x n_items)


# --------------------------------------------------------------------------------------------------
# Reading an interval
# --------------------------------------------------------------------------------------------------


def untestable(n: int, ci: Sequence[float | None] | None, n_discordant: int | None = None) -> str:
    """Why a bootstrap interval `ci` of a paired Δ on `n` items cannot be read as a test, in words
    ("" when it can): no interval, fewer than `MIN_ITEMS` items, no discordant item (`n_discordant`
    = 0: both runs right or both wrong on every item, so every resample gives Δ = 0), or an interval
    of zero width (every resample gave the same Δ)."""
    if not ci or ci[0] is None or ci[1] is None or n == 0:
        return "no interval" if n else "no items"
    if n < MIN_ITEMS:
        return f"fewer than {MIN_ITEMS} items"
    if n_discordant == 0:
        return "no discordant item"
    if not ci[1] - ci[0] > 0:
        return "zero-width interval"
    return ""


# --------------------------------------------------------------------------------------------------
# Bootstraps
# --------------------------------------------------------------------------------------------------


def _resamples(n: int, n_resamples: int, seed: int, strata: ArrayLike | None = None) -> Iterator[np.ndarray]:
    """Blocks of bootstrap draws: int arrays [c, n] of item positions (with replacement). With
    `strata` [n] (the items' gold label ids) every draw is label-stratified: each label's items are
    drawn from that label's items only, so every resample keeps the label counts (a balanced design
    stays balanced; accuracy and AUC are not moved by a changed label mix)."""
    rng = np.random.default_rng(seed)
    groups = None
    if strata is not None:
        st = np.asarray(strata)
        if st.shape != (n,):
            raise ValueError(f"strata: expected {n} labels, got shape {st.shape}")
        groups = [np.flatnonzero(st == v) for v in np.unique(st)]
    done = 0
    while done < n_resamples:
        c = min(_CHUNK, n_resamples - done)
        if groups is None:
            yield rng.integers(0, n, size=(c, n))
        else:
            idx = np.empty((c, n), dtype=np.int64)
            for pos in groups:
                idx[:, pos] = pos[rng.integers(0, pos.size, size=(c, pos.size))]
            yield idx
        done += c


def paired_delta_ci(
    correct_a: ArrayLike, correct_b: ArrayLike, n_resamples: int = 2000, seed: int = 0, *,
    gold: ArrayLike | None = None,
) -> tuple[float, float]:
    """95% percentile bootstrap interval of accuracy_b - accuracy_a on the same n items.

    correct_a, correct_b: bool [n], item i of one is item i of the other; items are resampled
    jointly (a draw takes both runs' answers to that item); with `gold` [n] label ids, within each
    gold label (label-stratified: `_resamples`). Raises ValueError for n = 0.
    """
    a, b = _bools(correct_a, "correct_a"), _bools(correct_b, "correct_b")
    if a.shape != b.shape:
        raise ValueError(f"correct_a has {a.size} items, correct_b {b.size}")
    n = a.size
    if n == 0:
        raise ValueError("paired_delta_ci: no items")
    d = b.astype(np.float64) - a.astype(np.float64)
    deltas = np.concatenate([draw_counts(idx, n) @ d / n for idx in _resamples(n, n_resamples, seed, gold)])
    lo, hi = percentile_ci(deltas)
    return (lo, hi)


def _vector_metric(name: str, gold: np.ndarray, pred: np.ndarray, w: np.ndarray) -> np.ndarray:
    if name == "auc":  # pred: the binary scores (`metrics.binary_scores`)
        return weighted_auc(pred, gold, w)
    """Metric of each weighted resample: w [c, n] item counts -> [c] values."""
    if name == "accuracy":
        return weighted_accuracy(gold == pred, w)
    return weighted_balanced_accuracy(gold, pred, w)  # mean recall over the classes present in the resample


def cluster_bootstrap_delta(
    gold: Mapping[str, ArrayLike],
    pred_a: Mapping[str, ArrayLike],
    pred_b: Mapping[str, ArrayLike],
    indices: Mapping[str, Sequence[int]],
    groups: Mapping[str, Sequence[str]],
    *,
    metric: str | Metric = "accuracy",
    n_resamples: int = 2000,
    seed: int = 0,
    stratify: bool = True,
) -> dict[str, dict]:
    """Macro Δ = mean over a group's languages of metric(b) - metric(a), with an item-cluster interval.

    Per language: gold, pred_a, pred_b [n_lang] label ids and indices [n_lang] item ids, parallel.
    For each group (name -> languages) only the item ids present in every language of the group
    (that has data) are used. A bootstrap resample draws those items with replacement ONCE and
    uses the same draw in every language, so effects shared by an item across languages move
    together (a cluster bootstrap over items). With `stratify` (the default) the draw is also
    label-stratified (`_resamples`: by the gold labels of the shared items, which are the same in
    every language), so each resample keeps the label counts. `metric` is "accuracy",
    "balanced_accuracy" (mean recall over the classes present in the resample's gold), "auc"
    (ROC-AUC of two-label tasks: pred_a/pred_b are then the items' scores, `metrics.binary_scores`),
    or any callable metric(gold, pred) -> float on [n] arrays (slower: called per resample and
    language).

    Returns {group: {"delta", "ci95": [lo, hi], "a", "b" (macro metric of each run), "se", "mde80"
    (the Δ the interval's test detects with 80% power: `effects.Z_MDE80` × se), "n_items",
    "languages" (used), "missing_languages" (in the group but without items)}}. With no language
    or no shared item, delta/ci95/a/b/se/mde80 are None and n_items is 0. Deterministic given `seed`.
    """
    if isinstance(metric, str) and metric not in ("accuracy", "balanced_accuracy", "auc"):
        raise ValueError(f"metric: unknown name {metric!r} (accuracy, balanced_accuracy, auc or a callable)")
    scores = metric == "auc"
    data: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, dict]] = {}
    for lang in indices:
        if lang not in gold or lang not in pred_a or lang not in pred_b:
            raise ValueError(f"language {lang}: indices given but gold/pred_a/pred_b missing")
        g = M._ids(gold[lang], f"gold[{lang}]")
        if scores:
            pa, pb = (np.asarray(x[lang], dtype=np.float64) for x in (pred_a, pred_b))
        else:
            pa, pb = (M._ids(x[lang], f"{n}[{lang}]") for x, n in ((pred_a, "pred_a"), (pred_b, "pred_b")))
        idx = list(indices[lang])
        if not (len(g) == len(pa) == len(pb) == len(idx)):
            raise ValueError(f"language {lang}: gold, pred_a, pred_b, indices differ in length ({len(g)}, {len(pa)}, {len(pb)}, {len(idx)})")
        pos = {i: k for k, i in enumerate(idx)}
        if len(pos) != len(idx):
            raise ValueError(f"language {lang}: repeated item index")
        if idx:
            data[lang] = (g, pa, pb, pos)

    out: dict[str, dict] = {}
    for name, langs in groups.items():
        used = [l for l in dict.fromkeys(langs) if l in data]
        missing = [l for l in dict.fromkeys(langs) if l not in data]
        shared = [i for i in data[used[0]][3] if all(i in data[l][3] for l in used[1:])] if used else []
        res = {"delta": None, "ci95": None, "a": None, "b": None, "se": None, "mde80": None, "n_items": len(shared),
               "languages": used, "missing_languages": missing}  # fmt: skip
        out[name] = res
        if not shared:
            continue
        n = len(shared)
        cols = []
        for l in used:
            g, pa, pb, pos = data[l]
            sel = np.array([pos[i] for i in shared])
            cols.append((g[sel], pa[sel], pb[sel]))

        def per_resample(w: np.ndarray | None, idx: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
            """[c] macro metric of a and of b; `w` weights (named metrics) or `idx` draws (callable)."""
            ma, mb = [], []
            for g, pa, pb in cols:
                if isinstance(metric, str):
                    ma.append(_vector_metric(metric, g, pa, w))
                    mb.append(_vector_metric(metric, g, pb, w))
                else:
                    ma.append(np.array([_call(metric, g[r], pa[r]) for r in idx]))
                    mb.append(np.array([_call(metric, g[r], pb[r]) for r in idx]))
            return np.mean(ma, axis=0), np.mean(mb, axis=0)

        a0, b0 = per_resample(np.ones((1, n)), np.arange(n)[None, :])
        if scores and not (np.isfinite(a0[0]) and np.isfinite(b0[0])):
            continue  # AUC undefined: the shared items have one gold label only (no interval, no test)
        deltas = []
        strata = cols[0][0] if stratify else None  # gold ids of the shared items (the same in every language)
        for idx in _resamples(n, n_resamples, seed, strata):
            ra, rb = per_resample(draw_counts(idx, n) if isinstance(metric, str) else None, idx)
            deltas.append(rb - ra)
        d = np.concatenate(deltas)
        if not (np.all(np.isfinite(d)) and np.isfinite(a0[0]) and np.isfinite(b0[0])):
            raise NumericalError(f"cluster bootstrap of group {name}: the metric gave a non-finite value")
        se = float(np.std(d, ddof=1)) if d.size > 1 else None
        res.update(delta=float(b0[0] - a0[0]), ci95=percentile_ci(d), a=float(a0[0]), b=float(b0[0]), se=se,
                   mde80=None if se is None else Z_MDE80 * se)
    return out


def _call(metric: Metric, gold: np.ndarray, pred: np.ndarray) -> float:
    v = metric(gold, pred)
    return float("nan") if v is None else float(v)


# --------------------------------------------------------------------------------------------------
# Two runs, item by item
# --------------------------------------------------------------------------------------------------

def _compare_language(task: str, lang: str, cell: dict, ra: list[Mapping], rb: list[Mapping], labels: list[str],
                      n_resamples: int, seed: int) -> tuple[dict, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One language's entry of `compare_runs` from the two runs' rows of its shared items (same
    order), and its (gold, pred_a, pred_b) label ids for the group bootstraps."""
    g = np.array([label_id(r["gold"], labels) for r in ra])
    gb = np.array([label_id(r["gold"], labels) for r in rb])
    if np.any(g != gb):
        i = cell["shared"][int(np.argmax(g != gb))]
        raise AlignlensError(f"task {task} {lang} item {i}: gold label differs between the runs ({labels[g[g != gb][0]]} vs {labels[gb[g != gb][0]]})")  # fmt: skip
    pa = np.array([label_id(r["pred"], labels) for r in ra])
    pb = np.array([label_id(r["pred"], labels) for r in rb])
    prob_a = np.array([[float(r["probs"][k]) for k in labels] for r in ra])
    prob_b = np.array([[float(r["probs"][k]) for k in labels] for r in rb])
    ca, cb = pa == g, pb == g
    ma = M.classification_metrics(g, prob_a, labels, pred=pa)
    mb = M.classification_metrics(g, prob_b, labels, pred=pb)
    entry = {
        "n": int(g.size), "only_a": cell["only_a"], "only_b": cell["only_b"],
        "acc_a": ma["accuracy"], "acc_b": mb["accuracy"], "delta": mb["accuracy"] - ma["accuracy"],
        "delta_ci95": list(paired_delta_ci(ca, cb, n_resamples=n_resamples, seed=seed, gold=g)),
        "balanced_acc_a": ma["balanced_accuracy"], "balanced_acc_b": mb["balanced_accuracy"],
        "mcnemar": mcnemar_exact(ca, cb), "metrics_a": ma, "metrics_b": mb,
    }  # fmt: skip
    return entry, (g, pa, pb, M.binary_scores(prob_a) if len(labels) == 2 else None,
                   M.binary_scores(prob_b) if len(labels) == 2 else None)


def compare_runs(
    a_rows: Iterable[Mapping],
    b_rows: Iterable[Mapping],
    groups: Mapping[str, Sequence[str]] | None = None,
    *,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict:
    """Paired comparison of run a (e.g. base) and run b (e.g. aligned) from their prediction rows.

    Rows are predictions.jsonl dicts {task, lang, index, gold, pred, probs: {label: p}} (gold and
    pred as label names or ids). Items are matched on (task, lang, index); only shared items are
    used. Per task:
      "labels": label names (probs order);
      "languages": {lang: {"n", "only_a", "only_b", "acc_a", "acc_b", "delta", "delta_ci95",
          "balanced_acc_a", "balanced_acc_b", "mcnemar": {"b01", "b10", "n", "p_value"},
          "p_holm", "p_bh", "metrics_a", "metrics_b" (metrics.classification_metrics on the
          shared items, pred as recorded in the rows)}}; Holm and BH adjust the McNemar p-values
          across the task's languages;
      "omitted_languages": {lang: {"only_a", "only_b"}} for languages with no shared item;
      "groups": {group: {"accuracy": ..., "balanced_accuracy": ..., "auc": ... (two-label tasks)}}
          (cluster_bootstrap_delta over the items shared by every language of the group,
          label-stratified; groups=None means {"all": every language of the task}).
    Every bootstrap is label-stratified (per language: `paired_delta_ci` with the gold labels).
    Top level: {"tasks", "n_shared", "n_only_a", "n_only_b", "n_resamples", "seed", "bootstrap"
    (`BOOTSTRAP`)}.
    Raises AlignlensError naming the row for a malformed row, a repeated item, labels that differ
    between the runs, a gold label that differs for the same item, or no shared item at all.
    """
    ia, labels_a = index_rows(a_rows, "a")
    ib, labels_b = index_rows(b_rows, "b")
    for task in labels_a.keys() & labels_b.keys():
        if labels_a[task] != labels_b[task]:
            raise AlignlensError(f"task {task}: run a has labels {labels_a[task]}, run b {labels_b[task]}")

    cells: dict[str, dict[str, dict]] = {}  # task -> lang -> {"shared": [...], "only_a", "only_b"}
    for key in list(ia) + [k for k in ib if k not in ia]:
        task, lang, index = key
        c = cells.setdefault(task, {}).setdefault(lang, {"shared": [], "only_a": 0, "only_b": 0})
        if key in ia and key in ib:
            c["shared"].append(index)
        else:
            c["only_a" if key in ia else "only_b"] += 1
    n_shared = sum(len(c["shared"]) for t in cells.values() for c in t.values())
    if n_shared == 0:
        raise AlignlensError(f"the two runs have no (task, language, item) in common ({len(ia)} rows in a, {len(ib)} in b): nothing to compare")  # fmt: skip

    tasks: dict[str, dict] = {}
    for task, langs in cells.items():
        labels = labels_a.get(task) or labels_b[task]
        entry: dict = {"labels": labels, "languages": {}, "omitted_languages": {}, "groups": {}}
        tasks[task] = entry
        gold_l, pa_l, pb_l, idx_l, sa_l, sb_l = {}, {}, {}, {}, {}, {}
        for lang, c in langs.items():
            if not c["shared"]:
                entry["omitted_languages"][lang] = {"only_a": c["only_a"], "only_b": c["only_b"]}
                continue
            entry["languages"][lang], (g, pa, pb, sa, sb) = _compare_language(
                task, lang, c, [ia[(task, lang, i)] for i in c["shared"]], [ib[(task, lang, i)] for i in c["shared"]],
                labels, n_resamples, seed)
            gold_l[lang], pa_l[lang], pb_l[lang], idx_l[lang], sa_l[lang], sb_l[lang] = g, pa, pb, c["shared"], sa, sb
        present = list(entry["languages"])
        ps = [entry["languages"][l]["mcnemar"]["p_value"] for l in present]
        for l, ph, pbh in zip(present, holm(ps), benjamini_hochberg(ps)):
            entry["languages"][l]["p_holm"], entry["languages"][l]["p_bh"] = ph, pbh
        task_groups = {"all": list(langs)} if groups is None else groups
        by_metric = {
            m: cluster_bootstrap_delta(gold_l, pa_l, pb_l, idx_l, task_groups, metric=m,
                                       n_resamples=n_resamples, seed=seed)
            for m in ("accuracy", "balanced_accuracy")
        }  # fmt: skip
        if len(labels) == 2:  # threshold-free: the primary metric of two-label tasks (`effects.primary_metric`)
            by_metric["auc"] = cluster_bootstrap_delta(gold_l, sa_l, sb_l, idx_l, task_groups, metric="auc",
                                                       n_resamples=n_resamples, seed=seed)
        entry["groups"] = {name: {m: by_metric[m][name] for m in by_metric} for name in task_groups}
    return {
        "tasks": tasks, "n_shared": n_shared,
        "n_only_a": sum(c["only_a"] for t in cells.values() for c in t.values()),
        "n_only_b": sum(c["only_b"] for t in cells.values() for c in t.values()),
        "n_resamples": n_resamples, "seed": seed, "bootstrap": BOOTSTRAP,
    }  # fmt: skip


def language_groups(languages: Sequence[str], trained: Sequence[str] = ()) -> dict[str, list[str]]:
    """The groups macro deltas are reported for: all, trained, untrained (when some languages were
    trained), high- and low-resource (`languages.resource_group`); empty groups are left out."""
    from alignlens.languages import resource_group

    langs = list(languages)
    groups = {"all": langs}
    if trained:
        groups["trained"] = [lang for lang in langs if lang in trained]
        groups["untrained"] = [lang for lang in langs if lang not in trained]
    groups["high-resource"] = [lang for lang in langs if resource_group(lang) == "high"]
    groups["low-resource"] = [lang for lang in langs if resource_group(lang) == "low"]
    return {k: v for k, v in groups.items() if v}
