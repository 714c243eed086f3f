import json

import numpy as np
import pytest
import torch
from scipy import stats as sps
from scipy.special import softmax

from alignlens import AlignlensError
from alignlens.lens import LensCapture, entropy_bits, lens_report


def test_entropy_bits_matches_scipy():
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(4, 5, 50))
    expected = sps.entropy(softmax(logits, axis=-1), base=2, axis=-1)
    got = entropy_bits(torch.from_numpy(logits).float())
    assert isinstance(got, torch.Tensor) and got.shape == (4, 5) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)  # float32 input
    got_np = entropy_bits(logits)
    assert isinstance(got_np, np.ndarray)
    np.testing.assert_allclose(got_np, expected, rtol=1e-12)


def test_entropy_bits_stable_and_edge_cases():
    big = np.array([[1000.0, 1000.0, 1000.0, 1000.0], [5000.0, 0.0, -5000.0, 0.0]])
    np.testing.assert_allclose(entropy_bits(big), [2.0, 0.0], atol=1e-12)
    with_inf = torch.tensor([[0.0, 0.0, -float("inf"), -float("inf")]])
    np.testing.assert_allclose(entropy_bits(with_inf).numpy(), [1.0], atol=1e-12)
    assert entropy_bits(np.zeros(256)) == pytest.approx(8.0)


def _capture(n=40, L=5, k=3, seed=0, overlap=(False, True, False)):
    rng = np.random.default_rng(seed)
    p_en = rng.dirichlet(np.ones(k + 1), size=(n, L))[..., :k] * 0.9
    p_tg = rng.dirichlet(np.ones(k + 1), size=(n, L))[..., :k] * 0.8
    ent = rng.uniform(0, 10, size=(n, L))
    gold = rng.integers(0, k, size=n)
    return LensCapture(
        p_en=torch.from_numpy(p_en).float(),
        p_target=p_tg,
        entropy_bits=ent,
        gold=torch.from_numpy(gold),
        overlap=np.array(overlap),
    ), (p_en, p_tg, ent, gold)


def _t_interval(values: np.ndarray):
    n = len(values)
    m = values.mean()
    lo, hi = sps.t.interval(0.95, df=n - 1, loc=m, scale=sps.sem(values))
    return m, lo, hi


def test_lens_report_matches_direct_loop():
    cap, (p_en, p_tg, ent, gold) = _capture()
    rep = lens_report({"de": cap})
    json.dumps(rep, allow_nan=False)
    assert rep["n_layers"] == 5
    entry = rep["per_language"]["de"]
    keep = [i for i in range(len(gold)) if gold[i] != 1]  # label 1 overlaps
    assert entry["n"] == len(keep) and entry["n_dropped_overlap"] == int((gold == 1).sum()) > 0
    p_en32 = p_en.astype(np.float32).astype(np.float64)  # p_en was passed as float32
    for layer in range(5):
        direct = {
            "p_en": np.array([p_en32[i, layer, gold[i]] for i in keep]),
            "p_target": np.array([p_tg[i, layer, gold[i]] for i in keep]),
            "p_correct": np.array([p_en32[i, layer, gold[i]] / p_en32[i, layer].sum() for i in keep]),
            "entropy_bits": np.array([ent[i, layer] for i in keep]),
        }
        for name, vals in direct.items():
            m, lo, hi = _t_interval(vals)
            assert entry[name]["mean"][layer] == pytest.approx(m, rel=1e-9), name
            assert entry[name]["lo"][layer] == pytest.approx(lo, rel=1e-9), name
            assert entry[name]["hi"][layer] == pytest.approx(hi, rel=1e-9), name
    assert all(0 <= v <= 1 for v in entry["p_correct"]["mean"])


def test_english_not_dropped_and_no_drop_option():
    cap, (_, _, _, gold) = _capture(overlap=(True, True, True))
    rep = lens_report({"en": cap, "fr": cap})
    assert rep["per_language"]["en"]["n"] == len(gold)
    assert rep["per_language"]["en"]["n_dropped_overlap"] == 0
    assert rep["per_language"]["fr"]["n"] == 0
    assert rep["per_language"]["fr"]["n_dropped_overlap"] == len(gold)
    assert rep["per_language"]["fr"]["p_en"] == {"mean": [None] * 5, "lo": [None] * 5, "hi": [None] * 5}
    json.dumps(rep, allow_nan=False)
    kept = lens_report({"fr": cap}, drop_overlap=False)
    assert kept["per_language"]["fr"]["n"] == len(gold)


def test_p_correct_is_one_when_only_gold_has_mass():
    n, L, k = 6, 2, 4
    gold = np.arange(n) % k
    p_en = np.zeros((n, L, k))
    p_en[np.arange(n), :, gold] = 0.3
    cap = LensCapture(p_en, p_en.copy(), np.ones((n, L)), gold, np.zeros(k, dtype=bool))
    entry = lens_report({"ja": cap})["per_language"]["ja"]
    assert entry["p_correct"]["mean"] == [1.0, 1.0]
    assert entry["p_en"]["mean"] == pytest.approx([0.3, 0.3])
    assert entry["p_en"]["lo"] == pytest.approx([0.3, 0.3])  # zero variance


def test_shape_errors():
    cap, _ = _capture()
    with pytest.raises(AlignlensError):
        lens_report({"de": LensCapture(cap.p_en, cap.p_target, cap.entropy_bits, cap.gold, np.zeros(2, bool))})
    with pytest.raises(AlignlensError):
        lens_report({"de": LensCapture(cap.p_en, cap.p_target[:, :4], cap.entropy_bits, cap.gold, cap.overlap)})
    bad_gold = np.full(40, 3)
    with pytest.raises(AlignlensError):
        lens_report({"de": LensCapture(cap.p_en, cap.p_target, cap.entropy_bits, bad_gold, cap.overlap)})
    other, _ = _capture(L=4)
    with pytest.raises(AlignlensError):
        lens_report({"de": cap, "fr": other})


def test_all_label_sums_reported_over_kept_items():
    cap, (_, _, _, gold) = _capture()
    rng = np.random.default_rng(5)
    cap.p_en_all = rng.uniform(0, 1, size=(40, 5))
    cap.p_target_all = torch.from_numpy(rng.uniform(0, 1, size=(40, 5)))
    rep = lens_report({"de": cap}, prompts="target-labels", overlap_rule="token-set")
    assert rep["lens_prompts"] == "target-labels" and rep["overlap_rule"] == "token-set"
    entry = rep["per_language"]["de"]
    keep = gold != 1  # label 1 overlaps: its items are dropped from every metric, the sums too
    for name, values in (("p_en_all", cap.p_en_all), ("p_target_all", cap.p_target_all.numpy())):
        for layer in range(5):
            m, lo, hi = _t_interval(values[keep, layer])
            assert entry[name]["mean"][layer] == pytest.approx(m, rel=1e-12)
            assert (entry[name]["lo"][layer], entry[name]["hi"][layer]) == pytest.approx((lo, hi), rel=1e-9)
    json.dumps(rep, allow_nan=False)
    # not captured (older runs): not reported, rather than reported as zeros
    plain, _ = _capture()
    assert "p_en_all" not in lens_report({"de": plain})["per_language"]["de"]
    with pytest.raises(AlignlensError, match="p_target_all must be"):
        plain.p_target_all = np.zeros((40, 4))
        lens_report({"de": plain})
