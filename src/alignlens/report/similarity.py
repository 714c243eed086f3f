"""Similarity section: each language's representation similarity to English by layer (per run,
and run b − run a), language × language heatmaps at chosen layers, similarity*.csv.

With two runs only the languages both have are drawn; the difference only where both evaluated
the same items (similarities are saved per run and cannot be restricted to shared items) and the
models have the same number of layers (else side by side against relative depth).

similarity.json of format 2 (`similarity.similarity_analysis`) adds pages for the paper's PCA
similarity (PC1 Pearson r with 95% bootstrap bands, raw and robust, and the paired run b − run a
change), the 2-D PCA scatter, the outlier dimensions and their effect, and every interval measure
(mean over languages, per run and paired change); tables similarity_intervals.csv,
similarity_outliers.csv and similarity_change.csv; summary lines with intervals: `similarity_pca`.
"""

from __future__ import annotations

import math

import numpy as np

from alignlens.report.languages import lang_label, order_languages, resource_group
from alignlens.report.layout import Page, Section, Table, int_layers, lang_colors, new_fig, offdiag, top
from alignlens.report.runs import Runs, arr
from alignlens.report.similarity_pca import INTERVAL_PAGE, LABELS, V2_CURVES, build_v2, is_v2, layer_axis_label
from alignlens.results.schema import SIM_METRICS

__all__ = ["build", "INTERVAL_PAGE", "LABELS", "V2_CURVES", "is_v2", "layer_axis_label"]  # format 2: `similarity_pca`


def build(runs: Runs) -> Section:
    """Similarity curves and heatmaps per task, similarity.csv / similarity_pairwise.csv, summary lines."""
    section = Section()
    if not any(r.similarity is not None for r in runs.runs):
        return section
    csv_rows, pair_rows = [], []
    for task in runs.tasks("similarity"):
        tdicts = [(r.similarity or {}).get("tasks", {}).get(task, {}) for r in runs.runs]
        per = [t.get("per_language", {}) for t in tdicts]
        langs, diff, notes = _plan(runs, task, per)
        metrics = _metrics([{l: e for l, e in p.items() if l in langs} for p in per])
        rows, prs = _csv_rows(runs, task, tdicts)
        csv_rows += rows
        pair_rows += prs
        line = _summary_line(runs, task, per, langs, metrics, compared=diff or not runs.compare)
        section.summary_lines += [line] if line and not any(is_v2(t) for t in tdicts) else []
        note = " ".join(notes)
        section.pages.append(Page("Similarity", f"Similarity to English by layer — {task}", f"similarity_curves_{task}",
                                  lambda task=task, per=per, langs=langs, metrics=metrics, diff=diff, note=note:
                                  _draw_curves(runs, task, per, langs, metrics, diff, note)))  # fmt: skip
        if any(t.get("pairwise") for t in tdicts):
            section.pages.append(Page("Similarity", f"Language × language similarity — {task}", f"similarity_heatmaps_{task}",
                                      lambda task=task, tdicts=tdicts, langs=langs, diff=diff, note=note:
                                      _draw_heatmaps(runs, task, tdicts, langs, diff, note)))  # fmt: skip
        build_v2(runs, task, tdicts, diff, section)
    merged: dict[str, Table] = {}  # format-2 tables (`build_v2`), one per name over the tasks
    for t in section.tables:
        merged.setdefault(t.name, Table(t.name, t.header, [])).rows.extend(t.rows)
    section.tables = [
        Table("similarity.csv", ["task", "model", "language", "layer", *SIM_METRICS], csv_rows),
        Table("similarity_pairwise.csv", ["task", "model", "metric", "layer", "language_a", "language_b", "value"], pair_rows),
    ] + list(merged.values())
    return section


def _metrics(per: list[dict]) -> list[str]:
    """Up to 3 metrics to plot: those every entry has, else those any entry has (in SIM_METRICS order)."""
    entries = [e for p in per for e in p.values()]
    if entries and all("cka_mean_debiased" in e for e in entries):  # similarity.json format 2
        return list(V2_CURVES)
    return [m for m in SIM_METRICS if entries and all(m in e for e in entries)][:3] or [
        m for m in SIM_METRICS if any(m in e for e in entries)
    ][:3]


def _plan(runs: Runs, task: str, per: list[dict]) -> tuple[list[str], bool, list[str]]:
    """(languages shown, whether aligned − base is drawn, notes) for one task (see the module docstring)."""
    have = [i for i, p in enumerate(per) if p]
    if len(have) < 2:
        note = [f"Only {runs.role_label(have[0])} has similarity results for {task}."] if runs.compare else []
        return order_languages(per[have[0]]), False, note
    langs = order_languages([l for l in per[0] if l in per[1]])
    if not langs:
        return order_languages([l for p in per for l in p]), False, ["The two runs have no language in common here."]
    notes = []
    one_sided = {runs.roles[i]: [l for l in per[i] if l not in per[1 - i]] for i in (0, 1)}
    if any(one_sided.values()):
        notes.append("Languages in one run only, not shown: "
                     + "; ".join(f"{r}: {' '.join(ls)}" for r, ls in one_sided.items() if ls) + ".")  # fmt: skip
    same_items = runs.overlap.same_items(task, langs)
    if not same_items:
        notes.append("The two runs evaluated different items here; similarities are saved per run and cannot be "
                     "restricted to the shared items: shown side by side, no difference drawn.")  # fmt: skip
    if runs.depth_axis:
        notes.append(f"The models have {runs.overlap.n_layers[0]} and {runs.overlap.n_layers[1]} layers: side by side "
                     "against relative depth, layer / (layers − 1); no layer-by-layer difference.")  # fmt: skip
    return langs, same_items and not runs.depth_axis, notes


