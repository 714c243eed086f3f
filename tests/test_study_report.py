"""study.pdf renders from study.json alone: from a real small study's (tests/data/quick_study.json.gz,
`alignlens study run quick`, 2 arms x 2 seeds, 8 languages) and from a synthetic one with known verdicts
(tests/synthetic_study.py: inconclusive, mixed, contradicted, not testable and not run claims, a dose
trend, the irrelevant-label variant, steps not finished). The PDF states each claim's verdict as
study.json does, never shows an absolute path, and its CSV tables hold study.json's numbers."""

from __future__ import annotations

import csv
import gzip
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_study import FILE, OUT, VERDICTS, make_study  # noqa: E402

from alignlens import AlignlensError  # noqa: E402
from alignlens.report.study import render_study  # noqa: E402

QUICK = Path(__file__).resolve().parent / "data" / "quick_study.json.gz"
needs_pdftotext = pytest.mark.skipif(not shutil.which("pdftotext"), reason="pdftotext (poppler-utils) not installed")


def _write(folder: Path, doc: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "study.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return folder / "study.json"


def quick_doc() -> dict:
    return json.loads(gzip.decompress(QUICK.read_bytes()).decode("utf-8"))


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[Path, dict]:
    doc = quick_doc()
    folder = tmp_path_factory.mktemp("quick")
    return render_study(_write(folder, doc), folder / "study.pdf"), doc


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[Path, dict]:
    doc = make_study()
    folder = tmp_path_factory.mktemp("syn")
    return render_study(_write(folder, doc), folder / "study.pdf"), doc


def _text(pdf: Path) -> str:
    return subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout


def _flat(text: str) -> str:
    return " ".join(text.split())


def _table(pdf: Path, name: str) -> list[dict]:
    with open(pdf.with_name("study_tables") / name, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _titles(pdf: Path) -> list[str]:
    return [r["title"] for r in _table(pdf, "contents.csv")]


def _same(cell: str, value) -> bool:
    """A CSV cell equals a study.json value: the same float (written by repr, so read back exactly),
    the same text, or empty for null."""
    if value is None:
        return cell == ""
    if isinstance(value, bool):
        return cell == str(value)
    if isinstance(value, (int, float)):
        return cell != "" and float(cell) == float(value)
    return cell == str(value)


# ---- what is rendered ---------------------------------------------------------------------------------


def test_quick_study_renders_every_section_it_has(quick):
    pdf, doc = quick
    assert pdf.is_file() and pdf.stat().st_size > 10_000
    titles = _titles(pdf)
    for t in ("Study quick: options and arms", "Steps", "Contents", "The paper's claims", "The claims in words",
              "Effects vs base — emotion", "Effects table — emotion", "Per-language Δ AUC — emotion", "Contrasts — emotion",
              "Training seeds — emotion", "Label shares and calibrated accuracy — emotion"):
        assert t in titles, t
    # the quick study has no dose series and no irrelevant-label variant: no such page
    assert not any(t.startswith(("Dose-response", "Irrelevant")) for t in titles)
    figures = sorted(p.name for p in pdf.with_name("study_figures").iterdir())
    assert "06_effects_emotion.png" in figures and "06_effects_emotion.svg" in figures
    assert not list(pdf.parent.glob(".alignlens-tmp*"))  # the staging folder is gone


def test_synthetic_study_renders_trend_variant_and_missing_steps(synthetic):
    pdf, doc = synthetic
    titles = _titles(pdf)
    for t in ("Dose-response — emotion", "Contrasts — emotion", "Training seeds — snli", "Irrelevant-label variant",
              "Effects vs base — emotion, irrelevant labels", "Per-language Δ AUC — emotion, irrelevant labels",
              "Per-language Δ calibrated accuracy — snli"):
        assert t in titles, t
    trend = doc["tasks"]["emotion"]["trends"][0]
    rows = _table(pdf, "study_trends_emotion.csv")
    assert [r["point_arm"] for r in rows] == trend["arms"] and all(_same(r["slope"], trend["slope"]) for r in rows)
    steps = {r["step"]: r for r in _table(pdf, "study_steps.csv")}
    for name in doc["missing"]:
        assert steps[name]["status"] == "missing"
        arm, seed = name.split("/")[1], name.split("seed")[-1]
        assert steps[name]["command"] == f"alignlens study run …/studies/syn.toml --out DIR --arm {arm} --seed {seed}"


@needs_pdftotext
def test_missing_steps_are_listed_with_their_commands(synthetic):
    pdf, doc = synthetic
    text = _flat(_text(pdf))
    assert "22 of 24 finished; not finished: train/zh-de-snli/seed1, eval/zh-de-snli/seed1" in text
    assert "alignlens study run …/studies/syn.toml --out DIR --arm zh-de-snli --seed 1" in text


# ---- verdicts ----------------------------------------------------------------------------------------


@needs_pdftotext
@pytest.mark.parametrize("which", ["quick", "synthetic"])
def test_every_claims_verdict_and_sentence_in_the_pdf_are_study_jsons(which, request):
    pdf, doc = request.getfixturevalue(which)
    text = _flat(_text(pdf))
    for c in doc["claims"]:
        assert f"Claim {c['id']}: {c['verdict']}" in text, c["id"]
        assert _flat(c["text"]) in text, c["id"]
    rows = _table(pdf, "study_claims.csv")
    for c in doc["claims"]:
        mine = [r for r in rows if r["claim"] == str(c["id"])]
        assert mine and {r["claim_verdict"] for r in mine} == {c["verdict"]}
        assert [r["effect_id"] for r in mine if r["effect_id"]] == [e["id"] for e in c["effects"]]


def test_synthetic_claims_have_the_known_verdicts(synthetic):
    pdf, doc = synthetic
    assert {c["id"]: c["verdict"] for c in doc["claims"]} == VERDICTS
    rows = _table(pdf, "study_claims.csv")
    got = {int(r["claim"]): r["claim_verdict"] for r in rows}
    assert got == VERDICTS
    effect = {r["effect_id"]: r["effect_verdict"] for r in rows if r["effect_id"]}
    assert effect["zh-de vs base / untrained-low-resource / auc"] == "supported"  # the mixed claim's two effects
    assert effect["zh-de-sw-hi vs base / untrained-low-resource / auc"] == "inconclusive"


@needs_pdftotext
@pytest.mark.parametrize("which", ["quick", "synthetic"])
def test_no_interval_with_zero_is_called_a_refutation(which, request):
    pdf, _ = request.getfixturevalue(which)
    text = _flat(_text(pdf))
    words = re.findall(r"[A-Za-z]+", text)
    said = [k for k, w in enumerate(words) if w.lower().startswith("refut")]
    assert said  # the report says what inconclusive is not
    for k in said:
        assert {"not", "never"} & {w.lower() for w in words[k - 2:k]}, " ".join(words[k - 8:k + 3])
    assert "inconclusive" in text and "MDE80" in text


# ---- paths and numbers ---------------------------------------------------------------------------


@needs_pdftotext
@pytest.mark.parametrize("which", ["quick", "synthetic"])
def test_no_absolute_path_in_any_text_or_csv(which, request):
    pdf, doc = request.getfixturevalue(which)
    local = ["/tmp/", "/home/", str(pdf.parent), OUT, FILE]
    texts = {"study.pdf": _text(pdf)}
    texts.update({p.name: p.read_text(encoding="utf-8") for p in pdf.with_name("study_tables").iterdir()})
    texts.update({p.name: p.read_text(encoding="utf-8") for p in pdf.with_name("study_figures").glob("*.svg")})
    for name, text in texts.items():
        for path in local:
            assert path not in text, (name, path)
    assert "--out DIR" in texts["study_steps.csv"]


@pytest.mark.parametrize("which", ["quick", "synthetic"])
def test_csv_values_equal_study_json(which, request):
    pdf, doc = request.getfixturevalue(which)
    for task, sec in doc["tasks"].items():
        rows = {r["id"]: r for r in _table(pdf, f"study_effects_{task}.csv")}
        assert set(rows) == {e["id"] for e in sec["effects"]}
        for e in sec["effects"]:
            r = rows[e["id"]]
            lo, hi = e["ci95"] or [None, None]
            for key, value in (("estimate", e["estimate"]), ("ci95_lo", lo), ("ci95_hi", hi), ("se", e["se"]),
                               ("p", e["p"]), ("mde80", e["mde80"]), ("verdict", e["verdict"]),
                               ("n_items", e["n_items"]), ("value_arm", e["values"].get(e["arm"])),
                               ("value_base", e["values"].get("base"))):
                assert _same(r[key], value), (e["id"], key, r[key], value)
        per = {(r["arm"], r["lang"]): r for r in _table(pdf, f"study_per_language_{task}.csv")}
        assert len(per) == len(sec["per_language"])
        for e in sec["per_language"]:
            r = per[(e["arm"], e["lang"])]
            assert _same(r["estimate"], e["estimate"]) and _same(r["mde80"], e["mde80"]) and r["verdict"] == e["verdict"]
            assert _same(r["ci95_lo"], (e["ci95"] or [None])[0]) and _same(r["ci95_hi"], (e["ci95"] or [None, None])[1])
        contrasts = {r["id"]: r for r in _table(pdf, f"study_contrasts_{task}.csv")}
        for c in sec["contrasts"]:
            assert _same(contrasts[c["id"]]["estimate"], c["estimate"]) and contrasts[c["id"]]["verdict"] == c["verdict"]
            assert _same(contrasts[c["id"]]["ci95_lo"], c["ci95"][0] if c["ci95"] else None)
        runs = _table(pdf, f"study_runs_{task}.csv")
        assert len(runs) == sum(len(v) for v in sec["runs"].values())
        for r in runs:
            m = sec["runs"][r["run"]][r["lang"]]
            assert _same(r["calibrated_accuracy"], m["calibrated_accuracy"]) and _same(r["majority_share"], m["majority_share"])
            for label, share in m["label_shares"].items():
                assert _same(r[f"share_{label}"], share)
            assert r["collapsed"] == ("yes" if m["majority_share"] >= 0.95 else "no")
        seeds = _table(pdf, f"study_seeds_{task}.csv")
        for e in sec["effects"]:
            if e["metric"] == sec["primary_metric"] and len(e["per_seed"]) > 1:
                got = {r["seed"]: r for r in seeds if r["arm"] == e["arm"] and r["group"] == e["group"]}
                assert _same(got["pooled"]["estimate"], e["estimate"])
                for p in e["per_seed"]:
                    assert _same(got[str(p["seed"])]["estimate"], p["estimate"])
    claims = _table(pdf, "study_claims.csv")
    for r in claims:
        if r["effect_id"]:
            c = next(c for c in doc["claims"] if str(c["id"]) == r["claim"])
            ref = next(e for e in c["effects"] if e["id"] == r["effect_id"])
            sec = (doc["tasks"] if ref["variant"] == "standard" else doc["variants"][ref["variant"]])[ref["task"]]
            entry = next(x for k in ("effects", "contrasts", "trends") for x in sec[k] if x["id"] == ref["id"])
            assert _same(r["estimate"], entry["estimate"]) and _same(r["mde80"], entry["mde80"])


# ---- refusals, atomic replacement, the hook -------------------------------------------------------


def test_a_file_of_another_schema_is_refused_and_changes_nothing(tmp_path):
    doc = quick_doc()
    doc["schema"] = "alignlens.study/0"
    path = _write(tmp_path, doc)
    (tmp_path / "study.pdf").write_bytes(b"earlier")
    with pytest.raises(AlignlensError, match=r"study\.json: not a study\.json of schema alignlens\.study/1"):
        render_study(path, tmp_path / "study.pdf")
    assert (tmp_path / "study.pdf").read_bytes() == b"earlier"
    del doc["claims"]
    doc["schema"] = "alignlens.study/1"
    with pytest.raises(AlignlensError, match="missing key 'claims'"):
        render_study(_write(tmp_path, doc), tmp_path / "study.pdf")
    with pytest.raises(AlignlensError, match="must end in .pdf"):
        render_study(path, tmp_path / "study.png")


def test_a_failing_render_leaves_the_earlier_report(tmp_path, monkeypatch):
    from alignlens.report.study import render

    path = _write(tmp_path, quick_doc())
    for name in ("study.pdf", "study_figures", "study_tables"):
        (tmp_path / name).mkdir() if "." not in name else (tmp_path / name).write_bytes(b"earlier")
    (tmp_path / "study_tables" / "x.csv").write_text("earlier", encoding="utf-8")

    def boom(doc):
        raise RuntimeError("section failed")
    monkeypatch.setattr(render, "SECTIONS", (render.SECTIONS[0], boom))
    with pytest.raises(RuntimeError, match="section failed"):
        render_study(path, tmp_path / "study.pdf")
    assert (tmp_path / "study.pdf").read_bytes() == b"earlier"
    assert (tmp_path / "study_tables" / "x.csv").read_text(encoding="utf-8") == "earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.json", "study.pdf", "study_figures", "study_tables"]


def test_study_report_writes_study_json_and_renders_study_pdf(tmp_path, monkeypatch):
    """`write_study_json` (what `alignlens study run` ends with and `alignlens study report DIR` runs)
    calls render_study(DIR/study.json, DIR/study.pdf) on the file it wrote; the CLI names both."""
    import alignlens.report.study as report_study
    from typer.testing import CliRunner

    from alignlens.cli.main import app
    from alignlens.study import collect

    doc = quick_doc()
    calls = []
    monkeypatch.setattr(collect, "collect_study", lambda out: doc)
    monkeypatch.setattr(report_study, "render_study",
                        lambda study_json, pdf, progress=None: calls.append((study_json, pdf, json.loads(study_json.read_text()))))
    path = collect.write_study_json(tmp_path)
    assert calls == [(tmp_path / "study.json", tmp_path / "study.pdf", doc)] and path == tmp_path / "study.json"
    result = CliRunner().invoke(app, ["study", "report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert len(calls) == 2 and f"wrote {tmp_path / 'study.pdf'}" in " ".join(result.output.split())
