"""The study report's renderer: orders the sections, draws every page into study.pdf (and PNG/SVG into
study_figures/), writes the CSV tables into study_tables/, and swaps the three into place only when
everything succeeded (`results.writer.staged_swap`, as the run report does)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alignlens import AlignlensError, __version__
from alignlens.report.layout import Page, Section, Table
from alignlens.report.render import ProgressFn, render_pdf
from alignlens.report.study import claims, diagnostics, dose, forest, heatmap, irrelevant, seeds, title
from alignlens.report.summary import contents_page
from alignlens.results.schema import read_study_file

#: The sections in report order; each a pure `build(study.json dict) -> Section`.
SECTIONS: tuple[Callable[[dict], Section], ...] = (title.build, claims.build, forest.build, heatmap.build, dose.build,
                                                  seeds.build, diagnostics.build, irrelevant.build)


def build_pages(doc: dict) -> tuple[list[Page], list[Table]]:
    """Every page (a contents page after the first section's) and every table of the report of `doc`."""
    built = [build(doc) for build in SECTIONS]
    pages = [p for s in built for p in s.pages]
    pages.insert(len(built[0].pages), contents_page(pages))  # lazy: lists the final page list, itself included
    return pages, [t for s in built for t in s.tables]


def render_study(study_json: Path, pdf: Path, *, progress: ProgressFn | None = None) -> Path:
    """Render study.pdf from `study_json` (read and checked: `results.schema.read_study_file`) to
    `pdf` (a .pdf), with `<stem>_figures/` (PNG + SVG per figure page) and `<stem>_tables/` (CSV,
    contents.csv) beside it. The three replace earlier ones only when everything was written.
    `progress(done, total, what)` before the pages, after each page and after the tables."""
    pdf = Path(pdf)
    if pdf.suffix.lower() != ".pdf":
        raise AlignlensError(f"{pdf}: the study report's output must end in .pdf")
    doc = read_study_file(Path(study_json))
    return render_pdf(pdf, lambda: (*build_pages(doc), None), f"alignlens {__version__} · study {doc.get('name', '?')}",
                      f"alignlens study {doc.get('name', '')}", progress)
