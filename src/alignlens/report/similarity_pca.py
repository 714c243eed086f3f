"""The format-2 parts of the similarity section (`report.similarity`; similarity.json of format 2,
`similarity.similarity_analysis`): the paper's PCA similarity (PC1 Pearson r with 95% bootstrap
bands, raw and robust, and the paired run b − run a change), the 2-D PCA scatter, the outlier
dimensions and their effect, and every interval measure (mean over languages, per run and paired
change); tables similarity_intervals.csv, similarity_outliers.csv and similarity_change.csv; summary
lines with intervals. `build_v2` adds them for one task.
"""

from __future__ import annotations

import warnings

import numpy as np

from alignlens.report.languages import lang_label, resource_group
from alignlens.report.layout import COLOR, LINESTYLE, Page, Section, Table, int_layers, lang_colors, new_fig, top
from alignlens.report.runs import Runs, arr


#: Measures of the interval page (similarity.INTERVAL_METRICS without the centred cosine), labels.
INTERVAL_PAGE = ("pca_pearson", "cosine_mean", "cka_mean_debiased", "retrieval_mean")
LABELS = {"pca_pearson": "PC1 Pearson r (the paper's)", "cosine_mean": "cosine (raw)",
          "cosine_mean_centered": "cosine (centred)", "cka_mean_debiased": "CKA (debiased)",
          "cka_mean": "CKA (biased)", "retrieval_mean": "retrieval accuracy"}
V2_CURVES = ("pca_pearson", "cka_mean_debiased", "cosine_mean_centered")


def is_v2(t: dict | None) -> bool:
    return bool(t) and t.get("format") == 2


def layer_axis_label(t: dict, depth: bool = False) -> str:
    if depth:
        return "relative depth"
    return "layer (0 = embedding output)" if "0" in (t.get("rows") or {}) else "layer"


def _variants(t: dict) -> list[str]:
    return ["raw"] + (["robust"] if "robust" in t else [])


def _variant_label(t: dict, v: str) -> str:
    return "raw (the paper's measure)" if v == "raw" else f"robust: {t['robust']['method']}"


