"""Accuracy section: per-language tables (accuracy, balanced accuracy, macro-F1, ROC-AUC, predicted
labels; with two runs the paired tests), macro Δ by language group, bar charts, and the summary
lines -- which are generated from these tests only.

With two runs every Δ comes from `runs.paired` (`paired.compare_runs`: read from comparison.json
or computed from the runs' predictions.jsonl): per language the accuracy Δ on the items both runs
have, its paired bootstrap 95% interval and the exact McNemar test with Holm (and
Benjamini-Hochberg) adjustment across the task's languages; per language group the macro Δ of
ROC-AUC (two-label tasks: threshold-free, the metric the paper's claim is judged on), accuracy and
balanced accuracy with a label-stratified item-cluster bootstrap 95% interval over the items every
language of the group shares (each resample keeps the label counts). A language only one run has is listed with that run's own numbers
and no Δ. "Significant" is written only for a Holm-adjusted p < 0.05.

An interval that is no test (`paired.untestable`: fewer than `paired.MIN_ITEMS` items, no
discordant item, zero width) is written "not testable (n=…)" in every text and table, and left
empty in the CSVs; the verdict on the paper's claim and these words: :mod:`alignlens.report.verdicts`.

Calibrated accuracy (contextual calibration, Zhao et al. 2021: each item's label probabilities
divided by those for content-free queries with the same demonstrations, then argmax) is read from
summary.json, i.e. on all of a run's items; with two runs it is shown for a language only when both
runs evaluated exactly the same items there (`ItemOverlap.same`), else "—". No test is made on it.
Summaries written before calibration lack it ("—").
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from alignlens.report.languages import NATIVE_NAMES, lang_label, order_languages, resource_group
from alignlens.report.layout import SUBTITLE_LINE, COLOR, Page, Section, Table, fmt, lang_ticks, new_fig, top
from alignlens.paired import MIN_ITEMS
from alignlens.report.runs import METRIC_KEYS, Runs
from alignlens.report.verdicts import (CLAIM, VERDICTS, ci_text, claim_text, delta_ci, delta_text, excludes0, group_untestable,
                                       lang_untestable, neutral_text, not_testable)
from alignlens.stats import clip_interval

ALPHA = 0.05  # Holm-adjusted p below this: "significant"
ROWS_PER_PAGE = 24  # language rows per table page (longer tables continue on the next page)
GROUP_ROWS_PER_PAGE = 26
GREEN, RED, GREY, WHITE, HEAD = "#d8f0d8", "#f6d5d5", "#eeeeee", "#ffffff", "#dde4f0"


#: summary.json keys of contextual calibration (absent in summaries written before it).
CAL_KEYS = ("calibrated_accuracy", "p_content_free")


@dataclass
class AccRow:
    """One language of one task. a / b: each run's {"accuracy", "n", "ci95", METRIC_KEYS and
    CAL_KEYS} on the compared items (None where the run lacks the language; a CAL_KEYS value None
    where summary.json lacks it or, for calibrated_accuracy, where it is withheld); test: the paired
    statistics of `paired.compare_runs` for the language (None when not compared); cal_withheld:
    both runs have the language but not exactly the same items, so their calibrated accuracies
    (from all of each run's items) are not shown."""

    task: str
    lang: str
    trained: bool
    a: dict | None
    b: dict | None
    test: dict | None = None
    cal_withheld: bool = False

    @property
    def paired(self) -> bool:
        return self.test is not None


def _clipped(entry: dict) -> dict:
    return {**entry, "ci95": clip_interval(entry["ci95"])}


def task_labels(runs: Runs, task: str) -> list[str]:
    for r in runs.runs:
        labels = r.summary["tasks"].get(task, {}).get("labels")
        if labels:
            return [str(x) for x in labels]
    if runs.paired and task in runs.paired["tasks"]:
        return list(runs.paired["tasks"][task]["labels"])
    return []


def _calibrated(entry: dict) -> dict:
    """CAL_KEYS of one summary.json language entry (None where the summary predates calibration)."""
    return {k: entry.get(k) for k in CAL_KEYS}


def _withhold(a: dict, b: dict, same: bool) -> bool:
    """Blank both runs' calibrated accuracies unless the runs have exactly the same items (`same`);
    True when that hides a value."""
    hide = not same and (a["calibrated_accuracy"] is not None or b["calibrated_accuracy"] is not None)
    if not same:
        a["calibrated_accuracy"] = b["calibrated_accuracy"] = None
    return hide


def accuracy_rows(runs: Runs, task: str) -> list[AccRow]:
    """One row per language of `task`, languages in report order (see the module docstring)."""
    per = [r.summary["tasks"].get(task, {}).get("languages", {}) for r in runs.runs]
    tests = (runs.paired or {}).get("tasks", {}).get(task, {}).get("languages", {})
    rows = []
    for l in order_languages([l for p in per for l in p]):
        same = runs.overlap is not None and (task, l) in runs.overlap.same
        if l in tests and runs.overlap is not None and (task, l) in runs.overlap.acc:
            t = tests[l]
            oa, ob = runs.overlap.acc[task, l]
            a = {**_clipped(oa), **{k: t["metrics_a"][k] for k in METRIC_KEYS}, **_calibrated(per[0][l])}
            b = {**_clipped(ob), **{k: t["metrics_b"][k] for k in METRIC_KEYS}, **_calibrated(per[1][l])}
            rows.append(AccRow(task, l, l in runs.trained, a, b, t, _withhold(a, b, same)))
            continue
        side = []
        for i, p in enumerate(per):
            side.append({**_clipped(p[l]), **runs.metrics(i, task, l), **_calibrated(p[l])} if l in p else None)
        a, b = side[0], side[1] if len(side) > 1 else None
        hide = _withhold(a, b, same) if a and b else False
        rows.append(AccRow(task, l, l in runs.trained, a, b, cal_withheld=hide))
    return rows


def task_groups(runs: Runs, task: str) -> dict[str, dict]:
    """The paired macro Δ per language group of `task` ({group: {"accuracy", "balanced_accuracy"}},
    groups without a compared language left out); {} for a single run or a task not compared."""
    groups = (runs.paired or {}).get("tasks", {}).get(task, {}).get("groups", {})
    return {g: v for g, v in groups.items() if v["accuracy"]["languages"]}


def single_group_means(runs: Runs, rows: list[AccRow]) -> list[dict]:
    """Single run: macro means over the languages of each group (`paired.language_groups`)."""
    from alignlens.paired import language_groups

    by_lang = {r.lang: r.a for r in rows if r.a}
    out = []
    for g, langs in language_groups(list(by_lang), runs.trained).items():
        vals = {k: [by_lang[l][k] for l in langs if by_lang[l].get(k) is not None]
                for k in ("accuracy", "calibrated_accuracy", "balanced_accuracy", "macro_f1", "roc_auc")}  # fmt: skip
        out.append({"group": g, "languages": langs, **{k: float(np.mean(v)) if v else None for k, v in vals.items()}})
    return out


# ---- text helpers ------------------------------------------------------------------------------


def _p(p: float | None) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}" if p < 0.1 else f"{p:.2f}"


