"""The PDF report renders from synthetic results folders; bad/partial folders fail clearly."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_results import ALL_LANGUAGES, make_synthetic_pair, make_synthetic_run  # noqa: E402

from alignlens import AlignlensError, fonts  # noqa: E402
from alignlens.report import (  # noqa: E402
    HIGH_RESOURCE,
    LANGUAGES,
    LOW_RESOURCE,
    NATIVE_NAMES,
    check_results,
    diff_ci,
    order_languages,
    render_report,
)

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


def test_diff_ci():
    d, lo, hi = diff_ci(0.5, (0.4, 0.6), 0.7, (0.6, 0.8))
    assert d == pytest.approx(0.2) and lo < 0.2 < hi and lo > 0
    assert all(x != x for x in diff_ci(float("nan"), (0, 0), 0.5, (0.4, 0.6)))


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