def _csv_rows(runs: Runs, task: str, tdicts: list[dict]) -> tuple[list[list], list[list]]:
    """Rows of similarity.csv and similarity_pairwise.csv for one task."""
    rows, pair_rows = [], []
    for i, t in enumerate(tdicts):
        for l, e in t.get("per_language", {}).items():
            L = max(len(v) for v in e.values() if isinstance(v, list))
            for layer in range(L):
                rows.append([task, runs.roles[i], l, layer] + [
                    (arr(e[m])[layer] if m in e and layer < len(e[m]) else math.nan) for m in SIM_METRICS])  # fmt: skip
        pw = t.get("pairwise")
        for key in ("cka_mean", "cosine_mean") if pw else ():
            for layer, mat in zip(pw.get("layers", []), pw.get(key, [])):
                for a, row in zip(pw["languages"], mat):
                    pair_rows += [[task, runs.roles[i], key, layer, a, b, v] for b, v in zip(pw["languages"], row)]
    return rows, pair_rows


def _curve(per: list[dict], col, l: str, m: str) -> np.ndarray | None:
    """One language's curve of metric `m` for run `col`, or aligned − base for col "diff"."""
    if col == "diff":
        if l not in per[0] or l not in per[1] or m not in per[0][l] or m not in per[1][l]:
            return None
        a, b = arr(per[0][l][m]), arr(per[1][l][m])
        k = min(len(a), len(b))
        return b[:k] - a[:k]
    if l not in per[col] or m not in per[col][l]:
        return None
    return arr(per[col][l][m])


def _draw_curves(runs: Runs, task: str, per: list[dict], langs: list[str], metrics: list[str], diff: bool, note: str = ""):
    from matplotlib.lines import Line2D

    cols = [i for i, p in enumerate(per) if p] + (["diff"] if diff else [])
    fig = new_fig(f"Similarity to English by layer — {task}",
                  "Each line: one language's representation similarity to the parallel English inputs. Solid: high-resource, "
                  "dashed: low-resource." + (f" Right column: {runs.diff_label}." if diff else "") + (f" {note}" if note else ""))  # fmt: skip
    gs = fig.add_gridspec(len(metrics), len(cols), left=0.06, right=0.83, top=top(fig, 0.86), bottom=0.09, hspace=0.38, wspace=0.22)
    colors = lang_colors(langs)
    for mi, m in enumerate(metrics):
        for ci, col in enumerate(cols):
            ax = fig.add_subplot(gs[mi, ci])
            for l in langs:
                y = _curve(per, col, l, m)
                if y is not None:
                    ax.plot(runs.layer_x(len(y)), y, color=colors[l], ls="-" if resource_group(l) == "high" else "--",
                            lw=1.6 if l in runs.trained else 1.0)  # fmt: skip
            if col == "diff":
                ax.axhline(0, color="#444444", lw=0.7)
            ax.grid(alpha=0.25)
            ax.tick_params(labelsize=7)
            if mi == 0:
                ax.set_title(runs.diff_label if col == "diff" else runs.role_label(col), fontsize=9)
            if ci == 0:
                ax.set_ylabel(LABELS.get(m, m.replace("_", " ")) if m in V2_CURVES else m.replace("_", " "), fontsize=8)
            if not runs.depth_axis:
                int_layers(ax)
            if mi == len(metrics) - 1:
                ax.set_xlabel("relative depth" if runs.depth_axis else "layer (0 = embedding output)"
                              if "cka_mean_debiased" in metrics else "layer", fontsize=8)
    handles = [Line2D([], [], color=colors[l], ls="-" if resource_group(l) == "high" else "--",
                      lw=1.6 if l in runs.trained else 1.0, label=lang_label(l) + (" *" if l in runs.trained else ""))
               for l in langs]  # fmt: skip
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False, bbox_to_anchor=(0.99, 0.47), title="language", title_fontsize=8)
    return fig


def _pair_matrix(p: dict, key: str, layer: int, keep: list[str]) -> tuple[np.ndarray, list[str]] | None:
    """A run's language × language matrix at `layer` for the languages in `keep` (diagonal masked,
    languages in report order)."""
    if not p or layer not in p.get("layers", []) or key not in p:
        return None
    m = offdiag([[np.nan if v is None else v for v in r] for r in p[key][p["layers"].index(layer)]])
    langs = list(p["languages"])
    order = [langs.index(l) for l in order_languages(langs) if l in keep]
    return m[np.ix_(order, order)], [langs[o] for o in order]