def _series(t: dict, v: str, lang: str, m: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(estimate, lo, hi) [n_layers] of one run, variant, language and measure (NaN intervals if none)."""
    src = t["per_language"] if v == "raw" else t["robust"]["per_language"]
    est = arr(src[lang][m])
    iv = (t.get("intervals") or {}).get("per_language" if v == "raw" else "robust", {}).get(lang, {}).get(m)
    if not iv:
        return est, np.full_like(est, np.nan), np.full_like(est, np.nan)
    return est, arr(iv["lo"]), arr(iv["hi"])


def _change(runs: Runs, tdicts: list[dict], diff: bool) -> tuple[dict | None, str]:
    """similarity.similarity_change of the two runs (or None and why not)."""
    from alignlens import AlignlensError
    from alignlens.similarity import similarity_change

    if not runs.compare or not all(is_v2(t) for t in tdicts):
        return None, ""
    if not diff:
        return None, "No paired change is shown (different items or layer counts)."
    try:
        return similarity_change(tdicts[0], tdicts[1]), ""
    except AlignlensError as e:
        return None, f"No paired change is shown: {e}."


def _fit_others(t: dict) -> list[str]:
    return [l for l in t["pca"]["fit_languages"] if l != "en"]


def _middle(n: int) -> list[int]:
    return list(range(n // 4, max(3 * n // 4, n // 4 + 1)))


def build_v2(runs: Runs, task: str, tdicts: list[dict], diff: bool, section: Section) -> None:
    """Pages, tables and summary lines of the format-2 parts of one task (added to `section`)."""
    have = [i for i, t in enumerate(tdicts) if is_v2(t)]
    if not have:
        return
    change, why = _change(runs, tdicts, diff)
    ref = tdicts[have[0]]
    section.pages.append(Page("Similarity", f"The paper's PCA similarity — {task}", f"similarity_pca_{task}",
                              lambda: _draw_pca(runs, task, tdicts, change, why)))
    if any(t.get("scatter", {}).get("points") for t in tdicts if is_v2(t)):
        section.pages.append(Page("Similarity", f"PCA scatter ({'/'.join(ref['scatter']['languages'])}) — {task}",
                                  f"similarity_scatter_{task}", lambda: _draw_scatter(runs, task, tdicts)))
    section.pages.append(Page("Similarity", f"Outlier dimensions — {task}", f"similarity_outliers_{task}",
                              lambda: _draw_outliers(runs, task, tdicts)))
    if any(t.get("intervals") for t in tdicts if is_v2(t)):
        section.pages.append(Page("Similarity", f"Similarity with 95% intervals — {task}", f"similarity_intervals_{task}",
                                  lambda: _draw_intervals(runs, task, tdicts, change, why)))
    section.tables += _v2_tables(runs, task, tdicts, change)
    section.summary_lines += _v2_summary(runs, task, tdicts, change, why)


def _pct_range(values) -> str:
    lo, hi = np.nanmin(values) * 100, np.nanmax(values) * 100
    return f"{lo:.0f}%" if round(lo) == round(hi) else f"{lo:.0f}–{hi:.0f}%"


def _subtitle(t: dict, extra: str = "", bands: bool = True) -> str:
    pool = {"prompt": "mean over all prompt tokens (BOS and demonstrations included)", "query": "mean over the item's "
            "own tokens", "last": "the last prompt token"}.get(t.get("pooling"), str(t.get("pooling")))
    prompts = t.get("capture_prompts")
    iv = t.get("intervals")
    return (f"States: {pool}" + (f", on the {prompts} prompts" if prompts else "") + f"; n = {t['n_items']} parallel "
            "items. Layer 0 is the embedding output, layer l the output of block l (HF hidden_states[l]; HF's last "
            "entry, the paper's last point, is after the final norm, this one before it)."
            + ((f" Bands: 95% bias-corrected percentile bootstrap over items ({iv['n_resamples']} resamples, the same "
                "item resamples in every language and run, so changes are paired)." if iv else " No intervals (0 resamples).")
               if bands else "")
            + (f" {extra}" if extra else ""))  # fmt: skip


def _draw_pca(runs: Runs, task: str, tdicts: list[dict], change: dict | None, why: str):
    cols = [i for i, t in enumerate(tdicts) if is_v2(t)] + (["diff"] if change else [])
    ref = tdicts[cols[0]]
    variants = _variants(ref)
    fit = ref["pca"]["fit_languages"]
    evr = [arr(tdicts[i]["pca"]["explained_variance_ratio"]) for i in cols if i != "diff"]
    evr_text = ", ".join(f"{runs.roles[i]} {_pct_range(e)}"
                         for i, e in zip([c for c in cols if c != "diff"], evr) if np.isfinite(e).any())
    fig = new_fig(f"The paper's PCA similarity — {task}", _subtitle(
        ref, f"Pearson r of English vs each language's scores on the first principal component, fitted jointly on "
             f"{', '.join(fit)} (as the paper's knowledge_finding.ipynb); PC1 explains {evr_text} of the variance. "
             + (f"{why} " if why else "") + (f"Right: {runs.diff_label}, thin lines per language, black the mean over "
                                             "languages with its paired interval." if change else "")))
    gs = fig.add_gridspec(len(variants), len(cols), left=0.06, right=0.86, top=top(fig, 0.84), bottom=0.08,
                          hspace=0.35, wspace=0.22)
    langs = [l for l in fit if l != "en"]
    colors = lang_colors(langs)
    for vi, v in enumerate(variants):
        for ci, col in enumerate(cols):
            ax = fig.add_subplot(gs[vi, ci])
            if col == "diff":
                entry = change["variants"].get(v, {}).get("pca_pearson")
                for l in langs if entry else ():
                    d = entry["per_language"].get(l)
                    if d:
                        ax.plot(runs.layer_x(len(d["delta"])), arr(d["delta"]), color=colors[l], lw=0.8, alpha=0.8)
                if entry and "mean" in entry:
                    mu, lo, hi = (arr(entry["mean"][k]) for k in ("delta", "lo", "hi"))
                    xs = runs.layer_x(len(mu))
                    ax.fill_between(xs, lo, hi, color="#333333", alpha=0.18, lw=0)
                    ax.plot(xs, mu, color="black", lw=1.8)
                ax.axhline(0, color="#444444", lw=0.7)
            else:
                t = tdicts[col]
                for l in langs:
                    if l not in t["per_language"]:
                        continue
                    est, lo, hi = _series(t, v, l, "pca_pearson")
                    xs = runs.layer_x(len(est))
                    ax.fill_between(xs, lo, hi, color=colors[l], alpha=0.12, lw=0)
                    ax.plot(xs, est, color=colors[l], lw=1.4 if l in runs.trained else 1.0,
                            ls="-" if resource_group(l) == "high" else "--")
                ax.set_ylim(top=min(1.02, ax.get_ylim()[1]))
            ax.grid(alpha=0.25)
            ax.tick_params(labelsize=7)
            if vi == 0:
                ax.set_title(runs.diff_label if col == "diff" else runs.role_label(col), fontsize=9)
            if ci == 0:
                ax.set_ylabel(f"PC1 Pearson r\n{_variant_label(ref, v)}", fontsize=8)
            if not runs.depth_axis:
                int_layers(ax)
            if vi == len(variants) - 1:
                ax.set_xlabel(layer_axis_label(ref, runs.depth_axis), fontsize=8)
    _legend(fig, runs, langs, colors)
    return fig


def _legend(fig, runs: Runs, langs: list[str], colors: dict) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[l], ls="-" if resource_group(l) == "high" else "--",
                      lw=1.4 if l in runs.trained else 1.0, label=lang_label(l) + (" *" if l in runs.trained else ""))
               for l in langs]  # fmt: skip
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False, bbox_to_anchor=(0.99, 0.47),
               title="language", title_fontsize=8)


def _draw_scatter(runs: Runs, task: str, tdicts: list[dict]):
    rows = [i for i, t in enumerate(tdicts) if is_v2(t) and t.get("scatter", {}).get("points")]
    ref = tdicts[rows[0]]
    langs = ref["scatter"]["languages"]
    n_cols = max(len(tdicts[i]["scatter"]["layers"]) for i in rows)
    fig = new_fig(f"PCA scatter ({'/'.join(langs)}) — {task}", _subtitle(
        ref, "Each point is one item in one language, on the first two principal components of a PCA fitted on "
             f"these {len(langs)} languages' states at that layer (as the paper's 2-D figures). Overlapping clouds: "
             "the languages share a representation; separate clouds: language identity dominates.", bands=False))
    gs = fig.add_gridspec(len(rows), n_cols, left=0.06, right=0.88, top=top(fig, 0.84), bottom=0.07, hspace=0.35,
                          wspace=0.25)
    colors = lang_colors(langs)
    for ri, i in enumerate(rows):
        sc = tdicts[i]["scatter"]
        for li, (layer, pts, evr) in enumerate(zip(sc["layers"], sc["points"], sc["explained_variance_ratio"])):
            ax = fig.add_subplot(gs[ri, li])
            for l in langs:
                p = np.array([[np.nan if v is None else v for v in xy] for xy in pts.get(l, [])], dtype=float)
                if p.size:
                    ax.scatter(p[:, 0], p[:, 1] if p.shape[1] > 1 else np.zeros(len(p)), s=7, alpha=0.6,
                               color=colors[l], label=lang_label(l), lw=0)
            ev = [np.nan if v is None else v for v in evr] + [np.nan, np.nan]
            ax.set_title(f"{runs.roles[i]}, layer {layer} (PC1 {ev[0] * 100:.0f}%, PC2 {ev[1] * 100:.0f}%)", fontsize=8)
            ax.tick_params(labelsize=6)
            ax.grid(alpha=0.2)
    from matplotlib.lines import Line2D

    fig.legend(handles=[Line2D([], [], marker="o", ls="", color=colors[l], label=lang_label(l)) for l in langs],
               loc="center right", fontsize=8, frameon=False, bbox_to_anchor=(0.99, 0.5), title="language",
               title_fontsize=8)
    return fig


def _draw_outliers(runs: Runs, task: str, tdicts: list[dict]):
    idx = [i for i, t in enumerate(tdicts) if is_v2(t)]
    ref = tdicts[idx[0]]
    texts = []
    for i in idx:
        o = tdicts[i]["outliers"]
        dims = sorted({d for f in o["flagged"] for d in f})
        share = [s[0] for s in o["top_shares"]]
        texts.append(f"{runs.roles[i]}: flagged dimension(s) {', '.join(map(str, dims)) or 'none'}; the largest "
                     f"dimension holds {_pct_range(share)} of the squared norm")
    robust = ref.get("robust", {}).get("method", "none")
    fig = new_fig(f"Outlier dimensions — {task}", _subtitle(
        ref, f"Outliers: {ref['outliers']['rule']} (d_model = {ref['outliers']['d_model']}). " + "; ".join(texts)
             + f". Right: the mean over non-English languages of the paper's measure and the raw cosine, raw vs "
               f"the robust variant ({robust}).", bands=False))
    gs = fig.add_gridspec(1, 3, left=0.06, right=0.97, top=top(fig, 0.8), bottom=0.1, wspace=0.3)
    ax1, ax2, ax3 = (fig.add_subplot(gs[0, k]) for k in range(3))
    for i in idx:
        t = tdicts[i]
        o = t["outliers"]
        xs = runs.layer_x(len(o["top_shares"]))
        role, key = runs.roles[i], runs.style(i)
        ax1.plot(xs, [s[0] for s in o["top_shares"]], color=COLOR[key], ls=LINESTYLE[key], label=f"{role}: largest")
        ax1.plot(xs, [s[1] if len(s) > 1 else np.nan for s in o["top_shares"]], color=COLOR[key], ls=LINESTYLE[key],
                 alpha=0.45, label=f"{role}: second")
        ax2.plot(xs, arr(t["pca"]["top_dim_loading"]), color=COLOR[key], ls=LINESTYLE[key], label=role)
        langs = [l for l in t["per_language"] if l != "en"]
        for m, shade in (("pca_pearson", 1.0), ("cosine_mean", 0.5)):
            for v in _variants(t):
                src = t["per_language"] if v == "raw" else t["robust"]["per_language"]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    y = np.nanmean([arr(src[l][m]) for l in langs], axis=0) if langs else np.full(len(xs), np.nan)
                ax3.plot(xs, y, color=COLOR[key], alpha=shade, ls="-" if v == "raw" else ":",
                         label=f"{role}: {LABELS[m]}, {'raw' if v == 'raw' else robust}")
    ax1.set_title("share of the squared norm (largest, second)", fontsize=9)
    ax2.set_title("|PC1 loading| on the largest dimension", fontsize=9)
    ax3.set_title("effect on the measures (mean over languages)", fontsize=9)
    for ax in (ax1, ax2, ax3):
        ax.grid(alpha=0.25)
        ax.tick_params(labelsize=7)
        ax.set_xlabel(layer_axis_label(ref, runs.depth_axis), fontsize=8)
        if not runs.depth_axis:
            int_layers(ax)
        ax.legend(fontsize=6, frameon=False)
    ax1.set_ylim(0, 1.02)
    ax2.set_ylim(0, 1.02)
    return fig


def _draw_intervals(runs: Runs, task: str, tdicts: list[dict], change: dict | None, why: str):
    idx = [i for i, t in enumerate(tdicts) if is_v2(t) and t.get("intervals")]
    ref = tdicts[idx[0]]
    cols = ["runs"] + (["diff"] if change else [])
    n = ref["n_items"]
    fig = new_fig(f"Similarity with 95% intervals — {task}", _subtitle(
        ref, "Mean over the non-English languages (PC1 Pearson: over the PCA languages) of each measure, raw states, "
             "with the interval of the same mean of each bootstrap replicate. CKA is the debiased estimator "
             f"(unbiased HSIC; it needs at least {ref['cka']['min_items']} items, here n = {n}); the biased CKA, pushed "
             "towards 1 when items are few compared with dimensions, is in similarity.csv (cka_mean). "
             + (why or "")))
    gs = fig.add_gridspec(len(INTERVAL_PAGE), len(cols), left=0.08, right=0.97, top=top(fig, 0.84), bottom=0.09,
                          hspace=0.45, wspace=0.18)
    for mi, m in enumerate(INTERVAL_PAGE):
        for ci, col in enumerate(cols):
            ax = fig.add_subplot(gs[mi, ci])
            if col == "runs":
                for i in idx:
                    e = tdicts[i]["intervals"].get("mean", {}).get("raw", {}).get(m)
                    if not e:
                        continue
                    est, lo, hi = (arr(e[k]) for k in ("estimate", "lo", "hi"))
                    xs = runs.layer_x(len(est))
                    key = runs.style(i)
                    ax.fill_between(xs, lo, hi, color=COLOR[key], alpha=0.18, lw=0)
                    ax.plot(xs, est, color=COLOR[key], ls=LINESTYLE[key], lw=1.4, label=runs.role_label(i))
                if mi == 0:
                    ax.legend(fontsize=7, frameon=False)
            else:
                e = change["variants"]["raw"].get(m, {}).get("mean")
                if e:
                    mu, lo, hi = (arr(e[k]) for k in ("delta", "lo", "hi"))
                    xs = runs.layer_x(len(mu))
                    ax.fill_between(xs, lo, hi, color="#333333", alpha=0.18, lw=0)
                    ax.plot(xs, mu, color="black", lw=1.4)
                ax.axhline(0, color="#444444", lw=0.7)
            ax.grid(alpha=0.25)
            ax.tick_params(labelsize=7)
            if mi == 0:
                ax.set_title("per run" if col == "runs" else f"{runs.diff_label} (paired)", fontsize=9)
            if ci == 0:
                ax.set_ylabel(LABELS[m], fontsize=8)
            if not runs.depth_axis:
                int_layers(ax)
            if mi == len(INTERVAL_PAGE) - 1:
                ax.set_xlabel(layer_axis_label(ref, runs.depth_axis), fontsize=8)
    return fig


def _v2_tables(runs: Runs, task: str, tdicts: list[dict], change: dict | None) -> list[Table]:
    from alignlens.similarity import INTERVAL_METRICS

    iv_rows, out_rows, ch_rows = [], [], []
    for i, t in enumerate(tdicts):
        if not is_v2(t):
            continue
        for v in _variants(t):
            for l in t["per_language"]:
                for m in INTERVAL_METRICS:
                    est, lo, hi = _series(t, v, l, m)
                    iv_rows += [[task, runs.roles[i], v, l, layer, m, est[layer], lo[layer], hi[layer]]
                                for layer in range(len(est))]
        o = t["outliers"]
        for layer, (dims, shares, flagged) in enumerate(zip(o["top_dims"], o["top_shares"], o["flagged"])):
            out_rows += [[task, runs.roles[i], layer, rank + 1, d, s, int(d in flagged)]
                         for rank, (d, s) in enumerate(zip(dims, shares))]
    for v, per_metric in (change or {}).get("variants", {}).items():
        for m, e in per_metric.items():
            for l, d in list(e["per_language"].items()) + ([("mean", e["mean"])] if "mean" in e else []):
                ch_rows += [[task, v, l, layer, m, x, lo, hi] for layer, (x, lo, hi) in
                            enumerate(zip(arr(d["delta"]), arr(d["lo"]), arr(d["hi"])))]
    tables = [Table("similarity_intervals.csv", ["task", "model", "variant", "language", "layer", "metric", "value",
                                                 "lo95", "hi95"], iv_rows),
              Table("similarity_outliers.csv", ["task", "model", "layer", "rank", "dimension", "share_of_squared_norm",
                                                "flagged"], out_rows)]
    if ch_rows:
        tables.append(Table("similarity_change.csv", ["task", "variant", "language", "layer", "metric",
                                                      "_minus_".join(runs.roles[::-1]), "lo95", "hi95"], ch_rows))
    return tables


def _v2_summary(runs: Runs, task: str, tdicts: list[dict], change: dict | None, why: str) -> list[str]:
    from alignlens import AlignlensError
    from alignlens.similarity import summary_interval

    idx = [i for i, t in enumerate(tdicts) if is_v2(t)]
    ref = tdicts[idx[0]]
    langs = _fit_others(ref)
    rows = _middle(int(ref["n_layers"]))
    lines = []
    for v in _variants(ref):
        bits = []
        for i in idx:
            t = tdicts[i]
            try:
                est, lo, hi = summary_interval(t, v, "pca_pearson", [l for l in langs if l in t["per_language"]], rows)
                bits.append(f"{runs.roles[i]} {est:.3f} [{lo:.3f}, {hi:.3f}]")
            except (AlignlensError, KeyError):
                continue
        if change and len(idx) == 2:
            try:
                d, lo, hi = summary_interval(tdicts[1], v, "pca_pearson", langs, rows, base=tdicts[0])
                verdict = "the interval excludes 0" if lo > 0 or hi < 0 else "the interval includes 0"
                bits.append(f"change {d:+.3f} [{lo:+.3f}, {hi:+.3f}] ({verdict}; paired bootstrap over items)")
            except (AlignlensError, KeyError):
                pass
        if bits:
            lines.append(f"• The paper's PCA similarity, {task} ({_variant_label(ref, v)}; PC1 Pearson r of English vs "
                         f"{', '.join(langs)}, mean over layers {rows[0]}–{rows[-1]}, 95% intervals): " + "; ".join(bits) + ".")
    for i in idx:
        o = tdicts[i]["outliers"]
        top_share = np.array([s[0] for s in o["top_shares"]])
        loading = arr(tdicts[i]["pca"]["top_dim_loading"])
        dims = sorted({d for f in o["flagged"] for d in f})
        if dims:
            n_flag = sum(bool(f) for f in o["flagged"])
            lines.append(f"• Outlier dimensions ({runs.roles[i]}, {task}): dimension(s) {', '.join(map(str, dims))} flagged "
                         f"at {n_flag} of {len(o['flagged'])} layers; the largest dimension holds "
                         f"{_pct_range(top_share)} of the pooled states' squared "
                         f"norm and PC1 loads {np.nanmin(loading):.2f}–{np.nanmax(loading):.2f} on it; the robust "
                         "variant is shown beside the paper's measure.")
    lines.append(f"• CKA in this report is debiased (unbiased HSIC, Song et al. 2012), n = {ref['n_items']} items "
                 f"(at least {ref['cka']['min_items']} needed); the biased CKA (cka_mean in similarity.csv) is pushed "
                 "towards 1 when items are few compared with dimensions.")
    if why:
        lines.append(f"• Similarity change, {task}: {why}")
    return lines
