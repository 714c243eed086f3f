"""Representation similarity across languages on parallel items (pure functions, float64).

Inputs are captured hidden states per language, ``[n_items, n_layers, d_model]``, where
row ``i`` is the same item (a translation) in every language. Per layer we compare
English with every language by:

* mean per-item cosine similarity (raw, and after centring each language by its own
  mean over items at that layer);
* the paper's measure (Zhang et al. 2024): PCA with one component fitted jointly on all
  languages' states at that layer, then the Pearson r between English items' scores and
  the language's items' scores (depends on the set of languages passed in);
* linear CKA (Kornblith et al. 2019), on the centred ``n_items x d_model`` matrices;
* parallel-item retrieval accuracy: fraction of English items whose translation is the
  nearest neighbour by (raw) cosine among that language's items.

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


def pca_pearson(states: Mapping[str, ArrayLike], english: str = "en") -> dict[str, float]:
    """Per language, Pearson r of English vs that language's scores on a 1-component PCA
    fitted jointly on all languages' states (``states``: lang -> [n_items, d], one layer)."""
    langs = list(states)
    mats = [_f64(states[lang]) for lang in langs]
    n = mats[0].shape[0]
    scores = pca_scores(np.concatenate(mats, axis=0)).reshape(len(langs), n)
    en = scores[langs.index(english)]
    return {lang: _pearson(en, scores[j]) for j, lang in enumerate(langs)}


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


def similarity_report(
    mean_states: Mapping[str, ArrayLike],
    last_states: Mapping[str, ArrayLike],
    layers_for_pairs: Sequence[int],
    english: str = "en",
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

    ``pca_pearson`` uses the mean-pooled states; retrieval uses raw cosine.
    """
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
    pair_layers = []
    for layer in layers_for_pairs:
        if not -n_layers <= int(layer) < n_layers:
            raise AlignlensError(f"similarity_report: layer {layer} out of range for {n_layers} layers")
        pair_layers.append(int(layer) % n_layers)

    keys = ["cosine_mean", "cosine_last", "cosine_mean_centered", "cosine_last_centered",
            "pca_pearson", "cka_mean", "cka_last", "retrieval_mean", "retrieval_last"]
    res = {lang: {k: np.full(n_layers, np.nan) for k in keys} for lang in langs}
    en_idx = langs.index(english)
    pairs = []
    for layer in range(n_layers):
        # float64 one layer at a time (whole [n, L, d] inputs in float64 would not fit for big models)
        m = [np.ascontiguousarray(_f64(mean[lang][:, layer])) for lang in langs]
        l_ = [np.ascontiguousarray(_f64(last[lang][:, layer])) for lang in langs]
        um, ul = np.stack([_unit_rows(x) for x in m]), np.stack([_unit_rows(x) for x in l_])
        cos_m = _cosine_matrix(um)
        umc = np.stack([_unit_rows(x - x.mean(axis=0, keepdims=True)) for x in m])
        ulc = np.stack([_unit_rows(x - x.mean(axis=0, keepdims=True)) for x in l_])
        cka_m = _cka_matrix(m)  # all pairs: each Gram computed once
        cols = {
            "cosine_mean": cos_m[en_idx],
            "cosine_last": _cosine_matrix(ul)[en_idx],
            "cosine_mean_centered": _cosine_matrix(umc)[en_idx],
            "cosine_last_centered": _cosine_matrix(ulc)[en_idx],
            "cka_mean": cka_m[en_idx],
            "cka_last": _cka_matrix(l_)[en_idx],
        }
        pear = pca_pearson(dict(zip(langs, m)), english)
        for j, lang in enumerate(langs):
            r = res[lang]
            for k, v in cols.items():
                r[k][layer] = v[j]
            r["pca_pearson"][layer] = pear[lang]
            r["retrieval_mean"][layer] = _retrieval_units(um[en_idx], um[j])
            r["retrieval_last"][layer] = _retrieval_units(ul[en_idx], ul[j])
        if layer in pair_layers:
            pairs.append((layer, {"cka": cka_m, "cosine": cos_m}))
    pairs = [dict(pairs)[layer] for layer in pair_layers]
    return {
        "n_items": int(n_items),
        "n_layers": int(n_layers),
        "languages": langs,
        "per_language": {lang: {k: _json(v) for k, v in res[lang].items()} for lang in langs},
        "pairwise": {
            "layers": pair_layers,
            "languages": langs,
            "cka_mean": [_json(p["cka"]) for p in pairs],
            "cosine_mean": [_json(p["cosine"]) for p in pairs],
        },
    }
