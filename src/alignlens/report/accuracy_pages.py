"""The pages of the accuracy section (`report.accuracy`): per task the table of one run or of two
runs with their paired tests, the macro Δ by language group (table and interval chart), and the
accuracy bars by language.
"""

from __future__ import annotations

import numpy as np

from alignlens.paired import MIN_ITEMS
from alignlens.report.accuracy_rows import (ALPHA, AccRow, accuracy_rows, as_float, auc_text, langs_text, p_text,
                                            shares_text, single_group_means, task_labels)
from alignlens.report.languages import lang_label, resource_group
from alignlens.report.layout import SUBTITLE_LINE, COLOR, fmt, lang_ticks, new_fig, top
from alignlens.report.runs import Runs
from alignlens.report.verdicts import ci_text, delta_ci, excludes0, group_untestable, lang_untestable

GREEN, RED, GREY, WHITE, HEAD = "#d8f0d8", "#f6d5d5", "#eeeeee", "#ffffff", "#dde4f0"

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


def draw_single_table(runs: Runs, task: str, rows: list[AccRow], part: str, means: list[AccRow] | None):
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
                      auc_text(x["roc_auc"]), shares_text(x["predicted_distribution"], labels), shares_text(x["gold_distribution"], labels)])  # fmt: skip
        colors.append([WHITE] * len(header))
    for g in single_group_means(runs, means) if means else []:
        cells.append([f"mean: {g['group']}", f"{len(g['languages'])} langs", "", fmt(g["accuracy"]), "", fmt(g["calibrated_accuracy"]),
                      fmt(g["balanced_accuracy"]), fmt(g["macro_f1"]), auc_text(g["roc_auc"]), "", ""])  # fmt: skip
        colors.append([GREY] * len(header))
    _table(fig, cells, colors, header, [0.17, 0.07, 0.05, 0.08, 0.12, 0.09, 0.09, 0.08, 0.08, 0.08, 0.08], bold_from=len(rows), fontsize=8.5)
    return fig


def draw_compare_table(runs: Runs, task: str, rows: list[AccRow], part: str, means: list[AccRow] | None):
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
                  p_text(t["mcnemar"]["p_value"]), p_text(t["p_holm"]), p_text(t["p_bh"])]  # fmt: skip
        else:
            c += ["— (not paired)", "—", "—", "—", "—"]
        for key, f in (("calibrated_accuracy", fmt), ("balanced_accuracy", fmt), ("macro_f1", fmt), ("roc_auc", auc_text)):
            c += [f(a[key]) if a else "—", f(b[key]) if b else "—"]
        c += [shares_text(a["predicted_distribution"], labels) if a else "—", shares_text(b["predicted_distribution"], labels) if b else "—",
              shares_text((a or b)["gold_distribution"], labels)]  # fmt: skip
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
        out.append(f"—: the runs' items differ ({langs_text(hidden)})")
    old = [r for r in rows if not r.cal_withheld and any(x and x.get("calibrated_accuracy") is None for x in (r.a, r.b))]
    if old:
        out.append(f"— for {langs_text(old)}: {CAL_OLD}" if hidden else f"—: {CAL_OLD}")
    return "; " + "; ".join(out) if out else ""


def _group_metrics(chunk: list[tuple[str, str, dict]]) -> list[tuple[str, str, str]]:
    """(key, short name, long name) of the group Δs shown: ROC-AUC first when the groups have it
    (two-label tasks: threshold-free, the metric the paper's claim is judged on), then accuracy and
    balanced accuracy."""
    auc = [("auc", "AUC", "ROC-AUC")] if any(v.get("auc") for _, _, v in chunk) else []
    return auc + [("accuracy", "acc", "accuracy"), ("balanced_accuracy", "bal. acc", "balanced accuracy")]


_EMPTY = {"a": None, "b": None, "delta": None, "ci95": None, "n_items": 0}


