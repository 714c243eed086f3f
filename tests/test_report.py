"""The PDF report renders from synthetic results folders; bad/partial folders fail clearly."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_results import ALL_LANGUAGES, make_synthetic_pair, make_synthetic_run  # noqa: E402

from alignlens import AlignlensError  # noqa: E402
from alignlens.report import check_results, fonts, render_report  # noqa: E402
from alignlens.report.languages import HIGH_RESOURCE, LANGUAGES, LOW_RESOURCE, NATIVE_NAMES, order_languages  # noqa: E402

ALL_SECTIONS = ["Title", "Contents", "Summary", "Accuracy table", "Accuracy charts", "Logit lens", "Similarity", "Neurons"]


def _contents(out: Path) -> list[dict]:
    with open(out.with_name(out.stem + "_tables") / "contents.csv", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _pdf_pages(pdf: Path) -> int | None:
    if not shutil.which("pdfinfo"):
        return None
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
    return int(next(l.split()[-1] for l in info.splitlines() if l.startswith("Pages:")))


@pytest.fixture(scope="module")
def full_report(tmp_path_factory) -> Path:
    """All 20 languages (every script), one task, few layers: base vs aligned."""
    root = tmp_path_factory.mktemp("full")
    base, aligned = make_synthetic_pair(root, ALL_LANGUAGES, 6, tasks=("emotion",))
    return render_report(base, aligned)  # default out: common parent / report.pdf


def test_full_report_writes_pdf_figures_tables(full_report: Path):
    out = full_report
    assert out == out.parent / "report.pdf" and out.is_file()
    assert out.read_bytes()[:5] == b"%PDF-"
    rows = _contents(out)
    sections = [r["section"] for r in rows]
    for s in ALL_SECTIONS:
        assert s in sections, f"section {s} missing from {sections}"
    assert any("Neuron change between models" == r["title"] for r in rows)
    assert any(r["title"].startswith("Language × language similarity") for r in rows)
    n_pages = _pdf_pages(out)
    if n_pages is not None:
        assert n_pages == len(rows)
    figs = out.parent / "report_figures"
    exported = [r["figure"] for r in rows if r["figure"]]
    assert len(exported) >= 8
    for f in exported:
        assert (figs / f).stat().st_size > 0
        assert (figs / f).with_suffix(".svg").stat().st_size > 0
    tables = out.parent / "report_tables"
    for name in ("accuracy.csv", "accuracy_groups.csv", "logit_lens.csv", "similarity.csv", "neurons_per_layer.csv", "neurons_change.csv"):
        assert (tables / name).stat().st_size > 0, name
    with open(tables / "accuracy.csv", encoding="utf-8") as f:
        acc = list(csv.DictReader(f))
    assert {r["language"] for r in acc} == set(ALL_LANGUAGES)
    assert {r["native_name"] for r in acc} >= {"हिन्दी", "ไทย", "বাংলা", "中文", "日本語", "русский", "български"}
    assert {r["trained"] for r in acc if r["language"] in ("zh", "de")} == {"1"}
    summary = (tables / "summary.txt").read_text(encoding="utf-8")
    assert "emotion" in summary and "→" in summary and "Language-specific neurons" in summary
    # no temporary files left behind
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_full_report_text_and_fonts(full_report: Path):
    if not shutil.which("pdftotext"):
        pytest.skip("pdftotext (poppler-utils) not installed")
    text = subprocess.run(["pdftotext", str(full_report), "-"], capture_output=True, text=True).stdout
    for title in ("alignlens report", "Run manifest", "Contents", "Summary: what changed", "Accuracy — emotion",
                  "Accuracy by language", "Logit lens — emotion", "Similarity to English by layer",
                  "Language × language similarity", "Language-specific neurons per layer",
                  "Neuron overlap between languages", "Neuron change between models"):  # fmt: skip
        assert title in text, title
    # Scripts whose text survives extraction unchanged (shaped Devanagari/Bengali clusters do not).
    for native in ("中文", "日本語", "русский", "български", "ไทย", "slovenščina", "íslenska"):
        assert native in text, native
    if fonts.missing_scripts() or not shutil.which("pdffonts"):
        pytest.skip("Noto fonts or pdffonts missing: cannot check embedded fonts")
    pf = subprocess.run(["pdffonts", str(full_report)], capture_output=True, text=True).stdout
    for fam in ("NotoSans-", "NotoSansCJK", "NotoSansDevanagari", "NotoSansBengali", "NotoSansThai"):
        assert fam in pf, f"{fam} not embedded:\n{pf}"
    assert "Type 3" not in pf  # pdf.fonttype 42: TrueType/CID, not Type 3


def test_single_run_with_only_required_files(tmp_path: Path):
    run = make_synthetic_run(tmp_path / "run", 3, ["en", "hi", "sw"], 4, trained=[], tasks=("snli", "paws"), analyses=())
    out = render_report(run, out=tmp_path / "r" / "single.pdf")
    assert out.is_file()
    sections = {r["section"] for r in _contents(out)}
    assert {"Title", "Summary", "Accuracy table", "Accuracy charts"} <= sections
    assert not sections & {"Logit lens", "Similarity", "Neurons"}
    assert (tmp_path / "r" / "single_tables" / "accuracy.csv").is_file()
    assert list((tmp_path / "r" / "single_figures").glob("*.svg"))
    summary = (tmp_path / "r" / "single_tables" / "summary.txt").read_text(encoding="utf-8")
    assert "logit lens" in summary and "similarity" in summary and "neurons" in summary  # listed as absent


def test_partial_compare_subset_of_languages_and_analyses(tmp_path: Path):
    base = make_synthetic_run(tmp_path / "base", 1, ["en", "zh", "th"], 5, trained=[], tasks=("emotion",))
    aligned = make_synthetic_run(tmp_path / "aligned", 2, ["en", "zh", "bn"], 5, tasks=("emotion", "paws"),
                                 boost=0.05, analyses=("lens",))  # fmt: skip
    out = render_report(base, aligned)
    rows = _contents(out)
    sections = {r["section"] for r in rows}
    assert {"Logit lens", "Similarity", "Neurons"} <= sections  # from whichever run has them
    assert not any(r["title"] == "Neuron change between models" for r in rows)  # needs both
    with open(tmp_path / "report_tables" / "accuracy.csv", encoding="utf-8") as f:
        acc = list(csv.DictReader(f))
    assert {(r["task"], r["language"]) for r in acc} == {
        ("emotion", "en"), ("emotion", "zh"), ("emotion", "th"), ("emotion", "bn"),
        ("paws", "en"), ("paws", "zh"), ("paws", "bn"),
    }  # fmt: skip
    th = next(r for r in acc if r["language"] == "th")
    assert th["acc_aligned"] == "" and th["diff"] == ""


def test_no_overwrite_without_force(tmp_path: Path):
    run = make_synthetic_run(tmp_path / "run", 4, ["en", "de"], 3, tasks=("emotion",), analyses=())
    out = render_report(run)
    assert out == run / "report.pdf"
    before = out.stat().st_mtime_ns
    with pytest.raises(AlignlensError, match="already exists"):
        render_report(run)
    assert out.stat().st_mtime_ns == before
    assert render_report(run, force=True) == out
    with pytest.raises(AlignlensError, match=r"\.pdf"):
        render_report(run, out=tmp_path / "x.png")


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (lambda d: (d / "summary.json").unlink(), "summary.json"),
        (lambda d: (d / "manifest.json").unlink(), "manifest.json"),
        (lambda d: (d / "summary.json").write_text("{not json"), "summary.json: not valid JSON"),
        (lambda d: _edit(d / "summary.json", lambda s: s["tasks"]["emotion"]["languages"]["de"].pop("ci95")),
         "tasks.emotion.languages.de.ci95"),
        (lambda d: _edit(d / "summary.json", lambda s: s.pop("tasks")), "missing key 'tasks'"),
        (lambda d: _edit(d / "manifest.json", lambda m: m.pop("model")), "manifest.json: missing key 'model'"),
        (lambda d: _edit(d / "logit_lens.json", lambda x: x["tasks"]["emotion"]["per_language"]["en"].pop("p_target")),
         "logit_lens.json: missing key 'tasks.emotion.per_language.en.p_target'"),
        (lambda d: _edit(d / "similarity.json", lambda x: x["tasks"]["emotion"].pop("per_language")),
         "similarity.json: missing key 'tasks.emotion.per_language'"),
        (lambda d: _edit(d / "neurons.json", lambda x: x["specific"].pop("de")), "neurons.json: missing key 'specific.de'"),
    ],
)  # fmt: skip
def test_bad_results_name_what_is_missing(tmp_path: Path, breakage, expected):
    run = make_synthetic_run(tmp_path / "run", 5, ["en", "de"], 3, tasks=("emotion",))
    check_results(run)  # fine before
    breakage(run)
    with pytest.raises(AlignlensError) as e:
        check_results(run)
    msg = str(e.value)
    assert expected in msg and "\n" not in msg
    with pytest.raises(AlignlensError, match=expected.split(":")[0].replace(".", r"\.")):
        render_report(run, out=tmp_path / "out.pdf")
    assert not (tmp_path / "out.pdf").exists()


def test_missing_folder_and_bad_compare(tmp_path: Path):
    with pytest.raises(AlignlensError, match="does not exist"):
        check_results(tmp_path / "nope")
    run = make_synthetic_run(tmp_path / "run", 6, ["en"], 3, tasks=("emotion",), analyses=())
    (tmp_path / "empty").mkdir()
    with pytest.raises(AlignlensError, match="empty.*missing required file manifest.json"):
        render_report(run, tmp_path / "empty")


def _edit(path: Path, fn) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    fn(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def test_language_constants():
    assert set(HIGH_RESOURCE) | set(LOW_RESOURCE) == set(LANGUAGES) and not set(HIGH_RESOURCE) & set(LOW_RESOURCE)
    assert set(NATIVE_NAMES) == set(LANGUAGES) == set(ALL_LANGUAGES)
    assert order_languages(["bn", "xx", "en", "sl", "zh"]) == ["en", "zh", "sl", "bn", "xx"]


def test_fonts_all_scripts_and_warn_once(monkeypatch):
    fonts._reset_for_tests()
    if fonts.missing_scripts():
        pytest.skip(f"Noto fonts missing for {fonts.missing_scripts()} (apt-get install -y fonts-noto-core fonts-noto-cjk)")
    fams = fonts.font_families()
    assert fams[0] == "Noto Sans" and fams[-1] == "DejaVu Sans"
    assert fonts.rc_params()["pdf.fonttype"] == 42

    monkeypatch.setattr(fonts, "_installed_families", lambda: {"DejaVu Sans", "Noto Sans"})
    fonts._reset_for_tests()
    try:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            fonts.rc_params()
            fonts.rc_params()
        msgs = [str(x.message) for x in w if "Noto fonts missing" in str(x.message)]
        assert len(msgs) == 1
        assert "Noto Sans Devanagari" in msgs[0] and "fonts-noto-cjk" in msgs[0]
        assert set(fonts.missing_scripts()) == {"cjk", "devanagari", "bengali", "thai"}
        assert fonts.font_families() == ["Noto Sans", "DejaVu Sans"]
    finally:
        monkeypatch.undo()
        fonts._reset_for_tests()


# ---- comparing like with like (issue 10) ------------------------------------------------------


def _csv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _predictions(run: Path) -> list[dict]:
    return [json.loads(l) for l in (run / "predictions.jsonl").read_text(encoding="utf-8").splitlines() if l.strip()]


def _pct(x: str) -> float:
    return round(float(x) * 100, 1)


def test_compare_different_limits_uses_shared_items_and_consistent_deltas(tmp_path: Path):
    base = make_synthetic_run(tmp_path / "base", 11, ["en", "zh", "de", "th"], 5, trained=[], tasks=("emotion", "snli"), n_items=10)
    aligned = make_synthetic_run(tmp_path / "aligned", 12, ["en", "zh", "de", "bn"], 5, tasks=("emotion",), n_items=6, boost=0.2)
    out = render_report(base, aligned)
    tables = out.with_name("report_tables")
    summary = (tables / "summary.txt").read_text(encoding="utf-8")
    # 3 shared cells (emotion en/zh/de) x items 0..5
    assert "Compared on 18 shared items" in summary
    assert "base only: 62 items" in summary and "aligned only: 6 items" in summary and "bn 6" in summary
    acc = {(r["task"], r["language"]): r for r in _csv(tables / "accuracy.csv")}
    preds = _predictions(base)
    for lang in ("en", "zh", "de"):
        row = acc["emotion", lang]
        assert row["n_base"] == row["n_aligned"] == "6"
        shared = [p for p in preds if p["task"] == "emotion" and p["lang"] == lang and p["index"] < 6]
        assert float(row["acc_base"]) == pytest.approx(sum(p["gold"] == p["pred"] for p in shared) / 6)
        assert float(row["diff"]) == pytest.approx(float(row["acc_aligned"]) - float(row["acc_base"]))
        assert 0.0 <= float(row["ci95_lo_base"]) <= float(row["acc_base"]) <= float(row["ci95_hi_base"]) <= 1.0
    assert acc["emotion", "th"]["diff"] == "" and acc["emotion", "bn"]["diff"] == ""
    groups = {(r["task"], r["group"]): r for r in _csv(tables / "accuracy_groups.csv")}
    g = groups["emotion", "all"]
    assert g["n_languages"] == "3"  # the paired languages only
    # every "mean accuracy ... a% → b% (Δ d points, ...)" in the summary: d is b − a, and a, b
    # are the group table's macro means (the cross-task mean without a paired interval is gone)
    found = re.findall(r"mean accuracy over \d+ languages (\d+\.\d)% → (\d+\.\d)% \(Δ ([+-]\d+\.\d) points, ", summary)
    assert len(found) == 1  # emotion; snli is not compared
    assert "(Δ " + f"{found[0][2]} points, on the 6 items all of them share: not testable (n=6: fewer than 10 items))" in summary
    for a, b, d in found:
        assert abs(float(d) - (float(b) - float(a))) <= 0.1 + 1e-9
        assert (float(a), float(b)) == (_pct(g["mean_acc_base"]), _pct(g["mean_acc_aligned"]))
        assert float(d) == _pct(g["mean_diff"])
    assert "snli (not compared" in summary


def test_compare_without_shared_items_is_refused(tmp_path: Path):
    base = make_synthetic_run(tmp_path / "base", 13, ["en", "de"], 4, tasks=("emotion",), n_items=5, analyses=())
    other = make_synthetic_run(tmp_path / "other", 14, ["en", "de"], 4, tasks=("snli",), n_items=5, analyses=())
    with pytest.raises(AlignlensError, match="no item in common") as e:
        render_report(base, other, out=tmp_path / "r.pdf")
    assert "\n" not in str(e.value)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("r.pdf", "r_", ".alignlens"))]


def test_compare_needs_predictions(tmp_path: Path):
    base = make_synthetic_run(tmp_path / "base", 15, ["en"], 4, tasks=("emotion",), n_items=5, analyses=())
    aligned = make_synthetic_run(tmp_path / "aligned", 16, ["en"], 4, tasks=("emotion",), n_items=5, analyses=())
    (aligned / "predictions.jsonl").unlink()
    with pytest.raises(AlignlensError, match=r"aligned/predictions\.jsonl: missing"):
        render_report(base, aligned, out=tmp_path / "r.pdf")


def test_compare_models_of_different_depth(tmp_path: Path):
    base = make_synthetic_run(tmp_path / "base", 17, ["en", "zh", "de"], 6, trained=[], tasks=("emotion",), n_items=8)
    aligned = make_synthetic_run(tmp_path / "aligned", 18, ["en", "zh", "de"], 9, tasks=("emotion",), n_items=8, boost=0.1)
    out = render_report(base, aligned)
    summary = out.with_name("report_tables").joinpath("summary.txt").read_text(encoding="utf-8")
    assert "different numbers of layers (6 vs 9)" in summary and "relative depth" in summary
    assert "Neuron change between the models not shown" in summary and "6 layers" in summary
    titles = [r["title"] for r in _contents(out)]
    assert "Neuron change between models" not in titles
    assert "Logit lens — emotion" in titles  # same items: one overlaid page (against relative depth)
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", str(out), "-"], capture_output=True, text=True).stdout
        assert "relative depth" in text


def test_compare_different_items_are_not_overlaid(tmp_path: Path):
    base = make_synthetic_run(tmp_path / "base", 19, ["en", "zh"], 5, trained=[], tasks=("emotion",), n_items=10)
    aligned = make_synthetic_run(tmp_path / "aligned", 20, ["en", "zh"], 5, tasks=("emotion",), n_items=6, boost=0.1)
    out = render_report(base, aligned)
    titles = [r["title"] for r in _contents(out)]
    assert "Logit lens — emotion (base)" in titles and "Logit lens — emotion (aligned)" in titles
    summary = out.with_name("report_tables").joinpath("summary.txt").read_text(encoding="utf-8")
    assert "not compared" in summary and "Neuron change between the models not shown" in summary


def test_neuron_change_read_from_comparison_json(tmp_path: Path):
    base, aligned = make_synthetic_pair(tmp_path, ["en", "zh", "de"], 5, tasks=("emotion",), n_items=6)
    comp = json.loads((tmp_path / "comparison.json").read_text(encoding="utf-8"))
    comp["neurons"]["per_language"]["zh"]["jaccard_specific"] = 0.123456  # only comparison.json says so
    (tmp_path / "comparison.json").write_text(json.dumps(comp), encoding="utf-8")
    out = render_report(base, aligned)
    change = {r["language"]: r for r in _csv(out.with_name("report_tables") / "neurons_change.csv")}
    assert float(change["zh"]["jaccard_specific"]) == pytest.approx(0.123456)


# ---- pages -------------------------------------------------------------------------------------


def _built_pages(tmp_path: Path, base: Path, aligned: Path | None = None):
    from alignlens.report.render import build_report
    from alignlens.report.runs import load_runs

    runs = load_runs(base, aligned)
    return runs, build_report(runs).pages


def test_page_text_never_overlaps_content(tmp_path: Path):
    """The subtitle (e.g. the neurons page's options) ends above every plot, table and axes title."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    base, aligned = make_synthetic_pair(tmp_path / "runs", ["en", "zh", "de", "hi", "th"], 6, tasks=("emotion",), n_items=8)
    _, pages = _built_pages(tmp_path, base, aligned)
    with matplotlib.rc_context(fonts.rc_params()):
        for page in pages:
            fig = page.draw()
            renderer = FigureCanvasAgg(fig).get_renderer()
            if len(fig.texts) < 2:
                continue
            subtitle_bottom = fig.texts[1].get_window_extent(renderer).y0
            for ax in fig.axes:
                top = ax.get_tightbbox(renderer).y1
                assert top <= subtitle_bottom + 1, f"page {page.title!r}: content reaches into the subtitle"


def test_empty_lens_panel_says_why(tmp_path: Path):
    from alignlens.report.lens import no_items_text as _no_items_text

    run = make_synthetic_run(tmp_path / "run", 21, ["en", "zh", "de"], 5, tasks=("emotion",), n_items=6, lens_no_items=("zh",))
    lens = json.loads((run / "logit_lens.json").read_text(encoding="utf-8"))
    zh = lens["tasks"]["emotion"]["per_language"]["zh"]
    assert zh["n"] == 0 and zh["n_dropped_overlap"] == 6
    why = _no_items_text(zh, lens["tasks"]["emotion"]["overlap_rule"])
    assert why.startswith("no items: all 6 items") and "(token-set rule)" in why
    out = render_report(run)
    if not shutil.which("pdftotext"):
        pytest.skip("pdftotext (poppler-utils) not installed")
    text = subprocess.run(["pdftotext", str(out), "-"], capture_output=True, text=True).stdout
    assert "no items: all 6 items" in text and "(token-set rule)" in text


def test_probability_intervals_are_clipped(tmp_path: Path):
    run = make_synthetic_run(tmp_path / "run", 22, ["en", "de"], 4, tasks=("emotion",), n_items=6, analyses=("lens",))

    def widen(lens):
        for e in lens["tasks"]["emotion"]["per_language"].values():
            for q in ("p_en", "p_target"):
                e[q]["lo"] = [-0.2] * len(e[q]["lo"])
                e[q]["hi"] = [1.3] * len(e[q]["hi"])
            e["entropy_bits"]["lo"] = [-1.0] * len(e["entropy_bits"]["lo"])

    _edit(run / "logit_lens.json", widen)
    _edit(run / "summary.json", lambda s: s["tasks"]["emotion"]["languages"]["de"].update(ci95=[-0.1, 1.2]))
    out = render_report(run)
    tables = out.with_name("report_tables")
    for r in _csv(tables / "logit_lens.csv"):
        for q in ("p_en", "p_target"):
            assert 0.0 <= float(r[f"{q}_lo"]) and float(r[f"{q}_hi"]) <= 1.0
        assert float(r["entropy_bits_lo"]) >= 0.0
    de = next(r for r in _csv(tables / "accuracy.csv") if r["language"] == "de")
    assert (float(de["ci95_lo_base"]), float(de["ci95_hi_base"])) == (0.0, 1.0)


def test_progress_is_reported_per_page(tmp_path: Path):
    run = make_synthetic_run(tmp_path / "run", 23, ["en", "de"], 4, tasks=("emotion",), n_items=6)
    calls = []
    out = render_report(run, progress=lambda done, total, what: calls.append((done, total, what)))
    n_pages = len(_contents(out))
    assert [c[0] for c in calls] == list(range(n_pages + 2))
    assert {c[1] for c in calls} == {n_pages + 1}
    assert all(isinstance(c[2], str) and c[2] for c in calls)


# ---- outputs ----------------------------------------------------------------------------------


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_outputs_atomic_umask_and_force_scope(tmp_path: Path):
    import os
    import stat

    run = make_synthetic_run(tmp_path / "run", 24, ["en", "de"], 4, tasks=("emotion",), n_items=6, analyses=())
    folder = tmp_path / "out"
    folder.mkdir()
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()  # a process that has ended
    killed = f"{dead}@{socket.gethostname()}"
    (folder / f".alignlens-tmp-{killed}.report.pdf.x1y2").write_bytes(b"left by a killed run")
    (folder / f".alignlens-tmp-{killed}.report_figures.k3").mkdir()
    (folder / ".alignlens-tmp-untagged.k4").write_bytes(b"whose? the report does not lock this folder")
    (folder / "notes.txt").write_text("mine", encoding="utf-8")
    (folder / "report_old.pdf").write_bytes(b"%PDF-other")
    old_mask = os.umask(0o022)
    try:
        out = render_report(run, out=folder / "report.pdf")
    finally:
        os.umask(old_mask)
    # a killed run's temporaries are removed; an untagged one stays (no lock says its owner is gone)
    assert [p.name for p in folder.iterdir() if p.name.startswith(".alignlens-tmp-")] == [".alignlens-tmp-untagged.k4"]
    (folder / ".alignlens-tmp-untagged.k4").unlink()
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    for d in ("report_figures", "report_tables"):
        assert stat.S_IMODE((folder / d).stat().st_mode) == 0o755
    assert stat.S_IMODE(next((folder / "report_tables").iterdir()).stat().st_mode) == 0o644
    before = _snapshot(folder)

    def fail_on_page_3(done, total, what):
        if done == 3:
            raise RuntimeError("drawing failed")

    with pytest.raises(RuntimeError, match="drawing failed"):
        render_report(run, out=folder / "report.pdf", force=True, progress=fail_on_page_3)
    assert _snapshot(folder) == before  # the previous report, byte for byte, and nothing else
    render_report(run, out=folder / "report.pdf", force=True)
    assert (folder / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert (folder / "report_old.pdf").read_bytes() == b"%PDF-other"
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "report.pdf", "report_figures", "report_old.pdf", "report_tables"]


def test_failed_swap_puts_the_previous_report_back(tmp_path: Path, monkeypatch):
    """The report uses the results writer's swap (`staged_swap`, as `OutputFolder.commit`): when
    renaming the new tables into place fails after the new PDF and figures were moved in, the swap
    is undone and the previous report stays, byte for byte, with no temporaries left."""
    import os

    from alignlens.results import writer

    run = make_synthetic_run(tmp_path / "run", 24, ["en", "de"], 4, tasks=("emotion",), n_items=6, analyses=())
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine", encoding="utf-8")
    render_report(run, out=folder / "report.pdf")
    (folder / "report_tables" / "old_only.csv").write_text("previous", encoding="utf-8")  # marks the old tables
    before = _snapshot(folder)
    real_replace = os.replace
    moved: list[str] = []

    def replace(src, dst):
        if Path(dst) == folder / "report_tables" and "failed" not in moved:
            moved.append("failed")  # the first rename onto report_tables: the new tables moving in
            raise OSError(28, "No space left on device")
        moved.append(Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(writer.os, "replace", replace)
    with pytest.raises(OSError, match="No space left"):
        render_report(run, out=folder / "report.pdf", force=True)
    monkeypatch.undo()
    fail_at = moved.index("failed")  # old report moved aside, new PDF and figures moved in, then the failure
    assert moved[:fail_at] == ["report.pdf", "report_figures", "report_tables", "report.pdf", "report_figures"]
    assert _snapshot(folder) == before
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "report.pdf", "report_figures", "report_tables"]


# ---- provenance -------------------------------------------------------------------------------


def test_title_page_shows_the_data_hashes(full_report: Path):
    from alignlens.report.title import data_hashes

    manifest = json.loads((full_report.parent / "base" / "manifest.json").read_text(encoding="utf-8"))
    real = manifest["data"]["tasks"]["emotion"]["hash"]  # the key evaluate.make_manifest writes
    assert len(real) == 64 and "hash" not in {k for k in manifest["data"] if k != "tasks"}
    assert data_hashes(manifest) == f"emotion {real[:12]}"
    if not shutil.which("pdftotext"):
        pytest.skip("pdftotext (poppler-utils) not installed")
    title = subprocess.run(["pdftotext", "-f", "1", "-l", "1", str(full_report), "-"], capture_output=True, text=True).stdout
    assert f"emotion {real[:12]}" in title


def test_report_from_a_real_analysis_shows_its_data_hash(tmp_path: Path):
    """`alignlens analyze` on a tiny model, then its report: the title page carries the real data hash."""
    from alignlens.config import AnalyzeConfig
    from alignlens.pipeline import analyze
    from fixtures import save_tiny_base

    model = save_tiny_base(tmp_path / "tiny", "gemma3", seed=0)
    out = tmp_path / "analysis"
    analyze(AnalyzeConfig(tasks=["emotion"], languages=["en", "de"], limit=2, batch_size=2), str(model), out=out, report=False)
    manifest = json.loads((out / "base" / "manifest.json").read_text(encoding="utf-8"))
    h = manifest["data"]["tasks"]["emotion"]["hash"]
    pdf = render_report(out / "base", out=tmp_path / "r.pdf")
    from alignlens.results.schema import load_run
    from alignlens.report.title import manifest_rows

    rows = dict(manifest_rows(load_run(out / "base")))
    assert rows["data hash (sha256)"] == f"emotion {h[:12]}"
    if shutil.which("pdftotext"):
        title = subprocess.run(["pdftotext", "-f", "1", "-l", "1", str(pdf), "-"], capture_output=True, text=True).stdout
        assert f"emotion {h[:12]}" in title


def test_sections_are_pure(tmp_path: Path):
    """Each section's pages, tables and summary lines do not depend on what was built before it."""
    from alignlens.report import accuracy, lens, neurons, similarity
    from alignlens.report.runs import load_runs

    base, aligned = make_synthetic_pair(tmp_path, ["en", "zh", "de"], 5, tasks=("emotion",), n_items=6)
    runs = load_runs(base, aligned)
    builders = [accuracy.build, lens.build, similarity.build, neurons.build]
    forward = [b(runs) for b in builders]
    backward = [b(runs) for b in reversed(builders)][::-1]
    for f, b in zip(forward, backward):
        assert f.summary_lines == b.summary_lines and f.summary_lines
        assert [(t.name, t.header) for t in f.tables] == [(t.name, t.header) for t in b.tables]
        assert [p.slug for p in f.pages] == [p.slug for p in b.pages]


# ---- paired statistics and an honest summary (issue 12) ----------------------------------------


def _holm_by_hand(p: list[float]) -> list[float]:
    """Holm step-down adjusted p-values, written out independently of alignlens.paired."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    adj, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adj[i] = running
    return adj


def _mcnemar_by_hand(base: Path, aligned: Path, task: str) -> dict[str, tuple[int, int, float]]:
    """lang -> (b01, b10, exact two-sided p) from the two predictions.jsonl files."""
    from scipy.stats import binomtest

    right = {}
    for role, run in (("a", base), ("b", aligned)):
        for p in _predictions(run):
            if p["task"] == task:
                right.setdefault(p["lang"], {}).setdefault(p["index"], {})[role] = p["gold"] == p["pred"]
    out = {}
    for lang, items in right.items():
        b01 = sum(not v["a"] and v["b"] for v in items.values())
        b10 = sum(v["a"] and not v["b"] for v in items.values())
        out[lang] = (b01, b10, binomtest(b01, b01 + b10, 0.5).pvalue if b01 + b10 else 1.0)
    return out


def test_prior_shift_is_named_and_not_called_significant(tmp_path: Path):
    """Aligned predicts "positive" for every item; gold is 60% positive: accuracy rises (base ~56%),
    balanced accuracy falls to 50%. The summary names the prior shift and never says "significant"."""
    langs = ["en", "zh", "de", "fr", "es", "hi", "th", "sw"]
    kw = dict(tasks=("emotion",), n_items=60, gold_weights=[0.6, 0.4], analyses=())
    base = make_synthetic_run(tmp_path / "base", 31, langs, 4, trained=[], accuracy=dict.fromkeys(langs, 0.56), **kw)
    aligned = make_synthetic_run(tmp_path / "aligned", 32, langs, 4, accuracy=dict.fromkeys(langs, 0.52),
                                 label_bias={"positive": 8.0}, boost=0.01, **kw)  # fmt: skip
    preds = _predictions(aligned)
    assert {p["pred"] for p in preds} == {"positive"}  # the synthetic aligned model always says positive
    gold_pos = sum(p["gold"] == "positive" for p in preds) / len(preds)
    tests = _mcnemar_by_hand(base, aligned, "emotion")
    assert min(_holm_by_hand([t[2] for t in tests.values()])) >= 0.05  # the premise: nothing survives Holm

    out = render_report(base, aligned)
    tables = out.with_name("report_tables")
    summary = (tables / "summary.txt").read_text(encoding="utf-8")
    assert "significant" not in summary.lower()
    assert "0 of 8 languages survive Holm correction" in summary
    assert f"likely a label-prior shift: the aligned model predicts positive for 100.0% of items vs {gold_pos * 100:.1f}% gold" in summary
    assert "predicts one label for every item in 8 languages" in summary
    # the claim is judged threshold-free: the accuracy gain is a prior shift, and ROC-AUC (the aligned model
    # ranks the items worse: its accuracy parameter is lower) falls with an interval below 0
    assert "mean ROC-AUC" in summary and "Threshold-free" in summary
    assert ("The paper's claim (alignment improves accuracy across languages, including untrained ones) does not hold on "
            "these runs for emotion (macro ROC-AUC Δ, label-stratified item-cluster bootstrap)") in summary
    assert "label-stratified: each resample keeps the label counts" in summary
    acc = {r["language"]: r for r in _csv(tables / "accuracy.csv")}
    for lang in langs:
        assert float(acc[lang]["balanced_acc_aligned"]) == pytest.approx(0.5)  # one label always: mean recall 1/2
        assert json.loads(acc[lang]["pred_counts_aligned"]) == {"positive": 60, "negative": 0}
    groups = {r["group"]: r for r in _csv(tables / "accuracy_groups.csv")}
    assert float(groups["all"]["mean_diff"]) > 0 > float(groups["all"]["mean_bal_diff"])


def test_strong_improvement_counts_holm_survivors(tmp_path: Path):
    langs = ["en", "zh", "de", "fr", "hi", "th"]
    kw = dict(tasks=("emotion",), n_items=60, analyses=())
    base = make_synthetic_run(tmp_path / "base", 41, langs, 4, trained=[], accuracy=dict.fromkeys(langs, 0.5), **kw)
    aligned = make_synthetic_run(tmp_path / "aligned", 42, langs, 4, trained=["zh", "de"], boost=0.1,
                                 accuracy={**dict.fromkeys(langs, 0.5), "zh": 0.97, "de": 0.97, "hi": 0.97}, **kw)  # fmt: skip
    tests = _mcnemar_by_hand(base, aligned, "emotion")
    order = list(tests)
    holm = dict(zip(order, _holm_by_hand([tests[l][2] for l in order])))
    survivors = sorted(l for l in order if holm[l] < 0.05)
    assert survivors == ["de", "hi", "zh"]  # the premise: the boosted languages, and only they

    out = render_report(base, aligned, out=tmp_path / "r.pdf")  # two eval folders, no comparison.json
    tables = out.with_name("r_tables")
    summary = (tables / "summary.txt").read_text(encoding="utf-8")
    assert "computed by this report from the two runs' predictions.jsonl" in summary
    assert "3 of 6 languages survive Holm correction (significant at p_Holm < 0.05): gains in 3" in summary
    acc = {r["language"]: r for r in _csv(tables / "accuracy.csv")}
    for lang in langs:
        b01, b10, p = tests[lang]
        assert (int(acc[lang]["mcnemar_b01"]), int(acc[lang]["mcnemar_b10"])) == (b01, b10)
        assert float(acc[lang]["mcnemar_p"]) == pytest.approx(p)
        assert float(acc[lang]["p_holm"]) == pytest.approx(holm[lang])
        lo, d, hi = float(acc[lang]["diff_ci95_lo"]), float(acc[lang]["diff"]), float(acc[lang]["diff_ci95_hi"])
        assert lo <= d <= hi
        assert d == pytest.approx((b01 - b10) / 60)  # paired: Δ is the discordant balance
    assert float(acc["zh"]["diff_ci95_lo"]) > 0


def test_csv_columns(full_report: Path):
    tables = full_report.with_name("report_tables")
    with open(tables / "accuracy.csv", encoding="utf-8") as f:
        header = next(csv.reader(f))
    for side in ("base", "aligned"):
        for col in ("n", "acc", "ci95_lo", "ci95_hi", "balanced_acc", "macro_f1", "roc_auc", "pred_counts", "calibrated_acc",
                    "p_content_free"):  # fmt: skip
            assert f"{col}_{side}" in header
    for col in ("gold_counts", "diff", "diff_ci95_lo", "diff_ci95_hi", "mcnemar_b01", "mcnemar_b10", "mcnemar_p", "p_holm", "p_bh"):
        assert col in header
    rows = _csv(tables / "accuracy.csv")
    assert all(r["p_holm"] and r["p_bh"] and r["roc_auc_base"] and r["calibrated_acc_aligned"] for r in rows)
    assert all(float(r["p_holm"]) >= float(r["mcnemar_p"]) for r in rows)
    with open(tables / "accuracy_groups.csv", encoding="utf-8") as f:
        groups = list(csv.DictReader(f))
    assert [g["group"] for g in groups] == ["all", "trained", "untrained", "high-resource", "low-resource"]
    for g in groups:
        for col in ("mean_diff", "mean_diff_ci95_lo", "mean_diff_ci95_hi", "mean_bal_diff", "mean_bal_diff_ci95_lo",
                    "mean_bal_diff_ci95_hi", "n_items", "mean_auc_diff", "mean_auc_diff_ci95_lo", "mean_auc_diff_ci95_hi",
                    "mean_auc_diff_mde80"):  # fmt: skip
            assert g[col] != "", (g["group"], col)
        assert float(g["mean_diff_ci95_lo"]) <= float(g["mean_diff"]) <= float(g["mean_diff_ci95_hi"])
        assert float(g["mean_auc_diff_ci95_lo"]) <= float(g["mean_auc_diff"]) <= float(g["mean_auc_diff_ci95_hi"])
    assert {g["group"]: g["n_languages"] for g in groups}["untrained"] == "18"


def test_single_run_shows_label_bias_metrics(tmp_path: Path):
    run = make_synthetic_run(tmp_path / "run", 51, ["en", "de"], 3, trained=[], tasks=("emotion",), n_items=40, analyses=(),
                             label_bias={"negative": 8.0})  # fmt: skip
    out = render_report(run)
    rows = {r["language"]: r for r in _csv(out.with_name("report_tables") / "accuracy.csv")}
    for lang in ("en", "de"):
        assert float(rows[lang]["balanced_acc_base"]) == pytest.approx(0.5)
        assert json.loads(rows[lang]["pred_counts_base"]) == {"positive": 0, "negative": 40}
        assert rows[lang]["roc_auc_base"] and rows[lang]["p_holm"] == "" and rows[lang]["diff"] == ""
    summary = out.with_name("report_tables").joinpath("summary.txt").read_text(encoding="utf-8")
    assert "balanced accuracy 50.0%" in summary and "it predicts negative for 100.0% of items vs 50.0% gold" in summary
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", str(out), "-"], capture_output=True, text=True).stdout
        assert "balanced" in text and "ROC-AUC" in text and "pred %" in text


def test_paired_statistics_read_from_comparison_json_when_it_belongs(tmp_path: Path):
    from alignlens.report.runs import load_runs

    base, aligned = make_synthetic_pair(tmp_path, ["en", "zh", "de"], 4, tasks=("emotion",), n_items=20)
    runs = load_runs(base, aligned)
    assert runs.paired_source.startswith("read from comparison.json") and not runs.notes
    comp = json.loads((tmp_path / "comparison.json").read_text(encoding="utf-8"))
    comp["accuracy"]["tasks"]["emotion"]["languages"]["zh"]["p_holm"] = 0.0123  # only comparison.json says so
    (tmp_path / "comparison.json").write_text(json.dumps(comp), encoding="utf-8")
    out = render_report(base, aligned)
    zh = next(r for r in _csv(out.with_name("report_tables") / "accuracy.csv") if r["language"] == "zh")
    assert float(zh["p_holm"]) == pytest.approx(0.0123)
    # a comparison.json of other runs (here: other accuracies) is not used, and the summary says so
    comp["accuracy"]["tasks"]["emotion"]["languages"]["de"]["acc_b"] += 0.05
    (tmp_path / "comparison.json").write_text(json.dumps(comp), encoding="utf-8")
    out = render_report(base, aligned, force=True)
    summary = out.with_name("report_tables").joinpath("summary.txt").read_text(encoding="utf-8")
    assert "does not belong to these runs (emotion de:" in summary and "computed by this report" in summary
    zh = next(r for r in _csv(out.with_name("report_tables") / "accuracy.csv") if r["language"] == "zh")
    assert float(zh["p_holm"]) != pytest.approx(0.0123)


def test_no_independent_interval_delta_left():
    root = Path(__file__).resolve().parents[1]
    for path in list((root / "src" / "alignlens").rglob("*.py")) + [Path(__file__)]:
        text = path.read_text(encoding="utf-8")
        assert "diff" + "_ci(" not in text and "New" + "combe" not in text, path
    import alignlens.stats

    assert not hasattr(alignlens.stats, "diff" + "_ci")


def test_long_language_tables_continue_on_further_pages(tmp_path: Path, monkeypatch):
    """More languages than fit on a page: the per-language table continues on further pages (here
    with 8 rows a page, 20 languages -> 3 pages); group means only under the last part."""
    from alignlens.report import accuracy

    monkeypatch.setattr(accuracy, "ROWS_PER_PAGE", 8)
    run = make_synthetic_run(tmp_path / "run", 61, ALL_LANGUAGES, 3, trained=[], tasks=("emotion",), n_items=10, analyses=())
    out = render_report(run)
    titles = [r["title"] for r in _contents(out)]
    assert [t for t in titles if t.startswith("Accuracy table")] == [f"Accuracy table — emotion ({k}/3)" for k in (1, 2, 3)]
    assert {r["language"] for r in _csv(out.with_name("report_tables") / "accuracy.csv")} == set(ALL_LANGUAGES)
    if shutil.which("pdftotext"):
        pages = [subprocess.run(["pdftotext", "-f", str(n), "-l", str(n), str(out), "-"], capture_output=True, text=True).stdout
                 for n in range(1, len(titles) + 1)]  # fmt: skip
        parts = [p for p in pages if "Accuracy — emotion (" in p]
        assert len(parts) == 3 and "mean: all" in parts[2] and not any("mean: all" in p for p in parts[:2])


def test_comparison_json_of_an_older_format_is_not_used(tmp_path: Path):
    """A comparison.json written before the paired statistics (neuron changes at the top level):
    the paired statistics are computed from predictions.jsonl and the summary says why."""
    base, aligned = make_synthetic_pair(tmp_path, ["en", "zh", "de"], 4, tasks=("emotion",), n_items=12)
    comp = json.loads((tmp_path / "comparison.json").read_text(encoding="utf-8"))
    (tmp_path / "comparison.json").write_text(json.dumps(comp["neurons"]), encoding="utf-8")
    out = render_report(base, aligned)
    summary = out.with_name("report_tables").joinpath("summary.txt").read_text(encoding="utf-8")
    assert "comparison.json is of an older format (no paired accuracy statistics) and was not used" in summary
    assert "computed by this report from the two runs' predictions.jsonl" in summary
    assert {r["language"] for r in _csv(out.with_name("report_tables") / "accuracy.csv") if r["p_holm"]} == {"en", "zh", "de"}


# ---- calibrated accuracy (issue 12 §3) ---------------------------------------------------------


def _calibrated_by_hand(run: Path, task: str) -> dict[str, float]:
    """lang -> accuracy of argmax_label p(label) / p_content_free(label), from predictions.jsonl and
    summary.json's content-free probabilities (written out independently of alignlens.metrics)."""
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    right: dict[str, list[bool]] = {}
    for p in _predictions(run):
        if p["task"] == task:
            cf = summary["tasks"][task]["languages"][p["lang"]]["p_content_free"]
            right.setdefault(p["lang"], []).append(max(p["probs"], key=lambda lab: p["probs"][lab] / cf[lab]) == p["gold"])
    return {lang: sum(v) / len(v) for lang, v in right.items()}


def _summary_json(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text(encoding="utf-8"))


def test_calibrated_accuracy_in_csv_tables_and_summary(tmp_path: Path):
    langs = ["en", "zh", "de", "hi"]
    base, aligned = make_synthetic_pair(tmp_path, langs, 4, tasks=("emotion",), n_items=40, analyses=(),
                                        label_bias={"positive": 1.5})  # fmt: skip
    out = render_report(base, aligned)
    tables = out.with_name("report_tables")
    acc = {r["language"]: r for r in _csv(tables / "accuracy.csv")}
    for side, run in (("base", base), ("aligned", aligned)):
        entries = _summary_json(run)["tasks"]["emotion"]["languages"]
        by_hand = _calibrated_by_hand(run, "emotion")
        for lang in langs:
            assert float(acc[lang][f"calibrated_acc_{side}"]) == pytest.approx(entries[lang]["calibrated_accuracy"])
            assert float(acc[lang][f"calibrated_acc_{side}"]) == pytest.approx(by_hand[lang])
            assert json.loads(acc[lang][f"p_content_free_{side}"]) == pytest.approx(entries[lang]["p_content_free"])
    # the label bias is divided out: calibrated and plain accuracy differ somewhere (the premise of the columns)
    assert any(acc[l]["calibrated_acc_aligned"] != acc[l]["acc_aligned"] for l in langs)
    summary = (tables / "summary.txt").read_text(encoding="utf-8")
    ma, mb = (_summary_json(r)["tasks"]["emotion"]["mean_calibrated_accuracy"] for r in (base, aligned))
    assert (f"Mean calibrated accuracy base → aligned over the 4 languages with the same items in both runs "
            f"{ma * 100:.1f}% → {mb * 100:.1f}%") in summary  # fmt: skip
    assert "removing a label-prior shift's effect on accuracy" in summary
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", "-layout", str(out), "-"], capture_output=True, text=True).stdout
        assert "cal. acc" in text and f"{entries['hi']['calibrated_accuracy'] * 100:.1f}" in text

    run = make_synthetic_run(tmp_path / "single", 7, ["en", "de"], 3, trained=[], tasks=("emotion",), n_items=30, analyses=())
    out = render_report(run)
    rows = {r["language"]: r for r in _csv(out.with_name("report_tables") / "accuracy.csv")}
    entries = _summary_json(run)["tasks"]["emotion"]
    for lang in ("en", "de"):
        assert float(rows[lang]["calibrated_acc_base"]) == pytest.approx(entries["languages"][lang]["calibrated_accuracy"])
        assert rows[lang]["calibrated_acc_aligned"] == ""
    summary = out.with_name("report_tables").joinpath("summary.txt").read_text(encoding="utf-8")
    assert f"Mean calibrated accuracy over 2 languages {entries['mean_calibrated_accuracy'] * 100:.1f}%" in summary
    if shutil.which("pdftotext"):
        assert "calibrated" in subprocess.run(["pdftotext", str(out), "-"], capture_output=True, text=True).stdout


def test_calibrated_accuracy_only_where_both_runs_have_the_same_items(tmp_path: Path):
    """Different --limit: every shared language's items differ, so its calibrated accuracies (from
    all of each run's items) are "—"; a language one run alone has keeps that run's value."""
    base = make_synthetic_run(tmp_path / "base", 11, ["en", "zh", "de", "th"], 4, trained=[], tasks=("emotion",), n_items=10, analyses=())
    aligned = make_synthetic_run(tmp_path / "aligned", 12, ["en", "zh", "de"], 4, tasks=("emotion",), n_items=6, boost=0.2, analyses=())
    out = render_report(base, aligned)
    tables = out.with_name("report_tables")
    acc = {r["language"]: r for r in _csv(tables / "accuracy.csv")}
    for lang in ("en", "zh", "de"):
        assert acc[lang]["calibrated_acc_base"] == acc[lang]["calibrated_acc_aligned"] == ""
        assert acc[lang]["acc_base"] and acc[lang]["p_content_free_base"]  # the row itself is there
    th = _summary_json(base)["tasks"]["emotion"]["languages"]["th"]["calibrated_accuracy"]
    assert th is not None and float(acc["th"]["calibrated_acc_base"]) == pytest.approx(th)
    summary = (tables / "summary.txt").read_text(encoding="utf-8")
    assert "Calibrated accuracy base → aligned: not compared: the runs' items differ in every language both have (en zh de)" in summary
    assert "Mean calibrated accuracy" not in summary
    if shutil.which("pdftotext"):
        text = " ".join(subprocess.run(["pdftotext", str(out), "-"], capture_output=True, text=True).stdout.split())
        assert "the runs' items differ (en zh de)" in text  # wherever the subtitle's lines break

    # the same items in en and zh but (as far as the report knows) not in de: de alone is blanked,
    # and the mean is over en and zh
    from alignlens.report import accuracy
    from alignlens.report.runs import load_runs

    base, aligned = make_synthetic_pair(tmp_path / "pair", ["en", "zh", "de"], 4, tasks=("emotion",), n_items=12, analyses=())
    runs = load_runs(base, aligned)
    runs.overlap.same.discard(("emotion", "de"))
    section = accuracy.build(runs)
    table = next(t for t in section.tables if t.name == "accuracy.csv")
    rows = {r[1]: dict(zip(table.header, r)) for r in table.rows}
    sa, sb = (_summary_json(r)["tasks"]["emotion"]["languages"] for r in (base, aligned))
    assert rows["de"]["calibrated_acc_base"] != rows["de"]["calibrated_acc_base"]  # NaN: an empty CSV cell
    assert rows["en"]["calibrated_acc_aligned"] == pytest.approx(sb["en"]["calibrated_accuracy"])
    ma = (sa["en"]["calibrated_accuracy"] + sa["zh"]["calibrated_accuracy"]) / 2
    mb = (sb["en"]["calibrated_accuracy"] + sb["zh"]["calibrated_accuracy"]) / 2
    line = next(l for l in section.summary_lines if "calibrated" in l)
    assert f"over the 2 languages with the same items in both runs {ma * 100:.1f}% → {mb * 100:.1f}%" in line
    assert "Not shown for 1 languages whose items differ between the runs (de)" in line


def test_summary_without_calibration_still_renders(tmp_path: Path):
    """summary.json written before contextual calibration (no calibrated_accuracy, p_content_free,
    mean_calibrated_accuracy): "—" / empty cells, and the summary says which run lacks it."""

    def strip(s: dict) -> None:
        for t in s["tasks"].values():
            t.pop("mean_calibrated_accuracy")
            for e in t["languages"].values():
                e.pop("calibrated_accuracy"), e.pop("p_content_free")

    base, aligned = make_synthetic_pair(tmp_path, ["en", "zh"], 4, tasks=("emotion",), n_items=12, analyses=())
    _edit(base / "summary.json", strip)
    out = render_report(base, aligned)
    tables = out.with_name("report_tables")
    acc = {r["language"]: r for r in _csv(tables / "accuracy.csv")}
    entries = _summary_json(aligned)["tasks"]["emotion"]["languages"]
    for lang in ("en", "zh"):
        assert acc[lang]["calibrated_acc_base"] == acc[lang]["p_content_free_base"] == ""
        assert float(acc[lang]["calibrated_acc_aligned"]) == pytest.approx(entries[lang]["calibrated_accuracy"])
    summary = (tables / "summary.txt").read_text(encoding="utf-8")
    assert "Calibrated accuracy base → aligned: not compared: the base run's summary.json has no calibrated accuracy" in summary
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", str(out), "-"], capture_output=True, text=True).stdout
        assert "not in summary.json (written before contextual calibration" in text

    run = make_synthetic_run(tmp_path / "old", 8, ["en", "de"], 3, trained=[], tasks=("emotion",), n_items=10, analyses=())
    _edit(run / "summary.json", strip)
    out = render_report(run)
    rows = _csv(out.with_name("report_tables") / "accuracy.csv")
    assert [r["calibrated_acc_base"] for r in rows] == ["", ""]
    summary = out.with_name("report_tables").joinpath("summary.txt").read_text(encoding="utf-8")
    assert "Calibrated accuracy: this run's summary.json has no calibrated accuracy" in summary

    # measured nowhere (summary.json has the keys, with null: e.g. a run resumed from older shards)
    run = make_synthetic_run(tmp_path / "unmeasured", 9, ["en"], 3, trained=[], tasks=("emotion",), n_items=10, analyses=(),
                             content_free=False)  # fmt: skip
    assert _summary_json(run)["tasks"]["emotion"]["languages"]["en"]["calibrated_accuracy"] is None
    out = render_report(run)
    assert _csv(out.with_name("report_tables") / "accuracy.csv")[0]["calibrated_acc_base"] == ""
    assert "this run's summary.json has no calibrated accuracy" in out.with_name("report_tables").joinpath("summary.txt").read_text(encoding="utf-8")
