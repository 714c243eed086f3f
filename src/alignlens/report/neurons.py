"""Neurons section: language-specific (LAPE) neurons per layer, overlaps between languages and,
for two runs, how they changed (neurons_*.csv).

The change between the models is read from comparison.json's "neurons" part, which `alignlens
analyze --compare` writes with `neurons.compare_neurons` (`runs.neuron_comparison`); only for two
folders without it are the per-language Jaccard overlaps computed here from the two neurons.json
files. It is shown only for
models with the same MLP shape and only for languages whose items are the same in both runs (the
neuron statistics are per run, not per item).
"""

from __future__ import annotations

import math

import numpy as np

from alignlens.report.languages import lang_label, order_languages
from alignlens.report.layout import COLOR, Page, Section, Table, int_layers, lang_ticks, new_fig, offdiag, top, wrap
from alignlens.report.runs import Runs, arr

#: Neuron options shown on the page (all of them, with thresholds and sources, go to neurons_options.csv).
OPTIONS_SHOWN = ("filter_rate", "top_rate", "top_rate_of", "activation_bar_ratio", "active_threshold")


def build(runs: Runs) -> Section:
    """Neuron pages, neurons_per_layer.csv / neurons_options.csv / neurons_change.csv, summary lines."""
    nds = [r.neurons for r in runs.runs]
    section = Section()
    if not any(nds):
        return section
    rows = [[runs.roles[i], l, layer, c] for i, nd in enumerate(nds) if nd
            for l in nd["languages"] for layer, c in enumerate(arr(nd["specific"][l]["count_per_layer"]))]  # fmt: skip
    section.tables += [Table("neurons_per_layer.csv", ["model", "language", "layer", "specific_count"], rows),
                       Table("neurons_options.csv", ["model", "option", "value"], _option_rows(runs))]  # fmt: skip
    section.pages.append(Page("Neurons", "Language-specific neurons per layer", "neurons_per_layer", lambda: _draw_counts(runs)))
    if any(nd and nd.get("overlap") for nd in nds):
        section.pages.append(Page("Neurons", "Neuron overlap between languages", "neurons_overlap", lambda: _draw_overlap(runs)))
    if not (runs.compare and all(nds)):
        section.summary_lines += [
            f"• Language-specific neurons ({runs.roles[i]}): {sum(nd['specific'][l]['count'] for l in nd['languages'])} "
            f"in total over {len(nd['languages'])} languages." for i, nd in enumerate(nds) if nd]  # fmt: skip
        return section
    change, why_not = neuron_change(runs)
    if change is None:
        section.summary_lines.append(f"• Neuron change between the models not shown: {why_not}.")
        return section
    per = change["per_language"]
    section.tables.append(Table("neurons_change.csv", ["language", *(f"count_{n}" for n in runs.roles), "jaccard_specific"],
                                [[l, v["count_a"], v["count_b"], v["jaccard_specific"]] for l, v in per.items()]))  # fmt: skip
    section.pages.append(Page("Neurons", "Neuron change between models", "neurons_change", lambda: _draw_change(runs, change)))
    ja = [v["jaccard_specific"] for v in per.values() if not math.isnan(v["jaccard_specific"])]
    section.summary_lines.append(
        f"• Language-specific neurons: {sum(v['count_a'] for v in per.values())} ({runs.roles[0]}) → {sum(v['count_b'] for v in per.values())} "
        f"({runs.roles[1]}) in total over {len(per)} languages; mean Jaccard overlap of each language's specific-neuron set between "
        f"the models {np.mean(ja) if ja else math.nan:.2f}." + (f" {change['note']}" if change["note"] else ""))  # fmt: skip
    return section


def _option_rows(runs: Runs) -> list[list]:
    """neurons_options.csv rows: every option, threshold and source of each run's neuron analysis."""
    rows = []
    for i, r in enumerate(runs.runs):
        for k, v in ((r.neurons or {}).get("options") or {}).items():
            rows += [[runs.roles[i], f"{k}.{kk}", vv] for kk, vv in v.items()] if isinstance(v, dict) else [[runs.roles[i], k, v]]
    return rows


def options_text(nd: dict) -> str:
    """Short one-line options of a neuron analysis: the LAPE settings and how many neurons were selected."""
    opts = nd.get("options") or {}
    shown = [f"{k}={opts[k]}" for k in OPTIONS_SHOWN if k in opts]
    shown += [f"{k}={v}" for k, v in opts.items() if k not in OPTIONS_SHOWN and not isinstance(v, (dict, list))]
    th = opts.get("thresholds") or {}
    if "n_selected" in th and "n_neurons" in th:
        shown.append(f"selected {th['n_selected']} of {th['n_neurons']} neurons")
    return ", ".join(shown) or "—"


def comparable_languages(runs: Runs) -> list[str]:
    """Languages whose neuron statistics come from the same items in both runs: every (task,
    language) cell of the language is in both runs, with identical item sets."""
    a, b = runs.runs
    out = []
    for l in [l for l in a.neurons["languages"] if l in b.neurons["languages"]]:
        cells_a = {c for c in a.predictions if c[1] == l}
        cells_b = {c for c in b.predictions if c[1] == l}
        if cells_a == cells_b and all(c in runs.overlap.same for c in cells_a):
            out.append(l)
    return order_languages(out)


