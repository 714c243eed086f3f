"""Section 4, per-language effects: Δ of the primary metric (arm − base) per arm and language as a
heatmap. An arm's training languages are outlined (its translation target dashed); * marks a cell
only where that language's own 95% interval excludes 0; the CSV adds each seed's exact McNemar test
of accuracy (Holm over the languages)."""

from __future__ import annotations

import math

import numpy as np

from alignlens.report.languages import lang_label
from alignlens.report.layout import Page, Section, Table, top
from alignlens.report.study.doc import (paged, arm_names, excludes_zero, metric_name, sections, slug, target, test_text,
                                        trained)

SECTION = "Per language"
ARMS_PER_PAGE = 24
TRAINED = "#F0A000"  # outline of an arm's training languages (its target: dashed)


def grid(doc: dict, sec: dict) -> tuple[list[str], list[str], dict[tuple[str, str], dict]]:
    """(arms, languages, {(arm, lang): per-language entry}) of a task section's primary metric."""
    m = sec["primary_metric"]
    cells = {(e["arm"], e["lang"]): e for e in sec.get("per_language", []) if e.get("metric") == m}
    have = {a for a, _ in cells}
    arms = [a for a in arm_names(doc) if a in have] + sorted(have - set(arm_names(doc)))
    return arms, list(sec["languages"]), cells


def draw_heatmap(fig, rect, doc: dict, sec: dict, arms: list[str], langs: list[str], cells: dict) -> None:
    from matplotlib.patches import Rectangle

    m = sec["primary_metric"]
    D = np.array([[cells[(a, x)]["estimate"] if (a, x) in cells and cells[(a, x)].get("estimate") is not None else np.nan
                   for x in langs] for a in arms], dtype=float)
    vmax = max(0.05, float(np.nanmax(np.abs(D))) if np.isfinite(D).any() else 0.05)
    ax = fig.add_axes(rect)
    im = ax.imshow(np.ma.masked_invalid(D), cmap="RdBu", vmin=-vmax, vmax=vmax, aspect="auto")
    ax.set_facecolor("#e6e6e6")
    fs = 7.0 if len(langs) <= 12 else 6.2 if len(langs) <= 16 else 5.6
    for i, a in enumerate(arms):
        tr, tg = trained(doc, a), target(doc, a)
        for j, x in enumerate(langs):
            e = cells.get((a, x))
            if e is None or e.get("estimate") is None or e.get("verdict") == "not testable":
                ax.text(j, i, "n/t" if e is not None else "", ha="center", va="center", fontsize=fs, color="#555555")
            else:
                sig = excludes_zero(e)
                dark = abs(e["estimate"]) > 0.6 * vmax
                ax.text(j, i, f"{e['estimate']:+.2f}{'*' if sig else ''}", ha="center", va="center", fontsize=fs,
                        fontweight="bold" if sig else "normal", color="white" if dark else "black")
            if x in tr:
                ax.add_patch(Rectangle((j - 0.45, i - 0.42), 0.9, 0.84, fill=False, edgecolor=TRAINED, lw=2.2))
            elif x == tg and tg != "en":
                ax.add_patch(Rectangle((j - 0.45, i - 0.42), 0.9, 0.84, fill=False, edgecolor=TRAINED, lw=1.6, ls="--"))
    ax.set_xticks(range(len(langs)))
    ax.set_xticklabels([lang_label(x) for x in langs], fontsize=7, rotation=40, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(arms)))
    ax.set_yticklabels(arms, fontsize=7.5)
    ax.tick_params(length=0)
    cb = fig.colorbar(im, ax=ax, fraction=0.03, pad=0.015)
    cb.set_label(f"Δ {metric_name(m)} (arm − base)", fontsize=7.5)
    cb.ax.tick_params(labelsize=7)


def heatmap_pages(doc: dict, task: str, sec: dict, variant: str, section: str = SECTION) -> list[Page]:
    arms, langs, cells = grid(doc, sec)
    if not arms:
        return []
    m = sec["primary_metric"]
    n_sig = sum(excludes_zero(e) for e in cells.values())
    sub = (f"Δ {metric_name(m)} of each arm vs the base model, language by language (the arm's seeds pooled), rounded to "
           f"2 decimals. * and bold: that language's own 95% interval excludes 0 ({n_sig} of {len(cells)} cells); any other "
           "cell's interval includes 0 (inconclusive at this n, not evidence of no effect). Outlined in orange: the arm's "
           "training languages; dashed: its translation target (other than English). n/t: not testable. "
           f"{test_text(doc)}, restricted to the language.")
    chunks = [arms[i:i + ARMS_PER_PAGE] for i in range(0, len(arms), ARMS_PER_PAGE)]

    def draw(fig, chunk):
        t = top(fig, 0.86) + 0.01
        h = min(t - 0.16, 0.05 + 0.06 * len(chunk))
        draw_heatmap(fig, [0.12, t - h, 0.84, h], doc, sec, chunk, langs, cells)
    return paged(section, f"Per-language Δ {metric_name(m)}", "per_language", task, variant, chunks, sub, draw)


HEADER = ["arm", "lang", "metric", "trained", "estimate", "ci95_lo", "ci95_hi", "se", "p", "mde80", "verdict", "n_items",
          "mcnemar"]


def csv_rows(doc: dict, sec: dict) -> list[list]:
    out = []
    for e in sec.get("per_language", []):
        lo, hi = e.get("ci95") or [None, None]
        mc = "; ".join(f"seed {t.get('seed')}: b01 {t.get('b01')} b10 {t.get('b10')} p {_g(t.get('p'))} "
                       f"p_holm {_g(t.get('p_holm'))}" for t in e.get("mcnemar") or [])
        out.append([e["arm"], e["lang"], e.get("metric", ""), "yes" if e["lang"] in trained(doc, e["arm"]) else "no",
                    *["" if v is None else v for v in (e.get("estimate"), lo, hi, e.get("se"), e.get("p"), e.get("mde80"))],
                    e.get("verdict", ""), e.get("n_items", ""), mc])
    return out


def _g(x) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def task_section(doc: dict, variant: str, section: str = SECTION) -> Section:
    out = Section()
    for task, sec in sections(doc, variant):
        out.pages += heatmap_pages(doc, task, sec, variant, section)
        out.tables.append(Table(f"study_per_language_{slug(task, variant if variant != 'standard' else '')}.csv",
                                HEADER, csv_rows(doc, sec)))
    return out


def build(doc: dict) -> Section:
    return task_section(doc, "standard")

