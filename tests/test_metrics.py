"""metrics.py against hand computations and brute force (no sklearn)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from alignlens import NumericalError
from alignlens import metrics as M


def probs_for(pred: list[int], n_labels: int) -> np.ndarray:
    """Label probabilities whose argmax is `pred` (0.7 on the predicted label, the rest shared)."""
    p = np.full((len(pred), n_labels), 0.3 / (n_labels - 1))
    p[np.arange(len(pred)), pred] = 0.7
    return p


def test_three_labels_hand_confusion_matrix():
    # gold \ pred   0  1  2
    #        0      2  1  1     recall 2/4
    #        1      1  1  0     recall 1/2
    #        2      1  0  3     recall 3/4
    gold = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
    pred = [0, 0, 1, 2, 1, 0, 2, 2, 2, 0]
    m = M.classification_metrics(gold, probs_for(pred, 3), ["x", "y", "z"])
    assert m["n"] == 10
    assert m["accuracy"] == pytest.approx(6 / 10)
    assert m["balanced_accuracy"] == pytest.approx((2 / 4 + 1 / 2 + 3 / 4) / 3)
    # F1 = 2TP/(2TP+FP+FN): x: TP2 FP2 FN2 -> 4/8; y: TP1 FP1 FN1 -> 2/4; z: TP3 FP1 FN1 -> 6/8
    assert m["macro_f1"] == pytest.approx((4 / 8 + 2 / 4 + 6 / 8) / 3)
    assert m["roc_auc"] is None  # three labels
    assert m["predicted_distribution"] == {"x": 4, "y": 2, "z": 4}
    assert m["gold_distribution"] == {"x": 4, "y": 2, "z": 4}


def test_always_one_label_balanced_accuracy_and_f1_convention():
    # A model that answers "a" for everything; label "d" is never gold and never predicted.
    gold = [0, 0, 0, 1, 1, 2]
    pred = [0] * 6
    m = M.classification_metrics(gold, probs_for(pred, 4), ["a", "b", "c", "d"])
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["balanced_accuracy"] == pytest.approx(1 / 3)  # recalls 1, 0, 0 over the 3 gold classes
    # F1: a: TP3 FP3 FN0 -> 6/9; b, c: 0 (gold, never predicted); d: left out (0/0)
    assert m["macro_f1"] == pytest.approx((6 / 9 + 0 + 0) / 3)
    assert m["predicted_distribution"] == {"a": 6, "b": 0, "c": 0, "d": 0}
    assert m["gold_distribution"] == {"a": 3, "b": 2, "c": 1, "d": 0}


def test_pred_override_uses_recorded_predictions():
    gold = [0, 1, 1]
    probs = probs_for([0, 0, 0], 2)
    m = M.classification_metrics(gold, probs, ["n", "p"], pred=[0, 1, 0])
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["predicted_distribution"] == {"n": 2, "p": 1}


def brute_auc(gold, scores) -> float:
    pos = [s for g, s in zip(gold, scores) if g == 1]
    neg = [s for g, s in zip(gold, scores) if g == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 40
    gold = rng.integers(0, 2, n)
    # unnormalised label masses; rounding the ratio makes ties between items
    p1 = np.round(rng.uniform(0, 1, n), 1)
    total = rng.uniform(0.2, 0.9, n)
    probs = np.stack([(1 - p1) * total, p1 * total], axis=1)
    scores = [b / (a + b) for a, b in probs]
    m = M.classification_metrics(gold, probs, ["neg", "pos"])
    assert m["roc_auc"] == pytest.approx(brute_auc(gold, scores))


def test_auc_uses_ratio_not_raw_probability():
    # raw p1 ranks item 0 (gold 0) above item 1 (gold 1), the ratio p1/(p0+p1) the other way round
    probs = np.array([[0.8, 0.4], [0.05, 0.1]])
    gold = [0, 1]
    assert M.classification_metrics(gold, probs, ["neg", "pos"])["roc_auc"] == pytest.approx(1.0)
    assert brute_auc(gold, probs[:, 1]) == 0.0


def test_auc_undefined_cases_are_none_and_empty_input():
    assert M.classification_metrics([1, 1], probs_for([0, 1], 2), ["n", "p"])["roc_auc"] is None
    m = M.classification_metrics([], np.zeros((0, 2)), ["n", "p"])
    assert m["n"] == 0
    assert all(m[k] is None for k in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc"))
    assert m["predicted_distribution"] == {"n": 0, "p": 0}


def test_non_finite_probabilities_are_refused():
    probs = probs_for([0, 1], 2)
    probs[1, 0] = np.nan
    with pytest.raises(NumericalError, match="row 1"):
        M.classification_metrics([0, 1], probs, ["n", "p"])


def test_content_free_probs_average_normalised_vectors():
    # [2, 2] -> [.5, .5]; [3, 1] -> [.75, .25]; mean [.625, .375]
    np.testing.assert_allclose(M.content_free_probs([[2.0, 2.0], [3.0, 1.0]]), [0.625, 0.375])


def test_calibration_hand_values():
    p_cf = np.array([0.4, 0.1])  # normalised: [0.8, 0.2]
    probs = np.array([[0.45, 0.05], [0.3, 0.2]])  # normalised rows [0.9, 0.1], [0.6, 0.4]
    # row 0: [0.9/0.8, 0.1/0.2] = [1.125, 0.5] -> [1.125, 0.5]/1.625
    # row 1: [0.6/0.8, 0.4/0.2] = [0.75, 2.0]  -> [0.75, 2.0]/2.75
    expected = np.array([[1.125 / 1.625, 0.5 / 1.625], [0.75 / 2.75, 2.0 / 2.75]])
    np.testing.assert_allclose(M.calibrate(probs, p_cf), expected)
    np.testing.assert_allclose(M.calibrate(probs[1], p_cf), expected[1])  # one row [L]


def test_biased_model_becomes_correct_after_calibration():
    # The model leans to label 0 for every input (content-free input: 80% label 0); relative to
    # that prior, items of class 1 do carry evidence for label 1.
    rng = np.random.default_rng(0)
    gold = np.array([0, 1] * 20)
    p0 = np.where(gold == 0, rng.uniform(0.85, 0.95, 40), rng.uniform(0.55, 0.75, 40))
    probs = np.stack([p0, 1 - p0], axis=1) * 0.6  # unnormalised masses are fine
    p_cf = M.content_free_probs([[0.8, 0.2], [0.79, 0.21], [0.81, 0.19]])
    m = M.classification_metrics(gold, probs, ["a", "b"])
    assert m["accuracy"] == pytest.approx(0.5) and m["predicted_distribution"] == {"a": 40, "b": 0}
    assert M.calibrated_accuracy(gold, probs, p_cf) == pytest.approx(1.0)
    cal = M.calibrate(probs, p_cf)
    np.testing.assert_allclose(cal.sum(1), 1.0)
    # calibration rescales columns only: the ranking of p1/(p0+p1), hence the AUC, is unchanged
    assert M.classification_metrics(gold, cal, ["a", "b"])["roc_auc"] == pytest.approx(m["roc_auc"])


def test_calibration_refuses_zero_content_free_probability():
    with pytest.raises(NumericalError, match="column 1"):
        M.calibrate(np.array([[0.5, 0.5]]), np.array([1.0, 0.0]))
    assert M.calibrated_accuracy([], np.zeros((0, 2)), [0.5, 0.5]) is None