def _auc(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def _shares(dist: dict | None, labels: list[str]) -> str:
    """'87/13': predicted (or gold) share of each label in %, in label order."""
    if not dist:
        return "—"
    n = sum(dist.values())
    return "/".join(f"{100 * dist.get(lab, 0) / n:.0f}" for lab in labels) if n else "—"


def _pooled(rows: list[AccRow], side: str, key: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        for lab, c in ((getattr(r, side) or {}).get(key) or {}).items():
            out[lab] = out.get(lab, 0) + int(c)
    return out


def _share(dist: dict[str, int], label: str) -> float:
    n = sum(dist.values())
    return dist.get(label, 0) / n if n else math.nan


def _langs(rows: list[AccRow]) -> str:
    return " ".join(r.lang for r in rows) or "none"


# ---- summary lines -----------------------------------------------------------------------------


def method_line(runs: Runs) -> list[str]:
    """How the Δs and tests below were obtained (comparing only)."""
    if not runs.compare or not runs.paired:
        return []
    p = runs.paired
    return [f"• Paired statistics, {runs.paired_source}: per language the accuracy Δ ({runs.diff_label}) on the shared items "
            f"with a paired bootstrap 95% interval and an exact McNemar test, Holm-adjusted across a task's languages "
            f"(Benjamini–Hochberg as an extra column); per language group the macro Δ over its languages with an item-cluster "
            f"bootstrap 95% interval over the items all its languages share ({p['n_resamples']} resamples, seed {p['seed']}; "
            f"{'label-stratified: each resample keeps the label counts' if p.get('bootstrap') else 'not stratified by label'}). "
            f"An interval on fewer than {MIN_ITEMS} items, with no discordant item or of zero width is no test and is reported "
            "as \"not testable (n=…)\" instead."]  # fmt: skip


def prior_shift(rows: list[AccRow], labels: list[str], groups: dict[str, dict]) -> dict | None:
    """When a task's macro accuracy gain comes with a fall in macro balanced accuracy or in mean
    ROC-AUC: {"bal", "auc" (mean_a, mean_b, n_lower, n) or None, "label", "share_b", "share_a",
    "gold", "one_label_langs"}; else None."""
    pairs = [r for r in rows if r.paired]
    acc, bal = groups["all"]["accuracy"], groups["all"]["balanced_accuracy"]
    if acc["delta"] is None or acc["delta"] <= 0:
        return None
    aucs = [(r.a["roc_auc"], r.b["roc_auc"]) for r in pairs if r.a["roc_auc"] is not None and r.b["roc_auc"] is not None]
    auc = None
    if aucs:
        ma, mb = float(np.mean([x for x, _ in aucs])), float(np.mean([y for _, y in aucs]))
        auc = (ma, mb, sum(y < x for x, y in aucs), len(aucs))
    bal_fall = bal["delta"] is not None and bal["delta"] < 0
    auc_fall = auc is not None and auc[1] < auc[0]
    if not (bal_fall or auc_fall):
        return None
    pa, pb, gold = _pooled(pairs, "a", "predicted_distribution"), _pooled(pairs, "b", "predicted_distribution"), _pooled(pairs, "a", "gold_distribution")
    label = max(labels, key=lambda lab: (_share(pb, lab) - _share(pa, lab), _share(pb, lab)))
    one = [r for r in pairs if r.b["n"] and max((r.b["predicted_distribution"] or {}).values(), default=0) == r.b["n"]]
    return {"bal": bal if bal_fall else None, "auc": auc if auc_fall else None, "label": label,
            "share_b": _share(pb, label), "share_a": _share(pa, label), "gold": _share(gold, label), "one_label_langs": one}  # fmt: skip


def _holm_text(pairs: list[AccRow]) -> str:
    m = len(pairs)
    sig = [r for r in pairs if r.test["p_holm"] is not None and r.test["p_holm"] < ALPHA]
    raw = sum(r.test["mcnemar"]["p_value"] < ALPHA for r in pairs)
    bh = sum(r.test["p_bh"] is not None and r.test["p_bh"] < ALPHA for r in pairs)
    if sig:
        up = [r for r in sig if r.test["delta"] > 0]
        down = [r for r in sig if r.test["delta"] < 0]
        text = (f"{len(sig)} of {m} languages survive Holm correction (significant at p_Holm < {ALPHA}): "
                f"gains in {len(up)} ({_langs(up)}), losses in {len(down)} ({_langs(down)})")  # fmt: skip
    else:
        best = min(pairs, key=lambda r: (r.test["p_holm"] if r.test["p_holm"] is not None else 2.0))
        text = (f"0 of {m} languages survive Holm correction (p_Holm < {ALPHA}); smallest p_Holm {_p(best.test['p_holm'])} "
                f"({lang_label(best.lang)})")  # fmt: skip
    return text + f"; unadjusted p < {ALPHA} in {raw} of {m}; Benjamini–Hochberg-adjusted p < {ALPHA} in {bh} of {m}."


CAL_WHAT = ("Contextual calibration (Zhao et al. 2021) divides each label's probability by its probability for content-free "
            "queries with the same demonstrations, removing a label-prior shift's effect on accuracy")  # fmt: skip


def _mean(values) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def _no_calibration(runs: Runs, task: str, roles: list[int]) -> str:
    """Which of `roles` (run indices) have no calibrated accuracy for `task`, in words ("" if all have some)."""
    miss = [runs.roles[i] for i in roles
            if not any(e.get("calibrated_accuracy") is not None for e in runs.runs[i].summary["tasks"].get(task, {}).get("languages", {}).values())]  # fmt: skip
    if not miss:
        return ""
    who = " and ".join(f"the {m} run's" for m in miss) if runs.compare else "this run's"
    return f"{who} summary.json has no calibrated accuracy (written before contextual calibration, or not measured)"


def calibration_line(runs: Runs, task: str, rows: list[AccRow]) -> str:
    """One summary sub-line on the calibrated accuracy of `task`: mean run a → run b over the
    languages both runs evaluated on exactly the same items (one run: its mean). No test."""
    if not runs.compare:
        have = [r.a for r in rows if r.a and r.a.get("calibrated_accuracy") is not None]
        if not have:
            return f"   – Calibrated accuracy: {_no_calibration(runs, task, [0])}."
        return (f"   – Mean calibrated accuracy over {len(have)} languages {fmt(_mean(e['calibrated_accuracy'] for e in have))}% "
                f"(uncalibrated on them: {fmt(_mean(e['accuracy'] for e in have))}%). {CAL_WHAT}.")  # fmt: skip
    both = [r for r in rows if r.a and r.b and r.a.get("calibrated_accuracy") is not None and r.b.get("calibrated_accuracy") is not None]
    hidden = [r for r in rows if r.cal_withheld]
    why = f" Not shown for {len(hidden)} languages whose items differ between the runs ({_langs(hidden)})." if hidden else ""
    if not both:
        reason = _no_calibration(runs, task, [0, 1]) or (
            f"the runs' items differ in every language both have ({_langs(hidden)}), and summary.json's calibrated accuracy is "
            "from all of a run's items" if hidden else "no language has it in both runs")  # fmt: skip
        return f"   – Calibrated accuracy {runs.roles[0]} → {runs.roles[1]}: not compared: {reason}."
    ca, cb = _mean(r.a["calibrated_accuracy"] for r in both), _mean(r.b["calibrated_accuracy"] for r in both)
    a, b = _mean(r.a["accuracy"] for r in both), _mean(r.b["accuracy"] for r in both)
    return (f"   – Mean calibrated accuracy {runs.roles[0]} → {runs.roles[1]} over the {len(both)} languages with the same items in both runs {fmt(ca)}% → {fmt(cb)}% "
            f"(Δ {fmt(cb - ca, sign=True)} points, no test; uncalibrated on them: {fmt(a)}% → {fmt(b)}%). {CAL_WHAT}.{why}")  # fmt: skip


def compare_lines(runs: Runs, task: str, rows: list[AccRow]) -> tuple[list[str], str | None]:
    """The summary lines of one compared task (and the verdict on the paper's claim there, one of
    `VERDICTS`; None when the runs are not base vs aligned, `Runs.paper_pair`: then the same numbers
    with no verdict)."""
    groups = task_groups(runs, task)
    pairs = [r for r in rows if r.paired]
    labels = task_labels(runs, task)
    acc, bal = groups["all"]["accuracy"], groups["all"]["balanced_accuracy"]
    n_items = acc["n_items"]
    if not n_items:
        lines = [f"• {task}: no item is shared by all {len(acc['languages'])} compared languages, so no macro Δ is given "
                 "(per-language tests below)."]  # fmt: skip
    else:
        why = group_untestable(acc)
        interval = (f"on the {n_items} item{'s' if n_items != 1 else ''} all of them share: {not_testable(n_items, why)}" if why else
                    f"95% CI {ci_text(acc['ci95'])} by item-cluster bootstrap over the {n_items} items all of them share; "
                    f"the interval {'excludes' if excludes0(acc['ci95']) else 'includes'} 0")  # fmt: skip
        lines = [f"• {task}: mean accuracy over {len(acc['languages'])} languages {fmt(acc['a'])}% → {fmt(acc['b'])}% "
                 f"(Δ {fmt(acc['delta'], sign=True)} points, {interval}). " + delta_text(bal, "Balanced accuracy") + "."]  # fmt: skip
        if groups["all"].get("auc") is not None:
            lines.append("   – " + delta_text(groups["all"]["auc"], "Threshold-free (the primary metric of a two-label task): "
                                                                  "mean ROC-AUC") + ".")
    lines.append("   – Exact McNemar per language: " + _holm_text(pairs))
    others = [(g, v) for g, v in groups.items() if g != "all"]
    if others:
        lines.append("   – Macro accuracy Δ by group (item-cluster bootstrap 95% CI): " + "; ".join(
            f"{g} ({len(v['accuracy']['languages'])} languages, {v['accuracy']['n_items']} items) "
            + delta_ci(v["accuracy"]["delta"], v["accuracy"]["ci95"], v["accuracy"]["n_items"], group_untestable(v["accuracy"]))
            for g, v in others) + ".")  # fmt: skip
    untestable_langs = [r for r in pairs if lang_untestable(r.test)]
    if untestable_langs:
        lines.append(f"   – Per-language Δ intervals not testable (fewer than {MIN_ITEMS} items, no discordant item or zero width) in "
                     f"{len(untestable_langs)} of {len(pairs)} languages: "
                     + ", ".join(f"{r.lang} (n={r.test['n']}: {lang_untestable(r.test)})" for r in untestable_langs) + ".")  # fmt: skip
    if labels:
        dists = [(who, _pooled(pairs, side, key)) for who, side, key in
                 ((runs.roles[0], "a", "predicted_distribution"), (runs.roles[1], "b", "predicted_distribution"), ("gold", "a", "gold_distribution"))]  # fmt: skip
        lines.append(f"   – Labels used ({'/'.join(labels)}, % of the compared items, pooled over languages): "
                     + ", ".join(f"{who} {_shares(d, labels)}" for who, d in dists) + ".")  # fmt: skip
    shift = prior_shift(rows, labels, groups)
    if shift is not None:
        falls = []
        if shift["bal"] is not None:
            falls.append(f"balanced accuracy ({fmt(shift['bal']['a'])}% → {fmt(shift['bal']['b'])}%)")
        if shift["auc"] is not None:
            ma, mb, k, n = shift["auc"]
            falls.append(f"ROC-AUC (mean {ma:.3f} → {mb:.3f}; lower in {k} of {n} languages)")
        text = (f"   – The accuracy gain comes with a fall in {' and in '.join(falls)}: likely a label-prior shift: the {runs.roles[1]} "
                f"model predicts {shift['label']} for {fmt(shift['share_b'])}% of items vs {fmt(shift['gold'])}% gold "
                f"({runs.roles[0]}: {fmt(shift['share_a'])}%).")  # fmt: skip
        if shift["one_label_langs"]:
            text += f" It predicts one label for every item in {len(shift['one_label_langs'])} languages ({_langs(shift['one_label_langs'])})."
        lines.append(text)
    lines.append(calibration_line(runs, task, rows))
    if not runs.paper_pair:
        return lines + ["   – " + neutral_text(runs.diff_label, groups, shift)], None
    verdict, claim = claim_text(task, groups, shift, runs.roles[1])
    lines.append("   – " + claim)
    return lines, verdict


def single_lines(runs: Runs, task: str, rows: list[AccRow]) -> list[str]:
    """The summary line of one task of a single run (or of a task only one run has)."""
    present = [(i, [getattr(r, side) for r in rows if getattr(r, side)]) for i, side in enumerate(("a", "b")[: len(runs.runs)])]
    labels = task_labels(runs, task)
    parts = []
    for i, entries in present:
        if not entries:
            continue

        def mean(k):
            v = [e[k] for e in entries if e.get(k) is not None]
            return float(np.mean(v)) if v else None

        pred, gold = {}, {}
        for e in entries:
            for lab, c in (e.get("predicted_distribution") or {}).items():
                pred[lab] = pred.get(lab, 0) + c
            for lab, c in (e.get("gold_distribution") or {}).items():
                gold[lab] = gold.get(lab, 0) + c
        who = f"{runs.roles[i]} " if runs.compare else ""
        text = (f"{who}mean accuracy {fmt(mean('accuracy'))}% over {len(entries)} languages, balanced accuracy "
                f"{fmt(mean('balanced_accuracy'))}%, macro-F1 {fmt(mean('macro_f1'))}%"
                + (f", ROC-AUC {_auc(mean('roc_auc'))}" if mean("roc_auc") is not None else ""))  # fmt: skip
        if pred and gold and labels:
            over = max(labels, key=lambda lab: _share(pred, lab) - _share(gold, lab))
            text += f"; it predicts {over} for {fmt(_share(pred, over))}% of items vs {fmt(_share(gold, over))}% gold"
        parts.append(text)
    prefix = f"• {task} (not compared: no item in both runs): " if runs.compare else f"• {task}: "
    return [prefix + "; ".join(parts) + "."] + ([] if runs.compare else [calibration_line(runs, task, rows)])


def summary_lines(runs: Runs, per_task: dict[str, list[AccRow]]) -> list[str]:
    lines = method_line(runs)
    verdicts = {}
    for task, rows in per_task.items():
        if runs.compare and any(r.paired for r in rows) and "all" in task_groups(runs, task):
            more, verdicts[task] = compare_lines(runs, task, rows)
            lines += more
        else:
            lines += single_lines(runs, task, rows)
    if verdicts and runs.paper_pair:
        by = {v: [t for t, x in verdicts.items() if x == v] for v in VERDICTS}
        rest = "".join(f"; {v} for {len(by[v])} ({', '.join(by[v])})" for v in VERDICTS[1:] if by[v])
        lines.append(f"• Paper's claim ({CLAIM}): holds on these runs for {len(by['holds'])} of {len(verdicts)} compared tasks "
                     f"({', '.join(by['holds']) or 'none'}){rest}.")  # fmt: skip
    return lines


# ---- tables (CSV) ------------------------------------------------------------------------------

#: Per-run columns of accuracy.csv, each suffixed with the run's name (`Runs.column_names`).
RUN_COLUMNS = ("n", "acc", "ci95_lo", "ci95_hi", "balanced_acc", "macro_f1", "roc_auc", "pred_counts", "calibrated_acc",
               "p_content_free")  # fmt: skip


def csv_header(names: list[str]) -> list[str]:
    """accuracy.csv's header for runs named `names` (run a, run b); diff = run b − run a."""
    return (["task", "language", "native_name", "resource_group", "trained"]
            + [f"{c}_{n}" for n in names for c in RUN_COLUMNS]
            + ["gold_counts", "diff", "diff_ci95_lo", "diff_ci95_hi", "mcnemar_b01", "mcnemar_b10", "mcnemar_p", "p_holm", "p_bh"])  # fmt: skip


def group_header(names: list[str]) -> list[str]:
    """accuracy_groups.csv's header for runs named `names` (run a, run b)."""
    a, b = names
    return ["task", "group", "n_languages", "languages", "missing_languages", "n_items",
            f"mean_acc_{a}", f"mean_acc_{b}", "mean_diff", "mean_diff_ci95_lo", "mean_diff_ci95_hi",
            f"mean_bal_acc_{a}", f"mean_bal_acc_{b}", "mean_bal_diff", "mean_bal_diff_ci95_lo", "mean_bal_diff_ci95_hi",
            f"mean_auc_{a}", f"mean_auc_{b}", "mean_auc_diff", "mean_auc_diff_ci95_lo", "mean_auc_diff_ci95_hi",
            "mean_auc_diff_mde80"]  # fmt: skip


CSV_HEADER = csv_header(["base", "aligned"])  # the default names' headers
GROUP_HEADER = group_header(["base", "aligned"])


def _num(x) -> float:
    return math.nan if x is None else float(x)


def _csv_row(r: AccRow) -> list:
    rec = [r.task, r.lang, NATIVE_NAMES.get(r.lang, ""), resource_group(r.lang), int(r.trained)]
    for x in (r.a, r.b):
        if x:
            rec += [x["n"], x["accuracy"], x["ci95"][0], x["ci95"][1], _num(x["balanced_accuracy"]), _num(x["macro_f1"]),
                    _num(x["roc_auc"]), json.dumps(x["predicted_distribution"], ensure_ascii=False) if x["predicted_distribution"] else "",
                    _num(x["calibrated_accuracy"]), json.dumps(x["p_content_free"], ensure_ascii=False) if x["p_content_free"] else ""]  # fmt: skip
        else:
            rec += ["", math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, "", math.nan, ""]
    gold = next((x["gold_distribution"] for x in (r.a, r.b) if x and x.get("gold_distribution")), None)
    rec.append(json.dumps(gold, ensure_ascii=False) if gold else "")
    if r.paired:
        t = r.test
        lo, hi = (math.nan, math.nan) if lang_untestable(t) else t["delta_ci95"]
        rec += [t["delta"], lo, hi, t["mcnemar"]["b01"], t["mcnemar"]["b10"],
                t["mcnemar"]["p_value"], _num(t["p_holm"]), _num(t["p_bh"])]  # fmt: skip
    else:
        rec += [math.nan, math.nan, math.nan, "", "", math.nan, math.nan, math.nan]
    return rec


def _group_csv_rows(runs: Runs, task: str, rows: list[AccRow]) -> list[list]:
    out = []
    groups = task_groups(runs, task)
    if groups:
        for g, v in groups.items():
            a, b = v["accuracy"], v["balanced_accuracy"]
            c = v.get("auc") or {"a": None, "b": None, "delta": None, "ci95": None, "n_items": 0}  # AUC: two-label tasks
            ci_a, ci_b, ci_c = ([None, None] if group_untestable(x) else x["ci95"] for x in (a, b, c))  # not testable: left empty
            out.append([task, g, len(a["languages"]), " ".join(a["languages"]), " ".join(a["missing_languages"]), a["n_items"],
                        _num(a["a"]), _num(a["b"]), _num(a["delta"]), _num(ci_a[0]), _num(ci_a[1]),
                        _num(b["a"]), _num(b["b"]), _num(b["delta"]), _num(ci_b[0]), _num(ci_b[1]),
                        _num(c["a"]), _num(c["b"]), _num(c["delta"]), _num(ci_c[0]), _num(ci_c[1]), _num(c.get("mde80"))])  # fmt: skip
        return out
    if runs.compare:
        return out
    for g in single_group_means(runs, rows):
        out.append([task, g["group"], len(g["languages"]), " ".join(g["languages"]), "", "", _num(g["accuracy"]),
                    math.nan, math.nan, math.nan, math.nan, _num(g["balanced_accuracy"]), math.nan, math.nan, math.nan, math.nan,
                    math.nan, math.nan, math.nan, math.nan, math.nan, math.nan])  # fmt: skip
    return out


# ---- the section -------------------------------------------------------------------------------


def build(runs: Runs) -> Section:
    """Accuracy tables and charts, accuracy.csv / accuracy_groups.csv, and the accuracy summary lines."""
    section = Section()
    per_task = {task: accuracy_rows(runs, task) for task in runs.tasks()}
    csv_rows, group_rows = [], []
    for task, rows in per_task.items():
        csv_rows += [_csv_row(r) for r in rows]
        group_rows += _group_csv_rows(runs, task, rows)
        chunks = [rows[i : i + ROWS_PER_PAGE] for i in range(0, len(rows), ROWS_PER_PAGE)]
        for k, chunk in enumerate(chunks):
            part = f" ({k + 1}/{len(chunks)})" if len(chunks) > 1 else ""
            draw = _draw_compare_table if runs.compare else _draw_single_table
            means = rows if k == len(chunks) - 1 else None  # group means below the last part
            section.pages.append(Page("Accuracy table", f"Accuracy table — {task}{part}", f"accuracy_table_{task}{'_' + str(k + 1) if part else ''}",
                                      lambda task=task, chunk=chunk, part=part, means=means, draw=draw:
                                      draw(runs, task, chunk, part, means)))  # fmt: skip
    if runs.compare:
        grows = [(task, g, v) for task in per_task for g, v in task_groups(runs, task).items()]
        chunks = [grows[i : i + GROUP_ROWS_PER_PAGE] for i in range(0, len(grows), GROUP_ROWS_PER_PAGE)]
        for k, chunk in enumerate(chunks):
            part = f" ({k + 1}/{len(chunks)})" if len(chunks) > 1 else ""
            section.pages.append(Page("Accuracy table", f"Macro Δ by language group{part}", f"accuracy_groups{'_' + str(k + 1) if part else ''}",
                                      lambda chunk=chunk, part=part: _draw_groups(runs, chunk, part)))  # fmt: skip
    tasks = list(per_task)
    for start in range(0, len(tasks), 3):
        chunk = tasks[start : start + 3]
        section.pages.append(Page("Accuracy charts", f"Accuracy by language — {', '.join(chunk)}", f"accuracy_bars_{'_'.join(chunk)}",
                                  lambda chunk=chunk: _draw_bars(runs, chunk)))  # fmt: skip
    section.summary_lines = summary_lines(runs, per_task)
    section.tables = [Table("accuracy.csv", csv_header(runs.column_names), csv_rows),
                      Table("accuracy_groups.csv", group_header(runs.column_names), group_rows)]
    return section


# ---- pages -------------------------------------------------------------------------------------

CAL_TABLE = ("accuracy after contextual calibration (Zhao et al. 2021): each item's label probabilities divided by those for "
             "content-free queries (\"N/A\", \"\", \"[MASK]\") with the same demonstrations, then argmax.")  # fmt: skip
CAL_OLD = "not in summary.json (written before contextual calibration, or not measured)"
NOT_TESTABLE_NOTE = (f"\"not testable (n)\": the interval is no test (fewer than {MIN_ITEMS} items, no discordant item, or zero "
                     "width) and is not shown.")  # fmt: skip


def _subtitle_bottom(fig) -> float:
    """Figure y of the bottom of `new_fig`'s subtitle (wrapped lines from y = 0.93 down), 0.93 without one."""
    n = fig.texts[1].get_text().count("\n") + 1 if len(fig.texts) > 1 else 0
    return 0.93 - n * SUBTITLE_LINE


def _table(fig, cells, colors, header, widths, bold_from: int | None = None, fontsize: float = 8) -> float:
    """A table below the page's subtitle: header row (two lines) bold on blue, first column
    left-aligned, rows at most 0.035 of the page high. Returns the figure y of the table's bottom."""
    y_top = min(top(fig, 0.88) + 0.02, _subtitle_bottom(fig) - 0.008)
    avail = y_top - 0.04
    ax = fig.add_axes([0.02, 0.04, 0.96, avail])
    ax.axis("off")
    tab = ax.table(cellText=cells, colLabels=header, cellColours=colors, colWidths=widths, loc="upper center", cellLoc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(fontsize)
    n = len(cells) + 2  # the header takes two lines
    h = min(0.035, 0.97 * avail / n)  # figure fraction per row
    for (ri, ci), cell in tab.get_celld().items():
        cell.set_height((2 * h if ri == 0 else h) / avail)
        cell.set_edgecolor("#bbbbbb")
        if ri == 0:
            cell.set_text_props(fontweight="bold")
            cell.set_facecolor(HEAD)
        if ci == 0 and ri > 0:
            cell.set_text_props(ha="left")
            cell._loc = "left"
        if bold_from is not None and ri > bold_from:
            cell.set_text_props(fontweight="bold")
    return y_top - n * h


def _draw_single_table(runs: Runs, task: str, rows: list[AccRow], part: str, means: list[AccRow] | None):
    """One run's table of `rows`; with `means` (all rows of the task) the group means below."""
    labels = task_labels(runs, task)
    sub = (f"Few-shot accuracy (%) with 95% bootstrap intervals, balanced accuracy (mean recall over the gold labels), macro-F1 and, "
           f"for two-label tasks, ROC-AUC of p({labels[-1] if labels else '?'}) / (sum of both). pred % and gold %: share of each label "
           f"({'/'.join(labels) or '—'}) among the predictions and the gold answers. Calibrated accuracy: {CAL_TABLE}"
           + (f" —: {CAL_OLD}." if any((r.a or r.b).get("calibrated_accuracy") is None for r in rows) else "")
           + " * = trained language.")  # fmt: skip
    fig = new_fig(f"Accuracy — {task}{part}", sub)
    header = ["language", "group", "n", "accuracy", "95% CI", "calibrated\naccuracy", "balanced\naccuracy", "macro-F1", "ROC-AUC",
              "pred %", "gold %"]  # fmt: skip
    cells, colors = [], []
    for r in rows:
        x = r.a or r.b
        cells.append([lang_label(r.lang) + (" *" if r.trained else ""), resource_group(r.lang), str(x["n"]), fmt(x["accuracy"]),
                      ci_text(x["ci95"], sign=False), fmt(x["calibrated_accuracy"]), fmt(x["balanced_accuracy"]), fmt(x["macro_f1"]),
                      _auc(x["roc_auc"]), _shares(x["predicted_distribution"], labels), _shares(x["gold_distribution"], labels)])  # fmt: skip
        colors.append([WHITE] * len(header))
    for g in single_group_means(runs, means) if means else []:
        cells.append([f"mean: {g['group']}", f"{len(g['languages'])} langs", "", fmt(g["accuracy"]), "", fmt(g["calibrated_accuracy"]),
                      fmt(g["balanced_accuracy"]), fmt(g["macro_f1"]), _auc(g["roc_auc"]), "", ""])  # fmt: skip
        colors.append([GREY] * len(header))
    _table(fig, cells, colors, header, [0.17, 0.07, 0.05, 0.08, 0.12, 0.09, 0.09, 0.08, 0.08, 0.08, 0.08], bold_from=len(rows), fontsize=8.5)
    return fig


def _draw_compare_table(runs: Runs, task: str, rows: list[AccRow], part: str, means: list[AccRow] | None):
    """Two runs' table of `rows` with the paired tests (the group Δs are on their own page)."""
    labels = task_labels(runs, task)
    lab = "/".join(labels) or "—"
    a_, b_ = runs.roles
    note = f"{NOT_TESTABLE_NOTE} " if any(r.test and lang_untestable(r.test) for r in rows) else ""
    sub = (f"Accuracy (%) of {a_} and {b_} on the items both runs have (n). Δ = {b_} − {a_} with a paired bootstrap 95% "
           f"interval; McNemar: exact test on the discordant items ({a_} wrong & {b_} right / {a_} right & {b_} wrong); p Holm and "
           f"p BH: adjusted across the task's languages; green/red Δ: p Holm < {ALPHA}. Balanced accuracy, macro-F1, ROC-AUC "
           f"(two-label tasks) for both runs; red: balanced accuracy falls while accuracy rises. pred %: share of each label ({lab}) "
           f"among the predictions; gold % likewise. * = trained language. {note}Macro Δ by group: next page. "
           f"cal. acc: {CAL_TABLE} From summary.json, i.e. on all of a run's items: shown only where both runs have exactly "
           f"the same items (no test)" + _cal_blanks(rows) + ".")  # fmt: skip
    fig = new_fig(f"Accuracy — {task}{part}: paired tests", sub)
    header = ["language", "n", f"acc\n{a_}", f"acc\n{b_}", "Δ [95% CI]", "McNemar\nb01 / b10", "McNemar\np", "p Holm", "p BH",
              f"cal. acc\n{a_}", f"cal. acc\n{b_}", f"bal. acc\n{a_}", f"bal. acc\n{b_}", f"F1\n{a_}", f"F1\n{b_}",
              f"AUC\n{a_}", f"AUC\n{b_}", f"pred %\n{a_}", f"pred %\n{b_}", "gold %"]  # fmt: skip
    cells, colors = [], []
    for r in rows:
        a, b, t = r.a, r.b, r.test
        c = [lang_label(r.lang) + (" *" if r.trained else ""), "/".join(dict.fromkeys(str(x["n"]) for x in (a, b) if x))]
        c += [fmt(a["accuracy"]) if a else "—", fmt(b["accuracy"]) if b else "—"]
        if t:
            c += [delta_ci(t["delta"], t["delta_ci95"], t["n"], lang_untestable(t), short=True), f"{t['mcnemar']['b01']} / {t['mcnemar']['b10']}",
                  _p(t["mcnemar"]["p_value"]), _p(t["p_holm"]), _p(t["p_bh"])]  # fmt: skip
        else:
            c += ["— (not paired)", "—", "—", "—", "—"]
        for key, f in (("calibrated_accuracy", fmt), ("balanced_accuracy", fmt), ("macro_f1", fmt), ("roc_auc", _auc)):
            c += [f(a[key]) if a else "—", f(b[key]) if b else "—"]
        c += [_shares(a["predicted_distribution"], labels) if a else "—", _shares(b["predicted_distribution"], labels) if b else "—",
              _shares((a or b)["gold_distribution"], labels)]  # fmt: skip
        col = [WHITE] * len(header)
        if t and t["p_holm"] is not None and t["p_holm"] < ALPHA:
            col[4] = GREEN if t["delta"] > 0 else RED
        if t and t["delta"] > 0 and a["balanced_accuracy"] is not None and b["balanced_accuracy"] is not None \
                and b["balanced_accuracy"] < a["balanced_accuracy"]:
            col[header.index(f"bal. acc\n{b_}")] = RED
        cells.append(c)
        colors.append(col)
    widths = [0.105, 0.03, 0.042, 0.048, 0.115, 0.06, 0.05, 0.045, 0.042, 0.045, 0.05, 0.045, 0.05, 0.037, 0.047, 0.042, 0.048,
              0.05, 0.055, 0.044]  # fmt: skip
    _table(fig, cells, colors, header, [w / sum(widths) * 0.99 for w in widths], fontsize=7.3)
    return fig


def _cal_blanks(rows: list[AccRow]) -> str:
    """Why cal. acc cells of `rows` are "—", for the compare table's subtitle ("" when none is)."""
    out = []
    hidden = [r for r in rows if r.cal_withheld]
    if hidden:
        out.append(f"—: the runs' items differ ({_langs(hidden)})")
    old = [r for r in rows if not r.cal_withheld and any(x and x.get("calibrated_accuracy") is None for x in (r.a, r.b))]
    if old:
        out.append(f"— for {_langs(old)}: {CAL_OLD}" if hidden else f"—: {CAL_OLD}")
    return "; " + "; ".join(out) if out else ""


def _draw_groups(runs: Runs, chunk: list[tuple[str, str, dict]], part: str):
    a_, b_ = runs.roles
    untestable_here = any(group_untestable(v[k]) for _, _, v in chunk for k in ("accuracy", "balanced_accuracy"))
    note = f" {NOT_TESTABLE_NOTE} In the chart: a hollow marker, no interval." if untestable_here else ""
    sub = (f"Macro Δ = mean over a group's languages of ({runs.diff_label}), for accuracy and for balanced accuracy, on the items every "
           "language of the group has in both runs (items). 95% CI: item-cluster bootstrap (an item is drawn once and used in every "
           f"language, since the languages share their items). green/red: the interval excludes 0. trained / untrained: the {b_} "
           f"model's training languages (its manifest). Chart: the same Δs with their intervals." + note)  # fmt: skip
    fig = new_fig(f"Macro Δ by language group{part}", sub)
    header = ["task", "group", "languages", "items", f"acc {a_}", f"acc {b_}", "Δ acc [95% CI]", f"bal. acc\n{a_}",
              f"bal. acc\n{b_}", "Δ bal. acc [95% CI]"]  # fmt: skip
    cells, colors = [], []
    for task, g, v in chunk:
        a, b = v["accuracy"], v["balanced_accuracy"]
        langs = len(a["languages"])
        miss = f" (+{len(a['missing_languages'])} not compared)" if a["missing_languages"] else ""
        cells.append([task, g, f"{langs}{miss}", str(a["n_items"]), fmt(a["a"]), fmt(a["b"]),
                      delta_ci(a["delta"], a["ci95"], a["n_items"], group_untestable(a), short=True), fmt(b["a"]), fmt(b["b"]),
                      delta_ci(b["delta"], b["ci95"], b["n_items"], group_untestable(b), short=True)])  # fmt: skip
        col = [WHITE] * len(header)
        for k, x in ((6, a), (9, b)):
            if excludes0(x["ci95"], group_untestable(x)):
                col[k] = GREEN if x["delta"] > 0 else RED
        colors.append(col)
    bottom = _table(fig, cells, colors, header, [0.1, 0.1, 0.12, 0.06, 0.07, 0.08, 0.16, 0.07, 0.08, 0.16], fontsize=8.5)
    if bottom - 0.1 >= 0.25:  # room for the intervals as a chart
        _forest(fig.add_axes([0.2, 0.12, 0.75, bottom - 0.2]), chunk, runs.diff_label)
    return fig


def _forest(ax, chunk: list[tuple[str, str, dict]], diff_label: str = "aligned − base") -> None:
    """Macro Δ (points) with 95% item-cluster intervals, accuracy and balanced accuracy, one row per task × group."""
    y = np.arange(len(chunk))[::-1]
    for off, key, color, name in ((0.15, "accuracy", COLOR["base"], "accuracy"), (-0.15, "balanced_accuracy", COLOR["aligned"], "balanced accuracy")):
        ok = np.array([not group_untestable(v[key]) for _, _, v in chunk])
        d = np.array([_num(v[key]["delta"]) for _, _, v in chunk]) * 100
        lo = np.array([_num((v[key]["ci95"] or [None, None])[0]) for _, _, v in chunk]) * 100
        hi = np.array([_num((v[key]["ci95"] or [None, None])[1]) for _, _, v in chunk]) * 100
        ax.errorbar(d[ok], (y + off)[ok], xerr=np.vstack([d - lo, hi - d])[:, ok], fmt="o", color=color, ms=4, capsize=2, lw=1,
                    label=f"Δ {name}")  # fmt: skip
        ax.plot(d[~ok], (y + off)[~ok], "o", mfc="none", color=color, ms=4)  # no interval: not testable
        span = np.concatenate([x[np.isfinite(x)] for x in (d, lo, hi)] + [np.zeros(1)])
        middle = (span.min() + span.max()) / 2
        for k in np.flatnonzero(~ok & np.isfinite(d)):
            right = d[k] <= middle  # the label on the side with more room
            ax.annotate(f"not testable (n={chunk[k][2][key]['n_items']})", (d[k], y[k] + off), xytext=(5 if right else -5, 0),
                        textcoords="offset points", fontsize=6.5, va="center", ha="left" if right else "right", color=color)  # fmt: skip
    ax.axvline(0, color="#555555", lw=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels([f"{t}: {g}" for t, g, _ in chunk], fontsize=8)
    ax.set_xlabel(f"macro Δ, {diff_label} (points), with 95% item-cluster bootstrap interval", fontsize=8.5)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.set_ylim(-0.7, len(chunk) - 0.3)
    ax.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2, frameon=False)


def _draw_bars(runs: Runs, tasks: list[str]):
    fig = new_fig("Accuracy by language", "Bars: accuracy with 95% intervals (on the shared items when comparing); grey line: "
                  "high- | low-resource split; * and bold = trained language; dotted: chance (1 / number of labels).")  # fmt: skip
    gs = fig.add_gridspec(len(tasks), 1, left=0.06, right=0.98, top=top(fig, 0.87), bottom=0.1, hspace=0.75)
    for ti, task in enumerate(tasks):
        ax = fig.add_subplot(gs[ti])
        rows = accuracy_rows(runs, task)
        x = np.arange(len(rows))
        w = min(0.8 / len(runs.runs), 0.3 if len(runs.runs) == 1 else 0.4)
        for i in range(len(runs.runs)):
            vals = [(r.a if i == 0 else r.b) for r in rows]
            acc = np.array([v["accuracy"] if v else np.nan for v in vals])
            lo = np.array([v["ci95"][0] if v else np.nan for v in vals])
            hi = np.array([v["ci95"][1] if v else np.nan for v in vals])
            err = np.vstack([np.clip(acc - lo, 0, None), np.clip(hi - acc, 0, None)])
            ax.bar(x + (i - (len(runs.runs) - 1) / 2) * w, acc, w, yerr=err, color=COLOR[runs.style(i)],
                   label=runs.role_label(i), error_kw={"elinewidth": 0.7, "capsize": 1.5})  # fmt: skip
        n_high = sum(resource_group(r.lang) == "high" for r in rows)
        if 0 < n_high < len(rows):
            ax.axvline(n_high - 0.5, color="#888888", lw=1)
        labels = task_labels(runs, task)
        if labels:
            ax.axhline(1 / len(labels), color="#555555", lw=0.8, ls=":")
        lang_ticks(ax, [r.lang for r in rows], runs.trained)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        ax.set_title(task, loc="left", fontsize=10, fontweight="bold")
        ax.grid(axis="y", alpha=0.3)
        ax.set_xlim(-0.6, len(rows) - 0.4)
        if ti == 0:
            ax.legend(fontsize=8, loc="upper right", ncols=2)
    return fig
