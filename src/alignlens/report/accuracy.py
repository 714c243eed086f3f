"""Accuracy section: a table per task (with Δ and its interval when comparing) and bar charts.

With two runs, a language both runs have is compared on their shared items only (both accuracies
from `runs.overlap`); a language only one run has is listed with that run's own accuracy and no Δ,
and is left out of the means, so every Δ is computed from the numbers printed beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from alignlens import stats
from alignlens.report.languages import NATIVE_NAMES, lang_label, resource_group
from alignlens.report.layout import COLOR, Page, Section, Table, fmt, lang_ticks, new_fig, top, wrap
from alignlens.report.runs import Runs
from alignlens.stats import clip_interval


@dataclass
class AccRow:
    """One language of one task: each run's {"accuracy", "n", "ci95"} (None where absent)."""

    task: str
    lang: str
    trained: bool
    a: dict | None
    b: dict | None
    comparable: bool = True  # False: both runs have the language but on disjoint items

    @property
    def paired(self) -> bool:
        return bool(self.a and self.b and self.comparable)

    @property
    def diff(self) -> tuple[float, float, float]:
        """(b - a, lo, hi) with Newcombe's interval; NaNs when not paired."""
        if not self.paired:
            return (math.nan, math.nan, math.nan)
        return stats.diff_ci(self.a["accuracy"], self.a["ci95"], self.b["accuracy"], self.b["ci95"])


def _clipped(entry: dict | None) -> dict | None:
    return None if entry is None else {**entry, "ci95": clip_interval(entry["ci95"])}


def accuracy_rows(runs: Runs, task: str) -> list[AccRow]:
    """One row per language of `task`, languages in report order (see the module docstring)."""
    from alignlens.report.languages import order_languages

    per = [r.summary["tasks"].get(task, {}).get("languages", {}) for r in runs.runs]
    rows = []
    for l in order_languages([l for p in per for l in p]):
        a, b = per[0].get(l), per[1].get(l) if len(per) > 1 else None
        comparable = True
        if runs.overlap is not None and (task, l) in runs.overlap.acc:
            a, b = runs.overlap.acc[task, l]
        elif a is not None and b is not None:  # both ran it, on disjoint items
            comparable = False
        rows.append(AccRow(task, l, l in runs.trained, _clipped(a), _clipped(b), comparable))
    return rows


def group_means(rows: list[AccRow]) -> list[dict]:
    """Macro means over languages for the groups high/low-resource, trained/not trained and all:
    [{"group", "n_languages", "base", "aligned", "diff"}] (see `stats.group_means`)."""
    groups = {
        "high-resource": [i for i, r in enumerate(rows) if resource_group(r.lang) == "high"],
        "low-resource": [i for i, r in enumerate(rows) if resource_group(r.lang) == "low"],
        "trained": [i for i, r in enumerate(rows) if r.trained],
        "not trained": [i for i, r in enumerate(rows) if not r.trained],
        "all": list(range(len(rows))),
    }
    pairs = [(r.a["accuracy"] if r.a else None, r.b["accuracy"] if r.b else None) for r in rows]
    return [{"group": g["group"], "n_languages": g["n"], "base": g["a"], "aligned": g["b"], "diff": g["diff"]}
            for g in stats.group_means(pairs, groups, [r.paired for r in rows])]  # fmt: skip


