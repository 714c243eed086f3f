"""paired.py against hand computations, binomial tails and synthetic bootstraps with known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from alignlens import AlignlensError
from alignlens import paired as P


# ------------------------------------------------------------------------------------------------
# McNemar, Holm, Benjamini-Hochberg
# ------------------------------------------------------------------------------------------------


def pairs(b01: int, b10: int, both_right: int = 3, both_wrong: int = 2) -> tuple[np.ndarray, np.ndarray]:
    a = [False] * b01 + [True] * b10 + [True] * both_right + [False] * both_wrong
    b = [True] * b01 + [False] * b10 + [True] * both_right + [False] * both_wrong
    return np.array(a), np.array(b)


def binomial_two_sided(k: int, m: int) -> float:
    """Exact two-sided p of k successes in m trials at 1/2: twice the smaller tail, capped at 1."""
    tail = sum(math.comb(m, j) for j in range(0, min(k, m - k) + 1)) / 2**m
    return min(1.0, 2 * tail)


@pytest.mark.parametrize("b01,b10", [(0, 5), (5, 0), (2, 9), (9, 2), (7, 7), (1, 2), (12, 30), (0, 1)])
def test_mcnemar_against_binomial_tail(b01, b10):
    a, b = pairs(b01, b10)
    r = P.mcnemar_exact(a, b)
    assert (r["b01"], r["b10"], r["n"]) == (b01, b10, b01 + b10 + 5)
    assert r["p_value"] == pytest.approx(binomial_two_sided(b01, b01 + b10), rel=1e-9)


def test_mcnemar_known_values_and_no_discordant_pairs():
    assert P.mcnemar_exact(*pairs(0, 5))["p_value"] == pytest.approx(2 / 32)
    # 2 vs 9: 2 * (C(11,0)+C(11,1)+C(11,2)) / 2^11 = 2 * 67 / 2048
    assert P.mcnemar_exact(*pairs(2, 9))["p_value"] == pytest.approx(134 / 2048)
    r = P.mcnemar_exact(*pairs(0, 0))
    assert r["p_value"] == 1.0 and r["b01"] == r["b10"] == 0


def test_holm_hand_example():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    assert P.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert P.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # 0.5*2 = 1.0, capped; 0.6 -> max 1.0
    assert P.holm([0.02, 0.02, 0.5]) == pytest.approx([0.06, 0.06, 0.5])  # ties share a value


def test_bh_hand_example():
    # sorted: 0.005*4/1 = 0.02, 0.01*4/2 = 0.02, 0.03*4/3 = 0.04, 0.04*4/4 = 0.04 (running min from the top)
    assert P.benjamini_hochberg([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    # 0.01*3/1 = 0.03, 0.02*3/2 = 0.03, 0.9*3/3 = 0.9
    assert P.benjamini_hochberg([0.9, 0.02, 0.01]) == pytest.approx([0.9, 0.03, 0.03])
    assert P.benjamini_hochberg([0.6, 0.7]) == pytest.approx([0.7, 0.7])  # step-up: min(1.2, 0.7)


def test_missing_p_values_pass_through_and_do_not_count():
    out = P.holm([0.01, None, float("nan"), 0.04])
    assert out[0] == pytest.approx(0.02) and out[3] == pytest.approx(0.04)
    assert out[1] is None and math.isnan(out[2])
    out = P.benjamini_hochberg([None, 0.03, 0.01])
    assert out[0] is None and out[1:] == pytest.approx([0.03, 0.02])
    assert P.holm([]) == [] and P.benjamini_hochberg([None]) == [None]


# ------------------------------------------------------------------------------------------------
# Bootstraps
# ------------------------------------------------------------------------------------------------


def test_paired_delta_ci_collapses_for_a_constant_difference():
    a = np.zeros(30, dtype=bool)
    assert P.paired_delta_ci(a, ~a, n_resamples=500, seed=3) == (1.0, 1.0)
    assert P.paired_delta_ci(a, a, n_resamples=500, seed=3) == (0.0, 0.0)
    with pytest.raises(ValueError):
        P.paired_delta_ci([], [])


def test_paired_delta_ci_width_matches_paired_standard_error():
    # b equals a except on 40 of 400 items (30 gains, 10 losses): pairing makes the interval much
    # narrower than treating the two accuracies as independent.
    rng = np.random.default_rng(1)
    a = rng.uniform(size=400) < 0.6
    b = a.copy()
    flip = rng.permutation(400)
    gains = [i for i in flip if not a[i]][:30]
    losses = [i for i in flip if a[i]][:10]
    b[gains], b[losses] = True, False
    d = b.astype(float) - a.astype(float)
    lo, hi = P.paired_delta_ci(a, b, n_resamples=4000, seed=0)
    assert lo < d.mean() < hi
    paired_width = 2 * 1.96 * d.std() / math.sqrt(400)
    assert hi - lo == pytest.approx(paired_width, rel=0.15)
    independent_width = 2 * 1.96 * math.sqrt((a.var() + b.var()) / 400)
    assert hi - lo < 0.5 * independent_width


def lang_data(correct_a: dict, correct_b: dict, items: dict | None = None):
    """gold all 1; pred 1 where correct, 0 where wrong."""
    gold = {l: np.ones(len(v), dtype=int) for l, v in correct_a.items()}
    pa = {l: np.asarray(v).astype(int) for l, v in correct_a.items()}
    pb = {l: np.asarray(v).astype(int) for l, v in correct_b.items()}
    idx = items or {l: list(range(len(v))) for l, v in correct_a.items()}
    return gold, pa, pb, idx


def test_cluster_bootstrap_constant_delta_collapses():
    ca = {l: np.zeros(25, dtype=bool) for l in ("en", "de", "fr")}
    cb = {l: np.ones(25, dtype=bool) for l in ("en", "de", "fr")}
    r = P.cluster_bootstrap_delta(*lang_data(ca, cb), {"all": ["en", "de", "fr"]}, n_resamples=300)
    g = r["all"]
    assert g["delta"] == 1.0 and g["ci95"] == [1.0, 1.0]
    assert (g["a"], g["b"], g["n_items"], g["languages"], g["missing_languages"]) == (0.0, 1.0, 25, ["en", "de", "fr"], [])


def test_cluster_bootstrap_anticorrelated_languages_cancel_within_items():
    # item i: de gains where en does not and vice versa, so every item's language-mean effect is
    # exactly +0.5; drawing items jointly keeps the macro delta at 0.5 in every resample.
    n = 40
    even = np.arange(n) % 2 == 0
    ca = {"en": np.zeros(n, bool), "de": np.zeros(n, bool)}
    cb = {"en": even.copy(), "de": ~even}
    r = P.cluster_bootstrap_delta(*lang_data(ca, cb), {"g": ["en", "de"]}, n_resamples=500, seed=1)["g"]
    assert r["delta"] == pytest.approx(0.5)
    assert r["ci95"] == pytest.approx([0.5, 0.5], abs=1e-12)


def independent_bootstrap(ca: dict, cb: dict, n_resamples: int, seed: int) -> list[float]:
    """Reference: resample each language's items on its own (no clustering), macro delta per resample."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_resamples):
        ds = []
        for l in ca:
            r = rng.integers(0, len(ca[l]), len(ca[l]))
            ds.append(cb[l][r].mean() - ca[l][r].mean())
        out.append(np.mean(ds))
    return list(np.quantile(out, [0.025, 0.975]))


