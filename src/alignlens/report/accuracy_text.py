"""The summary lines of the accuracy section (`report.accuracy`), generated from its tests only: how
the Δs were obtained, per compared task the macro Δ with its interval, the McNemar tests after Holm,
the groups, the labels used, a label-prior shift behind a gain, calibrated accuracy, and the
verdict on the paper's claim (`report.verdicts`); per single-run task its means.
"""

from __future__ import annotations

import numpy as np

from alignlens.paired import MIN_ITEMS
from alignlens.report.accuracy_rows import (ALPHA, AccRow, auc_text, langs_text, p_text, pooled_counts, share_of,
                                            shares_text, task_groups, task_labels)
from alignlens.report.languages import lang_label
from alignlens.report.layout import fmt
from alignlens.report.runs import Runs
from alignlens.report.verdicts import (CLAIM, VERDICTS, ci_text, claim_text, delta_ci, delta_text, excludes0,
                                       group_untestable, lang_untestable, neutral_text, not_testable)


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
    pa, pb, gold = pooled_counts(pairs, "a", "predicted_distribution"), pooled_counts(pairs, "b", "predicted_distribution"), pooled_counts(pairs, "a", "gold_distribution")
    label = max(labels, key=lambda lab: (share_of(pb, lab) - share_of(pa, lab), share_of(pb, lab)))
    one = [r for r in pairs if r.b["n"] and max((r.b["predicted_distribution"] or {}).values(), default=0) == r.b["n"]]
    return {"bal": bal if bal_fall else None, "auc": auc if auc_fall else None, "label": label,
            "share_b": share_of(pb, label), "share_a": share_of(pa, label), "gold": share_of(gold, label), "one_label_langs": one}  # fmt: skip


def _holm_text(pairs: list[AccRow]) -> str:
    m = len(pairs)
    sig = [r for r in pairs if r.test["p_holm"] is not None and r.test["p_holm"] < ALPHA]
    raw = sum(r.test["mcnemar"]["p_value"] < ALPHA for r in pairs)
    bh = sum(r.test["p_bh"] is not None and r.test["p_bh"] < ALPHA for r in pairs)
    if sig:
        up = [r for r in sig if r.test["delta"] > 0]
        down = [r for r in sig if r.test["delta"] < 0]
        text = (f"{len(sig)} of {m} languages survive Holm correction (significant at p_Holm < {ALPHA}): "
                f"gains in {len(up)} ({langs_text(up)}), losses in {len(down)} ({langs_text(down)})")  # fmt: skip
    else:
        best = min(pairs, key=lambda r: (r.test["p_holm"] if r.test["p_holm"] is not None else 2.0))
        text = (f"0 of {m} languages survive Holm correction (p_Holm < {ALPHA}); smallest p_Holm {p_text(best.test['p_holm'])} "
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
    why = f" Not shown for {len(hidden)} languages whose items differ between the runs ({langs_text(hidden)})." if hidden else ""
    if not both:
        reason = _no_calibration(runs, task, [0, 1]) or (
            f"the runs' items differ in every language both have ({langs_text(hidden)}), and summary.json's calibrated accuracy is "
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
        dists = [(who, pooled_counts(pairs, side, key)) for who, side, key in
                 ((runs.roles[0], "a", "predicted_distribution"), (runs.roles[1], "b", "predicted_distribution"), ("gold", "a", "gold_distribution"))]  # fmt: skip
        lines.append(f"   – Labels used ({'/'.join(labels)}, % of the compared items, pooled over languages): "
                     + ", ".join(f"{who} {shares_text(d, labels)}" for who, d in dists) + ".")  # fmt: skip
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
            text += f" It predicts one label for every item in {len(shift['one_label_langs'])} languages ({langs_text(shift['one_label_langs'])})."
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
                + (f", ROC-AUC {auc_text(mean('roc_auc'))}" if mean("roc_auc") is not None else ""))  # fmt: skip
        if pred and gold and labels:
            over = max(labels, key=lambda lab: share_of(pred, lab) - share_of(gold, lab))
            text += f"; it predicts {over} for {fmt(share_of(pred, over))}% of items vs {fmt(share_of(gold, over))}% gold"
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
