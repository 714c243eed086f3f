"""PDF report rendered from saved results folders only (no model needed).

``render_report(run_dir, compare_dir, out, names=...)`` reads one run folder (run a, by default called
*base*) and optionally a second one (run b, by default *aligned*) and writes:

- ``out`` (default ``report.pdf``): A4-landscape pages -- title + run manifest, contents, summary of
  what changed, accuracy table per task, accuracy bar charts, logit-lens curves, similarity curves
  and heatmaps, language-specific-neuron figures. Sections whose result files are absent are listed
  on the summary page instead.
- ``<out_stem>_figures/NN_name.png|svg``: every page as PNG and SVG.
- ``<out_stem>_tables/*.csv``: the numbers behind the pages (+ ``summary.txt``, ``contents.csv``).

Two runs are compared like with like: only on the (task, language, item) triples both evaluated
(from their predictions.jsonl), with both accuracies recomputed on those items; two runs with no
item in common are refused. Models of different depth are drawn against relative depth.

Every text, table header, figure label and CSV column calls the runs by `names` (default base,
aligned) and their models by name, with any path shortened (`layout.short_path`: never an absolute
local path); results are phrased as a test of the paper's claim only for that default pair, otherwise
the same numbers are stated as run b − run a with no verdict.

Every Δ (run b − run a) has a paired interval: the paired statistics of :func:`alignlens.paired.compare_runs`
(per-language paired bootstrap, exact McNemar with Holm/Benjamini-Hochberg, item-cluster bootstrap
of the macro Δ per language group) are read from the runs' comparison.json when it belongs to them,
else computed once from their predictions.jsonl. The summary text is generated from these tests.

Modules: ``runs`` (loading and checking result folders), ``layout`` (pages, figures),
``fonts``, ``languages``, one module per section (``title``, ``accuracy``, ``lens``, ``similarity``,
``neurons``; each a pure ``build(runs) -> Section``), ``verdicts`` (reading a Δ's interval: "not testable
(n=…)" when it is no test; the verdict on the paper's claim), ``summary`` and ``render`` (orders the sections
and writes the outputs atomically). Statistics live in :mod:`alignlens.paired` and :mod:`alignlens.metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from alignlens.report.render import ProgressFn, default_out, write_report
from alignlens.report.runs import load_runs
from alignlens.results.schema import check_results

__all__ = ["render_report", "check_results"]


def render_report(run_dir: Path, compare_dir: Path | None = None, out: Path | None = None, *, force: bool = False,
                  progress: ProgressFn | None = None, names: Sequence[str] | None = None) -> Path:
    """Render the PDF report for `run_dir` (run a) optionally compared with `compare_dir` (run b).
    Returns the PDF path. `names`: what the report calls the runs, one per run (default "base",
    "aligned"; checked by `runs.check_names`: distinct, short, letters/digits of any script or _ . + -).

    `out` defaults to ``<common parent>/report.pdf`` when both run folders share a parent, else
    ``run_dir/report.pdf``. Figures go to ``<out_stem>_figures/`` (PNG + SVG per page), tables to
    ``<out_stem>_tables/`` (CSV). Raises AlignlensError for bad/partial results folders, for two runs
    with no item in common, or when an output exists and `force` is False; `force` replaces only
    these three outputs. Everything is rendered to temporary names first and swapped in at the end,
    so a failure leaves a previous report as it was. `progress(done, total, what)` is called once
    before the pages, after each page and after the tables.
    """
    runs = load_runs(Path(run_dir), Path(compare_dir) if compare_dir is not None else None, names=names)
    out = Path(out) if out is not None else default_out(Path(run_dir), compare_dir)
    return write_report(runs, out, force=force, progress=progress)
