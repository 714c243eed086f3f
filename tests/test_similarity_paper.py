"""The paper's similarity setting (issue 12 §2), checked against independent computations: pooling
against a plain forward pass without the prefix cache, the joint PCA against a numpy SVD, debiased
CKA against hand-written unbiased HSIC, paired bootstrap replicates against direct recomputation on
resampled items, outlier dimensions on a synthetic state, and the report pages built from them."""

from __future__ import annotations

import csv
import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alignlens import AlignlensError, data
from alignlens import similarity as S
from alignlens.config import AnalyzeConfig
from alignlens.similarity import analysis, resampling

sys.path.insert(0, str(Path(__file__).resolve().parent))

PAPER7 = ["en", "de", "fr", "hi", "th", "sw", "ms"]


# ---- pooling: the capture's states equal a plain full forward pass ------------------------------


def _blocks(hf_model) -> torch.nn.ModuleList:
    inner = getattr(hf_model, "model", None) or getattr(hf_model, "transformer")
    return getattr(inner, "layers", None) if hasattr(inner, "layers") else inner.h


@torch.no_grad()
def _reference_rows(model, prompt: str) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Independent of TransformerLens and of the KV cache: one plain HF forward pass of the whole
    prompt. Returns (rows [n_layers + 1, T, d]: HF hidden_states[0..n-1] and the last block's output
    from a torch forward hook, float64; HF's own last hidden state (after the final norm); the ids)."""
    from alignlens.engine import encode

    ids = encode(model.tokenizer, [prompt])[0]
    seen = {}

    def keep(module, args, output):
        seen["last_block"] = (output[0] if isinstance(output, tuple) else output).detach()

    handle = _blocks(model.hf_model)[-1].register_forward_hook(keep)
    try:
        out = model.hf_model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    finally:
        handle.remove()
    hs = out.hidden_states
    rows = torch.stack([h[0].double() for h in hs[:-1]] + [seen["last_block"][0].double()])
    return rows, hs[-1][0].double(), ids


def _close(got: torch.Tensor, ref: torch.Tensor, tol: float = 1e-5) -> float:
    """max |got - ref| relative to the reference's scale (asserted <= tol by the callers)."""
    got, ref = got.detach().double(), ref.detach().double()
    return float((got - ref).abs().max() / max(1.0, float(ref.abs().max())))


@pytest.mark.parametrize("fixture", ["tiny_gemma", "tiny_gpt2"])
def test_pooling_equals_full_forward_without_cache(request, fixture):
    """Prompt pooling (prefix sum from the cached prefix pass + query sum) / (k + m), query pooling,
    the last token, the embedding row and the last row all equal a plain forward pass (1e-5)."""
    from alignlens.capture.capturer import Capturer
    from alignlens.engine import Unembed, encode, shared_prefix_len
    from alignlens.evaluate import evaluate_language

    model = request.getfixturevalue(fixture)
    spec = data.load_task("emotion")
    lang = "de"
    items = data.load_items(spec, lang, 5)
    cap = Capturer(model, spec, lang)
    evaluate_language(model, spec, lang, items, batch_size=2, probes=[cap])
    assert cap._prefix_len > 5  # the prefix came from the cache: its sums from the prefix pass
    prompts = [data.build_prompt(spec, lang, it) for it in items]
    k = shared_prefix_len(encode(model.tokenizer, [data.prompt_prefix(spec, lang)])[0],
                          encode(model.tokenizer, prompts))
    pooled = {p: cap.capture.pooled(p) for p in ("prompt", "query", "last")}
    assert pooled["prompt"].shape == (5, model.n_layers + 1, model.d_model)
    norm = Unembed.from_hf(model.hf_model).norm
    for i, prompt in enumerate(prompts):
        rows, hf_last, ids = _reference_rows(model, prompt)
        assert _close(pooled["prompt"][i], rows.mean(1)) <= 1e-5
        assert _close(pooled["query"][i], rows[:, k:].mean(1)) <= 1e-5
        assert _close(pooled["last"][i], rows[:, -1]) <= 1e-5
        # the last row is before the final norm; HF's last hidden state is after it
        with torch.no_grad():
            assert _close(norm(rows[-1].float()), hf_last) <= 1e-5
        assert _close(pooled["prompt"][i, -1], hf_last.mean(0)) > 1e-3
        if fixture == "tiny_gemma":  # Gemma scales the embedding by sqrt(d_model): HF hidden_states[0] has it
            emb = model.hf_model.model.embed_tokens.weight[ids].double() * math.sqrt(model.d_model)
            assert _close(pooled["prompt"][i, 0], emb.mean(0)) <= 1e-5


def test_capture_pass_pools_the_target_label_prompts(tiny_gemma):
    """With --lens-prompts target-labels the similarity states come from the capture pass on the
    target-label prompts (the paper's), not from the English-label evaluation prompts."""
    from alignlens.pipeline import capture_run

    cfg = AnalyzeConfig(tasks=["emotion"], languages=["en", "de"], limit=3, batch_size=2, similarity_resamples=0,
                        lens_prompts="target-labels")
    _, caps = capture_run(tiny_gemma, cfg)
    spec = data.load_task("emotion")
    target = data.target_label_spec(spec, "de")
    assert target.prompts["de"].demonstrations != spec.prompts["de"].demonstrations
    got = caps[("emotion", "de")].pooled("prompt")
    for i, it in enumerate(data.load_items(spec, "de", 3)):
        rows, _, _ = _reference_rows(tiny_gemma, data.build_prompt(target, "de", it))
        assert _close(got[i], rows.mean(1)) <= 1e-5
        english_label_rows, _, _ = _reference_rows(tiny_gemma, data.build_prompt(spec, "de", it))
        assert _close(got[i], english_label_rows.mean(1)) > 1e-4


def test_old_shard_without_similarity_states_is_refused():
    from alignlens.capture.capturer import LanguageCapture

    cap = LanguageCapture.empty("emotion", "de", 2, 4, torch.zeros(2, dtype=torch.bool))
    cap.mean.update([0], torch.zeros(1, 2, 3))
    with pytest.raises(AlignlensError, match="older alignlens"):
        cap.pooled("query")
    with pytest.raises(AlignlensError, match="unknown similarity pooling"):
        cap.pooled("mean")


# ---- the joint PCA ------------------------------------------------------------------------------


def _lang_states(langs, n=24, d=40, seed=0, noise=None):
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=(n, d)) * np.linspace(3, 0.3, d)
    return {l: shared + (noise or {}).get(l, 0.8) * rng.normal(size=(n, d)) + rng.normal(size=d) for l in langs}


