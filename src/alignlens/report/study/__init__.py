"""study.pdf: the report of an `alignlens study` (design §6), built from study.json only (no model).

``render_study(study_json, pdf)`` writes ``pdf`` (DIR/study.pdf) with ``study_figures/`` (every figure
page as PNG and SVG) and ``study_tables/`` (the numbers behind the pages as CSV, equal to study.json's)
beside it. One module per section, each a pure ``build(study.json dict) -> Section``:

1. ``title``: the study's options, its arms, every step (status, wall time, commit, hash) and the
   command that runs each step not finished; the resampling levels;
2. ``claims``: the paper's claims, each with its metric, test, effect and interval, MDE80 and verdict,
   then the sentences of study.json;
3. ``forest``: every arm vs base by language group on the primary metric (forest plot; MDE80 band of
   the inconclusive ones) and a table with accuracy, calibrated and balanced accuracy beside it;
4. ``heatmap``: per-language Δ of the primary metric, arms × languages (trained languages outlined,
   * only where the per-language interval excludes 0);
5. ``dose``: dose-response (Δ against the number of training languages, OLS slope with its
   interval) and the contrasts (control, target, questions, trained − untrained, high − low);
6. ``seeds``: every replicated arm's per-seed Δ beside the pooled one;
7. ``diagnostics``: label shares (majority share per run and language, collapse flagged at the
   study's threshold) and calibrated accuracy;
8. ``irrelevant``: the irrelevant-label variant (its effects and per-language Δ), when it was run.

Helpers: ``doc`` (reading the dict, numbers and verdict words), ``table`` (measured tables and text
pages), ``render`` (order, atomic writing). Layout and fonts are the run report's (`report.layout`,
`report.fonts`); no text, figure or CSV holds an absolute local path (`layout.short_path`).
"""

from __future__ import annotations

from alignlens.report.study.render import render_study

__all__ = ["render_study"]
