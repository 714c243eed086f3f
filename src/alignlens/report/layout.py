"""Page layout for the report: pages and sections, A4 figures, colours and figure helpers.

Every page is an A4-landscape matplotlib Figure with a title and an optional subtitle; page content
starts below the subtitle (`new_fig` records where, `top` reads it), so long subtitles never run
into plots. Fonts: :mod:`alignlens.report.fonts`.
"""

from __future__ import annotations

import math
import os
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
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


@lru_cache(maxsize=1)
def _measurer():
    from matplotlib.backends.backend_agg import RendererAgg

    return RendererAgg(10, 10, 720)  # a high dpi: widths close to the unhinted (PDF) ones


@lru_cache(maxsize=16384)
def _width10(s: str, weight: str, family: tuple[str, ...]) -> float:
    """Width in points of `s` at 10 pt (measured at 720 dpi, where glyph hinting no longer matters)."""
    from matplotlib.font_manager import FontProperties

    prop = FontProperties(family=list(family), size=10.0, weight=weight)
    return float(_measurer().get_text_width_height_descent(s, prop, ismath=False)[0]) / 10.0  # 720 dpi -> points


def text_width(s: str, fontsize: float, weight: str = "normal") -> float:
    """Width in points of the one-line text `s` in the current rcParams font family list (with
    its per-glyph fallback, as the report draws it), without padding, as in the PDF (unhinted
    widths scale with the font size). Raster output hints glyphs to whole pixels, which makes text
    up to ~4% wider at 110 dpi (8% at 60): keep a margin."""
    from matplotlib import rcParams

    return _width10(s, weight, tuple(rcParams["font.family"])) * float(fontsize) / 10.0


def wrap_to_width(text: str, width_pt: float, fontsize: float, weight: str = "normal") -> list[str]:
    """`text` wrapped into lines of at most `width_pt` points (measured in the current font; words
    longer than a line are cut); its own line breaks are kept. A word's width is measured once, so a
    line is at most a few tenths of a point wider than its words' sum (kerning); keep a margin."""
    space = text_width("a a", fontsize, weight) - text_width("aa", fontsize, weight)
    lines: list[str] = []
    for para in str(text).split("\n"):
        line, used = "", 0.0
        for word in para.split(" "):
            w = text_width(word, fontsize, weight)
            while w > width_pt and len(word) > 1:  # a word wider than a line: cut it
                if line:
                    lines.append(line)
                    line, used = "", 0.0
                k = 1
                while k < len(word) and text_width(word[: k + 1], fontsize, weight) <= width_pt:
                    k += 1
                lines.append(word[:k])
                word = word[k:]
                w = text_width(word, fontsize, weight)
            if line and used + space + w > width_pt:
                lines.append(line)
                line, used = "", 0.0
            line, used = (f"{line} {word}", used + space + w) if line else (word, w)
        lines.append(line)
    return lines


_ABS_PATH = re.compile(r"(?<![\w./~…-])(?:/|~/)[^\s,;'\"()\[\]{}]+")


def short_path(path) -> str:
    """How the report writes a file path: a relative path (or a model hub name) as it is; an absolute
    one under $HOME as ~/…, any other as …/<parent>/<name> (the last two parts). The report never
    writes an absolute local path (manifest.json keeps them in full)."""
    text = str(path)
    if not (text.startswith("/") or text.startswith("~/")):
        return text
    home = os.path.expanduser("~")
    if home not in ("", "/") and (text == home or text.startswith(home.rstrip("/") + "/")):
        return "~" + text[len(home.rstrip("/")):]
    if text.startswith("~/"):
        return text
    parts = [p for p in text.split("/") if p]
    return "…/" + "/".join(parts[-2:]) if parts else text


def short_paths(text: str) -> str:
    """`text` (a command line, an options list) with every absolute path in it written by `short_path`."""
    return _ABS_PATH.sub(lambda m: short_path(m.group(0)), str(text))


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