def _heatmap_cells(pws: list[dict], key: str, diff: bool, langs: list[str]) -> tuple[list, dict, tuple[float, float]]:
    """(row keys, {(row, col): (matrix, languages, layer)}, (vmin, vmax)) of the heatmap page.

    Each run's row uses its own chosen layers (at most 4, evenly spaced); the aligned − base row
    needs the same layers and languages in both."""
    rows = [i for i, p in enumerate(pws) if p]
    layers = {i: list(pws[i].get("layers", [])) for i in rows}
    for i in rows:
        if len(layers[i]) > 4:  # keep the page readable: 4 evenly spaced chosen layers
            layers[i] = [layers[i][int(round(x))] for x in np.linspace(0, len(layers[i]) - 1, 4)]
    if diff and len(rows) == 2 and layers[0] == layers[1]:
        rows.append("diff")
        layers["diff"] = layers[0]
    cells: dict = {}
    vmin, vmax = 1.0, 0.0
    for ri, row in enumerate(rows):
        for li, layer in enumerate(layers[row]):
            if row == "diff":
                a, b = _pair_matrix(pws[0], key, layer, langs), _pair_matrix(pws[1], key, layer, langs)
                if a is not None and b is not None and a[1] == b[1]:
                    cells[ri, li] = (b[0] - a[0], a[1], layer)
                continue
            r = _pair_matrix(pws[row], key, layer, langs)
            if r is not None:
                cells[ri, li] = (*r, layer)
                if np.isfinite(r[0]).any():
                    vmin, vmax = min(vmin, float(np.nanmin(r[0]))), max(vmax, float(np.nanmax(r[0])))
    return rows, cells, (vmin, vmax)


def _draw_heatmaps(runs: Runs, task: str, tdicts: list[dict], langs: list[str], diff: bool = True, note: str = ""):
    pws = [t.get("pairwise") or {} for t in tdicts]
    key = "cka_mean" if all("cka_mean" in p for p in pws if p) else "cosine_mean"
    rows, cells, (vmin, vmax) = _heatmap_cells(pws, key, diff, langs)
    fig = new_fig(f"Language × language similarity — {task}",
                  f"{key.replace('_', ' ')} between languages' representations at chosen layers (diagonal omitted)."
                  + (f" Bottom row: {runs.diff_label}." if "diff" in rows else "") + (f" {note}" if note else ""))  # fmt: skip
    n_cols = max([li + 1 for (_, li) in cells] or [1])
    gs = fig.add_gridspec(len(rows), n_cols, left=0.06, right=0.92, top=top(fig, 0.86), bottom=0.05, hspace=0.3, wspace=0.15)
    diffs = [np.abs(m) for (ri, _), (m, _, _) in cells.items() if rows[ri] == "diff" and np.isfinite(m).any()]
    dmax = max([float(np.nanmax(d)) for d in diffs] or [1e-9])
    im_main = im_diff = None
    for (ri, li), (m, names, layer) in cells.items():
        ax = fig.add_subplot(gs[ri, li])
        if rows[ri] == "diff":
            im_diff = ax.imshow(m, cmap="RdBu_r", vmin=-dmax, vmax=dmax, interpolation="nearest")
        else:
            im_main = ax.imshow(m, cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
        fs = 5.5 if len(names) > 12 else 7
        ax.set_xticks(range(len(names)))
        ax.set_yticks(range(len(names)))
        if ri == len(rows) - 1:
            ax.set_xticklabels(names, fontsize=fs, rotation=90)
        else:
            ax.tick_params(labelbottom=False)
        if li == 0:
            ax.set_yticklabels(names, fontsize=fs)
        else:
            ax.tick_params(labelleft=False)
        ax.set_title(f"{runs.diff_label if rows[ri] == 'diff' else runs.roles[rows[ri]]}, layer {layer}", fontsize=8, pad=3)
    for im, box in ((im_main, [0.935, 0.5, 0.01, 0.33]), (im_diff, [0.935, 0.07, 0.01, 0.22])):
        if im is not None:
            fig.colorbar(im, cax=fig.add_axes(box)).ax.tick_params(labelsize=7)
    return fig


def _summary_line(runs: Runs, task: str, per: list[dict], langs: list[str], metrics: list[str], compared: bool = True) -> str | None:
    """Each run's first metric, mean over the middle half of the layers and the non-English languages shown."""
    if not metrics:
        return None
    m = metrics[0]
    bits = []
    for i, p in enumerate(per):
        vals = []
        for l, e in p.items():
            a = arr(e[m]) if l != "en" and l in langs and m in e else np.array([])
            mid = a[len(a) // 4 : max(3 * len(a) // 4, len(a) // 4 + 1)]
            if len(mid) and np.isfinite(mid).any():
                vals.append(float(np.nanmean(mid)))
        if vals:
            bits.append(f"{runs.roles[i]} {np.mean(vals):.3f}")
    if not bits:
        return None
    own = " (each run on its own items or layers, not compared)" if len(bits) > 1 and not compared else ""
    return (f"• Similarity to English, {task} ({m.replace('_', ' ')}, mean over middle layers and non-English languages)"
            f"{own}: " + ", ".join(bits) + ".")
