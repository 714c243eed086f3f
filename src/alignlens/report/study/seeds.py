"""Section 6, training seeds: for every arm trained with several seeds, each seed's Δ of the primary
metric vs base (its own interval resamples items only) beside the pooled Δ (items × seeds), per
language group, and the standard deviation across the seeds."""

from __future__ import annotations

import numpy as np

from alignlens.report.layout import Page, Section, Table, top
from alignlens.report.study.doc import (paged, arms_with_effects, chunk_blocks, ci, fit, metric_name, num, primary_effects, sections, slug,
                                        test_text)

SECTION = "Training seeds"
SHOWN_GROUPS = ("all", "trained", "untrained")
ROWS_PER_PAGE = 18
RIGHT_PT = 0.245 * 842  # points of room right of the plot
SEED_COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C")


def replicated(doc: dict, sec: dict) -> list[tuple[str, dict]]:
    """(arm, effect) rows of the arms with ≥ 2 seeds, groups of `SHOWN_GROUPS` (others in the CSV)."""
    out = []
    for a in arms_with_effects(doc, sec):
        for e in primary_effects(sec, a):
            if len(e.get("per_seed") or []) > 1 and e["group"] in SHOWN_GROUPS:
                out.append((a, e))
    return out


def _sd(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.std(vals, ddof=1)) if len(vals) > 1 else None


def _draw(fig, rows: list[tuple[str, dict]], metric: str) -> None:
    from matplotlib.lines import Line2D

    t = top(fig, 0.86) - 0.03
    ax = fig.add_axes([0.17, 0.09, 0.53, t - 0.09])
    n = len(rows)
    ys = np.arange(n)[::-1].astype(float)
    span = [0.0]
    seeds_seen: list = []
    for y, (a, e) in zip(ys, rows):
        per = e.get("per_seed") or []
        offs = np.linspace(-0.34, 0.0, len(per)) if len(per) > 1 else [-0.15]  # the pooled one at +0.2
        for off, p in zip(offs, per):
            if p.get("seed") not in seeds_seen:
                seeds_seen.append(p.get("seed"))
            color = SEED_COLORS[seeds_seen.index(p.get("seed")) % len(SEED_COLORS)]
            if p.get("estimate") is None:
                continue
            if p.get("ci95"):
                lo, hi = p["ci95"]
                ax.errorbar([p["estimate"]], [y + off], xerr=[[p["estimate"] - lo], [hi - p["estimate"]]], fmt="o",
                            color=color, ms=3, lw=0.7, capsize=1.5)
                span += [lo, hi]
            else:
                ax.plot([p["estimate"]], [y + off], "o", color=color, ms=3)
        testable = e.get("verdict") != "not testable" and e.get("ci95")
        if e.get("estimate") is not None and testable:
            lo, hi = e["ci95"]
            ax.errorbar([e["estimate"]], [y + 0.2], xerr=[[e["estimate"] - lo], [hi - e["estimate"]]], fmt="D",
                        color="black", ms=5, lw=2.0, capsize=3, zorder=4)
            span += [lo, hi]
        elif e.get("estimate") is not None:
            ax.plot([e["estimate"]], [y + 0.2], "D", mfc="white", color="black", ms=5, zorder=4)
        sd = _sd([p.get("estimate") for p in per])
        pooled = (f"pooled {num(e.get('estimate'))} {ci(e.get('ci95'))}" if testable else
                  f"pooled: not testable ({e.get('not_testable') or 'degenerate data'})")
        ax.text(1.015, y, fit(f"{pooled}; seeds' sd {num(sd, 3, False)}", RIGHT_PT, 6.8), transform=ax.get_yaxis_transform(),
                fontsize=6.8, va="center")
        if y > 0:
            ax.axhline(y - 0.5, color="#eeeeee", lw=0.6)
    lo, hi = min(span), max(span)
    pad = 0.08 * (hi - lo or 0.1)
    ax.set_xlim(lo - pad, hi + pad)
    ax.axvline(0, color="#444444", lw=0.8)
    ax.set_yticks(ys)
    ax.set_yticklabels([f"{a}: {e['group']}" for a, e in rows], fontsize=7.5)
    ax.set_ylim(-0.7, n - 0.3)
    ax.grid(axis="x", alpha=0.3)
    ax.tick_params(axis="x", labelsize=7.5)
    ax.set_xlabel(f"Δ {metric_name(metric)} (arm − base), 95% interval", fontsize=8)
    handles = [Line2D([], [], color=SEED_COLORS[i % len(SEED_COLORS)], marker="o", ls="", ms=4, label=f"seed {s}")
               for i, s in enumerate(seeds_seen)]
    handles.append(Line2D([], [], color="black", marker="D", ls="-", lw=2, ms=5, label="pooled (items × seeds)"))
    ax.legend(handles=handles, fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=len(handles), frameon=False)


def seed_pages(doc: dict, task: str, sec: dict, variant: str) -> list[Page]:
    rows = replicated(doc, sec)
    if not rows:
        return []
    m = sec["primary_metric"]
    sub = (f"Δ {metric_name(m)} vs base of each training seed of a replicated arm (coloured; its interval resamples the "
           "items only, so it shows the item noise of one training run) beside the arm's pooled Δ (black: the mean over "
           "the seeds, its interval resampling items and seeds, the study's test). The spread of the seeds is the "
           f"training noise the pooled interval includes. {test_text(doc)}.")
    chunks = chunk_blocks(rows, lambda r: r[0], ROWS_PER_PAGE)
    return paged(SECTION, "Training seeds", "seeds", task, variant, chunks, sub, lambda fig, chunk: _draw(fig, chunk, m))


HEADER = ["arm", "group", "metric", "seed", "estimate", "ci95_lo", "ci95_hi", "se", "levels"]


def csv_rows(doc: dict, sec: dict) -> list[list]:
    out = []
    for a in arms_with_effects(doc, sec):
        for e in primary_effects(sec, a):
            if len(e.get("per_seed") or []) < 2:
                continue
            for p in e["per_seed"]:
                lo, hi = p.get("ci95") or [None, None]
                out.append([a, e["group"], e["metric"], p.get("seed"), *["" if v is None else v for v in (p.get("estimate"), lo, hi, p.get("se"))],
                            "items"])
            lo, hi = e.get("ci95") or [None, None]
            out.append([a, e["group"], e["metric"], "pooled", *["" if v is None else v for v in (e.get("estimate"), lo, hi, e.get("se"))],
                        "; ".join(e.get("levels") or [])])
    return out


def build(doc: dict) -> Section:
    out = Section()
    for task, sec in sections(doc):
        out.pages += seed_pages(doc, task, sec, "standard")
        out.tables.append(Table(f"study_seeds_{slug(task)}.csv", HEADER, csv_rows(doc, sec)))
    return out

