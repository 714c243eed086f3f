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


def test_peaks_kept_labels_and_notes():
    """Where P(target) and P(English) peak (the argmax of the mean curve, first layer on a tie), the
    kept items' gold-label counts, the one-label flag and the notes of logit_lens.json."""
    n, L = 12, 6
    gold = np.arange(n) % 2
    p_en = np.full((n, L, 2), 0.01)
    p_tg = np.full((n, L, 2), 0.01)
    p_tg[np.arange(n), :, gold] = [0.1, 0.2, 0.5, 0.4, 0.5, 0.3]  # peak 0.5 at layer 2 (and again at 4)
    p_en[np.arange(n), :, gold] = [0.0, 0.3, 0.1, 0.1, 0.1, 0.1]
    ent = np.ones((n, L))
    caps = {"en": LensCapture(p_en, p_tg, ent, gold, np.array([True, True])),  # English: never dropped
            "de": LensCapture(p_en, p_tg, ent, gold, np.array([False, False])),
            "sw": LensCapture(p_en, p_tg, ent, gold, np.array([False, True])),  # label 1 overlaps: only label 0 kept
            "ja": LensCapture(p_en, p_tg, ent, gold, np.array([True, True]))}  # nothing kept
    rep = lens_report(caps, overlap_rule="token-set", labels=["positive", "negative"])
    json.dumps(rep, allow_nan=False)
    de, sw, ja = (rep["per_language"][x] for x in ("de", "sw", "ja"))
    assert de["p_target_peak"] == {"layer": 2, "value": pytest.approx(0.5), "relative_depth": pytest.approx(0.4)}
    assert de["p_en_peak"]["layer"] == 1 and de["p_en_peak"]["value"] == pytest.approx(0.3)
    assert de["kept_gold_counts"] == [6, 6] and not de["one_label"]
    assert rep["per_language"]["en"]["kept_gold_counts"] == [6, 6] and not rep["per_language"]["en"]["one_label"]
    assert sw["kept_gold_counts"] == [6, 0] and sw["one_label"] and sw["n"] == 6
    assert ja["n"] == 0 and ja["p_target_peak"] is None and not ja["one_label"]
    notes = rep["notes"]
    assert len(notes) == 2
    assert notes[0].startswith("sw: all 6 kept items have the gold label 'positive'")
    assert notes[1].startswith("ja: no item kept: all 12 items'") and "--lens-overlap first-token" in notes[1]
    # under the first-token rule there is no looser rule to point to
    loose = lens_report(caps, overlap_rule="first-token")["notes"]
    assert "no item kept" in loose[1] and "--lens-overlap" not in loose[1] and "index 0" in loose[0]


# ---- report: the paper's figure (language means over relative depth) and the CSV ------------------


def _lens_file(langs, n_layers, n, seed, boost, mode="target-labels", overlapping=("de",), none_kept=()):
    """logit_lens.json written by lens_report from synthetic per-item values (with all-label sums)."""
    rng = np.random.default_rng(seed)
    depth = np.linspace(0, 1, n_layers)
    caps = {}
    for lang in langs:
        gold = np.arange(n) % 2
        p_en = rng.uniform(0, 0.05, (n, n_layers, 2))
        p_tg = rng.uniform(0, 0.05, (n, n_layers, 2))
        p_en[np.arange(n), :, gold] = np.clip(0.3 * np.exp(-((depth - 0.6) ** 2) / 0.03) + boost
                                              + rng.normal(0, 0.05, (n, n_layers)), 0, 1)
        p_tg[np.arange(n), :, gold] = np.clip(0.6 * depth**4 + rng.normal(0, 0.05, (n, n_layers)), 0, 1)
        caps[lang] = LensCapture(p_en, p_tg, rng.uniform(0, 12, (n, n_layers)), gold,
                                 np.array([lang in overlapping + none_kept, lang in none_kept]), p_en.sum(-1), p_tg.sum(-1))
    return {"lens_prompts": mode, "tasks": {"emotion": lens_report(caps, prompts=mode, overlap_rule="token-set")}}