def test_cluster_interval_is_wider_when_item_effects_are_shared_across_languages():
    # Every language has the same per-item effect (the same items gained/lost in all 9 languages):
    # the languages are one sample of items, not nine. Independent resampling pretends otherwise.
    rng = np.random.default_rng(7)
    n, langs = 60, [f"l{k}" for k in range(9)]
    base = rng.uniform(size=n) < 0.5
    effect = rng.choice([-1, 0, 0, 1, 1], size=n)
    aligned = np.where(effect > 0, True, np.where(effect < 0, False, base))
    ca = {l: base.copy() for l in langs}
    cb = {l: aligned.copy() for l in langs}
    r = P.cluster_bootstrap_delta(*lang_data(ca, cb), {"all": langs}, n_resamples=2000, seed=0)["all"]
    lo, hi = r["ci95"]
    d = aligned.astype(float) - base.astype(float)
    assert r["delta"] == pytest.approx(d.mean())
    # clustered: as wide as one language's paired interval; independent: narrower by ~sqrt(9)
    assert hi - lo == pytest.approx(2 * 1.96 * d.std() / math.sqrt(n), rel=0.2)
    ilo, ihi = independent_bootstrap(ca, cb, 2000, 0)
    assert hi - lo > 2 * (ihi - ilo)