def _from_neurons_json(runs: Runs, l: str) -> dict:
    """One language's change computed from the two neurons.json files (no comparison.json)."""
    a, b = (r.neurons["specific"][l] for r in runs.runs)
    sa, sb = {tuple(x) for x in a["neurons"]}, {tuple(x) for x in b["neurons"]}
    union = sa | sb
    return {"count_a": a["count"], "count_b": b["count"], "jaccard_specific": len(sa & sb) / len(union) if union else math.nan,
            "count_per_layer_a": arr(a["count_per_layer"]), "count_per_layer_b": arr(b["count_per_layer"])}  # fmt: skip


def neuron_change(runs: Runs) -> tuple[dict | None, str]:
    """({"per_language": {lang: counts, per-layer counts, Jaccard}, "act_change": per-layer array or
    None, "note": str}, "") for the comparable languages (see the module docstring), or (None, why not)."""
    a, b = runs.runs[0].neurons, runs.runs[1].neurons
    if (a["n_layers"], a.get("d_mlp")) != (b["n_layers"], b.get("d_mlp")):
        return None, (f"the models' MLPs differ ({a['n_layers']} layers × {a.get('d_mlp')} vs {b['n_layers']} × "
                      f"{b.get('d_mlp')}), so neuron identities do not correspond")  # fmt: skip
    langs = comparable_languages(runs)
    if not langs:
        return None, "no language has the same items in both runs (neuron statistics are per run, not per item)"
    comp = runs.neuron_comparison
    per = {}
    for l in langs:
        if comp is None or l not in comp["per_language"]:
            per[l] = _from_neurons_json(runs, l)
            continue
        v = comp["per_language"][l]
        per[l] = {"count_a": v["count_a"], "count_b": v["count_b"],
                  "jaccard_specific": math.nan if v.get("jaccard_specific") is None else v["jaccard_specific"],
                  "count_per_layer_a": arr(v["count_per_layer_a"]), "count_per_layer_b": arr(v["count_per_layer_b"])}  # fmt: skip
    left_out = [l for l in a["languages"] if l in b["languages"] and l not in langs]
    key = "mean_abs_activation_probability_change_per_layer"
    act = None
    if comp is not None and key in comp and set(comp.get("languages") or comp["per_language"]) <= set(langs):
        act = arr(comp[key])
    note = f"Left out (different items in the two runs): {' '.join(left_out)}." if left_out else ""
    return {"per_language": per, "act_change": act, "note": note}, ""


def _draw_counts(runs: Runs):
    nds = [(i, r.neurons) for i, r in enumerate(runs.runs) if r.neurons]
    texts = [options_text(nd) for _, nd in nds]
    opts = texts[0] if len(set(texts)) == 1 else "; ".join(f"{runs.roles[i]}: {t}" for (i, _), t in zip(nds, texts))
    subtitle = wrap(f"MLP neurons specific to one language (LAPE; d_mlp = {nds[0][1].get('d_mlp', '?')}). Options: {opts}. "
                     "All options, thresholds and their sources: neurons_options.csv.", 175)  # fmt: skip
    fig = new_fig("Language-specific neurons per layer", subtitle)
    gs = fig.add_gridspec(2, len(nds), left=0.11, right=0.95, top=top(fig, 0.86), bottom=0.11, hspace=0.3, wspace=0.3, height_ratios=[3, 2])
    vmax = max(float(np.nanmax(arr(nd["specific"][l]["count_per_layer"]))) if len(nd["specific"][l]["count_per_layer"]) else 0
               for _, nd in nds for l in nd["languages"]) or 1.0  # fmt: skip
    im = None
    for k, (i, nd) in enumerate(nds):
        langs = order_languages(nd["languages"])
        L = nd["n_layers"]
        mat = np.full((len(langs), L), np.nan)
        for li, l in enumerate(langs):
            c = arr(nd["specific"][l]["count_per_layer"])[:L]
            mat[li, : len(c)] = c
        ax = fig.add_subplot(gs[0, k])
        im = ax.imshow(mat, aspect="auto", cmap="magma_r", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_yticks(range(len(langs)))
        ax.set_yticklabels([lang_label(l) for l in langs], fontsize=6.5 if len(langs) > 12 else 8)
        ax.set_xlabel("layer", fontsize=8)
        int_layers(ax)
        ax.tick_params(axis="x", labelsize=7)
        ax.set_title(f"{runs.role_label(i)}: specific neurons per layer", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02).ax.tick_params(labelsize=7)
    ax = fig.add_subplot(gs[1, :])
    langs = order_languages([l for _, nd in nds for l in nd["languages"]])
    x = np.arange(len(langs))
    w = min(0.8 / len(nds), 0.3 if len(nds) == 1 else 0.4)
    for k, (i, nd) in enumerate(nds):
        vals = [nd["specific"][l]["count"] if l in nd["specific"] else np.nan for l in langs]
        ax.bar(x + (k - (len(nds) - 1) / 2) * w, vals, w, color=COLOR[runs.style(i)], label=runs.role_label(i))
    lang_ticks(ax, langs, runs.trained)
    ax.set_ylabel("specific neurons (total)", fontsize=8)
    ax.set_xlim(-0.6, len(langs) - 0.4)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2, frameon=False)
    return fig


