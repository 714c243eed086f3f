"""Page layout for the report: pages and sections, A4 figures, colours and figure helpers.

Every page is an A4-landscape matplotlib Figure with a title and an optional subtitle; page content
starts below the subtitle (`new_fig` records where, `top` reads it), so long subtitles never run
into plots. Fonts: :mod:`alignlens.report.fonts`.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from alignlens.report.languages import lang_label

A4_LANDSCAPE = (11.69, 8.27)  # inches
COLOR = {"base": "#4C72B0", "aligned": "#DD8452", "p_en": "#6A3D9A", "p_target": "#1B9E77", "pos": "#2CA02C", "neg": "#D62728"}
LINESTYLE = {"base": "-", "aligned": "--"}
SUBTITLE_WIDTH = 175  # characters per subtitle line


@dataclass
class Page:
    """One report page: where it belongs, and how to draw it (lazily)."""

    section: str
    title: str
    slug: str
    draw: Callable[[], Any]  # returns a matplotlib Figure
    export: bool = True  # also save as PNG/SVG (False for the text-only pages)


@dataclass
class Table:
    """One CSV table of the numbers behind the pages (`<stem>_tables/<name>`)."""

    name: str
    header: list[str]
    rows: list[list]


@dataclass
class Section:
    """What one analysis contributes to the report: its pages, tables and summary lines."""

    pages: list[Page] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    summary_lines: list[str] = field(default_factory=list)


def fmt(x, pct: bool = True, sign: bool = False) -> str:
    """A proportion as percent ('61.3', '+5.6' with `sign`), or 3 significant digits; '—' for None/NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x * 100:+.1f}" if sign else f"{x * 100:.1f}" if pct else f"{x:.3g}"


def wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.fill(p, width) if p else "" for p in str(text).split("\n"))


#: Figure fraction per subtitle line (9 pt, line spacing 1.3, Noto Sans; measured).
SUBTITLE_LINE = 0.0268


def content_top(subtitle: str | None, width: int = SUBTITLE_WIDTH) -> float:
    """Figure y (0..1) below which page content may start, given the page's subtitle: the
    subtitle's wrapped lines (9 pt, line spacing 1.3) start at y = 0.93 and grow downwards."""
    n_lines = wrap(subtitle, width).count("\n") + 1 if subtitle else 0
    axes_title = 0.045  # room for the axes titles above the content
    return min(0.86, 0.93 - n_lines * SUBTITLE_LINE - axes_title)


def new_fig(title: str, subtitle: str | None = None):
    """An A4-landscape Figure with a bold title and a wrapped grey subtitle."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=A4_LANDSCAPE)
    fig.text(0.03, 0.965, title, fontsize=15, fontweight="bold", va="top")
    if subtitle:
        fig.text(0.03, 0.93, wrap(subtitle, SUBTITLE_WIDTH), fontsize=9, va="top", color="#444444", linespacing=1.3)
    fig.content_top = content_top(subtitle)  # where page content may start (below the subtitle)
    return fig


def top(fig, default: float) -> float:
    """`top` of a page's grid: `default`, lowered when the page's subtitle needs the room."""
    return min(default, getattr(fig, "content_top", default))


def footer(fig, page_no: int, n_pages: int, note: str) -> None:
    fig.text(0.03, 0.015, note, fontsize=7, color="#777777")
    fig.text(0.97, 0.015, f"{page_no} / {n_pages}", fontsize=7, color="#777777", ha="right")


def int_layers(ax) -> None:
    """Integer layer ticks on the x axis."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8, min_n_ticks=1))  # integers even for one layer


def lang_ticks(ax, langs: list[str], trained: list[str], fontsize: float = 7) -> None:
    """x tick labels 'code native' (rotated, trained ones starred and bold)."""
    ax.set_xticks(range(len(langs)))
    ax.set_xticklabels([f"{lang_label(l)}{' *' if l in trained else ''}" for l in langs], fontsize=fontsize,
                       rotation=35, ha="right", rotation_mode="anchor")  # fmt: skip
    for tl, l in zip(ax.get_xticklabels(), langs):
        if l in trained:
            tl.set_fontweight("bold")


def offdiag(m) -> np.ndarray:
    """Copy with the diagonal masked (self-similarity would flatten the colour scale)."""
    m = np.array(m, dtype=float)
    if m.ndim == 2 and m.shape[0] == m.shape[1]:
        np.fill_diagonal(m, np.nan)
    return m


def lang_colors(langs: list[str]) -> dict[str, Any]:
    """A stable tab20 colour per language (by its place among the 20 study languages)."""
    from matplotlib import colormaps

    from alignlens.report.languages import HIGH_RESOURCE, LOW_RESOURCE

    cmap = colormaps["tab20"]
    allk = list(HIGH_RESOURCE + LOW_RESOURCE)
    return {l: cmap((allk.index(l) if l in allk else len(allk) + langs.index(l)) % 20) for l in langs}
