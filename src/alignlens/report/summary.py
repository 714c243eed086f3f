"""The summary page (what changed, in words, from the sections' summary lines) and the contents page."""

from __future__ import annotations

import math

from alignlens.report.languages import order_languages
from alignlens.report.layout import Page, new_fig, wrap
from alignlens.report.runs import Runs, cells_text


def overlap_lines(runs: Runs) -> list[str]:
    """Summary lines saying what two runs were compared on (nothing for a single run)."""
    ov = runs.overlap
    if ov is None:
        return []
    tasks = list(dict.fromkeys(t for t, _ in ov.shared))
    langs = order_languages({l for _, l in ov.shared})
    where = f"{len(ov.shared)} task × language cells: {', '.join(tasks)}; {len(langs)} languages: {' '.join(langs)}"
    if not ov.only_a and not ov.only_b:
        lines = [f"• Compared on the same {ov.n_shared} items in both runs ({where})."]
    else:
        lines = [
            f"• Compared on {ov.n_shared} shared items ({where}); every comparison (tables, Δ, this summary) uses only "
            f"these, with both runs' accuracies recomputed on them. {runs.roles[0]} only: {sum(ov.only_a.values())} items"
            + (f" ({cells_text(ov.only_a)})" if ov.only_a else "")
            + f"; {runs.roles[1]} only: {sum(ov.only_b.values())} items" + (f" ({cells_text(ov.only_b)})" if ov.only_b else "") + "."
        ]  # fmt: skip
    if not ov.same_depth:
        lines.append(f"• The models have different numbers of layers ({ov.n_layers[0]} vs {ov.n_layers[1]}): per-layer "
                     "curves are drawn against relative depth, layer / (layers − 1), and no layer-by-layer difference is shown.")  # fmt: skip
    return lines


def absent_lines(runs: Runs) -> list[str]:
    absent = runs.absent()
    return [f"• Not in the results (sections omitted): {', '.join(absent)}."] if absent else []


def summary_page(lines: list[str]) -> Page:
    """The summary page: `lines` as paragraphs, the font shrunk to fit the page."""

    def draw():
        fig = new_fig("Summary: what changed", "Auto-generated from the numbers in this report.")
        paras = [wrap(s, 150).replace("\n", "\n   ") for s in lines] or ["Nothing to summarize."]
        n_lines = sum(p.count("\n") + 1 for p in paras)
        # line height in figure fraction at 9.5 pt with linespacing 1.35; shrink the font to fit the page
        scale = min(1.0, 0.82 / (n_lines * 0.0225 + len(paras) * 0.012))
        y = 0.88
        for p in paras:
            fig.text(0.04, y, p, fontsize=9.5 * scale, va="top", linespacing=1.35)
            y -= ((p.count("\n") + 1) * 0.0225 + 0.012) * scale
        return fig

    return Page("Summary", "Summary of what changed", "summary", draw, export=False)


def contents_page(pages: list[Page]) -> Page:
    """The contents page; `pages` is read when drawn, so it lists the final page list (itself included)."""

    def draw():
        fig = new_fig("Contents")
        lines = []
        last = None
        for no, p in enumerate(pages, start=1):
            if p.section != last:
                lines.append(f"{p.section}")
                last = p.section
            lines.append(f"      {p.title}  ·  page {no}")
        ncol = 1 if len(lines) <= 40 else 2
        per_col = math.ceil(len(lines) / ncol)
        for c in range(ncol):
            fig.text(0.05 + c * 0.47, 0.88, "\n".join(lines[c * per_col : (c + 1) * per_col]), fontsize=9, va="top", linespacing=1.45)
        return fig

    return Page("Contents", "Contents", "contents", draw, export=False)