def _overlap_matrix(nd: dict, kind: str) -> tuple[np.ndarray, list[str]] | None:
    ov = (nd.get("overlap") or {}).get(kind)
    if not ov or "overall" not in ov:
        return None
    langs = list(nd["languages"])
    m = offdiag([[np.nan if v is None else v for v in r] for r in ov["overall"]])
    if m.shape != (len(langs), len(langs)):
        return None
    order = [langs.index(l) for l in order_languages(langs)]
    return m[np.ix_(order, order)], [langs[o] for o in order]


def _draw_overlap(runs: Runs):
    nds = [(i, r.neurons) for i, r in enumerate(runs.runs) if r.neurons]
    kinds = [k for k in ("specific", "active") if any(_overlap_matrix(nd, k) for _, nd in nds)]
    fig = new_fig("Neuron overlap between languages",
                   "Overlap of language-specific neurons and of active neurons between pairs of languages (all layers; values as saved by the analysis; diagonal omitted).")  # fmt: skip
    gs = fig.add_gridspec(len(kinds), len(nds), left=0.07, right=0.95, top=top(fig, 0.86), bottom=0.06, hspace=0.35, wspace=0.2)
    for ki, kind in enumerate(kinds):
        for k, (i, nd) in enumerate(nds):
            r = _overlap_matrix(nd, kind)
            if r is None:
                continue
            m, langs = r
            ax = fig.add_subplot(gs[ki, k])
            im = ax.imshow(m, cmap="Blues", interpolation="nearest")
            fs = 6 if len(langs) > 12 else 8
            ax.set_xticks(range(len(langs)))
            ax.set_xticklabels(langs, fontsize=fs, rotation=90)
            ax.set_yticks(range(len(langs)))
            ax.set_yticklabels(langs, fontsize=fs)
            ax.set_title(f"{runs.role_label(i)}: {kind} neurons", fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=7)
    return fig


def _draw_change(runs: Runs, change: dict):
    per = change["per_language"]
    langs = list(per)
    fig = new_fig("Neuron change between models",
                   "Specific-neuron counts per model, their overlap (Jaccard of the (layer, index) sets) per language, and totals per layer.")  # fmt: skip
    has_act = change["act_change"] is not None and len(change["act_change"]) > 0
    gs = fig.add_gridspec(2, 2, left=0.07, right=0.94, top=top(fig, 0.85), bottom=0.1, hspace=0.6, wspace=0.2)
    x = np.arange(len(langs))
    ax = fig.add_subplot(gs[0, :])
    ax.bar(x - 0.2, [per[l]["count_a"] for l in langs], 0.4, color=COLOR["base"], label=runs.role_label(0))
    ax.bar(x + 0.2, [per[l]["count_b"] for l in langs], 0.4, color=COLOR["aligned"], label=runs.role_label(1))
    ax2 = ax.twinx()
    ax2.plot(x, [per[l]["jaccard_specific"] for l in langs], "o-", color="#333333", ms=3, lw=1, label="Jaccard (right axis)")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("Jaccard", fontsize=8)
    lang_ticks(ax, langs, runs.trained)
    ax.set_ylabel("specific neurons", fontsize=8)
    ax.set_xlim(-0.6, len(langs) - 0.4)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=3, frameon=False)
    ax.set_title("per language", fontsize=9, loc="left")
    ax = fig.add_subplot(gs[1, 0] if has_act else gs[1, :])
    ta = np.nansum(np.array([per[l]["count_per_layer_a"] for l in langs if len(per[l]["count_per_layer_a"])]), axis=0)
    tb = np.nansum(np.array([per[l]["count_per_layer_b"] for l in langs if len(per[l]["count_per_layer_b"])]), axis=0)
    ax.plot(np.arange(np.size(ta)), ta, color=COLOR["base"], label=runs.role_label(0))
    ax.plot(np.arange(np.size(tb)), tb, color=COLOR["aligned"], ls="--", label=runs.role_label(1))
    ax.set_xlabel("layer", fontsize=8)
    int_layers(ax)
    ax.set_ylabel("specific neurons, all languages", fontsize=8)
    ax.set_title("per layer", fontsize=9, loc="left")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if has_act:
        ax = fig.add_subplot(gs[1, 1])
        ax.plot(np.arange(len(change["act_change"])), change["act_change"], color="#333333")
        ax.set_xlabel("layer", fontsize=8)
        int_layers(ax)
        ax.set_ylabel("mean |Δ activation probability|", fontsize=8)
        ax.set_title("activation-probability change (comparison.json)", fontsize=9, loc="left")
        ax.grid(alpha=0.3)
    return fig
