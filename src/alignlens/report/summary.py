"""The summary page (what changed, in words, from the sections' summary lines) and the contents page."""

from __future__ import annotations

import math

from alignlens.report.languages import order_languages
from alignlens.report.layout import Page, new_fig
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
    lines += [f"• {note}." for note in runs.notes]
    if not ov.same_depth:
        lines.append(f"• The models have different numbers of layers ({ov.n_layers[0]} vs {ov.n_layers[1]}): per-layer "
                     "curves are drawn against relative depth, layer / (layers − 1), and no layer-by-layer difference is shown.")  # fmt: skip
    return lines


def absent_lines(runs: Runs) -> list[str]:
    absent = runs.absent()
    return [f"• Not in the results (sections omitted): {', '.join(absent)}."] if absent else []


SUMMARY_FONT = 9.0  # pt
SUMMARY_WIDTH = 178  # characters per line at SUMMARY_FONT
LINE_HEIGHT = 0.0293 * SUMMARY_FONT / 9.5 * 1.04  # figure fraction per line (measured with the Noto fonts at 9.5 pt, +4%)
PARA_GAP = 0.008
TEXT_TOP, TEXT_BOTTOM = 0.88, 0.05


def _paragraph(line: str) -> str:
    """A summary line wrapped to the page: bullets and sub-bullets with hanging indents."""
    import textwrap

    stripped = line.lstrip()
    indent = " " * (len(line) - len(stripped))
    hang = indent + " " * (stripped.index(" ") + 1 if stripped[:1] in "•–" and " " in stripped else 0)
    return textwrap.fill(stripped, SUMMARY_WIDTH, initial_indent=indent, subsequent_indent=hang, break_on_hyphens=False)


def _height(paragraph: str) -> float:
    return (paragraph.count("\n") + 1) * LINE_HEIGHT + PARA_GAP


def summary_pages(lines: list[str]) -> list[Page]:
    """The summary: `lines` as paragraphs at a fixed font size, continued on further pages when
    they do not fit on one."""
    paras = [_paragraph(s) for s in lines] or ["Nothing to summarize."]
    chunks: list[list[str]] = [[]]
    room = TEXT_TOP - TEXT_BOTTOM
    used = 0.0
    for p in paras:
        if chunks[-1] and used + _height(p) > room:
            chunks.append([])
            used = 0.0
        chunks[-1].append(p)
        used += _height(p)

    def draw(chunk: list[str], part: str):
        fig = new_fig(f"Summary: what changed{part}", "Auto-generated from the numbers and tests in this report.")
        y = TEXT_TOP
        for p in chunk:
            fig.text(0.04, y, p, fontsize=SUMMARY_FONT, va="top", linespacing=1.35)
            y -= _height(p)
        return fig

    pages = []
    for k, chunk in enumerate(chunks):
        part = f" ({k + 1}/{len(chunks)})" if len(chunks) > 1 else ""
        pages.append(Page("Summary", f"Summary of what changed{part}", f"summary{'_' + str(k + 1) if part else ''}",
                          lambda chunk=chunk, part=part: draw(chunk, part), export=False))  # fmt: skip
    return pages


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
