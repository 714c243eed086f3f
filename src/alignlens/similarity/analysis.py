"""The similarity analysis of `alignlens analyze`: a task's entry of similarity.json.

Inputs are captured hidden states per language, ``[n_items, n_rows, d_model]``, row ``i`` the same
item (a translation) in every language. `similarity_report` compares English with every language at
every row (`REPORT_KEYS`: raw and centred cosine, PCA-Pearson, biased CKA and retrieval, of the
mean-pooled and last-token states) and gives the all-pairs matrices at chosen layers.
`similarity_analysis` adds the paper's setting (PCA fit languages, `resolve_pca_languages`; the 2-D
scatter), debiased CKA, the outlier dimensions and a robust variant (`outliers`), and paired
bootstrap intervals of `INTERVAL_METRICS` over items: one resample plan for every language and run
(`resampling.bootstrap_counts`), every measure recomputed on each resample (`_layer_measures`),
bias-corrected percentile intervals and the stored replicates that `change` pairs between runs.
NaN (e.g. a zero-variance input) is written as ``None``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from alignlens import AlignlensError
from alignlens.similarity import resampling
from alignlens.similarity.measures import (CKA_MIN_ITEMS, ArrayLike, _cka_matrix, _cosine_matrix, _f64, _pca_basis,
                                           _pearson, _retrieval_units, _top_components, _unit_rows,
                                           linear_cka_debiased, pca_pearson)
from alignlens.similarity.outliers import (MAX_OUTLIER_DIMS, OUTLIER_FACTOR, ROBUST_METHODS, outlier_dimensions,
                                           robust_states)
from alignlens.similarity.resampling import (BOOTSTRAP_GENERATOR, REPLICATE_ENCODING, _cka_from, _encode,
                                             _pc1_replicates, _weighted_pearson, _WeightedGram, bc_interval,
                                             bootstrap_counts)

def _json(x) -> list:
    """ndarray -> nested list with NaN as None."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 0:
        v = float(arr)
        return None if np.isnan(v) else v  # type: ignore[return-value]
    return [_json(v) for v in arr]


def _validate(name: str, states: Mapping[str, ArrayLike]) -> dict[str, ArrayLike]:
    """Check equal [n_items, n_layers, d_model] shapes; inputs are converted per layer later."""
    if not states:
        raise AlignlensError(f"{name}: no languages given")
    shapes = {lang: tuple(v.shape) for lang, v in states.items()}
    first = next(iter(shapes.values()))
    if len(first) != 3 or any(s != first for s in shapes.values()):
        raise AlignlensError(f"{name}: need [n_items, n_layers, d_model] of equal shape per language, got {shapes}")
    return dict(states)


#: Per-language keys of `similarity_report`, in output order.
REPORT_KEYS = ("cosine_mean", "cosine_last", "cosine_mean_centered", "cosine_last_centered",
               "pca_pearson", "cka_mean", "cka_last", "retrieval_mean", "retrieval_last")


def _report_inputs(
    mean_states: Mapping[str, ArrayLike], last_states: Mapping[str, ArrayLike], english: str,
) -> tuple[dict[str, ArrayLike], dict[str, ArrayLike], int, int]:
    """Validated (mean, last, n_items, n_layers) of `similarity_report`: the same languages, English
    among them, and equal [n_items, n_layers] in mean and last states."""
    mean = _validate("similarity_report(mean_states)", mean_states)
    last = _validate("similarity_report(last_states)", last_states)
    langs = list(mean)
    if english not in mean:
        raise AlignlensError(f"similarity_report: English ({english!r}) missing from {langs}")
    if set(last) != set(langs):
        raise AlignlensError(f"similarity_report: languages differ: {langs} vs {list(last)}")
    n_items, n_layers, _ = mean[english].shape
    if last[english].shape[:2] != (n_items, n_layers):
        raise AlignlensError("similarity_report: mean and last states disagree on n_items / n_layers")
    return mean, last, n_items, n_layers


def _pair_layers(layers_for_pairs: Sequence[int], n_layers: int) -> list[int]:
    """``layers_for_pairs`` as indices in 0..n_layers - 1 (negative ones counted from the end)."""
    pair_layers = []
    for layer in layers_for_pairs:
        if not -n_layers <= int(layer) < n_layers:
            raise AlignlensError(f"similarity_report: layer {layer} out of range for {n_layers} layers")
        pair_layers.append(int(layer) % n_layers)
    return pair_layers


