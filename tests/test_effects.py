"""effects.py against direct computations and simulations with known answers (coverage, power, slopes)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import norm

from alignlens import AlignlensError
from alignlens import effects as E
from alignlens import metrics as M
from alignlens import paired as P
from alignlens import weighted as W
from alignlens.stats import holm, mcnemar_exact

TWO = ("neg", "pos")


def scored(gold, scores, indices=None, cf=None) -> E.LangData:
    """LangData of a two-label task whose score p1 / (p0 + p1) is `scores` (probabilities sum to 0.8)."""
    s = np.asarray(scores, dtype=np.float64)
    idx = np.arange(len(s)) if indices is None else indices
    return E.LangData(idx, gold, 0.8 * np.c_[1 - s, s], cf)


def answered(gold, correct, indices=None) -> E.LangData:
    """LangData predicting gold where `correct` and the other label elsewhere (two labels)."""
    gold = np.asarray(gold)
    pred = np.where(correct, gold, 1 - gold)
    return scored(gold, np.where(pred == 1, 0.7, 0.3), indices)


def balanced_gold(n: int) -> np.ndarray:
    return np.arange(n) % 2


def run(name: str, langs: dict, seed: int | None = None, labels=TWO) -> E.RunData:
    return E.RunData(name, tuple(labels), langs, seed)


# ------------------------------------------------------------------------------------------------
# Metrics under weights
# ------------------------------------------------------------------------------------------------


def direct_auc(scores, gold, w) -> float:
    """O(n^2) weighted Mann-Whitney AUC, ties 1/2."""
    num = den = 0.0
    for i in range(len(scores)):
        for j in range(len(scores)):
            if gold[i] == 1 and gold[j] == 0:
                num += w[i] * w[j] * ((scores[i] > scores[j]) + 0.5 * (scores[i] == scores[j]))
                den += w[i] * w[j]
    return num / den


@pytest.mark.parametrize("form", ["pair kernel", "sorted"])
def test_weighted_auc_equals_direct_and_rank_auc_with_ties(form, monkeypatch):
    if form == "sorted":  # the form used above _KERNEL_MAX_PAIRS (positive, negative) pairs
        monkeypatch.setattr(W, "_KERNEL_MAX_PAIRS", 0)
    rng = np.random.default_rng(1)
    n = 40
    gold = rng.integers(0, 2, n)
    scores = rng.integers(0, 5, n) / 4  # five distinct values: many ties, also across labels
    w = rng.integers(0, 4, size=(6, n)).astype(np.float64)
    w[:, np.flatnonzero(gold == 1)[0]] += 1  # every row keeps a positive and a negative
    w[:, np.flatnonzero(gold == 0)[0]] += 1
    got = E.weighted_auc(scores, gold, w)
    for r in range(len(w)):
        assert got[r] == pytest.approx(direct_auc(scores, gold, w[r]), abs=1e-12)
        reps = w[r].astype(int)  # integer weights = replicated items
        assert got[r] == pytest.approx(M.roc_auc(np.repeat(gold, reps), np.repeat(scores, reps)), abs=1e-12)
    # unit weights: the plain AUC; no positive weight: undefined (NaN, turned into None upstream)
    assert E.weighted_auc(scores, gold, np.ones((1, n)))[0] == pytest.approx(M.roc_auc(gold, scores), abs=1e-12)
    assert np.isnan(E.weighted_auc(scores, gold, np.where(gold == 1, 0.0, 1.0)[None, :])[0])


def test_weighted_accuracies_equal_metrics_on_replicated_items():
    rng = np.random.default_rng(2)
    gold, pred = rng.integers(0, 3, 30), rng.integers(0, 3, 30)
    w = rng.integers(0, 3, size=(5, 30)).astype(np.float64)
    w[:, :3] += 1
    acc, bal = E.weighted_accuracy(gold == pred, w), E.weighted_balanced_accuracy(gold, pred, w)
    for r in range(5):
        reps = w[r].astype(int)
        g, p = np.repeat(gold, reps), np.repeat(pred, reps)
        assert acc[r] == pytest.approx(M.accuracy(g, p), abs=1e-12)
        assert bal[r] == pytest.approx(M.balanced_accuracy(g, p), abs=1e-12)


def test_point_metrics_use_the_metrics_module():
    rng = np.random.default_rng(3)
    gold = balanced_gold(20)
    probs = rng.dirichlet([1, 1], 20)
    d = E.LangData(np.arange(20), gold, probs, np.array([[0.3, 0.7], [0.4, 0.6]]))
    m = E.point_metrics(run("r", {"de": d}), "de")
    assert m["auc"] == pytest.approx(M.roc_auc(gold, M.binary_scores(probs)))
    assert m["calibrated_accuracy"] == pytest.approx(
        M.calibrated_accuracy(gold, probs, M.content_free_probs([[0.3, 0.7], [0.4, 0.6]])))
    shares = np.bincount(probs.argmax(1), minlength=2) / 20
    assert m["label_shares"] == pytest.approx(dict(zip(TWO, shares)))
    assert m["majority_share"] == pytest.approx(shares.max()) and m["n"] == 20


# ------------------------------------------------------------------------------------------------
# The draws: label-stratified, clustered over languages and runs, deterministic
# ------------------------------------------------------------------------------------------------


def three_label_runs(rng):
    gold_all = np.r_[np.zeros(7), np.ones(12), np.full(21, 2)].astype(int)
    rng.shuffle(gold_all)
    langs = {}
    for lang, idx in (("de", np.arange(40)), ("fr", np.arange(3, 45))):  # fr lacks 0..2, has 40..44
        g = np.r_[gold_all, rng.integers(0, 3, 5)][idx]
        langs[lang] = idx, g
    mk = lambda: {l: E.LangData(idx, g, rng.dirichlet([1, 1, 1], len(g))) for l, (idx, g) in langs.items()}  # noqa: E731
    return run("base", mk(), labels=("a", "b", "c")), run("arm", mk(), labels=("a", "b", "c")), gold_all


def test_draws_keep_label_counts_and_use_shared_items_only():
    base, arm, gold_all = three_label_runs(np.random.default_rng(4))
    plan = E.Resampler({"base": base, "arm": arm}, ["de", "fr"], n_resamples=300, seed=5, chunk=64)
    assert plan.items.tolist() == list(range(3, 40)) and plan.n_items == 37
    assert plan.gold.tolist() == gold_all[3:40].tolist()
    blocks = list(plan.item_weights())
    assert [len(b) for b in blocks] == [64, 64, 64, 64, 44]
    for w in blocks:
        assert np.all(w.sum(axis=1) == 37)
        for c in range(3):  # every resample keeps each gold label's count (stratified)
            assert np.all(w[:, plan.gold == c].sum(axis=1) == np.sum(plan.gold == c))
    assert np.unique(np.concatenate(blocks), axis=0).shape[0] > 290  # and the draws do vary


def test_one_item_draw_serves_every_language_and_run():
    base, arm, _ = three_label_runs(np.random.default_rng(6))
    plan = E.Resampler({"base": base, "arm": arm}, ["de", "fr"], n_resamples=200, seed=1)
    w = np.concatenate(list(plan.item_weights()))
    per_lang = {}
    for lang in ("de", "fr"):
        sel = [np.flatnonzero(r.langs[lang].indices == i)[0] for r in (arm, base) for i in plan.items]
        sa, sb = np.array(sel[:37]), np.array(sel[37:])
        da, db = arm.langs[lang], base.langs[lang]
        by_hand = (E.weighted_accuracy(da.pred[sa] == da.gold[sa], w) - E.weighted_accuracy(db.pred[sb] == db.gold[sb], w))
        per_lang[lang] = plan.effect("arm", "base", "accuracy", languages=[lang])
        np.testing.assert_allclose(per_lang[lang].draws, by_hand, atol=1e-12)
    macro = plan.effect("arm", "base", "accuracy")
    np.testing.assert_allclose(macro.draws, (per_lang["de"].draws + per_lang["fr"].draws) / 2, atol=1e-12)


def test_draws_are_deterministic_and_independent_of_other_arms():
    rng = np.random.default_rng(7)
    gold = balanced_gold(60)
    mk = lambda name, s=None: run(name, {"de": scored(gold, rng.random(60))}, s)  # noqa: E731
    base, other = mk("base"), mk("other")
    arm = [mk("arm", s) for s in range(3)]
    e1 = E.Resampler({"base": base, "arm": arm}, ["de"], n_resamples=300, seed=3).effect("arm", "base", "auc")
    e2 = E.Resampler({"base": base, "arm": arm}, ["de"], n_resamples=300, seed=3).effect("arm", "base", "auc")
    e3 = E.Resampler({"other": other, "base": base, "arm": arm}, ["de"], n_resamples=300, seed=3).effect("arm", "base", "auc")
    e4 = E.Resampler({"base": base, "arm": arm}, ["de"], n_resamples=300, seed=4).effect("arm", "base", "auc")
    assert np.array_equal(e1.draws, e2.draws)  # same path, same seed
    np.testing.assert_allclose(e3.draws, e1.draws, atol=1e-12)
    assert not np.allclose(e4.draws, e1.draws)


def test_metric_batches_do_not_change_the_draws(monkeypatch):
    rng = np.random.default_rng(8)
    cf = np.array([[0.45, 0.55]])
    base, arm = (run(x, {l: scored(balanced_gold(50), rng.random(50), cf=cf) for l in ("de", "fr")}) for x in ("base", "arm"))
    one = E.Resampler({"base": base, "arm": arm}, ["de", "fr"], n_resamples=300, seed=3)
    one.prepare(E.METRICS)
    monkeypatch.setattr(E, "_BATCH_BYTES", 1)  # every (run, language, metric) in its own pass over the draws
    many = E.Resampler({"base": base, "arm": arm}, ["de", "fr"], n_resamples=300, seed=3)
    for m in E.METRICS:
        np.testing.assert_allclose(many.effect("arm", "base", m).draws, one.effect("arm", "base", m).draws, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# Simulations with known answers
# ------------------------------------------------------------------------------------------------


def auc_study(rng, n: int, langs: list[str], mu_base: float, mu_arm: float):
    """Scores mu*gold + z_item + noise (z shared by every language and run): AUC = Phi(mu / 2)."""
    gold = balanced_gold(n)
    z = rng.normal(size=n)
    mk = lambda mu: {l: scored(gold, 1 / (1 + np.exp(-(mu * gold + z + rng.normal(size=n))))) for l in langs}  # noqa: E731
    return run("base", mk(mu_base)), run("arm", mk(mu_arm))


def test_auc_interval_covers_the_true_delta_at_about_the_nominal_rate():
    """200 simulated studies x 500 resamples; nominal 95%: accept 0.88-0.99 (binomial sd ~1.5%)."""
    rng = np.random.default_rng(11)
    truth = norm.cdf(1.0 / 2) - norm.cdf(0.5 / 2)
    hits = 0
    for k in range(200):
        base, arm = auc_study(rng, 100, ["de", "fr", "zh"], 0.5, 1.0)
        e = E.Resampler({"base": base, "arm": arm}, ["de", "fr", "zh"], n_resamples=500, seed=k).effect("arm", "base", "auc")
        hits += e.ci95[0] <= truth <= e.ci95[1]
    print(f"coverage {hits}/200")
    assert 0.88 <= hits / 200 <= 0.99, hits


def accuracy_study(rng, n: int, langs: list[str], d: float, seeds=(0.0,)):
    """Correct = 1[z_item + e + shift > 0], z shared: base accuracy 1/2, arm Phi((d + seed shift) / sqrt 2)."""
    gold = balanced_gold(n)
    z = rng.normal(size=n)
    base = run("base", {l: answered(gold, z + rng.normal(size=n) > 0) for l in langs})
    arm = [run(f"arm{s}", {l: answered(gold, z + rng.normal(size=n) + d + off > 0) for l in langs}, s)
           for s, off in enumerate(seeds)]
    return base, arm


def test_mde80_matches_simulated_power():
    """With the true Δ set to the computed MDE80, the CI excludes 0 in ~80% of 200 simulated
    studies (500 resamples each); accept 0.70-0.90."""
    rng = np.random.default_rng(12)
    langs, n = ["de", "fr"], 200
    mdes = []
    for k in range(20):
        base, arm = accuracy_study(rng, n, langs, 0.0)
        mdes.append(E.Resampler({"base": base, "arm": arm}, langs, n_resamples=500, seed=k).effect("arm", "base", "accuracy").mde80)
    mde = float(np.mean(mdes))
    assert E.Z_MDE80 == pytest.approx(2.8016, abs=1e-4)
    d = math.sqrt(2) * norm.ppf(0.5 + mde)  # true Δ = Phi(d / sqrt 2) - 1/2 = MDE80
    detected = 0
    for k in range(200):
        base, arm = accuracy_study(rng, n, langs, d)
        e = E.Resampler({"base": base, "arm": arm}, langs, n_resamples=500, seed=k).effect("arm", "base", "accuracy")
        detected += e.ci95[0] > 0 or e.ci95[1] < 0
    print(f"MDE80 {mde:.4f}: detected in {detected}/200 simulated studies")
    assert 0.70 <= detected / 200 <= 0.90, detected


def test_seed_level_widens_the_interval_when_seeds_differ():
    rng = np.random.default_rng(13)
    base, arm = accuracy_study(rng, 200, ["de", "fr"], 0.5, seeds=(-0.6, -0.2, 0.2, 0.6))
    kw = dict(n_resamples=1000, seed=0)
    both = E.Resampler({"base": base, "arm": arm}, ["de", "fr"], **kw).effect("arm", "base", "accuracy")
    items = E.Resampler({"base": base, "arm": arm}, ["de", "fr"], resample_seeds=False, **kw).effect("arm", "base", "accuracy")
    assert both.levels == [E.LEVEL_ITEMS, E.LEVEL_SEEDS] and items.levels == [E.LEVEL_ITEMS]
    assert both.estimate == pytest.approx(items.estimate, abs=1e-12)
    assert both.se > 1.3 * items.se
    assert [s["seed"] for s in both.per_seed] == [0, 1, 2, 3] and both.seeds == {"arm": [0, 1, 2, 3]}
    assert np.mean([s["estimate"] for s in both.per_seed]) == pytest.approx(both.estimate, abs=1e-12)
    assert all(s["se"] < both.se for s in both.per_seed)  # each seed alone: items only
    # identical seeds: drawing seeds changes nothing
    same = [E.RunData(f"arm{s}", TWO, arm[0].langs, s) for s in range(3)]
    a = E.Resampler({"base": base, "arm": same}, ["de", "fr"], **kw).effect("arm", "base", "accuracy")
    b = E.Resampler({"base": base, "arm": same}, ["de", "fr"], resample_seeds=False, **kw).effect("arm", "base", "accuracy")
    np.testing.assert_allclose(a.draws, b.draws, atol=1e-12)


def exact_accuracy_run(name: str, gold, acc: float, langs, rng) -> E.RunData:
    """Exactly round(acc * n) correct items per language, at random positions."""
    n = len(gold)
    out = {}
    for lang in langs:
        correct = np.zeros(n, dtype=bool)
        correct[rng.permutation(n)[: round(acc * n)]] = True
        out[lang] = answered(gold, correct)
    return run(name, out)


def test_trend_recovers_a_known_slope_and_finds_no_trend_in_flat_data():
    rng = np.random.default_rng(14)
    gold, langs, xs = balanced_gold(400), ["de", "fr", "zh"], [0, 1, 2, 3]  # log2 of 1, 2, 4, 8 languages
    base = exact_accuracy_run("base", gold, 0.5, langs, rng)
    for slope, acc in ((0.05, lambda x: 0.5 + 0.05 * x), (0.0, lambda x: 0.6)):
        arms = {f"k{2 ** x}": exact_accuracy_run(f"k{2 ** x}", gold, acc(x), langs, rng) for x in xs}
        plan = E.Resampler({"base": base, **arms}, langs, n_resamples=1000, seed=0)
        t = plan.trend([plan.effect(a, "base", "accuracy") for a in arms], xs)
        assert t.kind == "trend" and t.x == [0.0, 1.0, 2.0, 3.0] and len(t.parts) == 4
        assert t.estimate == pytest.approx(slope, abs=1e-12)
        if slope:
            assert t.p < 0.05 and t.ci95[0] > 0 and t.verdict() == "supported"
        else:
            assert t.ci95[0] < 0 < t.ci95[1] and t.verdict() == "inconclusive"
            assert "cannot tell" in t.sentence() and "MDE80" in t.sentence()


def test_contrast_is_the_difference_on_the_same_draws():
    rng = np.random.default_rng(15)
    base, arm = auc_study(rng, 80, ["de", "fr"], 0.5, 1.5)
    _, copy = auc_study(rng, 80, ["de", "fr"], 0.5, 0.7)
    plan = E.Resampler({"base": base, "arm": arm, "copy": run("copy", copy.langs)}, ["de", "fr"], n_resamples=400)
    ea, ec = plan.effect("arm", "base", "auc"), plan.effect("copy", "base", "auc")
    c = plan.contrast(ea, ec)
    direct = plan.effect("arm", "copy", "auc")  # base cancels on shared draws
    assert c.estimate == pytest.approx(direct.estimate, abs=1e-12)
    np.testing.assert_allclose(c.draws, direct.draws, atol=1e-12)
    assert c.parts == ["arm vs base", "copy vs base"]
    other = E.Resampler({"base": base, "arm": arm}, ["de", "fr"], n_resamples=400)
    with pytest.raises(ValueError, match="same draws"):
        plan.contrast(ea, other.effect("arm", "base", "auc"))
    with pytest.raises(ValueError, match="different metrics"):
        plan.contrast(ea, plan.effect("copy", "base", "accuracy"))
    with pytest.raises(ValueError, match="two distinct"):
        plan.trend([ea, ec], [1, 1])


# ------------------------------------------------------------------------------------------------
# p, verdicts and degenerate cases
# ------------------------------------------------------------------------------------------------


def effect_with(ci, estimate=0.0, p=0.5, not_testable=None) -> E.Effect:
    return E.Effect(kind="effect", label="x vs y", metric="auc", languages=["de"], estimate=estimate, ci95=ci,
                    se=0.01, p=p, mde80=0.028, n_items=100, n_resamples=1000, seeds={}, levels=[E.LEVEL_ITEMS],
                    not_testable=not_testable)


def test_verdict_rule():
    assert effect_with([0.01, 0.05], 0.03).verdict() == "supported"
    assert effect_with([0.01, 0.05], 0.03).verdict(-1) == "contradicted"
    assert effect_with([-0.05, -0.01], -0.03).verdict() == "contradicted"
    assert effect_with([-0.05, -0.01], -0.03).verdict(-1) == "supported"
    assert effect_with([-0.01, 0.05], 0.02).verdict() == "inconclusive"
    assert effect_with([0.0, 0.05], 0.02).verdict() == "inconclusive"  # 0 on the edge is inside
    assert effect_with([0.01, 0.05], 0.03, not_testable="why").verdict() == "not testable"
    with pytest.raises(ValueError):
        effect_with([0.01, 0.05]).verdict(0)


def test_bootstrap_p_value_definition_and_floor():
    rng = np.random.default_rng(16)
    base, arm = auc_study(rng, 100, ["de"], 0.0, 0.6)
    e = E.Resampler({"base": base, "arm": arm}, ["de"], n_resamples=500, seed=2).effect("arm", "base", "auc")
    d = e.draws
    assert e.p == pytest.approx(max(1 / 500, min(1, 2 * min(np.mean(d <= 0), np.mean(d >= 0)))))
    assert e.se == pytest.approx(np.std(d, ddof=1)) and e.mde80 == pytest.approx(E.Z_MDE80 * e.se)
    assert e.ci95 == pytest.approx(list(np.quantile(d, [0.025, 0.975])))
    strong = E.Resampler(dict(zip(("base", "arm"), auc_study(rng, 100, ["de"], 0.0, 4.0))), ["de"], n_resamples=500)
    assert strong.effect("arm", "base", "auc").p == pytest.approx(1 / 500)  # no draw <= 0: floored at 1/R


def test_degenerate_effects_are_not_testable_and_json_has_no_nan():
    rng = np.random.default_rng(17)
    gold, fr = balanced_gold(20), np.arange(19, 39)
    # one shared item: de has items 0..19, fr 19..38
    a = run("a", {"de": answered(gold, rng.random(20) > 0.5), "fr": answered(fr % 2, rng.random(20) > 0.5, fr)})
    b = run("b", {"de": answered(gold, rng.random(20) > 0.5), "fr": answered(fr % 2, rng.random(20) > 0.5, fr)})
    e = E.Resampler({"a": a, "b": b}, ["de", "fr"], n_resamples=100).effect("b", "a", "accuracy")
    assert e.n_items == 1 and e.verdict() == "not testable" and "fewer than 10" in e.not_testable
    # no discordant pair: the same answers (different probabilities) -> accuracy draws all 0
    s = np.linspace(0.11, 0.89, 40)  # reversed within each side of 1/2: same predictions, other ranking
    base = run("base", {"de": scored(balanced_gold(40), s)})
    same = run("same", {"de": scored(balanced_gold(40), np.where(s > 0.5, 1.4 - s, 0.6 - s))})
    plan = E.Resampler({"base": base, "same": same}, ["de"], n_resamples=200)
    acc = plan.effect("same", "base", "accuracy")
    assert acc.estimate == 0 and acc.verdict() == "not testable" and "zero-width" in acc.not_testable
    assert plan.effect("same", "base", "auc").verdict() != "not testable"  # the AUC does differ
    # all one label
    one = np.ones(30, dtype=int)
    u, v = (run(x, {"de": answered(one, rng.random(30) > 0.5)}) for x in "uv")
    e1 = E.Resampler({"u": u, "v": v}, ["de"], n_resamples=100).effect("v", "u", "accuracy")
    assert e1.verdict() == "not testable" and "one gold label" in e1.not_testable
    e1_auc = E.Resampler({"u": u, "v": v}, ["de"], n_resamples=100).effect("v", "u", "auc")
    assert e1_auc.verdict() == "not testable" and e1_auc.estimate is None and e1_auc.values == {"v": None, "u": None}
    # undefined metrics: AUC of three labels, calibrated accuracy without content-free probabilities
    three = run("t", {"de": E.LangData(np.arange(30), np.arange(30) % 3, rng.dirichlet([1, 1, 1], 30))}, labels="abc")
    three2 = run("t2", {"de": E.LangData(np.arange(30), np.arange(30) % 3, rng.dirichlet([1, 1, 1], 30))}, labels="abc")
    p3 = E.Resampler({"t": three, "t2": three2}, ["de"], n_resamples=100)
    for metric, why in (("auc", "two-label"), ("calibrated_accuracy", "content-free")):
        e3 = p3.effect("t2", "t", metric)
        assert e3.estimate is None and e3.ci95 is None and why in e3.not_testable and e3.verdict() == "not testable"
    # no language with items in every run
    e4 = E.Resampler({"t": three, "t2": three2}, ["de", "xx"], n_resamples=100).effect("t2", "t", "accuracy", ["xx"])
    assert e4.verdict() == "not testable" and e4.missing_languages == ["xx"]
    for x in (e, acc, e1, e1_auc, e3, e4):
        json.dumps(x.to_json(), allow_nan=False)
    with pytest.raises(ValueError, match="unknown name"):
        p3.effect("t2", "t", "f1")


def test_inconsistent_inputs_are_refused():
    gold = balanced_gold(20)
    a = run("a", {"de": answered(gold, gold == 1), "fr": answered(1 - gold, gold == 1)})
    with pytest.raises(AlignlensError, match="item 0: gold label pos in run a fr, neg in run a de"):
        E.Resampler({"a": a, "b": a}, ["de", "fr"])
    b = run("b", {"de": answered(gold, gold == 1)}, labels=("x", "y"))
    with pytest.raises(AlignlensError, match="labels"):
        E.Resampler({"a": a, "b": b}, ["de"])
    with pytest.raises(ValueError, match="seeds"):
        E.Resampler({"a": [a, a]}, ["de"])


# ------------------------------------------------------------------------------------------------
# From prediction rows: run_data, McNemar, compare_groups (what paired.compare_runs's groups need)
# ------------------------------------------------------------------------------------------------


def rows_and_summary(rng, langs, n, skip=(), cf=True):
    rows, summary = [], {"tasks": {"sent": {"languages": {}}}}
    gold = ["pos" if i % 3 else "neg" for i in range(n)]
    for lang in langs:
        for i in range(n):
            if (lang, i) in skip:
                continue
            p = float(rng.beta(2, 2))
            rows.append({"task": "sent", "lang": lang, "index": i, "gold": gold[i], "pred": "pos" if p > 0.5 else "neg",
                         "probs": {"neg": 0.9 * (1 - p), "pos": 0.9 * p}})
        summary["tasks"]["sent"]["languages"][lang] = {"p_content_free": {"neg": 0.35, "pos": 0.65} if cf else None}
    return rows, summary


def test_run_data_from_rows_and_summary():
    rows, summary = rows_and_summary(np.random.default_rng(18), ["de", "fr"], 12, skip={("fr", 3)})
    r = E.run_data(rows, summary, name="base")["sent"]
    assert r.labels == TWO and list(r.langs) == ["de", "fr"] and r.seed is None
    assert r.langs["fr"].indices.tolist() == [i for i in range(12) if i != 3]
    assert r.langs["de"].gold.tolist() == [1 if i % 3 else 0 for i in range(12)]
    np.testing.assert_allclose(r.langs["de"].content_free, [[0.35, 0.65]])
    assert E.run_data(rows, None)["sent"].langs["de"].content_free is None
    summary["tasks"]["sent"]["languages"]["de"]["p_content_free"] = {"neg": 0.5}
    with pytest.raises(AlignlensError, match="p_content_free"):
        E.run_data(rows, summary)
    with pytest.raises(AlignlensError, match="appears twice"):
        E.run_data(rows + rows[:1])


def test_mcnemar_by_language_with_holm():
    rng = np.random.default_rng(19)
    ra, _ = rows_and_summary(rng, ["de", "fr"], 30)
    rb, _ = rows_and_summary(rng, ["de", "fr"], 30, skip={("de", 0)})
    a, b = E.run_data(ra)["sent"], E.run_data(rb)["sent"]
    out = E.mcnemar_by_language(a, b)
    ps = []
    for lang, sl in (("de", slice(1, 30)), ("fr", slice(0, 30))):
        da, db = a.langs[lang], b.langs[lang]
        want = mcnemar_exact(da.pred[sl] == da.gold[sl], db.pred == db.gold)
        assert (out[lang]["b01"], out[lang]["b10"], out[lang]["n"]) == (want["b01"], want["b10"], want["n"])
        ps.append(want["p_value"])
    assert [out["de"]["p_holm"], out["fr"]["p_holm"]] == pytest.approx(holm(ps))


def test_compare_groups_matches_paired_point_deltas_and_metrics():
    rng = np.random.default_rng(20)
    langs = ["de", "fr", "zh"]
    ra, sa = rows_and_summary(rng, langs, 60)
    rb, sb = rows_and_summary(rng, langs, 60, skip={("fr", 5), ("zh", 7)})
    groups = {"all": langs, "de": ["de"], "none": ["xx"]}
    out = E.compare_groups(ra, rb, groups, a_summary=sa, b_summary=sb, n_resamples=300, seed=1)
    json.dumps(out, allow_nan=False)
    old = P.compare_runs(ra, rb, groups, n_resamples=300, seed=1)["tasks"]["sent"]["groups"]
    a, b = E.run_data(ra, sa)["sent"], E.run_data(rb, sb)["sent"]
    for g in ("all", "de"):
        for m in ("accuracy", "balanced_accuracy"):
            assert out["sent"][g][m]["delta"] == pytest.approx(old[g][m]["delta"], abs=1e-12)
            assert out["sent"][g][m]["n_items"] == old[g][m]["n_items"]
            assert out["sent"][g][m]["languages"] == old[g][m]["languages"]
        shared = [i for i in range(60) if g == "de" or i not in (5, 7)]
        want = {}
        for m, f in (("auc", lambda d, s: M.roc_auc(d.gold[s], M.binary_scores(d.probs[s]))),
                     ("calibrated_accuracy", lambda d, s: M.calibrated_accuracy(d.gold[s], d.probs[s], [0.35, 0.65]))):
            vals = []
            for lang in groups[g]:
                da, db = a.langs[lang], b.langs[lang]
                vals.append(f(db, np.searchsorted(db.indices, shared)) - f(da, np.searchsorted(da.indices, shared)))
            want[m] = np.mean(vals)
            e = out["sent"][g][m]
            assert e["estimate"] == pytest.approx(want[m], abs=1e-12)
            assert e["ci95"][0] <= e["estimate"] <= e["ci95"][1] and e["levels"] == [E.LEVEL_ITEMS]
            assert e["per_seed"] == [] and e["seeds"] == {} and e["a"] == e["values"]["a"]
    assert out["sent"]["none"]["auc"]["verdict"] == "not testable" and out["sent"]["none"]["auc"]["n_items"] == 0
    # without content-free probabilities calibrated accuracy is not testable, the others are unaffected
    no_cf = E.compare_groups(ra, rb, groups, a_summary=sa, n_resamples=300, seed=1)["sent"]["all"]
    assert no_cf["calibrated_accuracy"]["verdict"] == "not testable"
    assert no_cf["auc"]["ci95"] == out["sent"]["all"]["auc"]["ci95"]
    assert E.primary_metric(TWO) == "auc" and E.primary_metric("abc") == "calibrated_accuracy"
