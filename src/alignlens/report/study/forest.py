"""Section 3, effects: every arm vs the base model by language group. A forest plot of the primary
metric (AUC for two-label tasks, calibrated accuracy otherwise) with 95% intervals, coloured by
verdict, the ±MDE80 band drawn behind the inconclusive ones; then a table with the primary metric's
values, p, MDE80 and verdict beside the Δ of accuracy, calibrated accuracy and balanced accuracy."""

from __future__ import annotations

import numpy as np

from alignlens.report.layout import Page, Section, Table, top
from alignlens.report.study.doc import (paged, INCONCLUSIVE, METRIC_SHORT, VERDICT_COLOR, VERDICT_FILL, arms_with_effects,
                                        chunk_blocks, effect_of, fit, est_ci, excludes_zero, metric_name, num, primary_effects, pval,
                                        sections, slug, test_text, title_suffix)
from alignlens.report.study.table import PAGE_W_PT, Column, table_pages

SECTION = "Effects"
ROWS_PER_PAGE = 30


def forest(ax, rows: list[tuple[str, dict]], metric: str, xlabel: str) -> None:
    """Entries (label, effect/contrast/trend) as a forest plot on `ax`: estimate and 95% interval
    coloured by verdict; behind an inconclusive one its ±MDE80 band; a not testable one hollow,
    without an interval, with the reason at the right."""
    from matplotlib.patches import Patch, Rectangle

    n = len(rows)
    ys = np.arange(n)[::-1].astype(float)
    span = [0.0]
    for y, (_, e) in zip(ys, rows):
        v, est, interval = e.get("verdict"), e.get("estimate"), e.get("ci95")
        color = VERDICT_COLOR.get(v, "black")
        if v == "inconclusive" and e.get("mde80") is not None:
            m = e["mde80"]
            ax.add_patch(Rectangle((-m, y - 0.3), 2 * m, 0.6, facecolor="#dddddd", edgecolor="none", zorder=0))
            span += [-m, m]
        if est is None:
            continue
        span.append(est)
        if interval and v != "not testable":
            ax.errorbar([est], [y], xerr=[[est - interval[0]], [interval[1] - est]], fmt="o", color=color, ms=4.5,
                        capsize=2.5, lw=1.2, zorder=3)
            span += list(interval)
        else:
            ax.plot([est], [y], "o", mfc="white", color=color, ms=4.5, zorder=3)
    lo, hi = min(span), max(span)
    pad = 0.08 * (hi - lo or 0.1)
    ax.set_xlim(lo - pad, hi + pad)
    ax.axvline(0, color="#444444", lw=0.8, zorder=1)
    keys = [e.get("arm") or e.get("kind") for _, e in rows]
    for k in range(1, n):
        if keys[k] != keys[k - 1]:  # a rule between two arms (or kinds of contrast)
            ax.axhline(ys[k] + 0.5, color="#999999", lw=0.6)
    ax.set_yticks(ys)
    ax.set_yticklabels([label for label, _ in rows], fontsize=7.5)
    ax.set_ylim(-0.7, n - 0.3)
    ax.grid(axis="x", alpha=0.3)
    ax.tick_params(axis="x", labelsize=7.5)
    ax.set_xlabel(xlabel, fontsize=8)
    trans = ax.get_yaxis_transform()
    pos = ax.get_position()
    room = (0.97 - pos.x1 - 0.015 * pos.width) * PAGE_W_PT  # points right of the plot
    for y, (_, e) in zip(ys, rows):
        ax.text(1.015, y, right_text(e, room), transform=trans, fontsize=6.5, va="center",
                color=VERDICT_COLOR.get(e.get("verdict"), "black"))
    handles = [Patch(color=VERDICT_COLOR[v], label=v) for v in ("supported", "contradicted", "inconclusive", "not testable")]
    handles.append(Patch(color="#dddddd", label="±MDE80 (inconclusive: effects inside go undetected)"))
    ax.legend(handles=handles, fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=5, frameon=False,
              handlelength=1.2, columnspacing=1.0)


def right_text(e: dict, width_pt: float = 0.265 * 842, fontsize: float = 6.5) -> str:
    """The text right of a forest row: estimate [95% CI], verdict (p; MDE80 of an inconclusive one),
    or 'not testable: <why>' (wrapped to `width_pt`, at most two lines)."""
    v = e.get("verdict", "—")
    if v == "not testable" or not e.get("ci95"):
        text = f"not testable: {e.get('not_testable') or 'degenerate data'}"
    else:
        text = f"{est_ci(e)} {v} (p {pval(e.get('p'))}" + (f", MDE80 ±{num(e.get('mde80'), 3, False)})" if v == "inconclusive" else ")")
    return fit(text, width_pt, fontsize)


def _rows(doc: dict, sec: dict) -> list[tuple[str, dict]]:
    out = []
    for a in arms_with_effects(doc, sec):
        for e in primary_effects(sec, a):
            out.append((f"{a}: {e['group']} ({e.get('n_languages', len(e.get('languages', [])))})", e))
    return out


