"""Section 5, dose-response and contrasts. Dose-response: for each series of arms that differ only in
their training languages, the Δ of the primary metric on the languages no arm of the series trained
on, against the number of training languages (log2 axis), with the OLS slope and its 95% interval.
Contrasts: two effects on the same resamples: aligned − copy control, another target − English,
cross-task − same-task questions, declared pairs, and within an arm trained − untrained and
high − low resource."""

from __future__ import annotations

import math

import numpy as np

from alignlens.languages import paper_order
from alignlens.report.layout import Page, Section, Table, top
from alignlens.report.study.doc import (paged, INCONCLUSIVE, VERDICT_COLOR, chunk_blocks, ci, metric_name, num, pval, sections, slug,
                                        test_text)
from alignlens.report.study.forest import ROWS_PER_PAGE, forest

SECTION = "Dose-response and contrasts"
KIND_ORDER = ("control", "target", "questions", "declared", "trained-untrained", "resource")
KIND_NAMES = {"control": "aligned − copy control", "target": "other target − English", "questions": "other questions − same",
              "declared": "declared", "trained-untrained": "trained − untrained", "resource": "high − low resource"}
PANELS_PER_PAGE = 4


def _dose_panel(ax, t: dict) -> None:
    pts = t.get("points") or []
    n = list(t.get("n_languages") or [])
    xs = np.array([math.log2(k) for k in n], dtype=float)
    for x, p in zip(xs, pts):
        color = VERDICT_COLOR.get(p.get("verdict"), "black")
        if p.get("estimate") is None:
            continue
        if p.get("ci95") and p.get("verdict") != "not testable":
            lo, hi = p["ci95"]
            ax.errorbar([x], [p["estimate"]], yerr=[[p["estimate"] - lo], [hi - p["estimate"]]], fmt="o", color=color,
                        capsize=3, ms=5, lw=1.2, zorder=3)
        else:
            ax.plot([x], [p["estimate"]], "o", mfc="white", color=color, ms=5)
        ax.annotate(p.get("arm", ""), (x, p["estimate"]), xytext=(6, 4), textcoords="offset points", fontsize=7)
    est = [p.get("estimate") for p in pts]
    if t.get("slope") is not None and all(v is not None for v in est) and len(xs) >= 2:
        x0, y0 = float(xs.mean()), float(np.mean(est))
        grid = np.linspace(xs.min() - 0.3, xs.max() + 0.3, 20)
        color = VERDICT_COLOR.get(t.get("verdict"), "black")
        ax.plot(grid, y0 + t["slope"] * (grid - x0), color=color, lw=1.5, label="OLS slope")
        if t.get("ci95"):
            lo, hi = t["ci95"]
            ax.fill_between(grid, y0 + lo * (grid - x0), y0 + hi * (grid - x0), color=color, alpha=0.12, lw=0,
                            label="slope 95% interval (through the mean)")
    ax.axhline(0, color="#444444", lw=0.8)
    ax.set_xticks(sorted(set(xs.tolist())))
    ax.set_xticklabels([str(k) for k in sorted(set(n))], fontsize=7.5)
    ax.tick_params(axis="y", labelsize=7.5)
    ax.set_xlabel("training languages (log2 axis)", fontsize=8)
    ax.set_ylabel(f"Δ {metric_name(t.get('metric'))} on the languages no arm of the series trained", fontsize=7.5)
    ax.grid(alpha=0.3)
    v = t.get("verdict", "—")
    extra = f", MDE80 ±{num(t.get('mde80'), 3, False)}" if v == "inconclusive" else ""
    ax.set_title(f"slope {num(t.get('slope'))} per doubling {ci(t.get('ci95'))}, p {pval(t.get('p'))}{extra}: {v}",
                 fontsize=8, color=VERDICT_COLOR.get(v, "black"), loc="left")
    ax.legend(fontsize=7, loc="best", frameon=False)