def test_cluster_bootstrap_uses_items_shared_by_all_languages_of_the_group():
    ca = {"en": np.zeros(10, bool), "de": np.zeros(8, bool), "sw": np.zeros(3, bool)}
    cb = {"en": np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0], bool),  # items 0..9
          "de": np.array([1, 1, 1, 1, 1, 1, 1, 1], bool),  # items 2..9
          "sw": np.array([1, 1, 1], bool)}  # items 100..102, shared with nobody
    items = {"en": list(range(10)), "de": list(range(2, 10)), "sw": [100, 101, 102]}
    groups = {"ende": ["en", "de", "zh"], "with_sw": ["en", "sw"], "none": ["zh"]}
    r = P.cluster_bootstrap_delta(*lang_data(ca, cb, items), groups, n_resamples=200)
    g = r["ende"]
    # shared items 2..9: en gains on 2, 3, 4 -> 3/8; de on all 8 -> 1
    assert g["n_items"] == 8 and g["languages"] == ["en", "de"] and g["missing_languages"] == ["zh"]
    assert g["delta"] == pytest.approx((3 / 8 + 1.0) / 2)
    assert g["ci95"][0] <= g["delta"] <= g["ci95"][1]
    for name in ("with_sw", "none"):
        assert r[name]["n_items"] == 0 and r[name]["delta"] is None and r[name]["ci95"] is None
    json.dumps(r, allow_nan=False)


def hand_balanced_accuracy(gold, pred) -> float:
    recalls = []
    for c in sorted(set(gold.tolist())):
        members = [p for g, p in zip(gold, pred) if g == c]
        recalls.append(sum(p == c for p in members) / len(members))
    return sum(recalls) / len(recalls)


def test_named_metrics_match_callables_on_the_same_draws():
    rng = np.random.default_rng(5)
    langs = ["en", "de", "fr"]
    gold = {l: rng.integers(0, 3, 30) for l in langs}
    pa = {l: rng.integers(0, 3, 30) for l in langs}
    pb = {l: np.where(rng.uniform(size=30) < 0.4, gold[l], rng.integers(0, 3, 30)) for l in langs}
    idx = {l: list(range(30)) for l in langs}
    groups = {"all": langs, "two": ["en", "fr"]}
    fast = P.cluster_bootstrap_delta(gold, pa, pb, idx, groups, metric="balanced_accuracy", n_resamples=300, seed=2)
    slow = P.cluster_bootstrap_delta(gold, pa, pb, idx, groups, metric=hand_balanced_accuracy, n_resamples=300, seed=2)
    for g in groups:
        assert fast[g]["delta"] == pytest.approx(slow[g]["delta"], abs=1e-12)
        assert fast[g]["ci95"] == pytest.approx(slow[g]["ci95"], abs=1e-12)
    expected = np.mean([hand_balanced_accuracy(gold[l], pb[l]) - hand_balanced_accuracy(gold[l], pa[l]) for l in langs])
    assert fast["all"]["delta"] == pytest.approx(expected)
    acc = P.cluster_bootstrap_delta(gold, pa, pb, idx, groups, n_resamples=300, seed=2)
    acc_slow = P.cluster_bootstrap_delta(gold, pa, pb, idx, groups, metric=lambda g, p: float(np.mean(g == p)), n_resamples=300, seed=2)  # fmt: skip
    assert acc["all"]["ci95"] == pytest.approx(acc_slow["all"]["ci95"], abs=1e-12)
    assert acc == P.cluster_bootstrap_delta(gold, pa, pb, idx, groups, n_resamples=300, seed=2)  # deterministic
    assert acc["all"]["ci95"] != P.cluster_bootstrap_delta(gold, pa, pb, idx, groups, n_resamples=300, seed=3)["all"]["ci95"]


# ------------------------------------------------------------------------------------------------
# compare_runs
# ------------------------------------------------------------------------------------------------


def row(task, lang, index, gold, pred, p_pos=None):
    p = p_pos if p_pos is not None else (0.8 if pred == "pos" else 0.2)
    return {"task": task, "lang": lang, "index": index, "gold": gold, "pred": pred,
            "probs": {"neg": 1 - p, "pos": p}}  # fmt: skip


