"""The similarity measures of parallel items' states at one layer (pure functions, float64).

Inputs are each language's states ``[n_items, d]`` whose row ``i`` is the same item (a translation)
in every language: mean per-item cosine (raw or centred by the language's mean), linear CKA
(Kornblith et al. 2019) biased (HSIC_0, pushed towards 1 when items are few compared with
dimensions) and debiased (unbiased HSIC, Song et al. 2012; `resampling`'s per-resample estimator
with every item once), parallel-item retrieval accuracy, the paper's measure (Zhang et al. 2024:
PCA with one component fitted jointly on a set of languages, Pearson r of English's and the
language's item scores) with its PCA helpers, and the all-pairs matrices. Also the conversions the
other similarity modules share (`_f64`: torch or numpy to float64 numpy, `_unit_rows`). A
zero-variance input gives NaN.
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
from alignlens.similarity.resampling import _cka_from, _WeightedGram

if TYPE_CHECKING:
    import torch

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


#: Unbiased HSIC (debiased CKA) needs at least 4 distinct items.
CKA_MIN_ITEMS = 4


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
