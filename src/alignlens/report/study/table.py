"""Measured tables and text pages of the study report.

Every cell is wrapped to its column with the report's fonts (`layout.wrap_to_width`) and every line
is placed at a computed height, so rows grow with their text and a table that does not fit on one
page continues on the next (its header repeated): nothing overlaps or runs off the page. Text pages
flow paragraphs the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from alignlens.report.layout import A4_LANDSCAPE, SUBTITLE_LINE, SUBTITLE_WIDTH, Page, new_fig, wrap, wrap_to_width

PAGE_W_PT, PAGE_H_PT = A4_LANDSCAPE[0] * 72.0, A4_LANDSCAPE[1] * 72.0
LEFT, RIGHT, BOTTOM = 0.03, 0.97, 0.045  # figure fractions (the footer lies below BOTTOM)
LINE = 1.38  # line height / font size (Noto Sans with CJK, Devanagari and Thai glyphs)
HPAD, VPAD = 3.0, 2.2  # points of padding inside a cell
HINTING = 1.06  # raster output draws text up to ~5% wider than measured (`layout.text_width`)
HEAD_FILL = "#dde6f0"


@dataclass
class Column:
    """A table column: header, width (share of the table's width; normalised), alignment."""

    header: str
    width: float
    align: str = "left"  # "left" | "center" | "right"


def subtitle_bottom(subtitle: str | None) -> float:
    """Figure y below the page's subtitle (`layout.new_fig` wraps it at SUBTITLE_WIDTH characters from y = 0.93)."""
    n = wrap(subtitle, SUBTITLE_WIDTH).count("\n") + 1 if subtitle else 0
    return 0.93 - n * SUBTITLE_LINE - 0.012


def _col_pts(columns: list[Column], width: float) -> list[float]:
    total = sum(c.width for c in columns)
    return [c.width / total * width * PAGE_W_PT for c in columns]


def _wrap_cell(text: str, width_pt: float, fontsize: float, weight: str = "normal") -> list[str]:
    return wrap_to_width(str(text), max(width_pt - 2 * HPAD, 10.0) / HINTING, fontsize, weight) or [""]


@dataclass
class _Laid:
    header: list[list[str]]
    rows: list[list[list[str]]]
    heights: list[float]  # points per row
    head_h: float


def lay_out(columns: list[Column], rows: list[list[str]], fontsize: float, width: float, bold: set[int]) -> _Laid:
    pts = _col_pts(columns, width)
    lh = fontsize * LINE
    header = [_wrap_cell(c.header, w, fontsize, "bold") for c, w in zip(columns, pts)]
    laid = [[_wrap_cell(x, w, fontsize, "bold" if i in bold else "normal") for x, w in zip(r, pts)]
            for i, r in enumerate(rows)]
    heights = [max(len(c) for c in r) * lh + 2 * VPAD for r in laid]
    return _Laid(header, laid, heights, max(len(c) for c in header) * lh + 2 * VPAD)


def paginate(heights: list[float], first: float, rest: float, head: float, blocks: list | None = None) -> list[list[int]]:
    """Row indices per page: as many rows as fit below the header (`first` points of room on the
    first page, `rest` on the others); a row taller than a page still gets a page of its own. With
    `blocks` (a key per row), a block of consecutive rows of one key starts a new page rather than
    being split, when it fits on one."""
    pages: list[list[int]] = [[]]
    room = first - head
    for i, h in enumerate(heights):
        need = h
        if blocks is not None and (i == 0 or blocks[i] != blocks[i - 1]):
            end = next((j for j in range(i, len(heights)) if blocks[j] != blocks[i]), len(heights))
            block_h = sum(heights[i:end])
            if block_h <= rest - head:
                need = block_h
        if pages[-1] and need > room:
            pages.append([])
            room = rest - head
        pages[-1].append(i)
        room -= h
    return pages


def draw_rows(fig, columns: list[Column], laid: _Laid, idx: list[int], y_top: float, fontsize: float,
              colors: list[list[str | None]] | None, bold: set[int], x0: float = LEFT, width: float = RIGHT - LEFT) -> float:
    """Draw the header and rows `idx` of a laid-out table from figure y `y_top` down; returns the
    figure y of its bottom."""
    from matplotlib.patches import Rectangle

    pts = _col_pts(columns, width)
    xs = [x0]
    for w in pts:
        xs.append(xs[-1] + w / PAGE_W_PT)
    lh = fontsize * LINE / PAGE_H_PT
    pad_y, pad_x = VPAD / PAGE_H_PT, HPAD / PAGE_W_PT

    def row(cells: list[list[str]], fills: list[str | None], y: float, h: float, weight: str) -> None:
        for k, (lines, col) in enumerate(zip(cells, columns)):
            fill = fills[k] if fills and k < len(fills) else None
            fig.add_artist(Rectangle((xs[k], y - h), xs[k + 1] - xs[k], h, transform=fig.transFigure,
                                     facecolor=fill or "white", edgecolor="#bbbbbb", lw=0.4))
            x, ha = ((xs[k] + pad_x, "left") if col.align == "left" else
                     (xs[k + 1] - pad_x, "right") if col.align == "right" else ((xs[k] + xs[k + 1]) / 2, "center"))
            for j, line in enumerate(lines):
                if line:
                    fig.text(x, y - pad_y - j * lh, line, fontsize=fontsize, fontweight=weight, va="top", ha=ha)

    y = y_top
    h = laid.head_h / PAGE_H_PT
    row(laid.header, [HEAD_FILL] * len(columns), y, h, "bold")
    y -= h
    for i in idx:
        h = laid.heights[i] / PAGE_H_PT
        row(laid.rows[i], colors[i] if colors else [], y, h, "bold" if i in bold else "normal")
        y -= h
    return y


def table_pages(section: str, title: str, slug: str, subtitle: str | None, columns: list[Column],
                rows: list[list[str]], colors: list[list[str | None]] | None = None, *, fontsize: float = 7.5,
                bold: set[int] | None = None, export: bool = False, blocks: list | None = None) -> list[Page]:
    """A table on as many pages as it needs (title ' (k/n)' when several; `blocks`: see `paginate`);
    each page's table starts below its subtitle. Must be called with the report's fonts in effect
    (it measures the texts)."""
    bold = bold or set()
    laid = lay_out(columns, rows, fontsize, RIGHT - LEFT, bold)
    top = subtitle_bottom(subtitle)
    room = (top - BOTTOM) * PAGE_H_PT
    chunks = paginate(laid.heights, room, room, laid.head_h, blocks) if rows else [[]]
    pages = []
    for k, idx in enumerate(chunks):
        part = f" ({k + 1}/{len(chunks)})" if len(chunks) > 1 else ""

        def draw(idx=idx, part=part):
            fig = new_fig(title + part, subtitle)
            draw_rows(fig, columns, laid, idx, top, fontsize, colors, bold)
            return fig
        pages.append(Page(section, title + part, f"{slug}{'_' + str(k + 1) if part else ''}", draw, export=export))
    return pages


# ---- text pages ---------------------------------------------------------------------------------------


@dataclass
class Para:
    """A paragraph of a text page: its text, font size, weight, colour, left indent (points) and
    the space after it (in lines)."""

    text: str
    fontsize: float = 9.0
    weight: str = "normal"
    color: str = "black"
    indent: float = 0.0
    after: float = 0.45


def _para_lines(p: Para, width_pt: float) -> list[str]:
    return wrap_to_width(p.text, (width_pt - p.indent) / HINTING, p.fontsize, p.weight)


def text_pages(section: str, title: str, slug: str, subtitle: str | None, paras: list[Para],
               export: bool = False) -> list[Page]:
    """Paragraphs flowed onto as many pages as they need (title ' (k/n)' when several)."""
    width_pt = (RIGHT - LEFT) * PAGE_W_PT
    laid = [(p, _para_lines(p, width_pt)) for p in paras]
    top = subtitle_bottom(subtitle) - 0.005
    room = (top - BOTTOM) * PAGE_H_PT
    heights = [(len(lines) + p.after) * p.fontsize * LINE for p, lines in laid]
    chunks = paginate(heights, room, room, 0.0)
    pages = []
    for k, idx in enumerate(chunks):
        part = f" ({k + 1}/{len(chunks)})" if len(chunks) > 1 else ""

        def draw(idx=idx, part=part):
            fig = new_fig(title + part, subtitle)
            y = top
            for i in idx:
                p, lines = laid[i]
                lh = p.fontsize * LINE / PAGE_H_PT
                for j, line in enumerate(lines):
                    fig.text(LEFT + p.indent / PAGE_W_PT, y - j * lh, line, fontsize=p.fontsize, fontweight=p.weight,
                             color=p.color, va="top")
                y -= heights[i] / PAGE_H_PT
            return fig
        pages.append(Page(section, title + part, f"{slug}{'_' + str(k + 1) if part else ''}", draw, export=export))
    return pages
