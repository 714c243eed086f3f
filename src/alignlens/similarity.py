"""Representation similarity across languages on parallel items (pure functions, float64).

Inputs are captured hidden states per language, ``[n_items, n_layers, d_model]``, where
row ``i`` is the same item (a translation) in every language. Per layer we compare
English with every language by:

* mean per-item cosine similarity (raw, and after centring each language by its own
  mean over items at that layer);
* the paper's measure (Zhang et al. 2024): PCA with one component fitted jointly on a set
  of languages' states at that layer (all, or the paper's en de fr hi th sw ms; the others
  projected), then the Pearson r between English items' scores and the language's items' scores;
* linear CKA (Kornblith et al. 2019), on the centred ``n_items x d_model`` matrices, biased
  (HSIC_0, pushed towards 1 when items are few compared with dimensions) and debiased
  (unbiased HSIC, Song et al. 2012);
* parallel-item retrieval accuracy: fraction of English items whose translation is the
  nearest neighbour by (raw) cosine among that language's items.

`similarity_analysis` (what `alignlens analyze` writes) adds the paper's setting (fit languages,
2-D scatter), the residual dimensions that hold most of the states' squared norm and a robust
variant without them (or standardised), and paired bootstrap intervals over items: one resample
plan of item indices for every language and run (`bootstrap_counts`), every measure recomputed on
each resample (PC1 refitted exactly; unbiased HSIC over the resample's distinct items), bias-
corrected percentile intervals (`bc_interval`), and stored replicates so two runs' changes get
paired intervals (`similarity_change`).

NaN (e.g. a zero-variance input) is reported as ``None`` in the JSON report.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Union

import numpy as np
import scipy.linalg
from scipy import stats as sps
from scipy.sparse.linalg import svds

from alignlens import AlignlensError
from alignlens.config import SIMILARITY_ROBUST

if TYPE_CHECKING:
    import torch

__all__ = [
    "cosine_per_item",
    "mean_cosine",
    "linear_cka",
    "retrieval_accuracy",
    "pca_scores",
    "pca_pearson",
    "pairwise_matrices",
    "similarity_report",
]

ArrayLike = Union[np.ndarray, "torch.Tensor"]  # converted to float64 numpy


def _f64(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor (any dtype, incl. bf16)
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, x / np.where(norm > 0, norm, 1.0), np.nan)


def cosine_per_item(a: ArrayLike, b: ArrayLike, center: bool = False) -> np.ndarray:
    """Cosine of ``a[i]`` and ``b[i]`` for ``a``, ``b`` [n_items, d] -> [n_items].

    With ``center``, each matrix is first centred by its own mean over items.
    A zero vector gives NaN.
    """
    a, b = _f64(a), _f64(b)
    if center:
        a = a - a.mean(axis=0, keepdims=True)
        b = b - b.mean(axis=0, keepdims=True)
    return np.sum(_unit_rows(a) * _unit_rows(b), axis=-1)


def mean_cosine(a: ArrayLike, b: ArrayLike, center: bool = False) -> float:
    """Mean over items of ``cosine_per_item(a, b, center)`` (a, b [n_items, d])."""
    return float(np.mean(cosine_per_item(a, b, center)))


def linear_cka(x: ArrayLike, y: ArrayLike) -> float:
    """Linear CKA of ``x`` [n, d1] and ``y`` [n, d2] (rows = the same items), in [0, 1].

    CKA = <K, L>_F / (||K||_F ||L||_F) with K, L the Gram matrices of the column-centred
    inputs (equal to ||Y'X||_F^2 / (||X'X||_F ||Y'Y||_F), Kornblith et al. 2019).
    NaN if either input has zero variance.
    """
    x, y = _f64(x), _f64(y)
    if x.shape[0] != y.shape[0]:
        raise AlignlensError(f"linear_cka: {x.shape[0]} vs {y.shape[0]} items")
    x = x - x.mean(axis=0, keepdims=True)
    y = y - y.mean(axis=0, keepdims=True)
    k, l_ = x @ x.T, y @ y.T
    denom = np.linalg.norm(k) * np.linalg.norm(l_)
    return float(np.sum(k * l_) / denom) if denom > 0 else float("nan")


def retrieval_accuracy(queries: ArrayLike, keys: ArrayLike) -> float:
    """Fraction of items i whose nearest key by cosine is ``keys[i]`` (queries, keys [n, d]).

    Ties go to the lowest key index.
    """
    return _retrieval_units(_unit_rows(_f64(queries)), _unit_rows(_f64(keys)))


def _retrieval_units(q: np.ndarray, k: np.ndarray) -> float:
    sims = q @ k.T
    return float(np.mean(np.argmax(sims, axis=1) == np.arange(sims.shape[0])))


_EIGH_MAX = 1024  # widest X'X / XX' eigendecomposed directly in pca_scores


def pca_scores(x: ArrayLike) -> np.ndarray:
    """Scores on the first principal component of ``x`` [n, d] (centred) -> [n]. Sign is arbitrary.

    Uses an eigendecomposition of the smaller of X'X / XX' when it is at most 1024 wide,
    otherwise Lanczos (scipy svds) for the top component only.
    """
    x = _f64(x)
    x = x - x.mean(axis=0, keepdims=True)
    n, d = x.shape
    if min(n, d) <= _EIGH_MAX:
        if d <= n:
            _, v = scipy.linalg.eigh(x.T @ x, subset_by_index=[d - 1, d - 1], driver="evr")
            return x @ v[:, 0]
        w, u = scipy.linalg.eigh(x @ x.T, subset_by_index=[n - 1, n - 1], driver="evr")
        return u[:, 0] * np.sqrt(max(w[0], 0.0))  # X v = sigma u
    v0 = np.ones(min(n, d)) / np.sqrt(min(n, d))  # deterministic start vector
    _, _, vt = svds(x, k=1, v0=v0, random_state=0)
    return x @ vt[0]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(sps.pearsonr(a, b).statistic)


def pca_pearson(
    states: Mapping[str, ArrayLike], english: str = "en", fit_languages: Sequence[str] | None = None
) -> dict[str, float]:
    """Per language, Pearson r of English vs that language's scores on a 1-component PCA
    fitted jointly on the ``fit_languages``' states (default: all languages; ``states``: lang ->
    [n_items, d], one layer). Languages outside the fit set are projected on the fitted component
    (centred by the fit data's mean, as sklearn's ``PCA.transform``)."""
    langs = list(states)
    fit = langs if fit_languages is None else [lang for lang in langs if lang in set(fit_languages)]
    if english not in fit:
        raise AlignlensError(f"pca_pearson: English ({english!r}) must be among the fit languages {fit}")
    mats = {lang: _f64(states[lang]) for lang in langs}
    n = mats[english].shape[0]
    if len(fit) == len(langs):
        scores = pca_scores(np.concatenate([mats[lang] for lang in langs], axis=0)).reshape(len(langs), n)
        en = scores[langs.index(english)]
        return {lang: _pearson(en, scores[j]) for j, lang in enumerate(langs)}
    stacked = np.concatenate([mats[lang] for lang in fit], axis=0)
    mu = stacked.mean(axis=0)
    v = _top_components(stacked - mu, 1)[0][:, 0]
    sc = {lang: (mats[lang] - mu) @ v for lang in langs}
    return {lang: _pearson(sc[english], sc[lang]) for lang in langs}


def _normalised_gram(x: np.ndarray) -> np.ndarray:
    """Centred Gram matrix of x [n, d] divided by its Frobenius norm ([n, n]; NaN if zero)."""
    xc = x - x.mean(axis=0, keepdims=True)
    k = xc @ xc.T
    norm = np.linalg.norm(k)
    return k / norm if norm > 0 else np.full_like(k, np.nan)


def _cka_matrix(mats: Sequence[np.ndarray]) -> np.ndarray:
    """Linear CKA between all pairs of [n, d_i] matrices -> [m, m] (one Gram per matrix)."""
    grams = np.stack([_normalised_gram(m).reshape(-1) for m in mats])
    return grams @ grams.T


def _cosine_matrix(units: np.ndarray) -> np.ndarray:
    """Mean per-item cosine between all pairs of unit-row matrices ``units`` [m, n, d] -> [m, m]."""
    flat = units.reshape(units.shape[0], -1)
    return flat @ flat.T / units.shape[1]


def pairwise_matrices(states: Mapping[str, ArrayLike]) -> dict[str, np.ndarray]:
    """All language pairs at one layer (``states``: lang -> [n_items, d]).

    Returns {"cka": [n_lang, n_lang], "cosine": [n_lang, n_lang]} (mean per-item raw cosine),
    rows/columns in ``states`` order.
    """
    mats = [_f64(v) for v in states.values()]
    return {"cka": _cka_matrix(mats), "cosine": _cosine_matrix(np.stack([_unit_rows(m) for m in mats]))}


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


# ---- the paper's setting, debiased CKA, outliers, a robust variant, bootstrap intervals --------

#: The paper's PCA languages (`knowledge_finding.ipynb`: PC1 fitted jointly on these 7, Pearson r
#: of English vs each) and the languages of its 2-D scatter plots (a 2-component PCA on these 4).
PAPER_PCA_LANGUAGES = ("en", "de", "fr", "hi", "th", "sw", "ms")
PAPER_SCATTER_LANGUAGES = ("en", "de", "fr", "hi")
#: The robust variant computed beside the paper's measure (`robust_states`).
ROBUST_METHODS = SIMILARITY_ROBUST
#: Unbiased HSIC (debiased CKA) needs at least 4 distinct items.
CKA_MIN_ITEMS = 4
#: A residual dimension is an outlier at a layer when it holds at least OUTLIER_FACTOR / d_model of
#: the pooled states' squared norm (summed over items and languages); at most MAX_OUTLIER_DIMS.
OUTLIER_FACTOR = 20.0
MAX_OUTLIER_DIMS = 8
TOP_DIMS = 5
#: Bootstrap replicates refit PC1 on the resampled items (`_pc1_replicates`). With at most
#: PCA_BOOT_DIRECT_RANK principal axes (r), every replicate's covariance [r, r] is formed and LAPACK's
#: dsyevr gives its top eigenpair (exact to rounding); above, Rayleigh-Ritz in the full sample's top
#: PCA_BOOT_SUBSPACE axes, then Davidson steps (residual directions) until the relative residual
#: ||C u - theta u|| / theta of every replicate is below PCA_BOOT_TOL (at most PCA_BOOT_ITERATIONS).
#: Measured (CPU ms per call, 1000 resamples, 1 thread, d_model 640; synthetic spectra: mean of a
#: decaying, a dominant-outlier and a flat one / Gemma-3-270m mean-pooled states with pseudo-languages:
#: mean of 5 layers x raw, drop-outliers, standardize):
#:   (P, n, r)       before: RR in 32 axes + Davidson    direct      Davidson, 8 axes
#:   (3, 12, 35)     167 / 170                            33 / 32     50 / 42
#:   (4, 12, 47)     208 / 220                            49 / 49     51 / 43
#:   (7, 12, 83)     220 / 230                           127 / 127    57 / 49
#:   (7, 60, 419)    676 / 322                             -          342 / 209
#: (8 axes: as fast as 12 or 16 and faster than 4 or 24 at r = 83 and 419.)
PCA_BOOT_DIRECT_RANK = 48
PCA_BOOT_SUBSPACE = 8
PCA_BOOT_TOL = 1e-6
PCA_BOOT_ITERATIONS = 40
#: Measures with bootstrap intervals and stored replicates (on the pooled states), in report order.
INTERVAL_METRICS = ("pca_pearson", "cosine_mean", "cosine_mean_centered", "cka_mean_debiased", "retrieval_mean")
#: How `bootstrap_counts` draws its resamples (recorded in similarity.json: runs pair up when equal).
BOOTSTRAP_GENERATOR = "numpy.random.default_rng(seed).integers(0, n_items, size=(n_resamples, n_items))"
REPLICATE_ENCODING = ("base64 of little-endian float16 [n_layers, n_resamples]: each replicate minus the "
                      "point estimate (NaN where undefined)")


def unbiased_hsic(k: ArrayLike, l: ArrayLike) -> float:
    """Unbiased HSIC estimator (Song et al. 2012, eq. 5) of two Gram matrices [n, n], n >= 4:

    [tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)), K~, L~ with zero diagonal.
    NaN for n < 4."""
    k, l = _f64(k).copy(), _f64(l).copy()
    n = k.shape[0]
    if n < CKA_MIN_ITEMS:
        return float("nan")
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    one = np.ones(n)
    return float((np.sum(k * l) + k.sum() * l.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (one @ k @ (l @ one)))
                 / (n * (n - 3)))


def linear_cka_debiased(x: ArrayLike, y: ArrayLike) -> float:
    """Debiased linear CKA of ``x`` [n, d1] and ``y`` [n, d2] (rows = the same items): unbiased HSIC
    of the linear Grams, HSIC_u(K, L) / sqrt(HSIC_u(K, K) HSIC_u(L, L)) (Song et al. 2012; Nguyen
    et al. 2021, Kornblith's ``debiased=True``). Unlike `linear_cka`, it is not pushed towards 1 when
    items are few compared with dimensions; it can be slightly negative or exceed 1 by noise.
    NaN for n < 4 or when a self-HSIC is not positive."""
    x, y = _f64(x), _f64(y)
    if x.shape[0] != y.shape[0]:
        raise AlignlensError(f"linear_cka_debiased: {x.shape[0]} vs {y.shape[0]} items")
    x, y = x - x.mean(axis=0), y - y.mean(axis=0)  # HSIC_u is translation invariant; this only helps rounding
    w = np.ones((1, x.shape[0]))
    gx, gy = _WeightedGram(x @ x.T, w), _WeightedGram(y @ y.T, w)
    return float(_cka_from(gx, gy)[0])


class _WeightedGram:
    """A Gram matrix (zero diagonal) with its products by each resample's multiplicities w [B, n]."""

    def __init__(self, gram: np.ndarray, w: np.ndarray) -> None:
        self.k = np.array(gram, dtype=np.float64)
        np.fill_diagonal(self.k, 0.0)
        self.w = w
        self.w2 = w * w
        self.kw = w @ self.k  # [B, n]: (K w)_i (K symmetric)
        self.kw2 = self.w2 @ self.k
        self.self_hsic = _weighted_hsic(self, self)


def _weighted_hsic(a: _WeightedGram, b: _WeightedGram) -> np.ndarray:
    """Unbiased HSIC of Grams a.k, b.k on each bootstrap resample -> [B].

    A resample with multiplicities w (item i drawn w_i times) gives the U-statistic over the
    4-tuples of resampled rows that come from 4 distinct items (a duplicated item's copies never
    pair with each other: they would act as the diagonal the estimator leaves out):
    HSIC = (A + B - 2C) / N with, over distinct items, N = sum w_i w_j w_q w_r,
    A = sum w_i w_j w_q w_r K_ij L_ij, B = sum ... K_ij L_qr, C = sum ... K_ij L_iq, in closed form
    (power sums of w). With w = 1 this is `unbiased_hsic`."""
    w, w2 = a.w, a.w2
    w3 = w2 * w
    p1, p2, p3, p4 = w.sum(1), w2.sum(1), w3.sum(1), (w2 * w2).sum(1)
    pm = a.k * b.k
    pw, pw2 = w @ pm, w2 @ pm
    wpw, w2pw, w3pw, w2pw2 = (w * pw).sum(1), (w2 * pw).sum(1), (w3 * pw).sum(1), (w2 * pw2).sum(1)
    big_a = (p1**2 - p2) * wpw - 4 * p1 * w2pw + 4 * w3pw + 2 * w2pw2
    big_b = (w * a.kw).sum(1) * (w * b.kw).sum(1) - 4 * (w2 * a.kw * b.kw).sum(1) + 2 * w2pw2
    big_c = ((w * (p1[:, None] - w) * a.kw * b.kw).sum(1) - (w * a.kw2 * b.kw).sum(1) - (w * a.kw * b.kw2).sum(1)
             - p1 * w2pw + w2pw2 + 2 * w3pw)
    norm = p1**4 - 6 * p1**2 * p2 + 3 * p2**2 + 8 * p1 * p3 - 6 * p4  # sum over distinct 4-tuples
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, (big_a + big_b - 2 * big_c) / np.where(norm > 0, norm, 1.0), np.nan)