@pytest.fixture
def lens_pair(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from synthetic_results import make_synthetic_pair

    langs = ["en", "zh", "de", "ja", "sw"]
    base, aligned = make_synthetic_pair(tmp_path, langs, 7, tasks=("emotion",), n_items=6)
    files = {}
    for d, seed, boost in ((base, 1, 0.0), (aligned, 2, 0.1)):
        files[d.name] = _lens_file(langs, 7, 6, seed, boost, none_kept=() if d.name == "base" else ("ja",))
        (d / "logit_lens.json").write_text(json.dumps(files[d.name]), encoding="utf-8")
    return base, aligned, files


def test_paper_figure_draws_language_means_over_relative_depth(lens_pair):
    """The mean-over-languages page: each curve is the mean over the non-English languages kept in
    both runs of their per-language means (computed here independently), against layer / (L - 1),
    with a Student-t band across languages."""
    from alignlens.report.render import build_report
    from alignlens.report.runs import load_runs

    base, aligned, files = lens_pair
    runs = load_runs(base, aligned)
    pages = [p for p in build_report(runs).pages if p.title == "Logit lens — emotion, mean over languages"]
    assert len(pages) == 1
    fig = pages[0].draw()
    subtitle = fig.texts[1].get_text().replace("\n", " ")
    assert "mean over the 3 non-English languages with kept items in both runs (zh de sw)" in subtitle
    assert "Left out (no kept item): ja" in subtitle and "target-label prompts" in subtitle
    gold_ax, all_ax = [ax for ax in fig.axes if ax.get_title().startswith(("gold label", "all labels"))]
    for ax, quantities in ((gold_ax, ("p_en", "p_target")), (all_ax, ("p_en_all", "p_target_all"))):
        lines = ax.get_lines()
        assert len(lines) == 4  # base and aligned, latent and out
        for line, (role, q) in zip(lines, [(r, q) for r in ("base", "aligned") for q in quantities]):
            per = files[role]["tasks"]["emotion"]["per_language"]
            values = np.array([per[l][q]["mean"] for l in ("zh", "de", "sw")])
            np.testing.assert_allclose(line.get_ydata(), values.mean(0), rtol=1e-12)
            np.testing.assert_allclose(line.get_xdata(), np.arange(7) / 6)
            assert line.get_linestyle() == ("-" if role == "base" else "--")
        band = ax.collections[0].get_paths()[0].vertices[:, 1]  # base p_en (p_en_all) band: lo then hi
        values = np.array([files["base"]["tasks"]["emotion"]["per_language"][l][quantities[0]]["mean"]
                           for l in ("zh", "de", "sw")])
        half = sps.t.ppf(0.975, 2) * values.std(0, ddof=1) / np.sqrt(3)
        expect = np.clip(np.r_[values.mean(0) - half, values.mean(0) + half], 0, 1)
        assert all(np.isclose(band, e).any() for e in expect)


def test_lens_csv_and_summary_name_the_prompts(lens_pair):
    import csv

    from alignlens.report import render_report

    base, aligned, files = lens_pair
    out = render_report(base, aligned)
    rows = list(csv.DictReader((out.with_name("report_tables") / "logit_lens.csv").open(encoding="utf-8")))
    zh = [r for r in rows if r["model"] == "aligned" and r["language"] == "zh"]
    assert [float(r["p_target_all_mean"]) for r in zh] == pytest.approx(
        files["aligned"]["tasks"]["emotion"]["per_language"]["zh"]["p_target_all"]["mean"])
    assert {r["lens_prompts"] for r in rows} == {"target-labels"}
    summary = out.with_name("report_tables").joinpath("summary.txt").read_text(encoding="utf-8")
    assert "Logit lens, emotion (non-English languages, on target-label prompts)" in summary


def test_runs_with_different_lens_prompts_are_not_overlaid(lens_pair):
    from alignlens.report.render import build_report
    from alignlens.report.runs import load_runs

    base, aligned, files = lens_pair
    files["aligned"] = {"lens_prompts": "english-labels", "tasks": {"emotion": {
        **files["aligned"]["tasks"]["emotion"], "lens_prompts": "english-labels"}}}
    (aligned / "logit_lens.json").write_text(json.dumps(files["aligned"]), encoding="utf-8")
    section = build_report(load_runs(base, aligned)).pages
    titles = [p.title for p in section if p.section == "Logit lens"]
    assert "Logit lens — emotion (base)" in titles and "Logit lens — emotion (aligned)" in titles
    assert "Logit lens — emotion" not in titles
    fig = next(p for p in section if p.title == "Logit lens — emotion (aligned)").draw()
    assert "near 0 by construction" in fig.texts[1].get_text().replace("\n", " ")


def test_report_names_peaks_one_label_languages_and_the_looser_rule(lens_pair):
    """The summary lists where P(target) peaks per language, the languages left with no item (with
    the option that keeps them) and those whose kept items are all one label; logit_lens_peaks.csv
    holds logit_lens.json's peaks; the empty panel names the option too."""
    import csv

    from alignlens.report import render_report
    from alignlens.report.lens import no_items_text

    base, aligned, files = lens_pair
    out = render_report(base, aligned)
    summary = out.with_name("report_tables").joinpath("summary.txt").read_text(encoding="utf-8")
    per = files["aligned"]["tasks"]["emotion"]["per_language"]
    zh = per["zh"]["p_target_peak"]
    assert f"zh {zh['value']:.2f} at layer {zh['layer']} ({zh['relative_depth'] * 100:.0f}%)" in summary
    assert "No item kept in ja (aligned)" in summary and "--lens-overlap first-token" in summary
    # de's label 0 words overlap (the fixture), so its kept items are all label 1, 'negative', in both runs
    assert "One gold label only among the kept items (de (base, aligned): all kept items 'negative';" in summary
    rows = list(csv.DictReader((out.with_name("report_tables") / "logit_lens_peaks.csv").open(encoding="utf-8")))
    for r in rows:
        e = files[r["model"]]["tasks"]["emotion"]["per_language"][r["language"]]
        if e["n"]:
            assert int(r["p_target_peak_layer"]) == e["p_target_peak"]["layer"]
            assert float(r["p_target_peak_value"]) == e["p_target_peak"]["value"]
        assert r["one_label"] == ("yes" if e["one_label"] else "no")
    de = next(r for r in rows if r["model"] == "base" and r["language"] == "de")
    assert de["kept_gold_counts"] == "positive:0 negative:3"
    assert "--lens-overlap first-token keeps them" in no_items_text(per["ja"], "token-set")
    assert "--lens-overlap" not in no_items_text(per["ja"], "first-token")
