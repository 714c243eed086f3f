import json

import numpy as np
import pytest
import torch
from scipy import stats as sps

from alignlens import AlignlensError, similarity
from alignlens.similarity import measures, resampling
from alignlens.similarity import (
    cosine_per_item,
    linear_cka,
    mean_cosine,
    pairwise_matrices,
    pca_pearson,
    pca_scores,
    retrieval_accuracy,
    similarity_report,
)

RNG = np.random.default_rng(0)


def _orthogonal(d: int, rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def _cka_feature_space(x: np.ndarray, y: np.ndarray) -> float:
    """Independent formula: HSIC with explicit centring matrix, feature-space form."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    xc, yc = h @ x, h @ y
    return np.linalg.norm(yc.T @ xc, "fro") ** 2 / (
        np.linalg.norm(xc.T @ xc, "fro") * np.linalg.norm(yc.T @ yc, "fro")
    )


def _cka_trace(x: np.ndarray, y: np.ndarray) -> float:
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h)  # noqa: E731
    return hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_))


def test_cka_matches_direct_formulas():
    x = RNG.normal(size=(12, 5))
    y = x @ RNG.normal(size=(5, 7)) + 0.5 * RNG.normal(size=(12, 7))
    got = linear_cka(x, y)
    assert got == pytest.approx(_cka_feature_space(x, y), rel=1e-10)
    assert got == pytest.approx(_cka_trace(x, y), rel=1e-10)
    assert 0.2 < got < 1.0


def test_cka_invariances():
    x = RNG.normal(size=(30, 8))
    y = np.tanh(x @ RNG.normal(size=(8, 8))) + 0.3 * RNG.normal(size=(30, 8))
    base = linear_cka(x, y)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(y, x) == pytest.approx(base, rel=1e-12)  # symmetric
    assert linear_cka(x @ _orthogonal(8, RNG), y) == pytest.approx(base, rel=1e-10)
    assert linear_cka(3.7 * x + 2.0, y) == pytest.approx(base, rel=1e-10)  # scaling and translation
    # not invariant to a general (anisotropic) linear map: guards against e.g. a CCA-like measure
    assert abs(linear_cka(x * np.linspace(0.1, 10, 8), y) - base) > 1e-3


def test_cka_independent_random_is_small():
    x = RNG.normal(size=(2000, 4))
    y = RNG.normal(size=(2000, 4))
    assert linear_cka(x, y) < 0.02
    assert np.isnan(linear_cka(np.ones((5, 3)), x[:5]))


def test_cosine_matches_loop_and_centering():
    a = RNG.normal(size=(6, 4)) + 3.0
    b = a + RNG.normal(size=(6, 4))
    raw = [a[i] @ b[i] / (np.linalg.norm(a[i]) * np.linalg.norm(b[i])) for i in range(6)]
    np.testing.assert_allclose(cosine_per_item(a, b), raw, rtol=1e-12)
    ac, bc = a - a.mean(0), b - b.mean(0)
    cen = [ac[i] @ bc[i] / (np.linalg.norm(ac[i]) * np.linalg.norm(bc[i])) for i in range(6)]
    assert mean_cosine(a, b, center=True) == pytest.approx(np.mean(cen), rel=1e-12)
    # a shared offset inflates raw cosine; centring removes it
    assert mean_cosine(a, b) > mean_cosine(a, b, center=True)


def test_retrieval():
    a = RNG.normal(size=(20, 6))
    assert retrieval_accuracy(a, a) == 1.0
    derangement = np.roll(np.arange(20), 1)
    assert retrieval_accuracy(a, a[derangement]) == 0.0
    b = a + 0.8 * RNG.normal(size=(20, 6))
    sims = [[x @ y / np.linalg.norm(x) / np.linalg.norm(y) for y in b] for x in a]
    expected = np.mean([int(np.argmax(s)) == i for i, s in enumerate(sims)])
    assert retrieval_accuracy(a, b) == pytest.approx(expected)


@pytest.mark.parametrize("shape,eigh_max", [((150, 90), 1024), ((40, 90), 1024), ((150, 90), 16)])
def test_pca_scores_match_full_svd(monkeypatch, shape, eigh_max):
    """All three paths (X'X eigh, XX' eigh, Lanczos svds) agree with a full SVD."""
    monkeypatch.setattr(measures, "_EIGH_MAX", eigh_max)
    n, d = shape
    x = RNG.normal(size=(n, d)) @ np.diag(np.linspace(3, 0.1, d)) + 5.0
    s = pca_scores(x)
    xc = x - x.mean(0)
    ref = xc @ np.linalg.svd(xc, full_matrices=False)[2][0]
    assert abs(np.corrcoef(s, ref)[0, 1]) == pytest.approx(1.0, abs=1e-9)
    assert np.linalg.norm(s) == pytest.approx(np.linalg.norm(ref), rel=1e-9)


def test_pca_pearson_matches_direct():
    en = RNG.normal(size=(15, 6))
    states = {"en": en, "de": en + 0.5 * RNG.normal(size=(15, 6)), "zz": RNG.normal(size=(15, 6)),
              "aff": 2.0 * en + 1.0}
    got = pca_pearson(states)
    stacked = np.concatenate(list(states.values()))
    stacked = stacked - stacked.mean(0)
    scores = (stacked @ np.linalg.svd(stacked)[2][0]).reshape(4, 15)
    for j, lang in enumerate(states):
        assert got[lang] == pytest.approx(sps.pearsonr(scores[0], scores[j]).statistic, abs=1e-10)
    assert got["en"] == pytest.approx(1.0)
    assert got["aff"] == pytest.approx(1.0)  # affine copy scores are an affine map of English scores


def _states(n=16, L=3, d=10, seed=1):
    rng = np.random.default_rng(seed)
    en = rng.normal(size=(n, L, d)) + 1.0
    return {
        "en": en,
        "xx": en.copy(),  # identical to English
        "de": en + 0.3 * rng.normal(size=(n, L, d)),
        "sw": rng.normal(size=(n, L, d)),
    }


def test_report_schema_and_invariants():
    mean = _states()
    last = {k: torch.from_numpy(v[:, :, ::-1].copy()).to(torch.bfloat16) for k, v in mean.items()}
    rep = similarity_report(mean, last, layers_for_pairs=[0, -1])
    json.dumps(rep, allow_nan=False)
    assert set(rep) == {"n_items", "n_layers", "languages", "per_language", "pairwise"}
    assert rep["n_items"] == 16 and rep["n_layers"] == 3
    assert rep["languages"] == ["en", "xx", "de", "sw"]
    keys = {"cosine_mean", "cosine_last", "cosine_mean_centered", "cosine_last_centered", "pca_pearson",
            "cka_mean", "cka_last", "retrieval_mean", "retrieval_last"}
    for lang in rep["languages"]:
        assert set(rep["per_language"][lang]) == keys
        assert all(len(v) == 3 for v in rep["per_language"][lang].values())
    for lang in ("en", "xx"):  # a language identical to English: all measures 1
        for k in keys:
            np.testing.assert_allclose(rep["per_language"][lang][k], 1.0, atol=1e-9, err_msg=k)
    de, sw = rep["per_language"]["de"], rep["per_language"]["sw"]
    for layer in range(3):
        assert de["cka_mean"][layer] > sw["cka_mean"][layer]
        assert de["cosine_mean_centered"][layer] > sw["cosine_mean_centered"][layer]
        assert de["cka_mean"][layer] == pytest.approx(linear_cka(mean["en"][:, layer], mean["de"][:, layer]))
    pw = rep["pairwise"]
    assert pw["layers"] == [0, 2] and pw["languages"] == rep["languages"]
    for i, layer in enumerate(pw["layers"]):
        cka, cos = np.array(pw["cka_mean"][i]), np.array(pw["cosine_mean"][i])
        assert cka.shape == (4, 4)
        np.testing.assert_allclose(cka, cka.T, atol=1e-12)
        np.testing.assert_allclose(np.diag(cka), 1.0)
        np.testing.assert_allclose(np.diag(cos), 1.0)
        for j, lang in enumerate(rep["languages"]):
            assert cka[0, j] == pytest.approx(rep["per_language"][lang]["cka_mean"][layer])
            assert cos[0, j] == pytest.approx(rep["per_language"][lang]["cosine_mean"][layer])
    direct = pairwise_matrices({k: v[:, 1] for k, v in mean.items()})
    assert direct["cka"][2, 3] == pytest.approx(linear_cka(mean["de"][:, 1], mean["sw"][:, 1]))


def test_report_errors():
    mean = _states()
    with pytest.raises(AlignlensError):
        similarity_report({k: v for k, v in mean.items() if k != "en"}, mean, [0])
    with pytest.raises(AlignlensError):
        similarity_report(mean, mean, [3])
    bad = dict(mean, de=mean["de"][:5])
    with pytest.raises(AlignlensError):
        similarity_report(bad, mean, [0])


def test_analysis_keeps_the_report_measures_and_adds_the_paper_setting():
    """similarity_analysis = similarity_report (same numbers when every language is in the PCA fit
    set) plus debiased CKA and the format-2 parts; a subset fit set changes only pca_pearson."""
    mean = _states()
    last = {k: v[:, :, ::-1].copy() for k, v in mean.items()}
    rep = similarity_report(mean, last, [0, -1])
    ana = similarity.similarity_analysis(mean, last, [0, -1], n_resamples=0, robust="none")
    assert ana["pca"]["fit_languages"] == ["en", "xx", "de", "sw"] and "intervals" not in ana and "robust" not in ana
    assert ana["format"] == 2 and ana["pairwise"] == rep["pairwise"]
    for lang in rep["languages"]:
        for key, values in rep["per_language"][lang].items():
            np.testing.assert_allclose(ana["per_language"][lang][key], values, atol=1e-12, err_msg=key)
        for layer in range(3):
            assert ana["per_language"][lang]["cka_mean_debiased"][layer] == pytest.approx(
                similarity.linear_cka_debiased(mean["en"][:, layer], mean[lang][:, layer]), abs=1e-12)
    sub = similarity_report(mean, last, [0], pca_languages=["en", "de"])
    assert sub["per_language"]["de"]["cka_mean"] == rep["per_language"]["de"]["cka_mean"]
    assert sub["per_language"]["sw"]["pca_pearson"] != rep["per_language"]["sw"]["pca_pearson"]
    json.dumps(ana, allow_nan=False)


def _fit_coordinates(n_fit: int, n: int, d: int, seed: int) -> np.ndarray:
    """zf [P, n, r] as `_layer_measures` builds it: P languages' states of n items (a shared item part
    with a decaying spectrum, one dominant direction, language noise) on the joint fit's axes."""
    rng = np.random.default_rng(seed)
    scale = 1.0 / (1.0 + np.arange(d)) ** 0.5
    item = rng.normal(size=(n, d)) * scale + np.outer(3.0 * rng.normal(size=n), rng.normal(size=d) / np.sqrt(d))
    mats = [item + 0.4 * rng.normal(size=(n, d)) * scale + rng.normal(size=d) for _ in range(n_fit)]
    xs = np.concatenate(mats)
    mu = xs.mean(axis=0)
    v, _ = measures._pca_basis(xs - mu)
    return np.stack([(m - mu) @ v for m in mats])


