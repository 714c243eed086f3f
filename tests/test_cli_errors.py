"""Bad input through the real `alignlens` command: one `error:` line, the right exit code, no
traceback, and no file that existed before is changed or removed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures import save_tiny_base


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    return subprocess.run([sys.executable, "-m", "alignlens.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})})


def snapshot(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder` (and the folder's own listing)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return save_tiny_base(tmp_path_factory.mktemp("models") / "tiny", "gemma3", seed=0)


@pytest.fixture(scope="module")
def old_eval(tiny_folder, tmp_path_factory):
    """A finished eval folder plus a user's own file in it."""
    out = tmp_path_factory.mktemp("old") / "e"
    proc = run_cli("eval", "--model", str(tiny_folder), "--tasks", "paws", "--languages", "en,de", "--limit", "2",
                   "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    (out / "my_notes.txt").write_text("not alignlens's", encoding="utf-8")
    return out


def _bad_cases(tiny: str, old: str, tmp: Path):
    return [
        # (args, cwd, expected text, exit code)
        (["eval", "--out", ".", "--force", "--dtype", "nonsense"], tmp, "unknown dtype", 2),
        (["eval", "--model", tiny, "--out", ".", "--force"], tmp, "refusing to write results into the current folder", 2),
        (["eval", "--model", tiny, "--out", old, "--force", "--device", "cuda"], None, "CUDA is not available", 2),
        (["eval", "--model", tiny, "--dtype", "float16"], None, "float16 on CPU", 2),
        (["eval", "--model", tiny, "--languages", "en,en"], None, "en given more than once", 2),
        (["eval", "--model", tiny, "--tasks", "emotion,emotion"], None, "emotion given more than once", 2),
        (["eval", "--model", tiny, "--languages", ""], None, "empty", 2),
        (["eval", "--model", tiny, "--tasks", "nosuchtask"], None, "nosuchtask", 2),
        (["eval", "--model", tiny, "--languages", "xx"], None, "xx", 2),
        (["eval", "--model", "runs/aligend"], None, "runs/aligend", 2),
        (["eval", "--model", tiny, "--out", old], None, "not empty; pass --force", 2),
        (["analyze", "--model", tiny, "--pair-layers", "x", "--out", str(tmp / "a1")], None, "not a layer number", 2),
        (["analyze", "--model", tiny, "--pair-layers", "999", "--out", str(tmp / "a2")], None, "layer 999 does not exist", 2),
        (["analyze", "--model", tiny, "--compare", "/typo", "--out", str(tmp / "a3")], None, "/typo", 2),
        (["analyze", "--model", tiny, "--lens-overlap", "nope", "--out", str(tmp / "a4")], None, "lens overlap", 2),
        (["analyze", "--model", tiny, "--resume", "--out", str(tmp / "a5")], None, "nothing to resume", 2),
        (["report", str(tmp / "missing")], None, "missing", 2),
    ]


def test_bad_inputs_one_line_no_traceback_nothing_changed(tiny_folder, old_eval, tmp_path):
    (tmp_path / "keep.txt").write_text("user data", encoding="utf-8")
    before_cwd, before_old = snapshot(tmp_path), snapshot(old_eval)
    failures = []
    for args, cwd, expected, code in _bad_cases(str(tiny_folder), str(old_eval), tmp_path):
        proc = run_cli(*args, cwd=cwd)
        text = proc.stdout + proc.stderr
        error_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        if (proc.returncode != code or expected not in " ".join(text.split()) or "Traceback" in text
                or len(error_lines) != 1):
            failures.append((args, proc.returncode, text[-500:]))
    assert not failures, failures
    assert snapshot(tmp_path) == before_cwd  # nothing created or changed (no a1..a5 folders either)
    assert snapshot(old_eval) == before_old


def test_force_keeps_unrelated_files_and_replaces_own(tiny_folder, old_eval, tmp_path):
    out = tmp_path / "e"
    proc = run_cli("eval", "--model", str(tiny_folder), "--tasks", "paws", "--languages", "en", "--limit", "1",
                   "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    (out / "my_notes.txt").write_text("mine", encoding="utf-8")
    (out / "sub").mkdir()
    (out / "sub" / "data.csv").write_text("1,2", encoding="utf-8")
    proc = run_cli("eval", "--model", str(tiny_folder), "--tasks", "paws", "--languages", "en,de", "--limit", "2",
                   "--out", str(out), "--force")
    assert proc.returncode == 0, proc.stderr
    assert (out / "my_notes.txt").read_text(encoding="utf-8") == "mine"
    assert (out / "sub" / "data.csv").read_text(encoding="utf-8") == "1,2"
    rows = (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 4  # the new run's results replaced the old ones
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "my_notes.txt", "predictions.jsonl", "sub",
                                                     "summary.json"]


def test_results_honour_umask(tiny_folder, tmp_path):
    out = tmp_path / "e"
    proc = subprocess.run(["bash", "-c", f"umask 022 && {sys.executable} -m alignlens.cli.main eval --model "
                           f"{tiny_folder} --tasks paws --languages en --limit 1 --out {out}"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert oct(out.stat().st_mode & 0o777) == "0o755"
    for p in out.iterdir():
        assert oct(p.stat().st_mode & 0o777) == "0o644", p


def test_failing_forced_analyze_leaves_previous_results_identical(tiny_folder, tmp_path):
    out = tmp_path / "a"
    proc = run_cli("analyze", "--model", str(tiny_folder), "--languages", "en,de", "--limit", "2", "--no-report",
                   "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    before = snapshot(out)
    # a compared model that passes the early checks but cannot load: fails after the base model's analysis
    broken = Path(shutil.copytree(tiny_folder, tmp_path / "broken"))
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    proc = run_cli("analyze", "--model", str(tiny_folder), "--compare", str(broken), "--languages", "en,de",
                   "--limit", "2", "--out", str(out), "--force", "--tasks", "paws")
    assert proc.returncode == 2 and "cannot load model" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert snapshot(out) == before
    assert not [p for p in out.iterdir() if p.name.startswith(".alignlens-tmp-")]


def test_progress_lines_when_redirected(tiny_folder, tmp_path):
    proc = run_cli("eval", "--model", str(tiny_folder), "--tasks", "paws", "--languages", "en,de", "--limit", "2",
                   env={"ALIGNLENS_PROGRESS_SECONDS": "0"})
    assert proc.returncode == 0, proc.stderr
    assert "evaluating" in proc.stderr or "paws" in proc.stderr
    assert "4/4 (100%)" in proc.stderr


def test_resume_refuses_other_model_or_options(tiny_folder, tmp_path):
    other = save_tiny_base(tmp_path / "other", "llama", seed=1)
    out = tmp_path / "a"
    proc = run_cli("analyze", "--model", str(tiny_folder), "--languages", "en,de", "--limit", "2", "--no-report",
                   "--save-activations", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    before = snapshot(out)
    for args, expected in (
        (["--model", str(other), "--languages", "en,de", "--limit", "2"], "it was run with model"),
        (["--model", str(tiny_folder), "--languages", "en,de", "--limit", "3"], "limit"),
        (["--model", str(tiny_folder), "--languages", "en", "--limit", "2"], "languages"),
    ):
        proc = run_cli("analyze", *args, "--no-report", "--resume", "--out", str(out))
        assert proc.returncode == 2 and expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    # the run is finished: with the same options there is nothing to resume (tests/test_resume_checks.py
    # has the resumes of interrupted runs)
    proc = run_cli("analyze", "--model", str(tiny_folder), "--languages", "en,de", "--limit", "2", "--no-report",
                   "--resume", "--out", str(out))
    assert proc.returncode == 2 and "nothing to resume" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert snapshot(out) == before


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_analyze_says_what_was_kept_and_resumes(tiny_folder, tmp_path, sig, code):
    out = tmp_path / "a"
    args = ["analyze", "--model", str(tiny_folder), "--tasks", "snli,emotion,paws", "--limit", "30", "--no-report",
            "--save-activations", "--lens-prompts", "english-labels", "--out", str(out)]  # one pass: this tests resuming
    # SIG_DFL in the child: a test run started in the background (`make test &`) ignores SIGINT, and
    # Python keeps an inherited SIG_IGN, so the run would finish instead of being interrupted
    proc = subprocess.Popen([sys.executable, "-m", "alignlens.cli.main", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and not list((out / "base" / "activations").glob("*.safetensors")):
        time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err
    assert "interrupted:" in err and "--resume" in err and "Traceback" not in err, err
    kept = list((out / "base" / "activations").glob("*.safetensors"))
    assert kept
    done = run_cli(*args, "--resume")
    assert done.returncode == 0, done.stderr
    rows = (out / "base" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 30 * 20 * 3
