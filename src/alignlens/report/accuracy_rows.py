"""The rows of the accuracy section (`report.accuracy`): one `AccRow` per (task, language) from the
runs' summaries and paired tests (`runs.paired`), the paired macro Δ per language group, single-run
group means, the CSV rows of accuracy.csv and accuracy_groups.csv, and the cell formats the
section's text and pages share. What each row holds (items compared, calibrated accuracy shown or
withheld, not testable intervals): see `report.accuracy`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from alignlens.report.languages import NATIVE_NAMES, order_languages, resource_group
from alignlens.report.runs import METRIC_KEYS, Runs
from alignlens.report.verdicts import group_untestable, lang_untestable
from alignlens.stats import clip_interval

ALPHA = 0.05  # Holm-adjusted p below this: "significant"

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


# ---- cell formats ------------------------------------------------------------------------------


def p_text(p: float | None) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}" if p < 0.1 else f"{p:.2f}"


def auc_text(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def shares_text(dist: dict | None, labels: list[str]) -> str:
    """'87/13': predicted (or gold) share of each label in %, in label order."""
    if not dist:
        return "—"
    n = sum(dist.values())
    return "/".join(f"{100 * dist.get(lab, 0) / n:.0f}" for lab in labels) if n else "—"


def pooled_counts(rows: list[AccRow], side: str, key: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        for lab, c in ((getattr(r, side) or {}).get(key) or {}).items():
            out[lab] = out.get(lab, 0) + int(c)
    return out


def share_of(dist: dict[str, int], label: str) -> float:
    n = sum(dist.values())
    return dist.get(label, 0) / n if n else math.nan


def langs_text(rows: list[AccRow]) -> str:
    return " ".join(r.lang for r in rows) or "none"


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


def as_float(x) -> float:
    return math.nan if x is None else float(x)


def csv_row(r: AccRow) -> list:
    rec = [r.task, r.lang, NATIVE_NAMES.get(r.lang, ""), resource_group(r.lang), int(r.trained)]
    for x in (r.a, r.b):
        if x:
            rec += [x["n"], x["accuracy"], x["ci95"][0], x["ci95"][1], as_float(x["balanced_accuracy"]), as_float(x["macro_f1"]),
                    as_float(x["roc_auc"]), json.dumps(x["predicted_distribution"], ensure_ascii=False) if x["predicted_distribution"] else "",
                    as_float(x["calibrated_accuracy"]), json.dumps(x["p_content_free"], ensure_ascii=False) if x["p_content_free"] else ""]  # fmt: skip
        else:
            rec += ["", math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, "", math.nan, ""]
    gold = next((x["gold_distribution"] for x in (r.a, r.b) if x and x.get("gold_distribution")), None)
    rec.append(json.dumps(gold, ensure_ascii=False) if gold else "")
    if r.paired:
        t = r.test
        lo, hi = (math.nan, math.nan) if lang_untestable(t) else t["delta_ci95"]
        rec += [t["delta"], lo, hi, t["mcnemar"]["b01"], t["mcnemar"]["b10"],
                t["mcnemar"]["p_value"], as_float(t["p_holm"]), as_float(t["p_bh"])]  # fmt: skip
    else:
        rec += [math.nan, math.nan, math.nan, "", "", math.nan, math.nan, math.nan]
    return rec


def group_csv_rows(runs: Runs, task: str, rows: list[AccRow]) -> list[list]:
    out = []
    groups = task_groups(runs, task)
    if groups:
        for g, v in groups.items():
            a, b = v["accuracy"], v["balanced_accuracy"]
            c = v.get("auc") or {"a": None, "b": None, "delta": None, "ci95": None, "n_items": 0}  # AUC: two-label tasks
            ci_a, ci_b, ci_c = ([None, None] if group_untestable(x) else x["ci95"] for x in (a, b, c))  # not testable: left empty
            out.append([task, g, len(a["languages"]), " ".join(a["languages"]), " ".join(a["missing_languages"]), a["n_items"],
                        as_float(a["a"]), as_float(a["b"]), as_float(a["delta"]), as_float(ci_a[0]), as_float(ci_a[1]),
                        as_float(b["a"]), as_float(b["b"]), as_float(b["delta"]), as_float(ci_b[0]), as_float(ci_b[1]),
                        as_float(c["a"]), as_float(c["b"]), as_float(c["delta"]), as_float(ci_c[0]), as_float(ci_c[1]),
                        as_float(c.get("mde80"))])  # fmt: skip
        return out
    if runs.compare:
        return out
    for g in single_group_means(runs, rows):
        out.append([task, g["group"], len(g["languages"]), " ".join(g["languages"]), "", "", as_float(g["accuracy"]),
                    math.nan, math.nan, math.nan, math.nan, as_float(g["balanced_accuracy"]), math.nan, math.nan, math.nan, math.nan,
                    math.nan, math.nan, math.nan, math.nan, math.nan, math.nan])  # fmt: skip
    return out
