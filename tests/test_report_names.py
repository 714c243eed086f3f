"""`alignlens report A --compare B --names A,B`: the report calls the runs by their names everywhere,
phrases results as the paper's claim only for base vs aligned, and refuses bad names in one line."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_results import make_synthetic_pair, make_synthetic_run  # noqa: E402

from alignlens import AlignlensError  # noqa: E402
from alignlens.report import render_report  # noqa: E402
from alignlens.report.layout import fmt  # noqa: E402
from alignlens.report.runs import check_names  # noqa: E402

LANGS = ["en", "zh", "de", "th"]
OLD_ACCURACY_HEADER = [
    "task", "language", "native_name", "resource_group", "trained",
    "n_base", "acc_base", "ci95_lo_base", "ci95_hi_base", "balanced_acc_base", "macro_f1_base", "roc_auc_base", "pred_counts_base",
    "calibrated_acc_base", "p_content_free_base",
    "n_aligned", "acc_aligned", "ci95_lo_aligned", "ci95_hi_aligned", "balanced_acc_aligned", "macro_f1_aligned",
    "roc_auc_aligned", "pred_counts_aligned", "calibrated_acc_aligned", "p_content_free_aligned",
    "gold_counts", "diff", "diff_ci95_lo", "diff_ci95_hi", "mcnemar_b01", "mcnemar_b10", "mcnemar_p", "p_holm", "p_bh",
]  # fmt: skip


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alignlens.cli.main", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "ALIGNLENS_PROGRESS": "off"})  # fmt: skip


def _csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]


def _tables_text(tables: Path) -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(tables.iterdir()))


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory) -> Path:
    """root/base, root/aligned (+ their comparison.json, as `analyze --compare` writes it) and
    root/control, a third run with its own model (a copy control)."""
    root = tmp_path_factory.mktemp("names")
    make_synthetic_pair(root, LANGS, 4, tasks=("emotion",), n_items=24)
    make_synthetic_run(root / "control", 3, LANGS, 4, trained=["zh", "de"], tasks=("emotion",), n_items=24, boost=0.02,
                       model_name="copy-control", role="control")  # fmt: skip
    return root


@pytest.fixture(scope="module")
def named_report(three_runs: Path, tmp_path_factory) -> Path:
    """aligned vs control through the real command, --names aligned,control."""
    out = tmp_path_factory.mktemp("named_out") / "aligned-vs-control.pdf"
    proc = run_cli("report", str(three_runs / "aligned"), "--compare", str(three_runs / "control"), "--names", "aligned,control",
                   "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out


def test_names_replace_base_and_aligned_in_every_text_and_table(named_report: Path):
    tables = named_report.with_name(named_report.stem + "_tables")
    summary = (tables / "summary.txt").read_text(encoding="utf-8")
    assert "accuracy Δ (control − aligned)" in summary  # the method line names the direction
    assert "   – control − aligned: macro ROC-AUC Δ over all 4 languages" in summary  # the neutral line (AUC first)
    assert "Labels used" in summary and "aligned " in summary and "control " in summary
    for text, where in ((summary, "summary.txt"), (_tables_text(tables), "tables")):
        assert not re.search(r"\bbase\b", text, re.I), where
        assert "paper's claim" not in text.lower() and "consistent with" not in text.lower(), where
    header, _ = _csv(tables / "accuracy.csv")
    assert "acc_aligned" in header and "acc_control" in header and not [c for c in header if "base" in c]
    header, _ = _csv(tables / "accuracy_groups.csv")
    assert {"mean_acc_aligned", "mean_acc_control", "mean_bal_acc_control"} <= set(header)
    header, rows = _csv(tables / "neurons_change.csv")
    assert header == ["language", "count_aligned", "count_control", "jaccard_specific"] and rows
    _, rows = _csv(tables / "neurons_per_layer.csv")
    assert {r["model"] for r in rows} == {"aligned", "control"}
    if shutil.which("pdftotext"):  # every page after the title (whose manifests quote the runs' own commands)
        text = subprocess.run(["pdftotext", "-f", "2", str(named_report), "-"], capture_output=True, text=True).stdout
        assert "control − aligned" in text and "aligned (synthetic-aligned) vs control (copy-control)" in text
        assert not re.search(r"\bbase\b", text, re.I) and "paper's claim" not in text.lower()


def test_neutral_line_states_the_numbers_the_claim_would_judge(named_report: Path):
    """The neutral line gives the macro Δ and interval of accuracy_groups.csv, without a verdict."""
    tables = named_report.with_name(named_report.stem + "_tables")
    summary = (tables / "summary.txt").read_text(encoding="utf-8")
    _, groups = _csv(tables / "accuracy_groups.csv")
    g = {r["group"]: r for r in groups}
    lo, d, hi = (float(g["all"][k]) for k in ("mean_auc_diff_ci95_lo", "mean_auc_diff", "mean_auc_diff_ci95_hi"))
    verdict = "lies above 0" if lo > 0 else "lies below 0" if hi < 0 else "includes 0"
    assert (f"control − aligned: macro ROC-AUC Δ over all 4 languages {fmt(d, sign=True)} points, 95% CI "
            f"[{fmt(lo, sign=True)}, {fmt(hi, sign=True)}], the interval {verdict}") in summary  # fmt: skip
    if verdict == "includes 0":  # an inconclusive interval states what it could have detected
        assert f"±{fmt(float(g['all']['mean_auc_diff_mde80']))} points would go undetected" in summary
    assert f"over the {g['untrained']['n_languages']} untrained languages" in summary
    assert "holds" not in summary and "does not hold" not in summary


def test_names_change_no_number(three_runs: Path, named_report: Path, tmp_path: Path):
    """The same two runs with the default names: the same values, the old headers, the paper's claim."""
    out = render_report(three_runs / "aligned", three_runs / "control", tmp_path / "default.pdf")
    tables, named = out.with_name("default_tables"), named_report.with_name(named_report.stem + "_tables")
    header, rows = _csv(tables / "accuracy.csv")
    assert header == OLD_ACCURACY_HEADER
    named_header, named_rows = _csv(named / "accuracy.csv")
    assert [list(r.values()) for r in rows] == [list(r.values()) for r in named_rows]
    assert [h.replace("_aligned", "_b").replace("_base", "_a") for h in header] == \
        [h.replace("_control", "_b").replace("_aligned", "_a") for h in named_header]
    summary = (tables / "summary.txt").read_text(encoding="utf-8")
    assert "accuracy Δ (aligned − base)" in summary
    assert "• Paper's claim (alignment improves accuracy across languages, including untrained ones): holds on these runs for" in summary
    assert re.search(r"(The paper's claim .* (does not hold|is inconclusive|cannot be tested) on these runs for emotion"
                     r"|Consistent with the .*paper's claim)", summary)  # fmt: skip