def _pc1_by_eigh(zf: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Independent reference: each resample's covariance of its rows (every copy of a resampled item,
    in every language) and numpy.linalg.eigh. Returns (top eigenvectors [B, r], eigenvalues [B, r])."""
    n_fit, n, r = zf.shape
    vecs, vals = [], []
    for wb in w:
        rows = np.concatenate([np.repeat(zf[p], wb.astype(int), axis=0) for p in range(n_fit)])  # [P n, r]
        c = np.cov(rows.T, bias=True).reshape(r, r)
        ev, evec = np.linalg.eigh(c)
        vecs.append(evec[:, -1])
        vals.append(ev[::-1])
    return np.array(vecs), np.array(vals)


def _true_residual(zf: np.ndarray, w: np.ndarray, u: np.ndarray) -> float:
    """max over replicates of ||C u - theta u|| / theta with theta = u'Cu (C as in `_pc1_by_eigh`)."""
    n_fit, n, r = zf.shape
    worst = 0.0
    for wb, ub in zip(w, u):
        rows = np.concatenate([np.repeat(zf[p], wb.astype(int), axis=0) for p in range(n_fit)])
        c = np.cov(rows.T, bias=True).reshape(r, r)
        theta = ub @ c @ ub
        worst = max(worst, np.linalg.norm(c @ ub - theta * ub) / theta)
    return worst