def _numpy_pc1_pearson(states, fit):
    """Independent: numpy SVD of the stacked fit languages (centred), scores of every language
    (centred by the fit data's mean, as sklearn's PCA.transform), np.corrcoef."""
    stacked = np.concatenate([states[l] for l in fit])
    mu = stacked.mean(0)
    v = np.linalg.svd(stacked - mu, full_matrices=False)[2][0]
    scores = {l: (x - mu) @ v for l, x in states.items()}
    return {l: np.corrcoef(scores["en"], s)[0, 1] for l, s in scores.items()}, scores


def test_pca_joint_fit_on_the_paper_languages_matches_numpy_svd():
    langs = PAPER7 + ["zh", "ja"]
    st = _lang_states(langs, noise={"zh": 2.0, "ja": 3.0})
    assert S.resolve_pca_languages(langs, None) == PAPER7
    ref, scores = _numpy_pc1_pearson(st, PAPER7)
    got = S.pca_pearson(st, fit_languages=PAPER7)
    for l in langs:
        assert got[l] == pytest.approx(ref[l], abs=1e-10), l
    # a different fit set gives different numbers (the fit set matters; zh/ja are projected above)
    assert abs(S.pca_pearson(st)["ja"] - got["ja"]) > 1e-4
    # through similarity_analysis: every row, the pairs matrix, the recorded fit set
    states3 = {l: np.stack([x, 2 * x, x + 1.0], axis=1) for l, x in st.items()}  # [n, 3 rows, d]
    rep = S.similarity_analysis(states3, states3, [0], n_resamples=0)
    assert rep["pca"]["fit_languages"] == PAPER7 and rep["pca"]["projected_languages"] == ["zh", "ja"]
    for row in range(3):
        for l in langs:
            assert rep["per_language"][l]["pca_pearson"][row] == pytest.approx(ref[l], abs=1e-9)
        pairs = np.array(rep["pca"]["pearson_pairs"][row])
        np.testing.assert_allclose(pairs, np.corrcoef([scores[l] for l in PAPER7]), atol=1e-9)
    stacked = np.concatenate([st[l] for l in PAPER7])
    sv = np.linalg.svd(stacked - stacked.mean(0), compute_uv=False)
    assert rep["pca"]["explained_variance_ratio"][0] == pytest.approx(sv[0] ** 2 / np.sum(sv**2), rel=1e-9)