def test_default_names_keep_the_old_wording(three_runs: Path, tmp_path: Path):
    """base vs aligned with the default names, or given explicitly: the same text as before names existed."""
    outs = [render_report(three_runs / "base", three_runs / "aligned", tmp_path / "a.pdf"),
            render_report(three_runs / "base", three_runs / "aligned", tmp_path / "b.pdf", names=["base", "aligned"])]
    texts = [o.with_name(o.stem + "_tables").joinpath("summary.txt").read_text(encoding="utf-8") for o in outs]
    assert texts[0] == texts[1]
    assert "read from comparison.json (written by alignlens analyze --compare)" in texts[0]
    assert "accuracy Δ (aligned − base)" in texts[0] and "Labels used" in texts[0]
    assert "• Paper's claim (alignment improves accuracy across languages, including untrained ones)" in texts[0]
    assert "(base) →" in texts[0] and "(aligned) in total" in texts[0]  # the neuron change line
    header, _ = _csv(outs[0].with_name("a_tables") / "accuracy.csv")
    assert header == OLD_ACCURACY_HEADER


def test_comparison_json_of_another_pair_is_named_in_one_clause(three_runs: Path, named_report: Path, tmp_path: Path):
    """root/comparison.json is base vs aligned's: comparing aligned with control (or the two in the
    other order) computes the statistics and says so in a clause, not in a bullet of its own."""
    summary = named_report.with_name(named_report.stem + "_tables").joinpath("summary.txt").read_text(encoding="utf-8")
    assert ("• Paired statistics, computed by this report from the two runs' predictions.jsonl (the comparison.json "
            "beside them is for another pair of run folders): ") in summary  # fmt: skip
    assert "does not belong" not in summary
    out = render_report(three_runs / "aligned", three_runs / "base", tmp_path / "r.pdf", names=["aligned", "base"])
    summary = out.with_name("r_tables").joinpath("summary.txt").read_text(encoding="utf-8")
    assert "(the comparison.json beside them is for these two folders in the other order)" in summary
    assert "does not belong" not in summary and "Paper's claim" not in summary


def test_single_run_name(three_runs: Path, tmp_path: Path):
    out = render_report(three_runs / "control", out=tmp_path / "one.pdf", names=["control"])
    tables = out.with_name("one_tables")
    header, rows = _csv(tables / "accuracy.csv")
    assert "acc_control" in header and "acc_base" not in header and rows[0]["acc_control"]
    _, rows = _csv(tables / "neurons_per_layer.csv")
    assert {r["model"] for r in rows} == {"control"}
    assert "Language-specific neurons (control)" in (tables / "summary.txt").read_text(encoding="utf-8")


@pytest.mark.parametrize("names, n_runs, expected", [
    (["aligned"], 2, "1 name(s) given, needs two names"),
    (["a", "b", "c"], 2, "3 name(s) given"),
    (["a", ""], 2, "empty name"),
    (["a", "A"], 2, "the two names must differ"),
    (["a b", "c"], 2, "at most 20 letters, digits or _ . + -"),
    (["x" * 21, "c"], 2, "at most 20"),
    (["a/b", "c"], 2, "at most 20"),
    (["a", "b"], 1, "needs one name"),
])  # fmt: skip
def test_check_names_refuses_bad_names(names, n_runs, expected):
    with pytest.raises(AlignlensError, match=re.escape(expected)):
        check_names(names, n_runs)


def test_check_names_accepts_short_distinct_names():
    assert check_names(None, 2) == ["base", "aligned"] and check_names(None, 1) == ["base"]
    assert check_names([" aligned", "copy-ctl.v2 "], 2) == ["aligned", "copy-ctl.v2"]


@pytest.mark.parametrize("names, compare", [("aligned", True), ("aligned,aligned", True), ("aligned,", True), (",control", True),
                                            ("aligned,control", False)])  # fmt: skip
def test_cli_bad_names_one_line_error(three_runs: Path, tmp_path: Path, names: str, compare: bool):
    out = tmp_path / "r.pdf"
    args = ["report", str(three_runs / "aligned")] + (["--compare", str(three_runs / "control")] if compare else [])
    proc = run_cli(*args, "--names", names, "--out", str(out))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --names") and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists()


def test_cli_help_describes_names():
    proc = run_cli("report", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "--names" in text and "default: base,aligned" in text