def synthetic_runs():
    gold = {i: ("pos" if i % 3 else "neg") for i in range(12)}
    a, b = [], []
    # en: a has items 0..9, b items 2..11; de: both 0..9; fr: only in a
    for i in range(10):
        a.append(row("sent", "en", i, gold[i], "neg"))
        a.append(row("sent", "de", i, gold[i], gold[i] if i < 5 else "neg"))
        a.append(row("sent", "fr", i, gold[i], "pos"))
    for i in range(2, 12):
        b.append(row("sent", "en", i, gold[i], "pos"))
    for i in range(10):
        b.append(row("sent", "de", i, gold[i], "pos"))
    return a, b, gold


def test_compare_runs_uses_only_shared_items_and_reports_counts():
    a, b, gold = synthetic_runs()
    out = P.compare_runs(a, b, {"all": ["en", "de", "fr"], "de_only": ["de"]}, n_resamples=300, seed=0)
    json.dumps(out, allow_nan=False)  # no NaN anywhere
    assert (out["n_shared"], out["n_only_a"], out["n_only_b"]) == (18, 12, 2)
    t = out["tasks"]["sent"]
    assert t["labels"] == ["neg", "pos"]
    assert t["omitted_languages"] == {"fr": {"only_a": 10, "only_b": 0}}
    en, de = t["languages"]["en"], t["languages"]["de"]
    shared_en = range(2, 10)
    n_pos = sum(gold[i] == "pos" for i in shared_en)  # items 2,4,5,7,8 -> 5 of 8
    assert (en["n"], en["only_a"], en["only_b"]) == (8, 2, 2)
    assert en["acc_a"] == pytest.approx((8 - n_pos) / 8) and en["acc_b"] == pytest.approx(n_pos / 8)
    assert en["delta"] == pytest.approx((2 * n_pos - 8) / 8)
    assert en["balanced_acc_a"] == pytest.approx(0.5) and en["balanced_acc_b"] == pytest.approx(0.5)
    assert (en["mcnemar"]["b01"], en["mcnemar"]["b10"]) == (n_pos, 8 - n_pos)
    # de: a right on 0..4 and on the neg items 6, 9; b (always pos) right on pos items 1,2,4,5,7,8
    ca = [i < 5 or gold[i] == "neg" for i in range(10)]
    cb = [gold[i] == "pos" for i in range(10)]
    b01 = sum((not x) and y for x, y in zip(ca, cb))
    b10 = sum(x and not y for x, y in zip(ca, cb))
    assert (de["mcnemar"]["b01"], de["mcnemar"]["b10"]) == (b01, b10)
    assert de["acc_a"] == pytest.approx(sum(ca) / 10) and de["acc_b"] == pytest.approx(sum(cb) / 10)
    assert de["metrics_b"]["predicted_distribution"] == {"neg": 0, "pos": 10}
    lo, hi = de["delta_ci95"]
    assert lo <= de["delta"] <= hi
    # Holm and BH across the task's two languages, by hand
    p_en, p_de = en["mcnemar"]["p_value"], de["mcnemar"]["p_value"]
    assert p_en == pytest.approx(binomial_two_sided(n_pos, 8))
    lo_p, hi_p = sorted([p_en, p_de])
    holm_lo, holm_hi = min(1, 2 * lo_p), min(1, max(2 * lo_p, hi_p))
    assert sorted([en["p_holm"], de["p_holm"]]) == pytest.approx([holm_lo, holm_hi])
    bh_hi = hi_p
    bh_lo = min(2 * lo_p, bh_hi)
    assert sorted([en["p_bh"], de["p_bh"]]) == pytest.approx([bh_lo, bh_hi])
    # groups: items shared by en and de in both runs are 2..9; fr has no shared item
    g = t["groups"]["all"]["accuracy"]
    assert g["n_items"] == 8 and g["languages"] == ["en", "de"] and g["missing_languages"] == ["fr"]
    acc_de_a = np.mean([ca[i] for i in shared_en])
    acc_de_b = np.mean([cb[i] for i in shared_en])
    assert g["delta"] == pytest.approx(((en["acc_b"] - en["acc_a"]) + (acc_de_b - acc_de_a)) / 2)
    assert t["groups"]["de_only"]["balanced_accuracy"]["n_items"] == 10
    assert t["groups"]["de_only"]["balanced_accuracy"]["delta"] == pytest.approx(de["balanced_acc_b"] - de["balanced_acc_a"])
    assert out == P.compare_runs(a, b, {"all": ["en", "de", "fr"], "de_only": ["de"]}, n_resamples=300, seed=0)


