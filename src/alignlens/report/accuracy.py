"""Accuracy section: per-language tables (accuracy, balanced accuracy, macro-F1, ROC-AUC, predicted
labels; with two runs the paired tests), macro Δ by language group, bar charts, and the summary
lines -- which are generated from these tests only.

With two runs every Δ comes from `runs.paired` (`paired.compare_runs`: read from comparison.json
or computed from the runs' predictions.jsonl): per language the accuracy Δ on the items both runs
have, its paired bootstrap 95% interval and the exact McNemar test with Holm (and
Benjamini-Hochberg) adjustment across the task's languages; per language group the macro Δ of
ROC-AUC (two-label tasks: threshold-free, the metric the paper's claim is judged on), accuracy and
balanced accuracy with a label-stratified item-cluster bootstrap 95% interval over the items every
language of the group shares (each resample keeps the label counts). A language only one run has is listed with that run's own numbers
and no Δ. "Significant" is written only for a Holm-adjusted p < 0.05.

An interval that is no test (`paired.untestable`: fewer than `paired.MIN_ITEMS` items, no
discordant item, zero width) is written "not testable (n=…)" in every text and table, and left
empty in the CSVs; the verdict on the paper's claim and these words: :mod:`alignlens.report.verdicts`.

Calibrated accuracy (contextual calibration, Zhao et al. 2021: each item's label probabilities
divided by those for content-free queries with the same demonstrations, then argmax) is read from
summary.json, i.e. on all of a run's items; with two runs it is shown for a language only when both
runs evaluated exactly the same items there (`ItemOverlap.same`), else "—". No test is made on it.
Summaries written before calibration lack it ("—").

Modules: `accuracy_rows` (the rows, group Δs and CSV rows), `accuracy_text` (the summary lines),
`accuracy_pages` (tables and charts); `build` here puts them together.
"""

from __future__ import annotations

from alignlens.report.accuracy_pages import (CAL_OLD, CAL_TABLE, NOT_TESTABLE_NOTE, draw_bars, draw_compare_table,
                                             draw_groups, draw_single_table)
from alignlens.report.accuracy_rows import (ALPHA, CAL_KEYS, CSV_HEADER, GROUP_HEADER, RUN_COLUMNS, AccRow, accuracy_rows,
                                            csv_header, csv_row, group_csv_rows, group_header, single_group_means,
                                            task_groups, task_labels)
from alignlens.report.accuracy_text import (CAL_WHAT, calibration_line, compare_lines, method_line, prior_shift,
                                            single_lines, summary_lines)
from alignlens.report.layout import Page, Section, Table
from alignlens.report.runs import Runs

__all__ = [
    "build", "ROWS_PER_PAGE", "GROUP_ROWS_PER_PAGE",
    # the section's parts, re-exported under the names they had here
    "ALPHA", "CAL_KEYS", "AccRow", "accuracy_rows", "task_groups", "task_labels", "single_group_means",
    "RUN_COLUMNS", "CSV_HEADER", "GROUP_HEADER", "csv_header", "group_header",
    "CAL_WHAT", "method_line", "prior_shift", "calibration_line", "compare_lines", "single_lines", "summary_lines",
    "CAL_TABLE", "CAL_OLD", "NOT_TESTABLE_NOTE",
]  # fmt: skip

ROWS_PER_PAGE = 24  # language rows per table page (longer tables continue on the next page)
GROUP_ROWS_PER_PAGE = 26


def build(runs: Runs) -> Section:
    """Accuracy tables and charts, accuracy.csv / accuracy_groups.csv, and the accuracy summary lines."""
    section = Section()
    per_task = {task: accuracy_rows(runs, task) for task in runs.tasks()}
    csv_rows, group_rows = [], []
    for task, rows in per_task.items():
        csv_rows += [csv_row(r) for r in rows]
        group_rows += group_csv_rows(runs, task, rows)
        chunks = [rows[i : i + ROWS_PER_PAGE] for i in range(0, len(rows), ROWS_PER_PAGE)]
        for k, chunk in enumerate(chunks):
            part = f" ({k + 1}/{len(chunks)})" if len(chunks) > 1 else ""
            draw = draw_compare_table if runs.compare else draw_single_table
            means = rows if k == len(chunks) - 1 else None  # group means below the last part
            section.pages.append(Page("Accuracy table", f"Accuracy table — {task}{part}", f"accuracy_table_{task}{'_' + str(k + 1) if part else ''}",
                                      lambda task=task, chunk=chunk, part=part, means=means, draw=draw:
                                      draw(runs, task, chunk, part, means)))  # fmt: skip
    if runs.compare:
        grows = [(task, g, v) for task in per_task for g, v in task_groups(runs, task).items()]
        chunks = [grows[i : i + GROUP_ROWS_PER_PAGE] for i in range(0, len(grows), GROUP_ROWS_PER_PAGE)]
        for k, chunk in enumerate(chunks):
            part = f" ({k + 1}/{len(chunks)})" if len(chunks) > 1 else ""
            section.pages.append(Page("Accuracy table", f"Macro Δ by language group{part}", f"accuracy_groups{'_' + str(k + 1) if part else ''}",
                                      lambda chunk=chunk, part=part: draw_groups(runs, chunk, part)))  # fmt: skip
    tasks = list(per_task)
    for start in range(0, len(tasks), 3):
        chunk = tasks[start : start + 3]
        section.pages.append(Page("Accuracy charts", f"Accuracy by language — {', '.join(chunk)}", f"accuracy_bars_{'_'.join(chunk)}",
                                  lambda chunk=chunk: draw_bars(runs, chunk)))  # fmt: skip
    section.summary_lines = summary_lines(runs, per_task)
    section.tables = [Table("accuracy.csv", csv_header(runs.column_names), csv_rows),
                      Table("accuracy_groups.csv", group_header(runs.column_names), group_rows)]
    return section
