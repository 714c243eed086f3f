"""End to end through the installed `alignlens` command, on tiny model folders."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fixtures import save_tiny_base


def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alignlens.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny_base(tmp_path_factory.mktemp("models") / "tiny", "gemma3", seed=0)


def test_train_then_analyze_compare_with_report(tiny_folder, tmp_path):
    trained = tmp_path / "aligned"
    proc = run_cli("train", "--model", str(tiny_folder), "--out", str(trained), "--languages", "de",
                   "--per-language", "24", "--batch-size", "4", "--max-len", "128", "--eval-every", "0",
                   "--batching", "random")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((trained / "manifest.json").read_text())
    assert manifest["data"]["languages"] == ["de"]
    assert manifest["training"]["batching"]["scheme"] == "random"  # --batching reached the trainer
    out = tmp_path / "analysis"
    proc = run_cli("analyze", "--model", str(tiny_folder), "--compare", str(trained), "--languages", "en,de,hi",
                   "--limit", "3", "--batch-size", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    for run in ("base", "aligned"):
        names = {p.name for p in (out / run).iterdir()}
        assert {"predictions.jsonl", "summary.json", "manifest.json", "similarity.json", "logit_lens.json",
                "neurons.json", "neurons.safetensors"} <= names
    assert json.loads((out / "aligned" / "manifest.json").read_text())["trained_languages"] == ["de"]
    assert (out / "comparison.json").is_file() and (out / "report.pdf").stat().st_size > 10_000
    assert "de*" in proc.stdout  # the trained language is marked in the printed table
    assert f"; report: {out / 'report.pdf'}\n" in proc.stderr  # one line, not wrapped at 80 columns
    assert "Loading weights" not in proc.stderr  # transformers' per-load bars are off: logs stay readable
    # never overwritten silently
    proc = run_cli("analyze", "--model", str(tiny_folder), "--limit", "1", "--languages", "en", "--out", str(out))
    assert proc.returncode == 2 and "not empty; pass --force" in proc.stderr
    # the report re-renders from saved results without a model
    proc = run_cli("report", str(out / "base"), "--compare", str(out / "aligned"), "--out", str(tmp_path / "r.pdf"))
    assert proc.returncode == 0 and (tmp_path / "r.pdf").is_file(), proc.stderr


def test_eval_prints_table_and_writes_files(tiny_folder, tmp_path):
    proc = run_cli("eval", "--model", str(tiny_folder), "--tasks", "paws", "--languages", "en,th", "--limit", "2",
                   "--threads", "1", "--out", str(tmp_path / "e"))
    assert proc.returncode == 0, proc.stderr
    assert "paws" in proc.stdout and "th" in proc.stdout
    rows = (tmp_path / "e" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 4
    assert json.loads((tmp_path / "e" / "manifest.json").read_text())["torch_threads"] == 1  # --threads, recorded


def test_help_explains_every_command():
    for cmd in ([], ["eval"], ["analyze"], ["train"], ["report"], ["data", "list"], ["models"]):
        proc = run_cli(*cmd, "--help")
        assert proc.returncode == 0 and "Usage" in proc.stdout