def test_compare_runs_default_group_and_auc_on_shared_items():
    a, b, _ = synthetic_runs()
    out = P.compare_runs(a, b, n_resamples=100)
    assert list(out["tasks"]["sent"]["groups"]) == ["all"]
    assert out["tasks"]["sent"]["groups"]["all"]["accuracy"]["missing_languages"] == ["fr"]
    # constant probabilities in b: every positive ties every negative -> AUC 1/2
    assert out["tasks"]["sent"]["languages"]["de"]["metrics_b"]["roc_auc"] == pytest.approx(0.5)


def test_compare_runs_refuses_inconsistent_input():
    a, b, _ = synthetic_runs()
    bad = [dict(r) for r in b]
    bad[0]["gold"] = "neg" if bad[0]["gold"] == "pos" else "pos"
    with pytest.raises(AlignlensError, match=r"task sent en item 2: gold label differs"):
        P.compare_runs(a, bad, n_resamples=10)
    with pytest.raises(AlignlensError, match=r"run b prediction row 2 .*appears twice"):
        P.compare_runs(a, [b[0], b[0]], n_resamples=10)
    with pytest.raises(AlignlensError, match=r"run a prediction row 1: missing key 'probs'"):
        P.compare_runs([{k: v for k, v in a[0].items() if k != "probs"}], b, n_resamples=10)
    with pytest.raises(AlignlensError, match="not one of the labels"):
        P.compare_runs([dict(a[0], pred="maybe")], b, n_resamples=10)
    with pytest.raises(AlignlensError, match="no .* in common"):
        P.compare_runs([r for r in a if r["lang"] == "fr"], b, n_resamples=10)


def test_stratified_draws_keep_label_counts_and_cover_each_stratum():
    gold = np.array([0] * 7 + [1] * 3 + [2] * 5)
    rng = np.random.default_rng(0)
    rng.shuffle(gold)
    blocks = list(P._resamples(gold.size, 600, seed=4, strata=gold))
    idx = np.concatenate(blocks)
    assert idx.shape == (600, gold.size)
    for row in idx:  # every resample keeps the label counts, each position drawn from its own label's items
        assert np.array_equal(gold[row], gold)
    for v in (0, 1, 2):  # within a stratum the draw is uniform over its items
        pos = np.flatnonzero(gold == v)
        counts = np.bincount(idx[:, pos].ravel(), minlength=gold.size)[pos]
        assert counts.min() > 0.6 * counts.mean()
    # unstratified draws change the label mix (what a balanced design must not do)
    free = np.concatenate(list(P._resamples(gold.size, 200, seed=4)))
    assert any(not np.array_equal(np.sort(gold[r]), np.sort(gold)) for r in free)


def test_group_auc_is_label_stratified_with_an_mde():
    # an aligned run that ranks better (AUC up) while its accuracy is held by a shifted threshold
    rng = np.random.default_rng(2)
    n, langs = 60, ["en", "de", "sw"]
    gold = np.repeat([0, 1], n // 2)
    rows_a, rows_b = [], []
    for lang in langs:
        sa = np.clip(0.5 + 0.15 * (gold - 0.5) + rng.normal(0, 0.2, n), 0.01, 0.99)
        sb = np.clip(0.5 + 0.6 * (gold - 0.5) + rng.normal(0, 0.2, n), 0.01, 0.99)
        for i in range(n):
            for rows, s in ((rows_a, sa[i]), (rows_b, sb[i])):
                rows.append({"task": "t", "lang": lang, "index": i, "gold": ["neg", "pos"][gold[i]],
                             "pred": "pos" if s > 0.5 else "neg", "probs": {"neg": 1 - s, "pos": s}})
    out = P.compare_runs(rows_a, rows_b, {"all": langs}, n_resamples=400, seed=1)["tasks"]["t"]["groups"]["all"]
    auc = out["auc"]
    from alignlens import metrics as M

    def macro_auc(rows):
        return np.mean([M.roc_auc(gold, np.array([r["probs"]["pos"] for r in rows if r["lang"] == lang]))
                        for lang in langs])
    assert auc["delta"] == pytest.approx(macro_auc(rows_b) - macro_auc(rows_a), abs=1e-12)
    assert auc["ci95"][0] > 0  # a clear gain in ranking
    from alignlens.effects import Z_MDE80
    assert auc["mde80"] == pytest.approx(Z_MDE80 * auc["se"]) and auc["se"] > 0