def dose_pages(doc: dict, task: str, sec: dict, variant: str) -> list[Page]:
    trends = sec.get("trends") or []
    if not trends:
        return []
    m = sec["primary_metric"]
    langs = paper_order(x for t in trends for x in t.get("languages", []))
    sub = (f"Each dose series (arms that differ only in their training languages): Δ {metric_name(m)} vs base (seeds pooled) "
           "on the languages no arm of the series trained on nor targets "
           f"({' '.join(langs)}), with 95% intervals, against the number of training languages; line: the OLS slope of Δ on "
           f"log2(number of languages), per doubling, band: its 95% interval. Verdict on the claim slope > 0 (more languages "
           f"help more); {INCONCLUSIVE}. With two language counts the slope is their difference over Δlog2. {test_text(doc)}.")
    chunks = [trends[i:i + PANELS_PER_PAGE] for i in range(0, len(trends), PANELS_PER_PAGE)]

    def draw(fig, chunk):
        cols = 1 if len(chunk) == 1 else 2
        rows = math.ceil(len(chunk) / cols)
        gs = fig.add_gridspec(rows, cols, left=0.08 if cols == 2 else 0.2, right=0.96 if cols == 2 else 0.8,
                              top=top(fig, 0.86) - 0.02, bottom=0.09, hspace=0.45, wspace=0.25)
        for i, t in enumerate(chunk):
            _dose_panel(fig.add_subplot(gs[i // cols, i % cols]), t)
    return paged(SECTION, "Dose-response", "dose", task, variant, chunks, sub, draw)


def contrast_label(c: dict) -> str:
    kind = KIND_NAMES.get(c.get("kind"), c.get("kind", "?"))
    if c.get("kind") in ("trained-untrained", "resource"):
        return f"{kind}: {c.get('a')}"
    return f"{kind}: {c.get('a')} − {c.get('b')} / {c.get('group')}"


def contrast_pages(doc: dict, task: str, sec: dict, variant: str) -> list[Page]:
    cs = sorted(sec.get("contrasts") or [], key=lambda c: (KIND_ORDER.index(c["kind"]) if c.get("kind") in KIND_ORDER
                                                            else len(KIND_ORDER)))
    m = sec["primary_metric"]
    no_dose = "" if sec.get("trends") else (" No dose series in this study (it needs aligned arms that differ only in "
                                            "their training languages), so no dose-response page.")
    if not cs:
        return []
    sub = (f"Each contrast is the difference of two Δ {metric_name(m)} (each vs base) on the same resamples: "
           "aligned − copy control (same languages and data: alignment vs generic fine-tuning), other target − English, "
           "other questions − same-task ones, declared [[contrast]] pairs; within an arm: Δ on its trained − its untrained "
           "languages and high- − low-resource. Verdict on the claim contrast > 0; "
           f"{INCONCLUSIVE} (grey band). {test_text(doc)}.{no_dose}")
    rows = [(contrast_label(c), c) for c in cs]
    chunks = chunk_blocks(rows, lambda r: r[1].get("kind"), ROWS_PER_PAGE)

    def draw(fig, chunk):
        t = top(fig, 0.86) - 0.03
        forest(fig.add_axes([0.25, 0.09, 0.43, t - 0.09]), chunk, m, f"contrast of Δ {metric_name(m)}, 95% interval")
    return paged(SECTION, "Contrasts", "contrasts", task, variant, chunks, sub, draw)


def _v(x):
    return "" if x is None else x


CONTRAST_CSV = ["id", "kind", "a", "b", "group", "metric", "estimate", "ci95_lo", "ci95_hi", "se", "p", "mde80", "verdict",
                "not_testable", "languages", "levels"]
TREND_CSV = ["id", "arms", "n_languages", "x_scale", "group", "languages", "metric", "slope", "ci95_lo", "ci95_hi", "se",
             "p", "mde80", "verdict", "point_arm", "point_estimate", "point_ci95_lo", "point_ci95_hi", "point_verdict"]


def csv_tables(task: str, sec: dict) -> list[Table]:
    crows = []
    for c in sec.get("contrasts") or []:
        lo, hi = c.get("ci95") or [None, None]
        crows.append([c["id"], c.get("kind", ""), c.get("a", ""), c.get("b", ""), c.get("group", ""), c.get("metric", ""),
                      *map(_v, (c.get("estimate"), lo, hi, c.get("se"), c.get("p"), c.get("mde80"))), c.get("verdict", ""),
                      c.get("not_testable") or "", " ".join(c.get("languages") or []), "; ".join(c.get("levels") or [])])
    trows = []
    for t in sec.get("trends") or []:
        lo, hi = t.get("ci95") or [None, None]
        head = [t["id"], " ".join(t.get("arms", [])), " ".join(map(str, t.get("n_languages", []))), t.get("x_scale", ""),
                t.get("group", ""), " ".join(t.get("languages", [])), t.get("metric", ""),
                *map(_v, (t.get("slope"), lo, hi, t.get("se"), t.get("p"), t.get("mde80"))), t.get("verdict", "")]
        for p in t.get("points") or [{}]:
            plo, phi = p.get("ci95") or [None, None]
            trows.append(head + [p.get("arm", ""), _v(p.get("estimate")), _v(plo), _v(phi), p.get("verdict", "")])
    return [Table(f"study_contrasts_{slug(task)}.csv", CONTRAST_CSV, crows),
            Table(f"study_trends_{slug(task)}.csv", TREND_CSV, trows)]


def build(doc: dict) -> Section:
    out = Section()
    for task, sec in sections(doc):
        out.pages += dose_pages(doc, task, sec, "standard") + contrast_pages(doc, task, sec, "standard")
        out.tables += csv_tables(task, sec)
    return out