def test_pca_languages_default_and_refusals():
    assert S.resolve_pca_languages(["en", "de", "zh"], None) == ["en", "de", "zh"]  # not all 7: all
    assert S.resolve_pca_languages(PAPER7[:-1] + ["zh"], None) == PAPER7[:-1] + ["zh"]
    with pytest.raises(AlignlensError, match="not among the analysed languages"):
        S.resolve_pca_languages(["en", "de"], ["en", "fr"])
    with pytest.raises(AlignlensError, match="must include English"):
        S.resolve_pca_languages(["en", "de", "fr"], ["de", "fr"])
    for bad, msg in ((dict(pca_languages="de,fr"), "must include en"),
                     (dict(languages="en,de", pca_languages="en,fr"), "fr not among --languages"),
                     (dict(similarity_pooling="mean"), "unknown similarity pooling"),
                     (dict(similarity_robust="clip"), "unknown robust"),
                     (dict(similarity_resamples=-1), "resamples")):
        with pytest.raises(AlignlensError, match=msg):
            AnalyzeConfig(**bad)


# ---- debiased CKA ---------------------------------------------------------------------------------


def _hsic_u_hand(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. (2012), eq. (5), written out: K~, L~ with zero diagonal."""
    n = k.shape[0]
    kt, lt = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
    one = np.ones((n, 1))
    term1 = np.trace(kt @ lt)
    term2 = (one.T @ kt @ one).item() * (one.T @ lt @ one).item() / ((n - 1) * (n - 2))
    term3 = 2.0 / (n - 2) * (one.T @ kt @ lt @ one).item()
    return (term1 + term2 - term3) / (n * (n - 3))


def _hsic_u_tuples(k, l, w=None) -> float:
    """The U-statistic by its definition: the mean over 4-tuples of distinct items of
    k_ij l_ij + k_ij l_qr - 2 k_ij l_iq, each tuple weighted by its items' multiplicities w."""
    n = k.shape[0]
    w = np.ones(n) if w is None else w
    num = den = 0.0
    for i, j, q, r in itertools.permutations(range(n), 4):
        wt = w[i] * w[j] * w[q] * w[r]
        if wt:
            num += wt * (k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q])
            den += wt
    return num / den


def test_debiased_cka_matches_hand_unbiased_hsic():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(9, 5)) + 2.0
    y = x @ rng.normal(size=(5, 7)) + rng.normal(size=(9, 7))
    k, l = x @ x.T, y @ y.T
    assert S.unbiased_hsic(k, l) == pytest.approx(_hsic_u_hand(k, l), rel=1e-10)
    assert S.unbiased_hsic(k, l) == pytest.approx(_hsic_u_tuples(k, l), rel=1e-9)
    xc, yc = x - x.mean(0), y - y.mean(0)
    kc, lc = xc @ xc.T, yc @ yc.T
    hand = _hsic_u_hand(kc, lc) / math.sqrt(_hsic_u_hand(kc, kc) * _hsic_u_hand(lc, lc))
    assert S.linear_cka_debiased(x, y) == pytest.approx(hand, rel=1e-10)
    assert S.linear_cka_debiased(x + 50.0, 3 * y - 7.0) == pytest.approx(hand, rel=1e-8)  # translation/scale
    assert S.linear_cka_debiased(x, x) == pytest.approx(1.0, abs=1e-12)
    assert math.isnan(S.linear_cka_debiased(x[:3], y[:3]))  # fewer than CKA_MIN_ITEMS items


