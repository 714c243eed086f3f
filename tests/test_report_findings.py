"""Audit findings of issue 19 on `alignlens report` and the ablation script, each as a test on synthetic
result folders written by the real writers (tests/synthetic_results.py); no model needed.

5: the title page shows the items evaluated, not the --limit default; 6: degenerate intervals are "not
testable (n=…)" and an inconclusive interval is never called a refutation; 22: run names in any script;
29: the title page's manifest texts never overlap or leave the page; 30: no absolute local path in any
rendered text or table; 31: the ablation script labels its P(gold) changes for what they are; 32: layer
axes have integer ticks.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_results import make_synthetic_pair, make_synthetic_run  # noqa: E402

from alignlens import AlignlensError  # noqa: E402
from alignlens.paired import MIN_ITEMS, untestable  # noqa: E402
from alignlens.report import fonts, render_report  # noqa: E402
from alignlens.report.runs import check_names, load_runs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LANGS = ["en", "zh", "de", "th"]


def _edit(path: Path, fn) -> None:
    d = json.loads(path.read_text(encoding="utf-8"))
    fn(d)
    path.write_text(json.dumps(d, ensure_ascii=False, indent=1), encoding="utf-8")


def _csv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _pdftotext(pdf: Path, *pages: str) -> str:
    if not shutil.which("pdftotext"):
        pytest.skip("pdftotext (poppler-utils) not installed")
    return subprocess.run(["pdftotext", *pages, str(pdf), "-"], capture_output=True, text=True, check=True).stdout


def _figure_texts(fig) -> list:
    """Every visible, non-empty Text artist of a figure (figure texts, titles, labels, ticks, legends, tables)."""
    from matplotlib.text import Text

    texts = list(fig.findobj(Text))
    texts += [cell.get_text() for ax in fig.axes for tab in ax.tables for cell in tab.get_celld().values()]
    return [t for t in texts if t.get_visible() and t.get_text().strip()]


# ---- 5: the items evaluated, not the --limit default ------------------------------------------------


def test_title_page_shows_the_items_evaluated_not_the_limit_default(tmp_path: Path):
    """Two runs made with `--items 0-3` (and the default --limit 50): 4 items per cell, items 0-3."""
    from alignlens.report.title import items_text, manifest_rows

    kw = dict(tasks=("emotion",), analyses=(), items="0-3", limit=50)
    base = make_synthetic_run(tmp_path / "base", 1, LANGS, 3, trained=[], **kw)
    aligned = make_synthetic_run(tmp_path / "aligned", 2, LANGS, 3, boost=0.05, **kw)
    manifest = json.loads((base / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["data"]["limit"] == 50 and manifest["options"]["items"] == "0-3"  # the premise
    runs = load_runs(base, aligned)
    text = dict(manifest_rows(runs.runs[0]))["items / task×lang"]
    assert text == "4 per task × language: items 0-3 (selected by --items 0-3 --limit 50)"
    assert items_text(runs.runs[1]) == text
    out = render_report(base, aligned)
    page1 = " ".join(_pdftotext(out, "-f", "1", "-l", "1").split())
    assert "4 per task × language: items 0-3" in page1


def test_items_text_says_when_counts_differ_and_when_there_is_no_limit(tmp_path: Path):
    from alignlens.report.title import items_text
    from alignlens.results.schema import load_run

    run = make_synthetic_run(tmp_path / "run", 3, ["en", "de"], 3, tasks=("emotion",), analyses=(), items="2-5,9", limit=None)
    assert items_text(load_run(run)) == "5 per task × language: items 2-5,9 (selected by --items 2-5,9 no --limit (all items))"
    rows = [json.loads(l) for l in (run / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    kept = [r for r in rows if not (r["lang"] == "de" and r["index"] == 9)]  # de lost an item: 4 there, 5 in en
    (run / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    _edit(run / "summary.json", lambda s: s["tasks"]["emotion"]["languages"]["de"].update(n=4))
    assert items_text(load_run(run)).startswith("4–5 per task × language: items differ by task × language (selected by")


# ---- 6: degenerate intervals and the claim's verdict ----------------------------------------------------


def test_untestable_intervals():
    assert untestable(1, [0.0, 0.0]) == f"fewer than {MIN_ITEMS} items"
    assert untestable(MIN_ITEMS - 1, [-0.2, 0.3], 4) == f"fewer than {MIN_ITEMS} items"
    assert untestable(60, [0.0, 0.0], 0) == "no discordant item"
    assert untestable(60, [1.0, 1.0], 60) == "zero-width interval"
    assert untestable(60, None) == "no interval" and untestable(0, None) == "no items"
    assert untestable(MIN_ITEMS, [-0.1, 0.2], 3) == "" and untestable(60, [0.01, 0.05]) == ""


def _group(ci, n_items=50, delta=None, langs=4):
    d = delta if delta is not None else (0.0 if ci is None else (ci[0] + ci[1]) / 2)
    return {"delta": d, "ci95": ci, "a": 0.5, "b": 0.5 + d, "n_items": n_items, "languages": ["x"] * langs, "missing_languages": []}


def _groups(all_ci, untrained_ci=None, **kw):
    out = {"all": {"accuracy": _group(all_ci, **kw)}}
    if untrained_ci is not None:
        out["untrained"] = {"accuracy": _group(untrained_ci, langs=2, **kw)}
    return out


@pytest.mark.parametrize("all_ci, untrained_ci, kw, verdict, says", [
    ([0.01, 0.05], [0.005, 0.04], {}, "holds", "Consistent with the paper's claim"),
    ([-0.02, 0.06], [0.01, 0.05], {}, "inconclusive", "that includes 0"),
    ([0.01, 0.05], [-0.01, 0.04], {}, "inconclusive", "untrained languages is +1.5 points with 95% CI [-1.0, +4.0], an interval that includes 0"),
    ([0.0, 0.05], None, {}, "inconclusive", "that includes 0"),  # lo = 0: not above 0, not below
    ([-0.08, -0.01], [0.01, 0.05], {}, "does not hold", "at or below 0 (it excludes any gain)"),
    ([-0.08, 0.0], None, {}, "does not hold", "at or below 0"),  # hi = 0 excludes every gain
    ([0.25, 0.25], None, {"n_items": 1}, "not testable", "not testable (n=1: fewer than 10 items)"),
    ([0.0, 0.0], [0.0, 0.0], {}, "not testable", "not testable (n=50: zero-width interval)"),
    ([-0.08, -0.01], [0.25, 0.25], {}, "does not hold", "not testable"),  # a testable refutation wins
    ([0.01, 0.05], [0.2, 0.2], {}, "not testable", "cannot be tested"),
])  # fmt: skip
def test_claim_verdict_follows_the_intervals(all_ci, untrained_ci, kw, verdict, says):
    from alignlens.report.verdicts import claim_text

    got, sentence = claim_text("emotion", _groups(all_ci, untrained_ci, **kw), None)
    assert got == verdict, sentence
    assert says in sentence
    if verdict != "does not hold":
        assert "does not hold" not in sentence
    if "not testable" in sentence:
        assert "[+0.0, +0.0]" not in sentence and "[+25.0, +25.0]" not in sentence and "[+20.0, +20.0]" not in sentence


def test_a_prior_shift_makes_a_gain_inconclusive_not_refuted():
    from alignlens.report.verdicts import claim_text

    verdict, sentence = claim_text("emotion", _groups([0.01, 0.05], [0.01, 0.04]), {"bal": {}, "auc": None})
    assert verdict == "inconclusive" and "balanced accuracy or ROC-AUC" in sentence and "does not hold" not in sentence


def test_runs_sharing_one_item_are_not_testable_nor_refuted(tmp_path: Path):
    """The finding: runs sharing 1 item printed "95% CI [+0.0, +0.0]" and "the paper's claim does not hold"."""
    kw = dict(tasks=("emotion",), analyses=(), limit=50)
    base = make_synthetic_run(tmp_path / "base", 1, LANGS, 3, trained=[], items="0-3", **kw)
    aligned = make_synthetic_run(tmp_path / "aligned", 2, LANGS, 3, boost=0.05, items="3-6", **kw)
    out = render_report(base, aligned)
    tables = out.with_name("report_tables")
    summary = (tables / "summary.txt").read_text(encoding="utf-8")
    assert "does not hold" not in summary
    assert not re.search(r"\[[+−-]?\d+\.\d, [+−-]?\d+\.\d\]", summary), "an interval is printed for 1 item"
    assert "(Δ " in summary and "on the 1 item all of them share: not testable (n=1: fewer than 10 items)" in summary
    assert "The paper's claim (alignment improves accuracy across languages, including untrained ones) cannot be tested" in summary
    assert "holds on these runs for 0 of 1 compared tasks (none); not testable for 1 (emotion)." in summary
    for r in _csv(tables / "accuracy.csv"):
        assert r["diff"] != "" and r["diff_ci95_lo"] == r["diff_ci95_hi"] == ""  # no interval shown for n = 1
    for g in _csv(tables / "accuracy_groups.csv"):
        assert g["n_items"] == "1" and g["mean_diff_ci95_lo"] == g["mean_diff_ci95_hi"] == ""
    text = " ".join(_pdftotext(out).split())
    assert "not testable (n=1)" in text and "[+0.0, +0.0]" not in text


def test_languages_without_discordant_items_are_not_testable(tmp_path: Path):
    """Two runs with the same answers on 20 items: Δ = 0 with no discordant item, in every language."""
    base = make_synthetic_run(tmp_path / "base", 1, LANGS, 3, trained=[], tasks=("emotion",), analyses=(), n_items=20)
    shutil.copytree(base, tmp_path / "aligned")
    out = render_report(base, tmp_path / "aligned")
    tables = out.with_name("report_tables")
    summary = (tables / "summary.txt").read_text(encoding="utf-8")
    assert "+0.0 [+0.0, +0.0]" not in summary and "[+0.0, +0.0]" not in summary
    assert "Per-language Δ intervals not testable" in summary and "en (n=20: no discordant item)" in summary
    assert "not testable (n=20: zero-width interval)" in summary and "does not hold" not in summary
    text = " ".join(_pdftotext(out).split())
    assert "[+0.0, +0.0]" not in text and "+0.0, not testable (n=20)" in text


def test_testable_intervals_are_still_reported_as_intervals(tmp_path: Path):
    """Enough items and discordant pairs: the intervals and the usual wording are unchanged."""
    base, aligned = make_synthetic_pair(tmp_path, LANGS, 3, tasks=("emotion",), n_items=60, analyses=())
    out = render_report(base, aligned)
    tables = out.with_name("report_tables")
    summary = (tables / "summary.txt").read_text(encoding="utf-8")
    assert "by item-cluster bootstrap over the 60 items all of them share" in summary
    groups = {g["group"]: g for g in _csv(tables / "accuracy_groups.csv")}
    assert groups["all"]["mean_diff_ci95_lo"] != "" and float(groups["all"]["mean_diff_ci95_lo"]) < float(groups["all"]["mean_diff_ci95_hi"])


# ---- 22: run names in any script -----------------------------------------------------------------------


def test_names_accept_letters_of_any_script_and_refuse_separators():
    assert check_names(["基础", "对齐"], 2) == ["基础", "对齐"]
    assert check_names(["संरेखित", "Ångström_2"], 2) == ["संरेखित", "Ångström_2"]
    assert check_names(["A\u030angstrom", "b"], 2)[0] == "Ångstrom"  # NFC: the composed letter
    for bad in ("a/b", "a\\b", "a b", "a\tb", "a\u3000b", "a\x07", "a:b", "a\u0000"):
        with pytest.raises(AlignlensError, match=r"^--names .*: .* contains .*; a name is at most 20 letters, digits or _ \. \+ -"):
            check_names([bad, "c"], 2)
    with pytest.raises(AlignlensError, match="starts with a combining mark"):
        check_names(["\u0301a", "c"], 2)


def test_cjk_names_through_the_cli_render_in_the_pdf(tmp_path: Path):
    base, aligned = make_synthetic_pair(tmp_path / "runs", LANGS, 3, tasks=("emotion",), n_items=12, analyses=("neurons",))
    out = tmp_path / "r.pdf"
    proc = subprocess.run([sys.executable, "-m", "alignlens.cli.main", "report", str(base), "--compare", str(aligned),
                           "--names", "基础,对齐", "--out", str(out)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "ALIGNLENS_PROGRESS": "off"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    header = next(csv.reader(open(out.with_name("r_tables") / "accuracy.csv", encoding="utf-8")))
    assert "acc_基础" in header and "acc_对齐" in header
    text = _pdftotext(out)
    assert "对齐 − 基础" in text and "基础 (synthetic-base)" in text
    if fonts.missing_scripts() or not shutil.which("pdffonts"):
        pytest.skip("Noto fonts or pdffonts missing: cannot check the embedded CJK font")
    assert "NotoSansCJK" in subprocess.run(["pdffonts", str(out)], capture_output=True, text=True).stdout


# ---- 29: the title page's texts never overlap ----------------------------------------------------------


def _long_options(n: int) -> dict:
    return {f"option_number_{k}": f"a_fairly_long_value_{k}_" + "x" * (k % 17) for k in range(n)}


def _title_texts(base: Path, aligned: Path | None):
    """The drawn title page, and its texts with their extents at 72 dpi (the PDF's units) and at 110 dpi
    (the exported PNGs; hinting to whole pixels makes glyphs wider there)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from alignlens.report import title

    runs = load_runs(base, aligned)
    with matplotlib.rc_context(fonts.rc_params()):
        fig = title.build(runs).pages[0].draw()
        for dpi in (72.0, 110.0):
            fig.set_dpi(dpi)
            canvas = FigureCanvasAgg(fig)
            canvas.draw()  # lays out any table
            renderer = canvas.get_renderer()
            yield fig, [(t.get_text(), t.get_window_extent(renderer)) for t in _figure_texts(fig)]


def _assert_no_overlap(fig, boxes) -> None:
    page = fig.bbox
    for text, b in boxes:
        assert b.x0 >= page.x0 - 0.5 and b.x1 <= page.x1 + 0.5 and b.y0 >= page.y0 - 0.5 and b.y1 <= page.y1 + 0.5, \
            f"{text[:40]!r} leaves the page"
    for i, (ta, a) in enumerate(boxes):
        for tb, b in boxes[i + 1 :]:
            overlap_x = min(a.x1, b.x1) - max(a.x0, b.x0)
            overlap_y = min(a.y1, b.y1) - max(a.y0, b.y0)
            assert overlap_x <= 0.5 or overlap_y <= 0.5, f"{ta[:40]!r} overlaps {tb[:40]!r}"


@pytest.mark.parametrize("n_options, fits", [(0, "at 8 pt"), (15, "smaller"), (400, "cut")])
def test_title_page_texts_do_not_overlap_with_long_options(tmp_path: Path, n_options: int, fits: str):
    """The finding: a long options text ran over the data-hash row and off the page. Now the tables
    shrink their font, and only if even 6 pt does not fit are the longest values cut (saying so)."""
    base, aligned = make_synthetic_pair(tmp_path, LANGS, 3, tasks=("emotion",), n_items=4, analyses=())
    for run in (base, aligned):
        _edit(run / "manifest.json", lambda m: m["options"].update(_long_options(n_options)))
    for fig, boxes in _title_texts(base, aligned):
        texts = [t for t, _ in boxes]
        assert sum(t.startswith("emotion ") for t in texts) == 2  # the data-hash rows are drawn
        assert sum("option_number_" in t for t in texts) == (2 if n_options else 0)
        size = {t.get_fontsize() for t in fig.texts if t.get_text() == "folder"}
        assert len(size) == 1 and (size == {8.0}) == (fits == "at 8 pt")
        assert any("… (in full: manifest.json)" in t for t in texts) == (fits == "cut")
        _assert_no_overlap(fig, boxes)


def test_wrap_to_width_keeps_every_line_within_the_width():
    from alignlens.report.layout import text_width, wrap_to_width

    text = ", ".join(f"{k}={v}" for k, v in _long_options(30).items()) + " " + "y" * 300 + " 中文日本語हिन्दी"
    with matplotlib.rc_context(fonts.rc_params()):
        for fontsize in (6.0, 8.0):
            lines = wrap_to_width(text, 200.0, fontsize)
            assert len(lines) > 5
            assert all(text_width(line, fontsize) <= 200.5 for line in lines)
            assert "".join(lines).replace(" ", "") == text.replace(" ", "")  # nothing lost


# ---- 30: no absolute local path in rendered texts and tables ------------------------------------------

ABS_PATH = re.compile(r"(?<![\w.…~])/[\w.-]+/[\w.-]")


def test_no_absolute_local_path_in_any_rendered_text(tmp_path: Path):
    """The aligned model's spec, name and path are absolute local paths (as in the reference); the run
    folders are absolute too (tmp_path). No text of any page, no CSV and no summary line names them."""
    from alignlens.report.render import build_report

    base, aligned = make_synthetic_pair(tmp_path / "runs", LANGS, 4, tasks=("emotion",), n_items=12)

    def absolute_model(m):
        m["model"].update(spec="/work/refrun/aligned-emotion", name="/work/refrun/aligned-emotion",
                          path="/work/refrun/aligned-emotion/merged")
        m["command"] = f"alignlens analyze --compare /work/refrun/aligned-emotion --out {tmp_path.resolve() / 'runs'}"
        m["options"]["pca_languages"] = "/work/somewhere/else.txt"

    _edit(aligned / "manifest.json", absolute_model)
    (tmp_path / "runs" / "comparison.json").write_text("{}", encoding="utf-8")  # an older format: its path is named in a note
    out = render_report(base.resolve(), aligned.resolve(), tmp_path / "out" / "r.pdf")
    runs = load_runs(base.resolve(), aligned.resolve())
    seen = []
    with matplotlib.rc_context(fonts.rc_params()):
        for page in build_report(runs).pages:
            fig = page.draw()
            seen += [(page.title, t.get_text()) for t in _figure_texts(fig)]
    assert any("…/refrun/aligned-emotion" in t for _, t in seen)  # the model is still named, shortened
    bad = [(p, t) for p, t in seen if "/work" in t or str(tmp_path) in t or ABS_PATH.search(t)]
    assert not bad, bad[:5]
    tables = out.with_name("r_tables")
    for f in tables.iterdir():
        text = f.read_text(encoding="utf-8")
        assert "/work" not in text and str(tmp_path) not in text and not ABS_PATH.search(text), f.name
    assert "comparison.json is of an older format" in (tables / "summary.txt").read_text(encoding="utf-8")
    pdf = _pdftotext(out)
    assert "/work" not in pdf and str(tmp_path) not in pdf


# ---- 31: the ablation script's labels ---------------------------------------------------------------------


def _load_ablation():
    import importlib.util

    spec = importlib.util.spec_from_file_location("ablate_language_neurons", ROOT / "analyses" / "ablate_language_neurons.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _FakeRun:
    """Stands in for `pipeline.ExperimentResult` in `_per_language`: one (task, language) result."""

    def __init__(self, correct: list[int], p_gold: float) -> None:
        import numpy as np

        self.results = [type("R", (), {"task": "emotion", "lang": "zh", "indices": list(range(len(correct))),
                                       "correct": np.array(correct, dtype=float)})()]  # fmt: skip
        self._acc, self._p = sum(correct) / len(correct), p_gold

    def accuracy(self, task, lang):
        return self._acc

    def mean_prob_correct(self, task, lang):
        return self._p


def test_ablation_reports_p_gold_changes_labelled_as_what_they_are():
    mod = _load_ablation()
    runs = {"base": _FakeRun([1, 0, 0, 1], 0.50), "ablated": _FakeRun([1, 1, 1, 1], 0.55), "control": _FakeRun([1, 0, 0, 0], 0.40)}
    row = mod._per_language("emotion", "zh", runs)
    assert row["accuracy_change"] == pytest.approx(0.5)
    assert row["mean_p_gold_diff"] == pytest.approx(0.05) and row["control_mean_p_gold_diff"] == pytest.approx(-0.10)
    assert row["rel_change_mean_p_gold"] == pytest.approx(0.10) and row["control_rel_change_mean_p_gold"] == pytest.approx(-0.20)
    assert not [k for k in row if k.endswith("p_gold_change") or k.endswith("relative_change")]  # no ambiguous names
    result = {"ablated_language": "zh", "per_language": {"zh": {**row, "mcnemar_p_base_vs_ablated_holm": 0.5}}}
    lines = mod.table_lines(result)
    assert "points" in lines[0] and "relative change" in lines[0]
    assert "+5.0 pt (+10.0%)" in lines[-1] and "-10.0 pt (-20.0%)" in lines[-1] and "0.500" in lines[-1]
    assert set(mod.UNITS) >= {"mean_p_gold_diff", "rel_change_mean_p_gold"} and "not points" in mod.UNITS["rel_change_mean_p_gold"]


def test_reports_readme_ablation_table_matches_the_committed_file():
    """reports/README.md's table gives the points and the relative changes of ablate_zh.json, each labelled."""
    data = json.loads((ROOT / "reports" / "ablate_zh_sentiment" / "ablate_zh.json").read_text(encoding="utf-8"))
    readme = (ROOT / "reports" / "README.md").read_text(encoding="utf-8")
    assert "Δ mean P(gold) in points (relative), zh-specific / random" in readme
    num = r"([+−-]\d+\.\d)"
    for lang, r in data["per_language"].items():
        m = re.search(rf"^\| \**{lang}\**( \|[^|\n]*){{3}} \| {num} \({num}%\) / {num} \({num}%\) \|", readme, re.M)
        assert m, lang
        pts, rel, cpts, crel = (float(x.replace("−", "-")) for x in m.groups()[1:])
        assert pts == pytest.approx((r["p_gold_ablated"] - r["p_gold_base"]) * 100, abs=0.051)
        assert cpts == pytest.approx((r["p_gold_control"] - r["p_gold_base"]) * 100, abs=0.051)
        assert rel == pytest.approx(r["p_gold_relative_change"] * 100, abs=0.051)
        assert crel == pytest.approx(r["control_p_gold_relative_change"] * 100, abs=0.051)


# ---- 32: integer layer ticks -------------------------------------------------------------------------


def test_neuron_figures_have_integer_layer_ticks(tmp_path: Path):
    from alignlens.report import neurons

    base, aligned = make_synthetic_pair(tmp_path, LANGS, 4, tasks=("emotion",), n_items=12, analyses=("neurons",))
    runs = load_runs(base, aligned)
    section = neurons.build(runs)
    assert {p.slug for p in section.pages} >= {"neurons_per_layer", "neurons_change"}
    checked = 0
    with matplotlib.rc_context(fonts.rc_params()):
        for page in section.pages:
            fig = page.draw()
            for ax in fig.axes:
                if ax.get_xlabel() == "layer":
                    ticks = [x for x in ax.get_xticks() if ax.get_xlim()[0] - 1e-9 <= x <= ax.get_xlim()[1] + 1e-9]
                    assert ticks and all(float(x).is_integer() for x in ticks), (page.title, ax.get_title(), ticks)
                    checked += 1
    assert checked >= 4  # two heatmaps, the per-layer totals and the activation-probability change


def test_two_label_claims_are_judged_on_auc_first_with_the_mde():
    """Issue 21: accuracy is confounded with the threshold; the verdict reads the threshold-free AUC
    when the groups have it, and an inconclusive AUC interval states its MDE, never a refutation."""
    from alignlens.report.verdicts import claim_text, neutral_text

    groups = _groups([-0.02, 0.06], [-0.03, 0.05])  # accuracy: inconclusive
    groups["all"]["auc"] = {**_group([0.01, 0.05]), "mde80": 0.028}
    groups["untrained"]["auc"] = {**_group([0.009, 0.049], langs=2), "mde80": 0.03}
    verdict, sentence = claim_text("emotion", groups, {"bal": {}, "auc": None})  # an accuracy prior shift does not move AUC
    assert verdict == "holds" and "ROC-AUC" in sentence and "macro accuracy" not in sentence
    groups["untrained"]["auc"] = {**_group([-0.01, 0.04], langs=2), "mde80": 0.031}
    verdict, sentence = claim_text("emotion", groups, None)
    assert verdict == "inconclusive" and "does not hold" not in sentence
    assert "±3.1 points would go undetected" in sentence and "label-stratified" in sentence
    assert "ROC-AUC" in neutral_text("a − b", groups, None) and "±3.1" in neutral_text("a − b", groups, None)