def build(runs: Runs) -> Section:
    """Accuracy tables and charts, accuracy.csv / accuracy_groups.csv, and the accuracy summary lines."""
    section = Section()
    csv_rows, group_rows, task_lines = [], [], []
    for task in runs.tasks():
        rows = accuracy_rows(runs, task)
        groups = group_means(rows)
        for r in rows:
            rec = [task, r.lang, NATIVE_NAMES.get(r.lang, ""), resource_group(r.lang), int(r.trained)]
            for x in (r.a, r.b):
                rec += [x["n"], x["accuracy"], x["ci95"][0], x["ci95"][1]] if x else ["", math.nan, math.nan, math.nan]
            csv_rows.append(rec + list(r.diff))
        group_rows += [[task, g["group"], g["n_languages"], g["base"], g["aligned"], g["diff"]] for g in groups]
        task_lines.append(_task_line(runs, task, rows, groups))
        section.pages.append(Page("Accuracy table", f"Accuracy table — {task}", f"accuracy_table_{task}",
                                  lambda task=task, rows=rows, groups=groups: _draw_table(runs, task, rows, groups)))  # fmt: skip
    tasks = runs.tasks()
    for start in range(0, len(tasks), 3):
        chunk = tasks[start : start + 3]
        section.pages.append(Page("Accuracy charts", f"Accuracy by language — {', '.join(chunk)}", f"accuracy_bars_{'_'.join(chunk)}",
                                  lambda chunk=chunk: _draw_bars(runs, chunk)))  # fmt: skip
    section.summary_lines = _overall_lines(runs) + task_lines
    section.tables = [
        Table("accuracy.csv", ["task", "language", "native_name", "resource_group", "trained",
                               "n_base", "acc_base", "ci95_lo_base", "ci95_hi_base",
                               "n_aligned", "acc_aligned", "ci95_lo_aligned", "ci95_hi_aligned",
                               "diff", "diff_ci95_lo", "diff_ci95_hi"], csv_rows),
        Table("accuracy_groups.csv", ["task", "group", "n_languages", "mean_acc_base", "mean_acc_aligned", "mean_diff"], group_rows),
    ]  # fmt: skip
    return section


def _overall_lines(runs: Runs) -> list[str]:
    """The first summary line when comparing: means over all tasks × languages, and by group."""
    if not runs.compare:
        return []
    g = {x["group"]: x for x in group_means([r for t in runs.tasks() for r in accuracy_rows(runs, t)])}
    if "all" not in g or math.isnan(g["all"]["diff"]):
        return []
    bits = [f"{name} {fmt(g[name]['diff'], sign=True)}" for name in ("trained", "not trained", "high-resource", "low-resource")
            if name in g and not math.isnan(g[name]["diff"])]  # fmt: skip
    return [f"• Overall (all tasks, macro mean over task × language): accuracy {fmt(g['all']['base'])}% → "
            f"{fmt(g['all']['aligned'])}% (Δ {fmt(g['all']['diff'], sign=True)} points). Mean Δ by group: {', '.join(bits) or '—'}."]  # fmt: skip


def _task_line(runs: Runs, task: str, rows: list[AccRow], groups: list[dict]) -> str:
    """One summary line for a task: its mean accuracies (and Δ, significant changes when comparing)."""
    g = {x["group"]: x for x in groups}
    if runs.compare and not any(r.paired for r in rows):  # only one run has this task (or no shared item)
        sides = [(runs.roles[i], key) for i, key in ((0, "base"), (1, "aligned")) if not math.isnan(g["all"][key])]
        return f"• {task} (not compared: no item in both runs): " + "; ".join(
            f"{role} mean accuracy {fmt(g['all'][key])}% over {g['all']['n_languages']} languages" for role, key in sides) + "."  # fmt: skip
    if not runs.compare:
        return (f"• {task}: mean accuracy {fmt(g['all']['base'])}% over {g['all']['n_languages']} languages"
                + (f" (high-resource {fmt(g['high-resource']['base'])}%, low-resource {fmt(g['low-resource']['base'])}%)."
                   if "high-resource" in g and "low-resource" in g else "."))  # fmt: skip
    parts = [f"• {task}: mean accuracy {fmt(g['all']['base'])}% → {fmt(g['all']['aligned'])}% (Δ {fmt(g['all']['diff'], sign=True)} points)"]
    parts += [f"{name} Δ {fmt(g[name]['diff'], sign=True)}" for name in ("high-resource", "low-resource", "trained", "not trained")
              if name in g and not math.isnan(g[name]["diff"])]  # fmt: skip
    both = [(r, *r.diff) for r in rows if r.paired]
    up = [r.lang for r, d, lo, hi in both if lo > 0]
    down = [r.lang for r, d, lo, hi in both if hi < 0]
    line = "; ".join(parts) + "."
    line += f" Significant gains in {len(up)}/{len(both)} languages ({' '.join(up) or 'none'}), losses in {len(down)} ({' '.join(down) or 'none'})."
    best, worst = max(both, key=lambda x: x[1]), min(both, key=lambda x: x[1])
    line += (f" Largest gain: {lang_label(best[0].lang)} {fmt(best[1], sign=True)}; largest drop/smallest gain: "
             f"{lang_label(worst[0].lang)} {fmt(worst[1], sign=True)}.")  # fmt: skip
    return line


