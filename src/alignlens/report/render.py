"""The renderer: orders the sections, draws every page into the PDF (and PNG/SVG), writes the
tables, and swaps the outputs into place only when everything succeeded (`results.writer.staged_swap`)."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alignlens import AlignlensError, __version__, results
from alignlens.report import accuracy, fonts, lens, neurons, similarity, summary, title
from alignlens.report.layout import Page, Section, Table, footer
from alignlens.report.runs import Runs
from alignlens.results.writer import staged_swap

#: The analysis sections, in report order; each is a pure `build(runs) -> Section`.
SECTIONS: tuple[Callable[[Runs], Section], ...] = (accuracy.build, lens.build, similarity.build, neurons.build)

ProgressFn = Callable[[int, int, str], None]


@dataclass
class Report:
    """Everything to write: the pages in order, the tables and the summary lines."""

    pages: list[Page]
    tables: list[Table]
    summary_lines: list[str]


def build_report(runs: Runs) -> Report:
    """Title, contents, summary, then the analysis sections in `SECTIONS` order. The summary text is
    the comparison basis, then each section's lines in section order, then what is absent."""
    sections = [build(runs) for build in SECTIONS]
    lines = summary.overlap_lines(runs) + [l for s in sections for l in s.summary_lines] + summary.absent_lines(runs)
    front = title.build(runs).pages
    pages = front + summary.summary_pages(lines) + [p for s in sections for p in s.pages]
    pages.insert(len(front), summary.contents_page(pages))  # lazy: lists the final page list, itself included
    return Report(pages, [t for s in sections for t in s.tables], lines)


def write_table(folder: Path, table: Table) -> None:
    """`table` as CSV in `folder` (NaN written as an empty cell)."""
    with open(folder / table.name, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(table.header)
        for r in table.rows:
            w.writerow(["" if (isinstance(x, float) and math.isnan(x)) else x for x in r])


def write_pages(pages: list[Page], pdf_path: Path, fig_dir: Path, note: str, title: str,
                tick: Callable[[int, str], None] | None = None) -> list[list]:
    """Draw `pages` into the PDF `pdf_path` (footer: `note` and the page number), the exported ones
    also as `fig_dir/NN_<slug>.png|svg`; `tick(page_no, what)` after each page. Returns the rows of
    contents.csv ([page, section, title, figure file])."""
    from matplotlib.backends.backend_pdf import PdfPages

    rows = []
    with PdfPages(pdf_path, metadata={"Title": title, "Creator": f"alignlens {__version__}"}) as pdf:
        for no, page in enumerate(pages, start=1):
            fig = page.draw()
            footer(fig, no, len(pages), note)
            pdf.savefig(fig)
            stem = f"{no:02d}_{page.slug}"
            if page.export:
                fig.savefig(fig_dir / f"{stem}.png", dpi=110)
                fig.savefig(fig_dir / f"{stem}.svg")
            rows.append([no, page.section, page.title, f"{stem}.png" if page.export else ""])
            if tick is not None:
                tick(no, f"page {no}/{len(pages)}: {page.title}")
    return rows


def render_pdf(pdf: Path, build: Callable[[], tuple[list[Page], list[Table], list[str] | None]], note: str, title: str,
               progress: ProgressFn | None = None) -> Path:
    """Draw the pages `build()` returns into `pdf` (footer `note`, PDF title `title`) with PNG/SVG
    figures in `<stem>_figures/` and the tables (CSV; contents.csv; summary.txt when it returns
    summary lines) in `<stem>_tables/`, written in a staging folder beside `pdf` and swapped in
    only when all succeeded (`staged_swap`). `progress(done, total, what)` before the pages, after
    each page and after the tables. Used by the study and localisation reports."""
    import matplotlib

    names = results.report_files(pdf.name)
    pdf.parent.mkdir(parents=True, exist_ok=True)
    results.clean_stale_temps(pdf.parent, max_depth=0, locked=False)  # only dead runs' temporaries
    tick = progress or (lambda done, total, what: None)
    with staged_swap(pdf.parent, names) as stage:
        pdf_path, fig_dir, tab_dir = (stage / name for name in names)
        fig_dir.mkdir()
        tab_dir.mkdir()
        with matplotlib.rc_context(fonts.rc_params()):
            pages, tables, summary_lines = build()
            total = len(pages) + 1
            tick(0, total, "sections built")
            toc = write_pages(pages, pdf_path, fig_dir, note, title, lambda no, what: tick(no, total, what))
        for table in tables + [Table("contents.csv", ["page", "section", "title", "figure"], toc)]:
            write_table(tab_dir, table)
        if summary_lines is not None:
            (tab_dir / "summary.txt").write_text("\n".join(summary_lines) + "\n", encoding="utf-8")
        tick(total, total, "tables written")
    return pdf


def _render_into(runs: Runs, pdf_path: Path, fig_dir: Path, tab_dir: Path, progress: ProgressFn | None) -> None:
    """Draw every page into `pdf_path` (PNG/SVG into `fig_dir`), write the tables, contents and
    summary into `tab_dir`. Calls `progress(done, total, what)` once before the pages, after each
    page, and after the tables."""
    import matplotlib

    tick = progress or (lambda done, total, what: None)
    with matplotlib.rc_context(fonts.rc_params()):
        report = build_report(runs)
        total = len(report.pages) + 1
        tick(0, total, "sections built")
        note = f"alignlens {__version__} · " + " vs ".join(runs.role_label(i) for i in range(len(runs.runs)))
        toc_rows = write_pages(report.pages, pdf_path, fig_dir, note, "alignlens report",
                               lambda no, what: tick(no, total, what))
    for table in report.tables + [Table("contents.csv", ["page", "section", "title", "figure"], toc_rows)]:
        write_table(tab_dir, table)
    (tab_dir / "summary.txt").write_text("\n".join(report.summary_lines) + "\n", encoding="utf-8")
    tick(total, total, "tables written")


def default_out(run_dir: Path, compare_dir: Path | None) -> Path:
    """<common parent>/report.pdf when both run folders share a parent, else run_dir/report.pdf."""
    if compare_dir is not None and Path(compare_dir).resolve().parent == Path(run_dir).resolve().parent:
        return Path(run_dir).parent / "report.pdf"
    return Path(run_dir) / "report.pdf"


def write_report(runs: Runs, out: Path, *, force: bool = False, progress: ProgressFn | None = None) -> Path:
    """Render `runs` to `out` (a .pdf) with `<stem>_figures/` and `<stem>_tables/` beside it.

    Refuses existing outputs without `force`; `force` replaces only these three. Removes
    temporaries a killed run left beside `out`; everything is rendered into a hidden staging folder
    beside `out` and swapped in at the end (`results.writer.staged_swap`, the mechanism of
    `OutputFolder`), so a failure leaves a previous report as it was.
    """
    if out.suffix.lower() != ".pdf":
        raise AlignlensError(f"{out}: report output must end in .pdf")
    names = results.report_files(out.name)  # pdf, figures, tables
    if not force:
        for p in (out.with_name(name) for name in names):
            if p.exists():
                raise AlignlensError(f"{p}: already exists (use --force to overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    results.clean_stale_temps(out.parent, max_depth=0, locked=False)  # not our folder: only dead runs' temporaries
    with staged_swap(out.parent, names) as stage:
        pdf, fig_dir, tab_dir = (stage / name for name in names)
        fig_dir.mkdir()
        tab_dir.mkdir()
        _render_into(runs, pdf, fig_dir, tab_dir, progress)
    return out