def forest_pages(doc: dict, task: str, sec: dict, variant: str, section: str = SECTION) -> list[Page]:
    m = sec["primary_metric"]
    rows = _rows(doc, sec)
    if not rows:
        return []
    chunks = chunk_blocks(rows, lambda r: r[1].get("arm"), ROWS_PER_PAGE)
    sub = (f"Each arm vs the base model: macro Δ {metric_name(m)} (mean over a language group's languages of arm − base; "
           "the arm's seeds pooled) with its 95% interval, on the items every run shares (label in brackets: number of "
           f"languages). {test_text(doc)}. Verdict on the claim Δ > 0; {INCONCLUSIVE} (grey band). trained: the arm's "
           "training languages; untrained: neither those nor its target.")

    def draw(fig, chunk):
        t = top(fig, 0.86) - 0.03
        forest(fig.add_axes([0.19, 0.09, 0.49, t - 0.09]), chunk, m, f"Δ {metric_name(m)} (arm − base), 95% interval")
    return paged(section, "Effects vs base", "effects", task, variant, chunks, sub, draw)


TABLE_FILL = "#d9efd3", "#f6d2d2"


def table_rows(doc: dict, sec: dict) -> tuple[list[Column], list[list[str]], list[list[str | None]]]:
    m = sec["primary_metric"]
    others = [x for x in sec.get("metrics", []) if x != m]
    cols = [Column("arm", 0.09), Column("group", 0.1), Column("langs", 0.04, "center"), Column("items", 0.04, "center"),
            Column(f"{METRIC_SHORT.get(m, m)} base → arm", 0.09, "center"),
            Column(f"Δ {METRIC_SHORT.get(m, m)} [95% CI]", 0.13, "center"), Column("p", 0.04, "center"),
            Column("MDE80", 0.045, "center"), Column("verdict", 0.075, "center")]
    cols += [Column(f"Δ {METRIC_SHORT.get(x, x)} [95% CI]", 0.12, "center") for x in others]
    rows, colors = [], []
    for a in arms_with_effects(doc, sec):
        for e in primary_effects(sec, a):
            vals = e.get("values") or {}
            r = [a, e["group"], str(e.get("n_languages", len(e.get("languages", [])))), str(e.get("n_items", "—")),
                 f"{num(vals.get(e.get('b')), 3, False)} → {num(vals.get(a), 3, False)}", est_ci(e), pval(e.get("p")),
                 num(e.get("mde80"), 3, False), e.get("verdict", "—")]
            c: list[str | None] = [None] * 8 + [VERDICT_FILL.get(e.get("verdict"))]
            for x in others:
                o = effect_of(sec, a, e["group"], x)
                r.append(est_ci(o) if o else "—")
                c.append((TABLE_FILL[0] if o["estimate"] > 0 else TABLE_FILL[1]) if o and excludes_zero(o) else None)
            rows.append(r)
            colors.append(c)
    return cols, rows, colors


def table_pages_of(doc: dict, task: str, sec: dict, variant: str, section: str = SECTION) -> list[Page]:
    cols, rows, colors = table_rows(doc, sec)
    if not rows:
        return []
    m = sec["primary_metric"]
    sub = (f"The effects of the forest plot with the arm's and the base model's macro {metric_name(m)} and, beside them, "
           "the Δ of the other metrics on the same resamples (green/red: the interval excludes 0). accuracy: share correct; "
           "calibrated accuracy: after contextual calibration (Zhao et al. 2021, the run's content-free probabilities); "
           "balanced accuracy: mean recall over the gold labels. The verdict is the primary metric's. " + test_text(doc) + ".")
    return table_pages(section, f"Effects table{title_suffix(task, variant)}", slug("effects_table", task, variant), sub,
                       cols, rows, colors, fontsize=7.2, blocks=[r[0] for r in rows])


EFFECT_CSV = ["id", "arm", "vs", "group", "metric", "languages", "n_languages", "n_items", "estimate", "ci95_lo",
              "ci95_hi", "se", "p", "mde80", "verdict", "not_testable", "value_arm", "value_base", "seeds", "levels"]


def effect_csv(sec: dict) -> list[list]:
    out = []
    for e in sec.get("effects", []):
        lo, hi = e.get("ci95") or [None, None]
        vals = e.get("values") or {}
        seeds = "; ".join(f"{k}: {' '.join(map(str, v))}" for k, v in (e.get("seeds") or {}).items())
        out.append([e["id"], e.get("arm", ""), e.get("vs", ""), e.get("group", ""), e.get("metric", ""),
                    " ".join(e.get("languages", [])), e.get("n_languages", ""), e.get("n_items", ""),
                    *["" if v is None else v for v in (e.get("estimate"), lo, hi, e.get("se"), e.get("p"), e.get("mde80"))],
                    e.get("verdict", ""), e.get("not_testable") or "",
                    *["" if v is None else v for v in (vals.get(e.get("arm")), vals.get(e.get("b")))],
                    seeds, "; ".join(e.get("levels") or [])])
    return out


def task_section(doc: dict, variant: str, section: str = SECTION) -> Section:
    """Forest and table pages and the effects CSV of every task of `variant`."""
    out = Section()
    for task, sec in sections(doc, variant):
        out.pages += forest_pages(doc, task, sec, variant, section) + table_pages_of(doc, task, sec, variant, section)
        out.tables.append(Table(f"study_effects_{slug(task, variant if variant != 'standard' else '')}.csv",
                                EFFECT_CSV, effect_csv(sec)))
    return out


def build(doc: dict) -> Section:
    return task_section(doc, "standard")