def _table_cells(runs: Runs, rows: list[AccRow], groups: list[dict]) -> tuple[list[list[str]], list[list[str]]]:
    """(cell texts, cell colours) of the accuracy table: one row per language, then the group means."""
    cells, colors = [], []
    white, grey = "#ffffff", "#eeeeee"
    for r in rows:
        c = [lang_label(r.lang) + (" *" if r.trained else ""), resource_group(r.lang)]
        c.append("/".join(dict.fromkeys(str(x["n"]) for x in (r.a, r.b) if x)) or "—")
        for x in [r.a] + ([r.b] if runs.compare else []):
            c += [fmt(x["accuracy"]), f"[{fmt(x['ci95'][0])}, {fmt(x['ci95'][1])}]"] if x else ["—", "—"]
        col = [white] * (len(c) + (2 if runs.compare else 0))
        if runs.compare:
            d, lo, hi = r.diff
            c += [fmt(d, sign=True), f"[{fmt(lo, sign=True)}, {fmt(hi, sign=True)}]"]
            if not math.isnan(lo) and lo > 0:
                col[-2] = col[-1] = "#d8f0d8"
            elif not math.isnan(hi) and hi < 0:
                col[-2] = col[-1] = "#f6d5d5"
        cells.append(c)
        colors.append(col)
    for g in groups:
        c = [f"mean: {g['group']}", f"{g['n_languages']} langs", "", fmt(g["base"]), ""]
        if runs.compare:
            c += [fmt(g["aligned"]), "", fmt(g["diff"], sign=True), ""]
        cells.append(c)
        colors.append([grey] * len(c))
    return cells, colors


def _draw_table(runs: Runs, task: str, rows: list[AccRow], groups: list[dict]):
    labels = next((r.summary["tasks"].get(task, {}).get("labels") for r in runs.runs
                   if r.summary["tasks"].get(task, {}).get("labels")), [])  # fmt: skip
    sub = (f"Few-shot accuracy (%) with 95% intervals. Labels: {', '.join(map(str, labels)) or '—'}. "
           "* = trained language of the aligned model. ")  # fmt: skip
    if runs.compare:
        sub += ("Δ = aligned − base (Newcombe interval from the two intervals; green/red: interval excludes 0). "
                "Compared on the items both runs have (n); a language only one run has is shown without Δ "
                "and left out of the means.")  # fmt: skip
    fig = new_fig(f"Accuracy — {task}", wrap(sub, 170))
    ax = fig.add_axes([0.03, 0.04, 0.94, top(fig, 0.88) + 0.02 - 0.04])
    ax.axis("off")
    header = ["language", "group", "n", "base", "base 95% CI"]
    if runs.compare:
        header += ["aligned", "aligned 95% CI", "Δ", "Δ 95% CI"]
    cells, colors = _table_cells(runs, rows, groups)
    widths = [0.2, 0.08, 0.06, 0.08, 0.13] + ([0.08, 0.13, 0.08, 0.14] if runs.compare else [])
    tab = ax.table(cellText=cells, colLabels=header, cellColours=colors, colWidths=widths, loc="upper center", cellLoc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(8.5 if len(cells) <= 26 else 7)
    h = min(0.045, 0.98 / (len(cells) + 1))
    for (ri, ci), cell in tab.get_celld().items():
        cell.set_height(h)
        cell.set_edgecolor("#bbbbbb")
        if ri == 0:
            cell.set_text_props(fontweight="bold")
            cell.set_facecolor("#dde4f0")
        if ci == 0 and ri > 0:
            cell.set_text_props(ha="left")
            cell._loc = "left"
        if ri > len(rows):
            cell.set_text_props(fontweight="bold")
    return fig


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
            ax.bar(x + (i - (len(runs.runs) - 1) / 2) * w, acc, w, yerr=err, color=COLOR[runs.roles[i]],
                   label=runs.role_label(i), error_kw={"elinewidth": 0.7, "capsize": 1.5})  # fmt: skip
        n_high = sum(resource_group(r.lang) == "high" for r in rows)
        if 0 < n_high < len(rows):
            ax.axvline(n_high - 0.5, color="#888888", lw=1)
        labels = runs.runs[0].summary["tasks"].get(task, {}).get("labels") or []
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