def test_resampled_unbiased_hsic_excludes_pairs_of_one_item():
    """On a bootstrap resample, HSIC is the U-statistic over tuples of distinct items (a duplicated
    item's copies never pair with each other), weighted by multiplicities: against the definition."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(7, 4))
    k, l = x @ x.T, y @ y.T
    w = np.vstack([S.bootstrap_counts(7, 6, seed=5), [[4, 2, 0, 0, 0, 0, 1]]]).astype(float)
    assert (w.sum(1) == 7).all() and (w == 0).any() and (w > 1).any()
    a, b = resampling._WeightedGram(k, w), resampling._WeightedGram(l, w)
    got = resampling._weighted_hsic(a, b)
    distinct = (w > 0).sum(1)
    assert (distinct >= 4).sum() >= 3 and distinct[-1] == 3
    for r in range(len(w)):
        if distinct[r] >= 4:
            assert got[r] == pytest.approx(_hsic_u_tuples(k, l, w[r]), rel=1e-9)
        else:  # fewer than 4 distinct items: no tuple, undefined
            assert math.isnan(got[r])


def test_biased_cka_is_near_one_for_independent_few_items_debiased_is_not():
    rng = np.random.default_rng(0)
    biased, debiased = [], []
    for _ in range(40):
        x, y = rng.normal(size=(10, 500)), rng.normal(size=(10, 500))
        biased.append(S.linear_cka(x, y))
        debiased.append(S.linear_cka_debiased(x, y))
    assert np.mean(biased) > 0.95
    assert abs(np.mean(debiased)) < 0.1


# ---- paired bootstrap intervals -------------------------------------------------------------------


def test_bias_corrected_interval():
    """Replicates centred on the estimate: the plain percentile interval. Replicates shifted by a
    bias b: the interval is the percentile one moved by about -2b (centred on estimate - b)."""
    rng = np.random.default_rng(0)
    reps = rng.normal(size=(1, 20000)) * 0.2
    lo, hi = S.bc_interval(reps, np.array([np.median(reps)]))
    assert lo[0] == pytest.approx(np.quantile(reps, 0.025)) and hi[0] == pytest.approx(np.quantile(reps, 0.975))
    est = 0.5
    shifted = est + 0.1 + reps  # resampling inflates the statistic by 0.1
    lo, hi = S.bc_interval(shifted, np.array([est]))
    assert (lo[0] + hi[0]) / 2 == pytest.approx(est - 0.1, abs=0.01)
    assert hi[0] - lo[0] == pytest.approx(2 * 1.96 * 0.2, rel=0.05)
    nan_lo, nan_hi = S.bc_interval(np.full((1, 5), np.nan), np.array([1.0]))
    assert math.isnan(nan_lo[0]) and math.isnan(nan_hi[0])


def test_identical_language_has_r_one_and_degenerate_intervals():
    st = _lang_states(["en", "de", "sw"], n=20, noise={"sw": 3.0})
    st["xx"] = st["en"].copy()
    st3 = {l: np.stack([x, x * 1.5], axis=1) for l, x in st.items()}
    rep = S.similarity_analysis(st3, st3, [0], n_resamples=300, seed=3)
    iv = rep["intervals"]["per_language"]
    for m in S.INTERVAL_METRICS:
        np.testing.assert_allclose(rep["per_language"]["xx"][m], 1.0, atol=1e-9, err_msg=m)
        np.testing.assert_allclose(iv["xx"][m]["lo"], 1.0, atol=1e-9, err_msg=m)
        np.testing.assert_allclose(iv["xx"][m]["hi"], 1.0, atol=1e-9, err_msg=m)
        for row in range(2):  # a genuinely different language: a real interval around its estimate
            lo, hi, est = iv["sw"][m]["lo"][row], iv["sw"][m]["hi"][row], rep["per_language"]["sw"][m][row]
            assert lo <= est <= hi and hi - lo > 1e-3, m
    assert "en" not in iv  # English vs itself has no interval
    json.dumps(rep, allow_nan=False)


def test_replicates_equal_direct_recomputation_on_resampled_items():
    """Each replicate is the measure recomputed on the resampled items (same resample in every
    language): PC1 refitted by a numpy SVD of the resampled fit rows, cosines, centred cosines
    (centred by the resample's mean) and retrieval among the resampled items."""
    langs = ["en", "de", "fr", "hi"]
    st = _lang_states(langs, n=18, d=60, seed=2, noise={"de": 0.5, "fr": 1.5, "hi": 3.0})
    w = S.bootstrap_counts(18, 12, seed=9)
    points, reps, _ = analysis._layer_measures(st, "en", ["en", "de", "fr"], w)  # hi projected
    unit = lambda m: m / np.linalg.norm(m, axis=1, keepdims=True)  # noqa: E731
    for b in range(12):
        idx = np.repeat(np.arange(18), w[b].astype(int))
        rs = {l: st[l][idx] for l in langs}
        corr, _ = _numpy_pc1_pearson(rs, ["en", "de", "fr"])
        for l in ["de", "fr", "hi"]:
            assert reps["pca_pearson"][l][b] == pytest.approx(corr[l], abs=1e-6)
            assert reps["cosine_mean"][l][b] == pytest.approx(np.mean(np.sum(unit(rs["en"]) * unit(rs[l]), 1)), abs=1e-12)
            ce, cl = rs["en"] - rs["en"].mean(0), rs[l] - rs[l].mean(0)
            assert reps["cosine_mean_centered"][l][b] == pytest.approx(np.mean(np.sum(unit(ce) * unit(cl), 1)), abs=1e-9)
            sims = unit(rs["en"]) @ unit(rs[l]).T
            hits = [idx[int(np.argmax(sims[p]))] == idx[p] for p in range(18)]
            assert reps["retrieval_mean"][l][b] == pytest.approx(np.mean(hits))
    # with unit weights the point estimates are the plain measures
    assert points["pca_pearson"]["hi"] == pytest.approx(_numpy_pc1_pearson(st, ["en", "de", "fr"])[0]["hi"], abs=1e-10)
    assert points["cka_mean_debiased"]["de"] == pytest.approx(S.linear_cka_debiased(st["en"], st["de"]), rel=1e-10)


def _bc_by_hand(reps: np.ndarray, est: float) -> tuple[float, float]:
    from scipy.stats import norm

    z0 = norm.ppf(np.mean(reps < est) + 0.5 * np.mean(reps == est))
    q = norm.cdf([2 * z0 - norm.ppf(0.975), 2 * z0 + norm.ppf(0.975)])
    return float(np.quantile(reps, q[0])), float(np.quantile(reps, q[1]))


def test_stored_replicates_and_paired_change():
    langs = ["en", "de", "fr", "zz"]
    base = _lang_states(langs, n=30, d=30, seed=5, noise={"de": 1.5, "fr": 1.5, "zz": 1.5})
    better = dict(base, de=base["en"] + 0.3 * (base["de"] - base["en"]))  # de much closer to English
    as3 = lambda st: {l: np.stack([x, x + 0.1], axis=1) for l, x in st.items()}  # noqa: E731
    fit = ["en", "de", "fr"]  # zz is projected: no stored per-language replicates, not in the PCA mean
    ra = S.similarity_analysis(as3(base), as3(base), [0], n_resamples=400, seed=1, pca_languages=fit)
    rb = S.similarity_analysis(as3(better), as3(better), [0], n_resamples=400, seed=1, pca_languages=fit)
    assert ra["bootstrap"]["mean_languages"]["pca_pearson"] == ["de", "fr"]
    assert ra["bootstrap"]["mean_languages"]["cosine_mean_centered"] == ["de", "fr", "zz"]
    # stored replicates: the estimate plus a float16 deviation, against the full-precision ones
    direct = analysis._layer_measures({l: base[l] for l in langs}, "en", fit, S.bootstrap_counts(30, 400, 1))[1]
    stored = S.replicates(ra, "raw", "pca_pearson", "de")
    assert stored.shape == (2, 400)
    np.testing.assert_allclose(stored[0], direct["pca_pearson"]["de"], atol=2e-4)
    mean_direct = np.mean([direct["cosine_mean_centered"][l] for l in ("de", "fr", "zz")], axis=0)
    np.testing.assert_allclose(S.mean_replicates(ra, "raw", "cosine_mean_centered")[0], mean_direct, atol=2e-4)
    with pytest.raises(AlignlensError, match="no raw bootstrap replicates of pca_pearson for zz"):
        S.replicates(ra, "raw", "pca_pearson", "zz")
    same = S.similarity_change(ra, ra)
    for m in S.INTERVAL_METRICS:
        e = same["variants"]["raw"][m]["mean"]
        assert e["delta"] == [0.0, 0.0] and e["lo"] == [0.0, 0.0] and e["hi"] == [0.0, 0.0]
    ch = S.similarity_change(ra, rb)
    assert set(ch["variants"]["raw"]["pca_pearson"]["per_language"]) == {"de", "fr"}
    e = ch["variants"]["raw"]["pca_pearson"]["per_language"]["de"]
    assert e["delta"][0] > 0 and e["lo"][0] > 0  # the interval excludes 0
    diff = S.replicates(rb, "raw", "pca_pearson", "de") - S.replicates(ra, "raw", "pca_pearson", "de")
    lo, hi = _bc_by_hand(diff[0], e["delta"][0])
    assert e["lo"][0] == pytest.approx(lo) and e["hi"][0] == pytest.approx(hi)
    m = ch["variants"]["raw"]["cosine_mean_centered"]["mean"]
    assert m["delta"][0] > 0 and m["lo"][0] > 0 and m["languages"] == ["de", "fr", "zz"]
    mdiff = S.mean_replicates(rb, "raw", "cosine_mean_centered") - S.mean_replicates(ra, "raw", "cosine_mean_centered")
    assert (m["lo"][0], m["hi"][0]) == pytest.approx(_bc_by_hand(mdiff[0], m["delta"][0]))
    fr = ch["variants"]["raw"]["pca_pearson"]["per_language"]["fr"]
    assert abs(fr["delta"][0]) < abs(e["delta"][0]) / 3  # fr did not move much
    d, lo, hi = S.summary_interval(rb, "raw", "pca_pearson", ["de"], base=ra)
    assert d == pytest.approx(np.mean(e["delta"])) and lo > 0
    other = S.similarity_analysis(as3(better), as3(better), [0], n_resamples=400, seed=2, pca_languages=fit)
    with pytest.raises(AlignlensError, match="bootstrap plans differ"):
        S.similarity_change(ra, other)


# ---- outlier dimensions and the robust variant ---------------------------------------------------


def test_outlier_dimension_detected_and_robust_variant_removes_its_effect():
    rng = np.random.default_rng(7)
    n, d = 25, 64
    states = {}
    for l in ["en", "de", "fr", "zz"]:
        x = rng.normal(size=(n, d))  # unrelated languages: no shared item signal
        x[:, 13] = 60.0 + 5.0 * rng.normal(size=n)  # one huge, varying dimension (as Gemma's)
        states[l] = x
    od = S.outlier_dimensions(list(states.values()))
    assert od["flagged"] == [13] and od["top_dims"][0] == 13 and od["top_shares"][0] > 0.9
    assert S.outlier_dimensions([rng.normal(size=(n, d))])["flagged"] == []
    st2 = {l: np.stack([x, x], axis=1) for l, x in states.items()}
    rep = S.similarity_analysis(st2, st2, [0], n_resamples=50, robust="drop-outliers")
    assert rep["outliers"]["flagged"] == [[13], [13]] and rep["outliers"]["top_dims"][0][0] == 13
    assert rep["pca"]["top_dim_loading"][0] > 0.95  # PC1 is the outlier dimension
    raw, rob = rep["per_language"]["de"], rep["robust"]["per_language"]["de"]
    assert raw["cosine_mean"][0] > 0.9 and abs(rob["cosine_mean"][0]) < 0.2  # the outlier made them look alike
    std = S.robust_states(states, "standardize")
    allz = np.concatenate(list(std.values()))
    np.testing.assert_allclose(allz.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(allz.std(0), 1.0, atol=1e-12)
    dropped = S.robust_states(states, "drop-outliers", [13])
    assert (dropped["de"][:, 13] == 0).all() and (dropped["de"][:, 12] == states["de"][:, 12]).all()


# ---- the pipeline, the command line and the report ----------------------------------------------


def test_run_analyses_writes_the_paper_setting(tiny_gemma):
    from alignlens.pipeline import capture_run, run_analyses

    cfg = AnalyzeConfig(tasks=["emotion"], languages=["en", "de", "fr", "hi"], limit=5, batch_size=3,
                        similarity_resamples=40, pca_languages="en,de,fr", scatter_layers="0,2",
                        similarity_pooling="query", pair_layers="0,2")
    results, caps = capture_run(tiny_gemma, cfg)
    sim = run_analyses(results, caps, cfg)["similarity"]["tasks"]["emotion"]
    n_rows = tiny_gemma.n_layers + 1
    assert sim["format"] == 2 and sim["pooling"] == "query" and sim["capture_prompts"] == "target-labels"
    assert sim["n_layers"] == n_rows and len(sim["per_language"]["de"]["pca_pearson"]) == n_rows
    assert sim["pca"]["fit_languages"] == ["en", "de", "fr"] and sim["pca"]["projected_languages"] == ["hi"]
    assert sim["scatter"]["layers"] == [0, 2] and sim["scatter"]["languages"] == ["en", "de", "fr", "hi"]
    assert sim["pairwise"]["layers"] == [0, 2] and sim["bootstrap"]["plan"]["n_resamples"] == 40
    # the states are the capture's query pooling, row 0 the embedding output
    q = {l: caps[("emotion", l)].pooled("query").numpy() for l in ("en", "de")}
    for row in range(n_rows):
        assert sim["per_language"]["de"]["cosine_mean"][row] == pytest.approx(
            S.mean_cosine(q["en"][:, row], q["de"][:, row]), abs=1e-9)
    json.dumps(sim, allow_nan=False)


def test_cli_similarity_options(tmp_path):
    from fixtures import save_tiny_base
    from test_cli import run_cli

    model = save_tiny_base(tmp_path / "tiny", "gemma3", seed=0)
    out = tmp_path / "run"
    proc = run_cli("analyze", "--model", str(model), "--tasks", "emotion", "--languages", "en,de,fr", "--limit", "4",
                   "--batch-size", "4", "--similarity-pooling", "last", "--pca-languages", "en,de",
                   "--similarity-resamples", "30", "--similarity-robust", "standardize", "--scatter-layers", "1",
                   "--no-report", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    sim = json.loads((out / "base" / "similarity.json").read_text())["tasks"]["emotion"]
    assert sim["pooling"] == "last" and sim["pca"]["fit_languages"] == ["en", "de"]
    assert sim["robust"]["method"] == "standardize" and sim["scatter"]["layers"] == [1]
    assert sim["intervals"]["n_resamples"] == 30
    proc = run_cli("analyze", "--model", str(model), "--tasks", "emotion", "--languages", "en,de", "--limit", "2",
                   "--scatter-layers", "3", "--no-report", "--out", str(tmp_path / "bad"))
    assert proc.returncode == 2 and "--scatter-layers: layer 3 does not exist" in proc.stderr


def _v2_similarity(n_items: int, n_rows: int, langs: list[str], closer: float, seed: int) -> dict:
    """A similarity.json task entry from synthetic pooled states with a Gemma-like outlier dimension."""
    rng = np.random.default_rng(100)  # the items' meaning, the same in both runs
    d = 48
    shared = rng.normal(size=(n_items, n_rows, d))
    own = np.random.default_rng(seed)
    states = {}
    for l in langs:
        noise = 0.0 if l == "en" else (1.2 - closer)
        x = shared + noise * own.normal(size=shared.shape) + own.normal(size=(1, 1, d))
        x[:, :, 5] += 40.0 + own.normal(size=(n_items, n_rows))
        states[l] = x
    return S.similarity_analysis(states, states, [0, n_rows - 1], n_resamples=200, seed=0)


def test_report_pages_tables_and_summary(tmp_path):
    from synthetic_results import make_synthetic_pair

    from alignlens.report import render_report
    from alignlens.results import write_json

    langs = ["en", "de", "fr", "hi", "th", "sw", "ms"]
    base, aligned = make_synthetic_pair(tmp_path, langs, 4, tasks=("emotion",), n_items=30)
    for run, closer in ((base, 0.0), (aligned, 0.8)):
        write_json(run / "similarity.json", {"tasks": {"emotion": _v2_similarity(30, 5, langs, closer, 1)}})
    out = render_report(base, aligned)
    tables = out.parent / "report_tables"
    with open(tables / "contents.csv", encoding="utf-8") as f:
        titles = [r["title"] for r in csv.DictReader(f)]
    for t in ("The paper's PCA similarity — emotion", "PCA scatter (en/de/fr/hi) — emotion",
              "Outlier dimensions — emotion", "Similarity with 95% intervals — emotion",
              "Similarity to English by layer — emotion"):
        assert t in titles, t
    with open(tables / "similarity_change.csv", encoding="utf-8") as f:
        change = [r for r in csv.DictReader(f) if r["metric"] == "pca_pearson" and r["variant"] == "raw"
                  and r["language"] == "mean"]
    assert len(change) == 5 and all(float(r["lo95"]) <= float(r["aligned_minus_base"]) <= float(r["hi95"])
                                    for r in change)
    assert sum(float(r["lo95"]) > 0 for r in change) >= 3  # the aligned run is closer to English
    with open(tables / "similarity_outliers.csv", encoding="utf-8") as f:
        outl = list(csv.DictReader(f))
    assert {r["dimension"] for r in outl if r["rank"] == "1"} == {"5"}
    summary = (tables / "summary.txt").read_text(encoding="utf-8")
    assert "The paper's PCA similarity, emotion" in summary and "paired bootstrap over items" in summary
    assert "debiased" in summary and "Outlier dimensions" in summary


@pytest.mark.integration
def test_gemma_pooling_and_outlier_dimension(gemma):
    """On the real Gemma: the prompt-pooled states (KV-cache path) equal a plain forward pass, the
    embedding row carries Gemma's sqrt(d_model) scaling, and one residual dimension holds most of the
    pooled states' squared norm (the issue's 78-96%), which the outlier report flags."""
    from alignlens.capture.capturer import Capturer
    from alignlens.evaluate import evaluate_language

    spec = data.load_task("emotion")
    caps = {}
    for lang in ("en", "de"):
        items = data.load_items(spec, lang, 3)
        cap = Capturer(gemma, spec, lang)
        evaluate_language(gemma, spec, lang, items, batch_size=3, probes=[cap])
        caps[lang] = cap.capture
        if lang == "de":
            for i, it in enumerate(items):
                rows, _, ids = _reference_rows(gemma, data.build_prompt(spec, lang, it))
                assert _close(cap.capture.pooled("prompt")[i], rows.mean(1)) <= 1e-5
                assert _close(cap.capture.pooled("last")[i], rows[:, -1]) <= 1e-5
                emb = gemma.hf_model.model.embed_tokens.weight[ids].double() * math.sqrt(gemma.d_model)
                assert _close(cap.capture.pooled("prompt")[i, 0], emb.mean(0)) <= 1e-5
    states = {l: c.pooled("prompt").numpy() for l, c in caps.items()}
    shares = [S.outlier_dimensions([s[:, row] for s in states.values()]) for row in range(gemma.n_layers + 1)]
    big = [o for o in shares[1:] if o["top_shares"][0] > 0.75]
    assert len(big) >= gemma.n_layers // 2  # most layers: one dimension holds > 75% of the squared norm
    assert all(o["top_dims"][0] in o["flagged"] for o in big)