def draw_groups(runs: Runs, chunk: list[tuple[str, str, dict]], part: str):
    a_, b_ = runs.roles
    metrics = _group_metrics(chunk)
    untestable_here = any(group_untestable(v.get(k) or _EMPTY) for _, _, v in chunk for k, _, _ in metrics)
    note = f" {NOT_TESTABLE_NOTE} In the chart: a hollow marker, no interval." if untestable_here else ""
    names = ", ".join(long for _, _, long in metrics)
    sub = (f"Macro Δ = mean over a group's languages of ({runs.diff_label}), for {names}, on the items every "
           "language of the group has in both runs (items). 95% CI: label-stratified item-cluster bootstrap (an item is drawn "
           f"once and used in every language, since the languages share their items; each resample keeps the label counts). "
           f"green/red: the interval excludes 0. trained / untrained: the {b_} "
           f"model's training languages (its manifest). Chart: the same Δs with their intervals." + note)  # fmt: skip
    fig = new_fig(f"Macro Δ by language group{part}", sub)
    header = ["task", "group", "languages", "items"]
    for _, short, _ in metrics:
        header += [f"{short}\n{a_}", f"{short}\n{b_}", f"Δ {short} [95% CI]"]
    cells, colors = [], []
    for task, g, v in chunk:
        a = v["accuracy"]
        miss = f" (+{len(a['missing_languages'])} not compared)" if a["missing_languages"] else ""
        row, col = [task, g, f"{len(a['languages'])}{miss}", str(a["n_items"])], [WHITE] * 4
        for key, _, _ in metrics:
            x = v.get(key) or _EMPTY
            why = group_untestable(x)
            row += [fmt(x["a"]), fmt(x["b"]), delta_ci(x["delta"], x["ci95"], x["n_items"], why, short=True)]
            col += [WHITE, WHITE, (GREEN if x["delta"] > 0 else RED) if excludes0(x["ci95"], why) else WHITE]
        cells.append(row)
        colors.append(col)
    widths = [0.1, 0.1, 0.12, 0.06] + [0.07, 0.07, 0.16] * len(metrics)
    scale = 1.0 / sum(widths) if sum(widths) > 1.0 else 1.0
    bottom = _table(fig, cells, colors, header, [w * scale for w in widths], fontsize=8.5 if len(metrics) < 3 else 7.5)
    if bottom - 0.1 >= 0.25:  # room for the intervals as a chart
        _forest(fig.add_axes([0.2, 0.12, 0.75, bottom - 0.2]), chunk, runs.diff_label, metrics)
    return fig


def _forest(ax, chunk: list[tuple[str, str, dict]], diff_label: str = "aligned − base",
            metrics: list[tuple[str, str, str]] | None = None) -> None:
    """Macro Δ (points) with 95% item-cluster intervals, one marker per metric (`_group_metrics`), one row
    per task × group."""
    metrics = metrics or _group_metrics(chunk)
    palette = {"auc": "#2a9d4b", "accuracy": COLOR["base"], "balanced_accuracy": COLOR["aligned"]}
    offsets = np.linspace(0.2, -0.2, len(metrics)) if len(metrics) > 1 else np.zeros(1)
    y = np.arange(len(chunk))[::-1]
    for off, (key, _, name) in zip(offsets, metrics):
        color = palette[key]
        vals = [v.get(key) or _EMPTY for _, _, v in chunk]
        ok = np.array([not group_untestable(x) for x in vals])
        d = np.array([as_float(x["delta"]) for x in vals]) * 100
        lo = np.array([as_float((x["ci95"] or [None, None])[0]) for x in vals]) * 100
        hi = np.array([as_float((x["ci95"] or [None, None])[1]) for x in vals]) * 100
        ax.errorbar(d[ok], (y + off)[ok], xerr=np.vstack([d - lo, hi - d])[:, ok], fmt="o", color=color, ms=4, capsize=2, lw=1,
                    label=f"Δ {name}")  # fmt: skip
        ax.plot(d[~ok], (y + off)[~ok], "o", mfc="none", color=color, ms=4)  # no interval: not testable
        span = np.concatenate([x[np.isfinite(x)] for x in (d, lo, hi)] + [np.zeros(1)])
        middle = (span.min() + span.max()) / 2
        for k in np.flatnonzero(~ok & np.isfinite(d)):
            right = d[k] <= middle  # the label on the side with more room
            ax.annotate(f"not testable (n={vals[k]['n_items']})", (d[k], y[k] + off), xytext=(5 if right else -5, 0),
                        textcoords="offset points", fontsize=6.5, va="center", ha="left" if right else "right", color=color)  # fmt: skip
    ax.axvline(0, color="#555555", lw=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels([f"{t}: {g}" for t, g, _ in chunk], fontsize=8)
    ax.set_xlabel(f"macro Δ, {diff_label} (points), with 95% label-stratified item-cluster bootstrap interval", fontsize=8.5)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.set_ylim(-0.7, len(chunk) - 0.3)
    ax.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=len(metrics), frameon=False)


def draw_bars(runs: Runs, tasks: list[str]):
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
