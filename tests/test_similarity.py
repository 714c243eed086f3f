import json

import numpy as np
import pytest
import torch
from scipy import stats as sps

from alignlens import AlignlensError, similarity
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
    monkeypatch.setattr(similarity, "_EIGH_MAX", eigh_max)
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