@pytest.mark.parametrize("n_fit,n,d", [(3, 8, 30), (3, 25, 100), (4, 20, 64)])
def test_pc1_replicates_direct_and_davidson_match_eigh(monkeypatch, n_fit, n, d):
    """Both refit paths (every C formed + LAPACK top pair, used up to PCA_BOOT_DIRECT_RANK axes;
    Rayleigh-Ritz + Davidson above) give each resample's top eigenvector of a plain per-replicate
    covariance + numpy eigh, up to sign, and a true max relative residual. Cases: r = 23 (below the
    threshold), r = 74 = P n - 1 and r = 64 = d < P n (above)."""
    zf = _fit_coordinates(n_fit, n, d, seed=n)
    r = zf.shape[2]
    assert r == min(n_fit * n - 1, d)
    assert (r <= resampling.PCA_BOOT_DIRECT_RANK) == (d == 30)
    w = similarity.bootstrap_counts(n, 40, seed=3)
    ref, vals = _pc1_by_eigh(zf, w)
    gap = (vals[:, 0] - vals[:, 1]) / vals[:, 0]
    assert gap.min() > 0.02  # well-separated PC1s: eigenvectors determined to ~1e-14 / gap

    def run(direct: bool, tol: float) -> tuple[np.ndarray, float]:
        monkeypatch.setattr(resampling, "PCA_BOOT_DIRECT_RANK", 10**6 if direct else 0)
        monkeypatch.setattr(resampling, "PCA_BOOT_TOL", tol)
        return resampling._pc1_replicates(zf, w)

    def dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # up to sign, per replicate
        return np.minimum(np.abs(a - b).max(axis=1), np.abs(a + b).max(axis=1))

    u_dir, res_dir = run(True, 1e-6)
    u_dav, res_dav = run(False, 1e-11)
    u_def, res_def = run(False, 1e-6)
    for u in (u_dir, u_dav, u_def):
        np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0, atol=1e-12)
    assert dist(u_dir, ref).max() < 1e-10 and res_dir < 1e-12
    assert dist(u_dav, ref).max() < 1e-8 and res_dav < 1e-11
    assert dist(u_dav, u_dir).max() < 1e-8
    # the default tolerance: residual below it, eigenvector within the Davis-Kahan bound residual / gap
    assert res_def < 1e-6
    assert np.all(dist(u_def, ref) <= np.sqrt(2) * res_def / gap + 1e-12)
    # the residuals returned are the true ones (theta = u'Cu recomputed from the resampled rows)
    for u, res in ((u_dir, res_dir), (u_dav, res_dav), (u_def, res_def)):
        assert _true_residual(zf, w, u) == pytest.approx(res, rel=1e-3, abs=1e-13)
    # callers use u only through Pearson r of scores on it: a sign flip per replicate changes nothing
    flip = np.where(np.arange(len(w)) % 2 == 0, 1.0, -1.0)[:, None]
    sc = [u_dir @ zf[p].T for p in range(2)]
    np.testing.assert_array_equal(resampling._weighted_pearson(sc[0], sc[1], w),
                                  resampling._weighted_pearson(flip * sc[0], flip * sc[1], w))


@pytest.mark.parametrize("direct", [True, False])
def test_pc1_replicates_no_resamples_and_rank_one(monkeypatch, direct):
    """Zero resamples give an empty result; a rank-1 fit (r = 1) gives u = +-1 on both paths."""
    monkeypatch.setattr(resampling, "PCA_BOOT_DIRECT_RANK", 10**6 if direct else 0)
    zf = _fit_coordinates(2, 6, 12, seed=1)
    u, res = resampling._pc1_replicates(zf, np.zeros((0, 6)))
    assert u.shape == (0, zf.shape[2]) and res == 0.0
    line = np.linspace(-1.0, 1.0, 6)[None, :, None] * np.array([1.0, 2.0])[:, None, None]  # [2, 6, 1]
    u, res = resampling._pc1_replicates(line, similarity.bootstrap_counts(6, 20, seed=0))
    np.testing.assert_allclose(np.abs(u), 1.0)
    assert res < 1e-12