def _cka_from(a: _WeightedGram, b: _WeightedGram) -> np.ndarray:
    hab = _weighted_hsic(a, b)
    den = a.self_hsic * b.self_hsic
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, hab / np.sqrt(np.where(den > 0, den, 1.0)), np.nan)


def _top_components(xc: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top principal axes of centred ``xc`` [n, d]: (V [d, k'], eigenvalues of xc'xc [k'],
    descending), k' <= k (components with a zero eigenvalue dropped)."""
    n, d = xc.shape
    k = max(1, min(k, n, d))
    if min(n, d) > _EIGH_MAX:
        v0 = np.ones(min(n, d)) / np.sqrt(min(n, d))
        _, sv, vt = svds(xc, k=min(k, min(n, d) - 1), v0=v0, random_state=0)
        order = np.argsort(sv)[::-1]
        vals, vecs = sv[order] ** 2, vt[order].T
    elif d <= n:
        vals, vecs = scipy.linalg.eigh(xc.T @ xc, subset_by_index=[d - k, d - 1], driver="evr")
        vals, vecs = vals[::-1], vecs[:, ::-1]
    else:
        vals, u = scipy.linalg.eigh(xc @ xc.T, subset_by_index=[n - k, n - 1], driver="evr")
        vals, u = vals[::-1], u[:, ::-1]
        keep = vals > 0
        vecs = np.zeros((d, len(vals)))
        vecs[:, keep] = xc.T @ u[:, keep] / np.sqrt(vals[keep])
    keep = vals > max(float(vals[0]), 0.0) * 1e-12
    if not keep.any():
        return np.zeros((d, 1)), np.zeros(1)
    return vecs[:, keep], vals[keep]


def _pca_basis(xc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All principal axes of centred ``xc`` [m, d] with a non-negligible variance: (V [d, r]
    orthonormal, eigenvalues of xc'xc [r], descending), from an SVD."""
    _, sv, vt = np.linalg.svd(xc, full_matrices=False)
    keep = sv > max(float(sv[0]) if sv.size else 0.0, 1e-300) * 1e-10
    if not keep.any():
        return np.eye(xc.shape[1], 1), np.zeros(1)
    return vt[keep].T, sv[keep] ** 2


def _pc1_replicates(zf: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, float]:
    """PC1 of every bootstrap resample of the fit data (the exact top eigenvector, up to PCA_BOOT_TOL).

    zf [P, n, r]: coordinates of the P fit languages' items on the full sample's principal axes;
    w [B, n]: item multiplicities (each resampled item keeps its rows in every fit language). The
    resample's covariance is C = sum_rows omega z z' - zbar zbar' (omega = w / (P n)). Up to
    PCA_BOOT_DIRECT_RANK axes every C [r, r] is formed and its top eigenpair taken from LAPACK (exact
    to rounding); above, Rayleigh-Ritz in the top PCA_BOOT_SUBSPACE axes, then Davidson steps (each
    adds the orthogonalised residual C u - theta u to the replicate's subspace) until the replicate's
    relative residual is below PCA_BOOT_TOL. Returns (u [B, r] unit PC1 of each C, sign arbitrary;
    max relative residual ||C u - theta u|| / theta of the returned u, recomputed from zf)."""
    from scipy.linalg import lapack

    n_fit, n, r = zf.shape
    b_count = w.shape[0]
    m_tot = float(n_fit * n)
    zflat = zf.reshape(n_fit * n, r)
    zbar_all = (w @ zf.sum(axis=0)) / m_tot  # [B, r]

    def cmul(u: np.ndarray, idx: np.ndarray | slice) -> np.ndarray:  # C_b u_b, b in idx: [k, r] -> [k, r]
        omega = np.tile(w[idx].T, (n_fit, 1)) / m_tot
        zb = zbar_all[idx]
        return (zflat.T @ (omega * (zflat @ u.T))).T - zb * np.sum(zb * u, axis=1, keepdims=True)

    def relative_residual(res: np.ndarray, theta: np.ndarray) -> np.ndarray:  # ||res|| / |theta| [k] (0 for theta 0 or NaN)
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.where(np.abs(theta) > 0, np.linalg.norm(res, axis=1) / np.abs(theta), 0.0)
        return np.nan_to_num(rel, nan=0.0)

    def item_products(k: int) -> np.ndarray:  # each item's sum_p z z'[:, :k], flattened: [n, r * k]
        return np.einsum("pir,pik->irk", zf, zf[:, :, :k]).reshape(n, r * k)

    def columns(q: np.ndarray, k: int, sl: slice) -> np.ndarray:  # the first k columns of C_b, b in sl: [b, r, k]
        return (w[sl] @ q).reshape(-1, r, k) / m_tot - zbar_all[sl, :, None] * zbar_all[sl, None, :k]

    def top(hs: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Top eigenpair of each hs[a] [A, m, m] (upper triangle read): eigenvalues [A]; unit vectors
        into out [A, m]. LAPACK dsyevr for the top pair only: 2-2.5x faster than a batched
        numpy.linalg.eigh from m = 20 (measured), the same at m = 8."""
        m = hs.shape[-1]
        vals = np.empty(len(hs))
        for a, x in enumerate(hs):
            ev, evec, _, _, info = lapack.dsyevr(x, range="I", il=m, iu=m)
            if info != 0:  # (not seen) divide and conquer instead
                ev, evec = np.linalg.eigh(np.triu(x) + np.triu(x, 1).T)
                ev, evec = ev[::-1], evec[:, ::-1]
            vals[a], out[a] = ev[0], evec[:, 0]
        return vals

    u = np.zeros((b_count, r))
    if r <= PCA_BOOT_DIRECT_RANK:
        q = item_products(r)
        theta = np.concatenate([top(columns(q, r, slice(s, s + 256)), u[s : s + 256])  # 256 replicates' C at a time
                                for s in range(0, b_count, 256)] or [np.zeros(0)])
    else:
        k = min(r, PCA_BOOT_SUBSPACE)
        ce = columns(item_products(k), k, slice(None))  # C e_j of the first k axes [B, r, k]
        h = np.zeros((b_count, k + PCA_BOOT_ITERATIONS, k + PCA_BOOT_ITERATIONS))  # projected C (upper triangle)
        h[:, :k, :k] = ce[:, :k]
        theta = top(h[:, :k, :k], u[:, :k])
        cu = (ce @ u[:, :k, None])[:, :, 0]  # C u, from the images of the subspace's vectors
        active = np.arange(b_count)  # the replicates of the rows below (converged ones are frozen, not updated)
        vb = np.empty((b_count, 4, r))  # Davidson directions [len(active), t, r] ...
        cb = np.empty((b_count, 4, r))  # ... and C times them (capacity doubled when full)
        for t in range(PCA_BOOT_ITERATIONS):  # t directions so far
            res = cu[active] - theta[active, None] * u[active]
            done = relative_residual(res, theta[active]) < PCA_BOOT_TOL
            if done.all() or k == r:
                break
            if done.sum() * 4 >= len(done):  # drop the converged rows once they are a quarter (fewer copies)
                keep = ~done
                active, res, ce, vb, cb, done = active[keep], res[keep], ce[keep], vb[keep], cb[keep], done[keep]
            qv = res
            qv[:, :k] = 0.0
            for _pass in range(2 if t else 0):  # Gram-Schmidt twice against the earlier directions
                qv -= (np.transpose(vb[:, :t] @ qv[:, :, None], (0, 2, 1)) @ vb[:, :t])[:, 0]
            nq = np.linalg.norm(qv, axis=1, keepdims=True)
            qv = np.where(nq > 1e-300, qv / np.where(nq > 1e-300, nq, 1.0), 0.0)
            if t == vb.shape[1]:
                vb, cb = (np.concatenate([x, np.empty_like(x)], axis=1) for x in (vb, cb))
            vb[:, t], cb[:, t] = qv, cmul(qv, active)
            j = k + t  # the new direction's column of h
            h[active, :k, j] = cb[:, t, :k]
            h[active, k : j + 1, j] = (vb[:, : t + 1] @ cb[:, t, :, None])[:, :, 0]
            coef = np.empty((len(active), j + 1))
            vals = top(h[active, : j + 1, : j + 1], coef)
            ua = (coef[:, None, k:] @ vb[:, : t + 1])[:, 0]
            ua[:, :k] += coef[:, :k]
            cua = (coef[:, None, k:] @ cb[:, : t + 1])[:, 0] + (ce @ coef[:, :k, None])[:, :, 0]
            upd = ~done
            theta[active[upd]], u[active[upd]], cu[active[upd]] = vals[upd], ua[upd], cua[upd]
    rel = relative_residual(cmul(u, slice(None)) - theta[:, None] * u, theta)
    return u, float(rel.max()) if rel.size else 0.0


def bootstrap_counts(n_items: int, n_resamples: int, seed: int) -> np.ndarray:
    """Multiplicities [n_resamples, n_items] (float64) of `BOOTSTRAP_GENERATOR`'s resamples of item
    indices. The same item indices are resampled in every language (paired), and two runs with the
    same seed, n_items and n_resamples resample identically (so their replicates pair up)."""
    idx = np.random.default_rng(seed).integers(0, n_items, size=(n_resamples, n_items))
    counts = np.zeros((n_resamples, n_items))
    np.add.at(counts, (np.repeat(np.arange(n_resamples), n_items), idx.reshape(-1)), 1.0)
    return counts


def _weighted_pearson(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Pearson r of a[r], b[r] [R, n] with multiplicities w [R, n] -> [R] (NaN when a variance is 0)."""
    tot = w.sum(1, keepdims=True)
    a = a - (w * a).sum(1, keepdims=True) / tot
    b = b - (w * b).sum(1, keepdims=True) / tot
    cov, va, vb = (w * a * b).sum(1), (w * a * a).sum(1), (w * b * b).sum(1)
    scale = np.maximum((w * (a * a + b * b)).sum(1), 1e-300)
    ok = (va > 1e-24 * scale) & (vb > 1e-24 * scale)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, np.clip(cov / np.sqrt(np.where(ok, va * vb, 1.0)), -1.0, 1.0), np.nan)


def outlier_dimensions(mats: Sequence[ArrayLike], factor: float = OUTLIER_FACTOR, top: int = TOP_DIMS) -> dict:
    """Residual dimensions holding most of the pooled states' squared norm at one layer.

    ``mats``: each language's states [n_items, d] (uncentred). share_j = sum over items and
    languages of x_ij^2 / sum of all x^2. Returns {"top_dims": [top] (largest shares first),
    "top_shares": [top], "flagged": dims with share >= factor / d (at most MAX_OUTLIER_DIMS),
    "threshold": factor / d}."""
    sq = sum(np.square(_f64(m)).sum(axis=0) for m in mats)
    total = float(sq.sum())
    share = sq / total if total > 0 else np.zeros_like(sq)
    order = np.argsort(-share, kind="stable")
    thr = factor / share.shape[0]
    flagged = [int(j) for j in order[:MAX_OUTLIER_DIMS] if share[j] >= thr]
    return {"top_dims": [int(j) for j in order[:top]], "top_shares": [float(share[j]) for j in order[:top]],
            "flagged": flagged, "threshold": float(thr)}


def robust_states(mats: Mapping[str, np.ndarray], method: str, flagged: Sequence[int] = ()) -> dict[str, np.ndarray]:
    """The robust variant's states at one layer (lang -> [n_items, d]; fitted on all items and
    languages given, then fixed): "standardize" z-scores each dimension (mean and standard deviation
    over items x languages; constant dimensions become 0; Timkey & van Schijndel 2021), "drop-outliers"
    zeroes the ``flagged`` dimensions (`outlier_dimensions`), "none" returns the states."""
    if method not in ROBUST_METHODS:
        raise AlignlensError(f"unknown robust similarity variant {method!r} (use {', '.join(ROBUST_METHODS)})")
    if method == "none":
        return dict(mats)
    if method == "drop-outliers":
        out = {}
        for lang, m in mats.items():
            m = m.copy()
            m[:, list(flagged)] = 0.0
            out[lang] = m
        return out
    allm = np.concatenate(list(mats.values()), axis=0)
    mu, sd = allm.mean(axis=0), allm.std(axis=0)
    live = sd > 1e-12 * max(float(sd.max()), 1e-300)
    inv = np.where(live, 1.0 / np.where(live, sd, 1.0), 0.0)
    return {lang: (m - mu) * inv for lang, m in mats.items()}


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


def _encode(dev: np.ndarray) -> str:
    import base64

    return base64.b64encode(np.ascontiguousarray(dev, dtype="<f2").tobytes()).decode("ascii")


def decode_replicates(text: str, n_layers: int, n_resamples: int) -> np.ndarray:
    """Inverse of the replicate encoding (`REPLICATE_ENCODING`): deviations float64 [n_layers, n_resamples]."""
    import base64

    raw = base64.b64decode(text.encode("ascii"))
    if len(raw) != 2 * n_layers * n_resamples:
        raise AlignlensError(f"bootstrap replicates: {len(raw)} bytes, expected {2 * n_layers * n_resamples} "
                             f"({n_layers} layers x {n_resamples} resamples, float16)")
    return np.frombuffer(raw, dtype="<f2").astype(np.float64).reshape(n_layers, n_resamples)


def bc_interval(reps: np.ndarray, est: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Bias-corrected percentile bootstrap interval (Efron 1987, "BC") per row of ``reps`` [L, B]
    around the estimates ``est`` [L], ignoring NaN replicates (NaN where a row has none or its
    estimate is NaN).

    z0 = Phi^-1(share of replicates below the estimate, ties counting half), and the interval is the
    replicates' quantiles at Phi(2 z0 -+ z_(1+level)/2). With z0 = 0 (replicates centred on the
    estimate) it is the plain percentile interval; it moves with the replicates' bias (duplicated
    items shift a refitted PC1's correlations upward, so plain percentile intervals can lie wholly
    above the estimate); it contains the estimate unless fewer than (1 - level) / 2 of the replicates
    fall on one side of it."""
    from scipy.stats import norm

    reps, est = np.atleast_2d(reps), np.atleast_1d(np.asarray(est, dtype=np.float64))
    z = norm.ppf((1 + level) / 2)
    out = np.full((2, reps.shape[0]), np.nan)
    for i, row in enumerate(reps):
        row = row[np.isfinite(row)]
        if not row.size or not np.isfinite(est[i]):
            continue
        share = (np.sum(row < est[i]) + 0.5 * np.sum(row == est[i])) / row.size
        z0 = norm.ppf(np.clip(share, 0.5 / row.size, 1 - 0.5 / row.size))
        out[:, i] = np.quantile(row, norm.cdf([2 * z0 - z, 2 * z0 + z]))
    return out[0], out[1]


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
                          "direct_rank": PCA_BOOT_DIRECT_RANK, "tolerance": PCA_BOOT_TOL,
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


def similarity_change(base: Mapping, aligned: Mapping, level: float = 0.95, english: str = "en") -> dict:
    """Paired change aligned - base, from two runs' task entries of similarity.json
    (`similarity_analysis` output on the same items), of every measure whose replicates both store:
    per language the paper's measure (pca_pearson) of the PCA languages, and the mean over languages
    of every interval measure (when both runs average the same languages).

    Replicate b of the change is replicate b of ``aligned`` minus replicate b of ``base``: the same
    resample of item indices in both (checked: equal bootstrap plans), so the interval (`bc_interval`
    around the change of the estimates) is paired. Returns {"level", "languages", "variants":
    {"raw"/"robust": {metric: {"per_language": {lang: {"delta", "lo", "hi"} [n_layers]}, "mean":
    {"delta", "lo", "hi"}}}}}. AlignlensError when the runs cannot be paired (no replicates,
    different plans, layers or pooling)."""
    for name, t in (("base", base), ("aligned", aligned)):
        if "bootstrap" not in t:
            raise AlignlensError(f"{name} run has no bootstrap replicates (similarity.json of an older alignlens "
                                 "or --similarity-resamples 0)")
    pa, pb = base["bootstrap"]["plan"], aligned["bootstrap"]["plan"]
    if pa != pb:
        diff = ", ".join(f"{k} {pa.get(k)} vs {pb.get(k)}" for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k))
        raise AlignlensError(f"the runs' bootstrap plans differ ({diff}): their replicates do not pair up")
    if base.get("n_layers") != aligned.get("n_layers") or base.get("pooling") != aligned.get("pooling"):
        raise AlignlensError(f"the runs differ in layers ({base.get('n_layers')} vs {aligned.get('n_layers')}) or "
                             f"pooling ({base.get('pooling')} vs {aligned.get('pooling')})")
    out: dict = {"level": level, "languages": [], "variants": {}}
    variants = ["raw"]
    if "robust" in base and "robust" in aligned and base["robust"]["method"] == aligned["robust"]["method"]:
        variants.append("robust")
    for v in variants:
        res: dict = {}
        for m in INTERVAL_METRICS:
            entry: dict = {"per_language": {}}
            stored = [set(t["bootstrap"]["replicates"].get(v, {}).get("per_language", {}).get(m, {})) for t in (base, aligned)]
            for lang in [lang for lang in base["languages"] if lang in stored[0] & stored[1] and lang != english]:
                est = [_estimate(t, v, m, lang) for t in (base, aligned)]
                delta = est[1] - est[0]
                lo, hi = bc_interval(replicates(aligned, v, m, lang) - replicates(base, v, m, lang), delta, level)
                entry["per_language"][lang] = {"delta": _json(delta), "lo": _json(lo), "hi": _json(hi)}
                out["languages"] += [lang] if lang not in out["languages"] else []
            same_langs = (base["bootstrap"].get("mean_languages", {}).get(m)
                          == aligned["bootstrap"].get("mean_languages", {}).get(m))
            if same_langs and all(m in t["bootstrap"]["replicates"].get(v, {}).get("mean", {}) for t in (base, aligned)):
                est = [arr_of(t["intervals"]["mean"][v][m]["estimate"]) for t in (base, aligned)]
                delta = est[1] - est[0]
                lo, hi = bc_interval(mean_replicates(aligned, v, m) - mean_replicates(base, v, m), delta, level)
                entry["mean"] = {"delta": _json(delta), "lo": _json(lo), "hi": _json(hi),
                                 "languages": list(base["bootstrap"]["mean_languages"][m])}
            if entry["per_language"] or "mean" in entry:
                res[m] = entry
        out["variants"][v] = res
    return out


def arr_of(values: Sequence) -> np.ndarray:
    """A JSON list of numbers / null as float64 (null -> NaN)."""
    return np.array([np.nan if x is None else x for x in values], dtype=np.float64)


def _estimate(task: Mapping, variant: str, metric: str, lang: str) -> np.ndarray:
    src = task["per_language"] if variant == "raw" else task["robust"]["per_language"]
    return arr_of(src[lang][metric])


def replicates(task: Mapping, variant: str, metric: str, lang: str) -> np.ndarray:
    """One language's bootstrap replicates of ``metric`` from a task entry of similarity.json:
    float64 [n_layers, n_resamples] (point estimate + stored deviation). ``variant``: "raw" or "robust"."""
    boot = task.get("bootstrap")
    if not boot:
        raise AlignlensError("no bootstrap replicates (similarity.json of an older alignlens or --similarity-resamples 0)")
    text = boot["replicates"].get(variant, {}).get("per_language", {}).get(metric, {}).get(lang)
    if text is None:
        raise AlignlensError(f"no {variant} bootstrap replicates of {metric} for {lang} (stored: {boot.get('stored')})")
    est = _estimate(task, variant, metric, lang)
    return est[:, None] + decode_replicates(text, len(est), int(boot["plan"]["n_resamples"]))


def mean_replicates(task: Mapping, variant: str, metric: str) -> np.ndarray:
    """Bootstrap replicates [n_layers, n_resamples] of ``metric``'s mean over the task's
    ``bootstrap.mean_languages`` (as ``intervals.mean``)."""
    boot = task.get("bootstrap")
    text = (boot or {}).get("replicates", {}).get(variant, {}).get("mean", {}).get(metric)
    if text is None:
        raise AlignlensError(f"no {variant} bootstrap replicates of the mean {metric}")
    est = arr_of(task["intervals"]["mean"][variant][metric]["estimate"])
    return est[:, None] + decode_replicates(text, len(est), int(boot["plan"]["n_resamples"]))


def summary_interval(
    task: Mapping, variant: str, metric: str, langs: Sequence[str], rows: Sequence[int] | None = None,
    level: float = 0.95, base: Mapping | None = None,
) -> tuple[float, float, float]:
    """(estimate, lo, hi) of ``metric`` averaged over ``langs`` and ``rows`` (default all), with the
    `bc_interval` of the same average of each bootstrap replicate. With ``base`` (another
    run's task entry with the same bootstrap plan), of the paired change task - base instead."""
    def avg(t: Mapping) -> tuple[float, np.ndarray]:
        est = np.stack([_estimate(t, variant, metric, lang) for lang in langs])
        rep = np.stack([replicates(t, variant, metric, lang) for lang in langs])  # [langs, L, B]
        sel = slice(None) if rows is None else list(rows)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(np.nanmean(est[:, sel])), np.nanmean(rep[:, sel], axis=(0, 1))

    if base is not None and base["bootstrap"]["plan"] != task["bootstrap"]["plan"]:
        raise AlignlensError("the runs' bootstrap plans differ: their replicates do not pair up")
    est, rep = avg(task)
    if base is not None:
        est_b, rep_b = avg(base)
        est, rep = est - est_b, rep - rep_b
    lo, hi = bc_interval(rep[None], np.array([est]), level)
    return est, float(lo[0]), float(hi[0])