def _report_layer(
    m: Sequence[np.ndarray], l_: Sequence[np.ndarray], langs: Sequence[str], english: str,
    pca_languages: Sequence[str] | None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One layer of `similarity_report`: ``m`` / ``l_`` the languages' mean-pooled / last-token
    states [n_items, d] (float64, ``langs`` order). Returns ({key: [n_lang] vs English} for
    `REPORT_KEYS`, {"cka", "cosine": [n_lang, n_lang]} of the mean-pooled states)."""
    en_idx = langs.index(english)
    um, ul = np.stack([_unit_rows(x) for x in m]), np.stack([_unit_rows(x) for x in l_])
    cos_m = _cosine_matrix(um)
    umc = np.stack([_unit_rows(x - x.mean(axis=0, keepdims=True)) for x in m])
    ulc = np.stack([_unit_rows(x - x.mean(axis=0, keepdims=True)) for x in l_])
    cka_m = _cka_matrix(m)  # all pairs: each Gram computed once
    pear = pca_pearson(dict(zip(langs, m)), english, pca_languages)
    cols = {
        "cosine_mean": cos_m[en_idx],
        "cosine_last": _cosine_matrix(ul)[en_idx],
        "cosine_mean_centered": _cosine_matrix(umc)[en_idx],
        "cosine_last_centered": _cosine_matrix(ulc)[en_idx],
        "pca_pearson": np.array([pear[lang] for lang in langs], dtype=np.float64),
        "cka_mean": cka_m[en_idx],
        "cka_last": _cka_matrix(l_)[en_idx],
        "retrieval_mean": np.array([_retrieval_units(um[en_idx], um[j]) for j in range(len(langs))]),
        "retrieval_last": np.array([_retrieval_units(ul[en_idx], ul[j]) for j in range(len(langs))]),
    }
    return cols, {"cka": cka_m, "cosine": cos_m}


def similarity_report(
    mean_states: Mapping[str, ArrayLike],
    last_states: Mapping[str, ArrayLike],
    layers_for_pairs: Sequence[int],
    english: str = "en",
    pca_languages: Sequence[str] | None = None,
) -> dict:
    """JSON-able similarity report.

    ``mean_states`` / ``last_states``: lang -> [n_items, n_layers, d_model] (mean-pooled /
    last-token states of parallel items; the same languages and n_items / n_layers).
    ``layers_for_pairs``: layers (negative indices allowed) for the all-pairs matrices.

    Schema::

        {"n_items": int, "n_layers": L, "languages": [...],
         "per_language": {lang: {"cosine_mean": [L], "cosine_last": [L],
             "cosine_mean_centered": [L], "cosine_last_centered": [L], "pca_pearson": [L],
             "cka_mean": [L], "cka_last": [L], "retrieval_mean": [L], "retrieval_last": [L]}},
         "pairwise": {"layers": [...], "languages": [...],
             "cka_mean": [per layer n_lang x n_lang], "cosine_mean": [same]}}

    ``pca_pearson`` uses the mean-pooled states, fitted on ``pca_languages`` (default: all; the
    others projected, see `pca_pearson`); retrieval uses raw cosine. `similarity_analysis` adds
    the paper's setting, debiased CKA, outliers, a robust variant and bootstrap intervals.
    """
    mean, last, n_items, n_layers = _report_inputs(mean_states, last_states, english)
    langs = list(mean)
    pair_layers = _pair_layers(layers_for_pairs, n_layers)
    res = {lang: {k: np.full(n_layers, np.nan) for k in REPORT_KEYS} for lang in langs}
    pairs = {}
    for layer in range(n_layers):
        # float64 one layer at a time (whole [n, L, d] inputs in float64 would not fit for big models)
        m = [np.ascontiguousarray(_f64(mean[lang][:, layer])) for lang in langs]
        l_ = [np.ascontiguousarray(_f64(last[lang][:, layer])) for lang in langs]
        cols, pair = _report_layer(m, l_, langs, english, pca_languages)
        for j, lang in enumerate(langs):
            for k, v in cols.items():
                res[lang][k][layer] = v[j]
        if layer in pair_layers:
            pairs[layer] = pair
    return {
        "n_items": int(n_items),
        "n_layers": int(n_layers),
        "languages": langs,
        "per_language": {lang: {k: _json(v) for k, v in res[lang].items()} for lang in langs},
        "pairwise": {
            "layers": pair_layers,
            "languages": langs,
            "cka_mean": [_json(pairs[layer]["cka"]) for layer in pair_layers],
            "cosine_mean": [_json(pairs[layer]["cosine"]) for layer in pair_layers],
        },
    }


#: The paper's PCA languages (`knowledge_finding.ipynb`: PC1 fitted jointly on these 7, Pearson r
#: of English vs each) and the languages of its 2-D scatter plots (a 2-component PCA on these 4).
PAPER_PCA_LANGUAGES = ("en", "de", "fr", "hi", "th", "sw", "ms")
PAPER_SCATTER_LANGUAGES = ("en", "de", "fr", "hi")
#: Measures with bootstrap intervals and stored replicates (on the pooled states), in report order.
INTERVAL_METRICS = ("pca_pearson", "cosine_mean", "cosine_mean_centered", "cka_mean_debiased", "retrieval_mean")


def resolve_pca_languages(langs: Sequence[str], requested: Sequence[str] | None, english: str = "en") -> list[str]:
    """The PCA fit languages: ``requested`` (must include English and be among ``langs``), else the
    paper's 7 (`PAPER_PCA_LANGUAGES`) when all of them are present, else all of ``langs``."""
    if requested is None:
        return list(PAPER_PCA_LANGUAGES) if set(PAPER_PCA_LANGUAGES) <= set(langs) else list(langs)
    missing = [lang for lang in requested if lang not in langs]
    if missing:
        raise AlignlensError(f"PCA languages {', '.join(missing)} are not among the analysed languages "
                             f"({', '.join(langs)})")
    if english not in requested or len(requested) < 2:
        raise AlignlensError(f"PCA languages must include English ({english}) and at least one other "
                             f"(got {', '.join(requested)})")
    return list(requested)


def _scatter_languages(langs: Sequence[str], english: str) -> list[str]:
    """The paper's en/de/fr/hi where present (at least English and one other), else English and the
    first three others."""
    paper = [lang for lang in PAPER_SCATTER_LANGUAGES if lang in langs]
    if english in paper and len(paper) >= 2:
        return paper
    return [english] + [lang for lang in langs if lang != english][:3]


def default_scatter_layers(n_rows: int) -> list[int]:
    """Rows 0 (embedding output), 1/3, 2/3 and the last of ``n_rows`` hidden-state rows."""
    last = n_rows - 1
    return sorted({0, last // 3, (2 * last) // 3, last})


def _layer_measures(
    mats: Mapping[str, np.ndarray], english: str, fit: Sequence[str], w: np.ndarray | None,
) -> tuple[dict, dict, dict]:
    """One layer's interval measures of every language vs English on states ``mats`` (lang ->
    [n, d] float64). Returns (points {metric: {lang: float}}, replicates {metric: {lang: [B]}} for
    the non-English languages (empty without ``w``), PCA extras {"evr", "v1", "pairs"})."""
    langs = list(mats)
    n = mats[english].shape[0]
    ones = np.ones((1, n))
    ws = [ones] if w is None else [ones, w]
    points: dict = {m: {} for m in INTERVAL_METRICS}
    reps: dict = {m: {} for m in INTERVAL_METRICS} if w is not None else {}
    units = {lang: _unit_rows(m) for lang, m in mats.items()}
    centred = {lang: m - m.mean(axis=0) for lang, m in mats.items()}
    gx = centred[english] @ centred[english].T
    kg = [_WeightedGram(gx, ww) for ww in ws]
    for lang in langs:
        # raw cosine of each item's states
        cos = np.sum(units[english] * units[lang], axis=1)
        points["cosine_mean"][lang] = float(np.mean(cos))
        # cosine after centring by the (resampled) mean: from the Grams of the centred states
        gxy = centred[english] @ centred[lang].T
        gy = centred[lang] @ centred[lang].T
        vals = []
        for ww in ws:
            mx = (ww @ gx) / n
            num = np.diag(gxy)[None] - (ww @ gxy.T) / n - (ww @ gxy) / n + ((ww * (ww @ gxy.T)).sum(1) / n**2)[:, None]
            nx = np.diag(gx)[None] - 2 * mx + ((ww * mx).sum(1) / n)[:, None]
            my = (ww @ gy) / n
            ny = np.diag(gy)[None] - 2 * my + ((ww * my).sum(1) / n)[:, None]
            den = nx * ny
            with np.errstate(invalid="ignore", divide="ignore"):
                c = np.where(den > 0, num / np.sqrt(np.where(den > 0, den, 1.0)), np.nan)
            vals.append((ww * np.where(ww > 0, c, 0.0)).sum(1) / n)  # each resampled copy counts
        points["cosine_mean_centered"][lang] = float(vals[0][0])
        # debiased CKA
        lg = [_WeightedGram(gy, ww) for ww in ws]
        cka = [_cka_from(a, b) for a, b in zip(kg, lg)]
        points["cka_mean_debiased"][lang] = float(cka[0][0])
        # retrieval: is item i's translation the nearest (cosine) among the (resampled) items?
        sims = units[english] @ units[lang].T
        diag = np.diag(sims)[:, None]
        j_after = np.triu(np.ones((n, n), dtype=bool), 1)
        beats = np.where(j_after, sims > diag, sims >= diag)
        np.fill_diagonal(beats, False)
        hits = ~beats.any(axis=1)
        points["retrieval_mean"][lang] = float(np.mean(hits))
        if w is not None and lang != english:
            reps["cosine_mean"][lang] = w @ cos / n
            reps["cosine_mean_centered"][lang] = vals[1]
            reps["cka_mean_debiased"][lang] = cka[1]
            present = (w > 0).astype(np.float64)
            rep_hits = (present @ beats.T.astype(np.float64)) == 0
            reps["retrieval_mean"][lang] = (w * rep_hits).sum(1) / n
    # the paper's measure: PC1 fitted jointly on the fit languages, Pearson r of the items' scores
    stacked = np.concatenate([mats[lang] for lang in fit], axis=0)
    mu = stacked.mean(axis=0)
    xc = stacked - mu
    v, ev = _pca_basis(xc)
    total = float(np.sum(xc * xc))
    z = {lang: (mats[lang] - mu) @ v for lang in langs}  # [n, r] coordinates on all principal axes
    for lang in langs:
        points["pca_pearson"][lang] = _pearson(z[english][:, 0], z[lang][:, 0])
    pairs = np.array([[_pearson(z[a][:, 0], z[b][:, 0]) for b in fit] for a in fit])
    extras = {"evr": float(ev[0] / total) if total > 0 else float("nan"), "v1": v[:, 0], "pairs": pairs,
              "residual": 0.0}
    if w is not None:
        u, extras["residual"] = _pc1_replicates(np.stack([z[lang] for lang in fit]), w)
        sc_en = u @ z[english].T  # [B, n]
        for lang in langs:
            if lang != english:
                reps["pca_pearson"][lang] = _weighted_pearson(sc_en, u @ z[lang].T, w)
    return points, reps, extras


def _scatter_projection(mats: Mapping[str, np.ndarray], langs: Sequence[str]) -> tuple[list, dict]:
    """The 2-D PCA scatter at one row: a 2-component PCA fitted on ``langs``' states ``mats``
    (lang -> [n, d] float64), each axis signed so its largest loading is positive. Returns (explained
    variance ratios [2] as JSON, {lang: [[pc1, pc2]] per item} as JSON)."""
    xs = np.concatenate([mats[lang] for lang in langs], axis=0)
    mu = xs.mean(axis=0)
    v2, ev2 = _top_components(xs - mu, 2)
    v2 = v2 * np.where(v2[np.argmax(np.abs(v2), axis=0), range(v2.shape[1])] < 0, -1.0, 1.0)
    tot = float(np.sum((xs - mu) ** 2))
    evr = _json(ev2 / tot if tot > 0 else np.full(len(ev2), np.nan))
    return evr, {lang: _json((mats[lang] - mu) @ v2) for lang in langs}


class _AnalysisRows:
    """`similarity_analysis`'s per-row results, filled one hidden-state row at a time (`add`).

    pts {variant: {metric: {lang: [n_rows]}}}; reps {variant: {metric: {lang: [n_rows, B]}}} for the
    non-English languages; cka_last {lang: [n_rows]} (debiased, last token); outl {top_dims,
    top_shares, flagged: per row}; evr, loading [n_rows] (PC1's explained variance ratio and |loading|
    on the top outlier dimension); pairs (per row, fit x fit Pearson r as JSON); scatter (the JSON
    "scatter" entry); residual {variant: max relative residual of the PC1 refits}."""

    def __init__(self, langs: Sequence[str], english: str, variants: Sequence[str], n_rows: int, n_resamples: int,
                 scatter_langs: list[str], rows_scatter: list[int]) -> None:
        self.langs, self.english, self.variants = list(langs), english, list(variants)
        self.others = [lang for lang in langs if lang != english]
        self.rows_scatter = rows_scatter
        self.pts = {v: {m: {lang: np.full(n_rows, np.nan) for lang in langs} for m in INTERVAL_METRICS}
                    for v in variants}
        self.reps = {v: {m: {lang: np.full((n_rows, n_resamples), np.nan) for lang in self.others}
                         for m in INTERVAL_METRICS} for v in variants}
        self.cka_last = {lang: np.full(n_rows, np.nan) for lang in langs}
        self.outl: dict[str, list] = {"top_dims": [], "top_shares": [], "flagged": []}
        self.evr, self.loading, self.pairs = np.full(n_rows, np.nan), np.full(n_rows, np.nan), []
        self.scatter = {"languages": scatter_langs, "layers": rows_scatter, "explained_variance_ratio": [],
                        "points": []}
        self.residual = {v: 0.0 for v in variants}

    def add(self, row: int, mats: Mapping[str, np.ndarray], last: Mapping[str, np.ndarray], fit: Sequence[str],
            robust: str, w: np.ndarray | None) -> None:
        """Row ``row``'s measures from the pooled states ``mats`` and last-token states ``last``
        (lang -> [n, d] float64), PC1 fitted on ``fit``, bootstrap multiplicities ``w`` [B, n] or None."""
        od = outlier_dimensions(list(mats.values()))
        for k in self.outl:
            self.outl[k].append(od[k])
        for v in self.variants:
            states = mats if v == "raw" else robust_states(mats, robust, od["flagged"])
            p, r, ex = _layer_measures(states, self.english, fit, w)
            self.residual[v] = max(self.residual[v], ex["residual"])
            for m in INTERVAL_METRICS:
                for lang in self.langs:
                    self.pts[v][m][lang][row] = p[m][lang]
                for lang in self.others if w is not None else ():
                    self.reps[v][m][lang][row] = r[m][lang]
            if v == "raw":
                self.evr[row] = ex["evr"]
                self.loading[row] = abs(float(ex["v1"][od["top_dims"][0]]))
                self.pairs.append(_json(ex["pairs"]))
        for lang in self.langs:
            self.cka_last[lang][row] = linear_cka_debiased(last[self.english], last[lang])
        if row in self.rows_scatter:
            evr, points = _scatter_projection(mats, self.scatter["languages"])
            self.scatter["explained_variance_ratio"].append(evr)
            self.scatter["points"].append(points)


def _rows_doc(n_rows: int, embedding_row: bool) -> dict:
    """similarity.json's "rows": what each hidden-state row is."""
    if not embedding_row:
        return {"count": n_rows, "r": "output of block r (blocks.{r}.hook_resid_post)"}
    return {"count": n_rows, "0": "embedding output (blocks.0.hook_resid_pre = HF hidden_states[0], with "
            "the model's embedding scaling and position embeddings)",
            "r": "output of block r - 1 (blocks.{r-1}.hook_resid_post = HF hidden_states[r], except that HF's "
                 "last entry is after the final norm and this one before it)"}


def _analysis_fields(acc: _AnalysisRows, fit: Sequence[str], pooling: str, embedding_row: bool, n: int, n_rows: int,
                     d: int) -> dict:
    """The format-2 keys "format", "pooling", "rows", "pca", "scatter", "outliers" and "cka"."""
    return {
        "format": 2,
        "pooling": pooling,
        "rows": _rows_doc(n_rows, embedding_row),
        "pca": {"fit_languages": fit, "projected_languages": [lang for lang in acc.langs if lang not in fit],
                "n_components": 1, "explained_variance_ratio": _json(acc.evr), "top_dim_loading": _json(acc.loading),
                "pearson_pairs": acc.pairs},
        "scatter": acc.scatter,
        "outliers": {"rule": f"share of the pooled states' squared norm (items x languages) >= {OUTLIER_FACTOR:g} / "
                             f"d_model, at most {MAX_OUTLIER_DIMS}",
                     "threshold": OUTLIER_FACTOR / d, "d_model": int(d), **acc.outl},
        "cka": {"cka_mean": "linear CKA, biased (HSIC_0 of centred Grams; pushed towards 1 when items << d_model)",
                "cka_mean_debiased": "linear CKA from the unbiased HSIC (Song et al. 2012)",
                "min_items": CKA_MIN_ITEMS, "n_items": int(n)},
    }


def _variant_intervals(acc: _AnalysisRows, v: str, fit: Sequence[str], mean_langs: Mapping[str, list[str]],
                       level: float, iv: dict) -> dict:
    """Variant ``v``'s BC intervals into ``iv`` (per language under "per_language" for "raw", else
    "robust"; the mean over ``mean_langs`` under "mean".<v>). Returns the variant's stored replicates
    {"per_language": {"pca_pearson": {lang: text}}, "mean": {metric: text}} (`REPLICATE_ENCODING`)."""
    pts, reps = acc.pts[v], acc.reps[v]
    target = iv.setdefault("per_language" if v == "raw" else "robust", {})
    enc: dict = {"per_language": {"pca_pearson": {}}, "mean": {}}
    for lang in acc.others:
        for m in INTERVAL_METRICS:
            rr = reps[m][lang]
            lo, hi = bc_interval(rr, pts[m][lang], level)
            target.setdefault(lang, {})[m] = {"lo": _json(lo), "hi": _json(hi)}
            if m == "pca_pearson" and lang in fit:
                enc["per_language"][m][lang] = _encode(rr - pts[m][lang][:, None])
    for m in INTERVAL_METRICS:  # the mean over languages, and its replicates
        if not mean_langs[m]:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN layers stay NaN
            est = np.nanmean([pts[m][lang] for lang in mean_langs[m]], axis=0)
            rr = np.nanmean([reps[m][lang] for lang in mean_langs[m]], axis=0)
        lo, hi = bc_interval(rr, est, level)
        iv.setdefault("mean", {}).setdefault(v, {})[m] = {"estimate": _json(est), "lo": _json(lo), "hi": _json(hi)}
        enc["mean"][m] = _encode(rr - est[:, None])
    return enc


def _bootstrap_fields(acc: _AnalysisRows, fit: Sequence[str], level: float, n_resamples: int, seed: int,
                      n: int) -> tuple[dict, dict]:
    """similarity.json's "intervals" and "bootstrap" entries (plan, PC1 refit, stored replicates)."""
    iv: dict = {"level": level, "method": "bias-corrected percentile bootstrap (BC) over items, resampled "
                                          "jointly in every language",
                "n_resamples": n_resamples, "seed": seed, "per_language": {}}
    mean_langs = {m: [lang for lang in (fit if m == "pca_pearson" else acc.langs) if lang != acc.english]
                  for m in INTERVAL_METRICS}
    enc = {v: _variant_intervals(acc, v, fit, mean_langs, level, iv) for v in acc.variants}
    boot = {"plan": {"generator": BOOTSTRAP_GENERATOR, "seed": seed, "n_items": int(n), "n_resamples": n_resamples},
            "pca_refit": {"method": "PC1 refitted on every resample (up to direct_rank principal axes: each "
                                    "resample's covariance and LAPACK dsyevr's top eigenpair; above: "
                                    "Rayleigh-Ritz in the top axes, then Davidson steps)",
                          # read from the module at call time: the values the solver used
                          "direct_rank": resampling.PCA_BOOT_DIRECT_RANK, "tolerance": resampling.PCA_BOOT_TOL,
                          "max_relative_residual": acc.residual},
            "encoding": REPLICATE_ENCODING, "replicates": enc,
            "mean_languages": mean_langs,
            "stored": "per language: the paper's measure (pca_pearson) of the PCA languages; "
                      "every measure: the mean over mean_languages (as intervals.mean)"}
    return iv, boot


def _scatter_rows(scatter_layers: Sequence[int] | None, n_rows: int) -> list[int]:
    """The rows of the 2-D scatter: ``scatter_layers`` (checked) or `default_scatter_layers`."""
    rows = [int(r) for r in (default_scatter_layers(n_rows) if scatter_layers is None else scatter_layers)]
    for r in rows:
        if not 0 <= r < n_rows:
            raise AlignlensError(f"similarity_analysis: scatter layer {r} out of range 0..{n_rows - 1}")
    return rows


def similarity_analysis(
    mean_states: Mapping[str, ArrayLike],
    last_states: Mapping[str, ArrayLike],
    layers_for_pairs: Sequence[int],
    english: str = "en",
    *,
    pooling: str = "prompt",
    embedding_row: bool = True,
    pca_languages: Sequence[str] | None = None,
    scatter_layers: Sequence[int] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    robust: str = "drop-outliers",
    level: float = 0.95,
) -> dict:
    """`similarity_report` plus the paper's PCA setting, debiased CKA, outlier dimensions, a robust
    variant and paired bootstrap intervals (JSON-able).

    ``mean_states``: lang -> [n_items, n_rows, d_model], the states pooled as ``pooling`` (recorded);
    with ``embedding_row`` row 0 is the embedding output and row r the output of block r - 1 (HF
    ``hidden_states[r]``, before the final norm). ``last_states``: the same at the last token.
    ``pca_languages``: PC1 fit set (`resolve_pca_languages`). ``scatter_layers``: rows of the 2-D
    PCA scatter (default `default_scatter_layers`). ``n_resamples`` (0: none) bootstrap resamples of
    the item indices, the same in every language (`bootstrap_counts` with ``seed``). ``robust``:
    `ROBUST_METHODS`.

    Added keys (per task): "format": 2, "pooling", "rows"; per_language.<lang>.cka_mean_debiased /
    cka_last_debiased [n_rows]; "pca": {fit_languages, projected_languages, explained_variance_ratio,
    top_dim_loading (|PC1 loading| on the top outlier dimension), pearson_pairs [row][fit x fit]};
    "scatter": {languages, layers, explained_variance_ratio, points [layer] {lang: [[pc1, pc2]]}};
    "outliers": per-row top dimensions and shares, flagged dimensions; "robust": {method,
    per_language.<lang>.<metric> [n_rows]}; "cka": estimator notes and min_items; "intervals":
    {level, n_resamples, per_language / robust: <lang>.<metric>.{lo, hi} [n_rows]} for the non-English
    languages and `INTERVAL_METRICS`, and "mean".{raw, robust}.<metric>.{estimate, lo, hi} of the mean
    over languages; "bootstrap": {plan, encoding, mean_languages, replicates.{raw, robust}.{per_language.
    pca_pearson.<lang>, mean.<metric>}}
    (replicates minus the point estimate, for paired changes between runs: `similarity_change`; per
    language only pca_pearson of the PCA languages, and every measure's mean over languages, which
    "intervals.mean" also holds).
    """
    mean = _validate("similarity_analysis(mean_states)", mean_states)
    langs = list(mean)
    if english not in langs:
        raise AlignlensError(f"similarity_analysis: English ({english!r}) missing from {langs}")
    fit = resolve_pca_languages(langs, pca_languages, english)
    out = similarity_report(mean_states, last_states, layers_for_pairs, english, pca_languages=fit)
    n, n_rows, d = mean[english].shape
    last = _validate("similarity_analysis(last_states)", last_states)
    if robust not in ROBUST_METHODS:
        raise AlignlensError(f"unknown robust similarity variant {robust!r} (use {', '.join(ROBUST_METHODS)})")
    scatter_langs = _scatter_languages(langs, english)
    rows_scatter = _scatter_rows(scatter_layers, n_rows)
    w = bootstrap_counts(n, n_resamples, seed) if n_resamples else None
    variants = ["raw"] + (["robust"] if robust != "none" else [])
    acc = _AnalysisRows(langs, english, variants, n_rows, n_resamples, scatter_langs, rows_scatter)
    for row in range(n_rows):
        mats = {lang: np.ascontiguousarray(_f64(mean[lang][:, row])) for lang in langs}
        acc.add(row, mats, {lang: _f64(last[lang][:, row]) for lang in langs}, fit, robust, w)
    for lang in langs:
        entry = out["per_language"][lang]
        entry["cka_mean_debiased"] = _json(acc.pts["raw"]["cka_mean_debiased"][lang])
        entry["cka_last_debiased"] = _json(acc.cka_last[lang])
    out.update(_analysis_fields(acc, fit, pooling, embedding_row, n, n_rows, d))
    if "robust" in variants:
        out["robust"] = {"method": robust, "per_language": {
            lang: {m: _json(acc.pts["robust"][m][lang]) for m in INTERVAL_METRICS} for lang in langs}}
    if w is not None:
        out["intervals"], out["bootstrap"] = _bootstrap_fields(acc, fit, level, n_resamples, seed, n)
    return out
