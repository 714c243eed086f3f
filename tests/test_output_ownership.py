"""Output folders (issue 19): `--force` replaces only the files an alignlens manifest in the folder
lists, only in a folder of the same command; a folder without one is refused; one run at a time
per folder (a lock); bad `--out` paths are refused before a model loads. Refusals are one `error:`
line, exit code 2, and change nothing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from alignlens import AlignlensError
from alignlens.config import AnalyzeConfig, EvalConfig
from alignlens.evaluate import evaluate
from alignlens.model import load_model
from alignlens.pipeline import analyze
from alignlens.results import EVAL_FILES, OutputFolder, read_owner
from alignlens.results.lock import LOCK_NAME
from alignlens.train import TrainConfig, train
from fixtures import one_thread, tiny_base  # noqa: F401  (module fixtures)
from test_cli_errors import run_cli

REPO = Path(__file__).resolve().parent.parent


def tree(folder: Path) -> dict[str, str]:
    """Every path under `folder` (hidden ones too): sha256 of a file, "dir", or "-> target"."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = (f"-> {os.readlink(p)}" if p.is_symlink() else "dir" if p.is_dir()
                    else hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def refused(proc: subprocess.CompletedProcess, *expected: str) -> bool:
    """Exit code 2, exactly one `error:` line holding every `expected` text, no traceback."""
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    return (proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr + proc.stdout
            and all(e in errors[0] for e in expected))


def _train_cfg(**kw) -> TrainConfig:
    base = dict(languages=["de"], per_language=8, val_fraction=0.1, max_len=160, batch_size=4, epochs=1,
                lr=1e-2, eval_every=0, save_every=0, seed=0)
    return TrainConfig.from_preset("default", **{**base, **kw})


ANALYZE = AnalyzeConfig(tasks=["paws"], languages=["en", "de"], limit=2, batch_size=2, similarity_resamples=0)
EVAL = EvalConfig(tasks=["paws"], languages=["en", "de"], limit=2)


@pytest.fixture(scope="module")
def broken(tiny_base, tmp_path_factory):
    """A model folder that passes every check but fails to load: a refusal naming the output
    folder with this model was made before any model loaded."""
    folder = Path(shutil.copytree(tiny_base, tmp_path_factory.mktemp("broken") / "m"))
    for weights in folder.glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    return str(folder)


@pytest.fixture(scope="module")
def runs(tiny_base, tmp_path_factory):
    """One finished folder of each command (copy before changing): eval, analyze (base + aligned,
    with its report) and train (checkpoints kept)."""
    root = tmp_path_factory.mktemp("runs")
    evaluate(load_model(tiny_base), EVAL, root / "eval")
    analyze(ANALYZE, tiny_base, compare=tiny_base, out=root / "analyze")
    train(_train_cfg(keep_checkpoints=True, save_every=1), tiny_base, root / "train", progress=False)
    return root


def _copy(runs: Path, kind: str, dest: Path) -> Path:
    return Path(shutil.copytree(runs / kind, dest, symlinks=True))


# ---- every manifest says what it wrote -------------------------------------------------------


def test_every_manifest_lists_exactly_the_files_its_run_wrote(runs):
    for kind in ("eval", "analyze", "train"):
        folder = runs / kind
        m = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        on_disk = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
        assert m["kind"] == kind and set(m["files"]) == on_disk, kind
        owner = read_owner(folder)
        assert (owner.kind, owner.role, owner.files) == (kind, None, frozenset(on_disk))
    for role in ("base", "aligned"):  # the analyze roles list theirs, relative to their folder
        m = json.loads((runs / "analyze" / role / "manifest.json").read_text(encoding="utf-8"))
        assert (m["kind"], m["role"]) == ("analyze", role)
        assert set(m["files"]) == {p.name for p in (runs / "analyze" / role).iterdir()}
    assert {"report.pdf", "comparison.json"} <= set(json.loads((runs / "analyze" / "manifest.json").read_text())["files"])
    assert json.loads((runs / "train" / "manifest.json").read_text())["status"] == "finished"


# ---- 7. a folder of another command is not replaced -----------------------------------------


def test_eval_force_refuses_an_analyze_folder_before_the_model_loads(runs, broken, tmp_path):
    out = _copy(runs, "analyze", tmp_path / "a")
    before = tree(out)
    proc = run_cli("eval", "--model", broken, "--tasks", "paws", "--languages", "en", "--limit", "1",
                   "--out", str(out), "--force")
    assert refused(proc, str(out), "holds an alignlens analyze run", "pick another --out"), proc.stderr
    proc = run_cli("eval", "--model", broken, "--tasks", "paws", "--languages", "en", "--limit", "1",
                   "--out", str(out / "base"), "--force")
    assert refused(proc, "the base model's results of an alignlens analyze run"), proc.stderr
    assert tree(out) == before


@pytest.mark.parametrize("holder, command", [("eval", "analyze"), ("eval", "train"), ("train", "analyze"),
                                             ("analyze", "train"), ("train", "eval")])
def test_force_refuses_a_folder_of_another_command(runs, broken, tmp_path, holder, command):
    out = _copy(runs, holder, tmp_path / "x")
    before = tree(out)
    expected = f"holds an alignlens {holder} run"
    with pytest.raises(AlignlensError, match=f"{expected}.*alignlens {command} does not replace it"):
        if command == "analyze":
            analyze(ANALYZE, broken, out=out, force=True, report=False)
        elif command == "train":
            train(_train_cfg(), broken, out, force=True, progress=False)
        else:
            OutputFolder(out, "eval", force=True).check()  # what `alignlens eval` checks first
    assert tree(out) == before


def test_the_committed_older_analyze_folder_is_recognised(tmp_path):
    """reports/ holds an analyze folder of an older alignlens (no top manifest, no file lists, and
    folders the user added): it is an analyze run, its report files are alignlens's, the rest not."""
    src = REPO / "reports" / "gemma-3-270m_sentiment"
    out = tmp_path / "old"
    for rel in ("base/manifest.json", "aligned/manifest.json", "control/manifest.json", "comparison.json"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / rel, out / rel)
    for folder in ("report_figures", "eval60/base"):
        shutil.copytree(src / folder, out / folder)
    with pytest.raises(AlignlensError, match="holds an alignlens analyze run"):
        OutputFolder(out, "eval", force=True).check()
    folder = OutputFolder(out, "analyze", force=True)
    folder.check()
    figures = {f"report_figures/{p.name}" for p in (out / "report_figures").iterdir()}
    assert folder.owned == {"base/manifest.json", "aligned/manifest.json", "comparison.json"} | figures
    assert read_owner(out / "eval60" / "base").kind == "eval"


# ---- 8. train --force keeps files alignlens did not write -----------------------------------


def test_train_force_refuses_a_folder_without_an_alignlens_manifest(broken, tmp_path):
    out = tmp_path / "t"
    for rel, text in (("checkpoints/mywork.ckpt", "my checkpoint"), ("adapter/x.txt", "mine"),
                      ("train_log.jsonl", "{}\n")):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)
    before = tree(out)
    proc = run_cli("train", "--model", broken, "--out", str(out), "--force", "--languages", "de",
                   "--per-language", "8")
    assert refused(proc, str(out), "holds no alignlens results", "pick another --out"), proc.stderr
    assert tree(out) == before


def test_train_force_keeps_foreign_files_inside_its_folders(runs, tiny_base, tmp_path):
    out = _copy(runs, "train", tmp_path / "t")
    mine = {"checkpoints/mywork.ckpt": "my checkpoint", "adapter/x.txt": "adapter notes",
            "merged/notes.txt": "model notes", "notes.txt": "notes"}
    for rel, text in mine.items():
        (out / rel).write_text(text)
    old = json.loads((out / "manifest.json").read_text())
    res = train(_train_cfg(lr=2e-2), tiny_base, out, force=True, progress=False)  # checkpoints not kept
    assert {rel: (out / rel).read_text() for rel in mine} == mine
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["mywork.ckpt"]  # the run's own are gone
    new = json.loads((out / "manifest.json").read_text())
    assert new["options"]["lr"] == 2e-2 != old["options"]["lr"] and res.manifest["options"]["lr"] == 2e-2
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert set(new["files"]) == on_disk - set(mine) and new["kind"] == "train" and new["status"] == "finished"
    assert not [p for p in out.rglob("*") if p.name.startswith(".alignlens")]


def test_an_interrupted_training_run_is_alignlens_s(tiny_base, tmp_path):
    """While training runs, manifest.json says so and lists what the run wrote: --force can start
    again over an interrupted run (keeping foreign files), and the folder is no finished model."""
    out = tmp_path / "t"

    def stop(record):
        if record["step"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(AlignlensError, match="resume with"):
        train(_train_cfg(per_language=16, save_every=1), tiny_base, out, progress=False, callback=stop)
    m = json.loads((out / "manifest.json").read_text())
    assert (m["kind"], m["status"]) == ("train", "running") and "checkpoints/last.pt" in m["files"]
    with pytest.raises(AlignlensError, match="was interrupted"):
        load_model(str(out))
    (out / "checkpoints" / "mywork.ckpt").write_text("mine")
    train(_train_cfg(), tiny_base, out, force=True, progress=False)
    assert (out / "checkpoints" / "mywork.ckpt").read_text() == "mine"
    assert json.loads((out / "manifest.json").read_text())["status"] == "finished"


# ---- 9. a folder without an alignlens manifest is refused -----------------------------------


@pytest.mark.parametrize("manifest, why", [
    (None, "no manifest.json"),
    ({"name": "my experiment"}, "is not an alignlens manifest"),
    ({"alignlens_version": "0.1.0", "git_commit": None, "kind": "eval", "files": ["../victim.txt"]},
     "lists files outside its folder"),
])
def test_eval_force_refuses_a_folder_alignlens_did_not_write(broken, tmp_path, manifest, why):
    out = tmp_path / "e"
    out.mkdir()
    (out / "summary.json").write_text('{"mine": true}\n')
    (tmp_path / "victim.txt").write_text("keep me")
    if manifest is not None:
        (out / "manifest.json").write_text(json.dumps(manifest))
    before, victim = tree(out), (tmp_path / "victim.txt").read_text()
    proc = run_cli("eval", "--model", broken, "--tasks", "paws", "--languages", "en", "--limit", "1",
                   "--out", str(out), "--force")
    assert refused(proc, str(out), "holds no alignlens results", why, "cannot tell"), proc.stderr
    assert tree(out) == before and (tmp_path / "victim.txt").read_text() == victim


def test_a_file_the_manifest_does_not_list_is_not_replaced(runs, broken, tmp_path):
    """summary.json exists but the folder's manifest does not list it: it is the user's."""
    out = _copy(runs, "eval", tmp_path / "e")
    m = json.loads((out / "manifest.json").read_text())
    m["files"].remove("summary.json")
    (out / "manifest.json").write_text(json.dumps(m))
    before = tree(out)
    proc = run_cli("eval", "--model", broken, "--tasks", "paws", "--languages", "en", "--limit", "1",
                   "--out", str(out), "--force")
    assert refused(proc, f"{out / 'summary.json'} is in the way", "did not write it"), proc.stderr
    assert tree(out) == before


def test_a_file_where_alignlens_writes_a_folder_is_in_the_way(runs, tmp_path):
    out = _copy(runs, "analyze", tmp_path / "a")
    shutil.rmtree(out / "aligned")
    (out / "aligned").write_text("my file, named like the compared model's folder")
    before = tree(out)
    with pytest.raises(AlignlensError, match=f"^{out / 'aligned'} is in the way of the new results"):
        OutputFolder(out, "analyze", force=True).check()
    assert tree(out) == before


def test_an_older_eval_manifest_stands_for_the_files_alignlens_wrote_then(runs, tiny_base, tmp_path):
    out = _copy(runs, "eval", tmp_path / "e")
    m = json.loads((out / "manifest.json").read_text())
    del m["kind"], m["files"]  # as written before manifests listed their files
    (out / "manifest.json").write_text(json.dumps(m))
    (out / "my_notes.txt").write_text("mine")
    evaluate(load_model(tiny_base), EvalConfig(tasks=["paws"], languages=["en"], limit=1), out, force=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(EVAL_FILES + ("my_notes.txt",))
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 1  # replaced (was 4 rows)
    assert json.loads((out / "manifest.json").read_text())["files"] == sorted(EVAL_FILES)


def test_analyze_force_replaces_only_the_listed_files(runs, tiny_base, tmp_path):
    """An analyze run with --compare and a report, redone without either: the old run's aligned/,
    comparison and report go (they would describe other results), the user's files stay."""
    out = _copy(runs, "analyze", tmp_path / "a")
    mine = {"base/mine.txt": "1", "aligned/mine.txt": "2", "report_figures/mine.png": "3", "notes.txt": "4"}
    for rel, text in mine.items():
        (out / rel).write_text(text)
    analyze(ANALYZE, tiny_base, out=out, force=True, report=False)
    assert {rel: (out / rel).read_text() for rel in mine} == mine
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    listed = set(json.loads((out / "manifest.json").read_text())["files"])
    assert on_disk - set(mine) == listed
    assert not any(f.startswith(("aligned/", "report")) or f == "comparison.json" for f in listed)
    assert sorted(p.name for p in (out / "aligned").iterdir()) == ["mine.txt"]


def test_a_report_rendered_into_a_results_folder_is_listed_there(runs, tiny_base, tmp_path):
    """`alignlens report` into an eval folder: its manifest lists the report's files, so a later
    `eval --force` removes that report (it described the old results) and keeps the user's files."""
    from alignlens.report import render_report

    out = _copy(runs, "eval", tmp_path / "e")
    render_report(out)  # default: out/report.pdf
    listed = set(json.loads((out / "manifest.json").read_text())["files"])
    assert listed == {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} > set(EVAL_FILES)
    (out / "report_figures" / "mine.txt").write_text("mine")
    evaluate(load_model(tiny_base), EvalConfig(tasks=["paws"], languages=["en"], limit=1), out, force=True)
    assert not (out / "report.pdf").exists() and not (out / "report_tables").exists()
    assert [p.name for p in (out / "report_figures").iterdir()] == ["mine.txt"]


# ---- 11 and 19. --out paths that cannot be a folder -------------------------------------------


def _bad_paths(tmp_path: Path) -> list[tuple[Path, str]]:
    (tmp_path / "afile").write_text("a file")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    return [(tmp_path / "dangling", "is a symbolic link to"),
            (tmp_path / "dangling" / "sub", "is a symbolic link to"),
            (tmp_path / "afile" / "sub", f"{tmp_path / 'afile'} is a file, not a folder")]


def test_bad_out_paths_are_refused_before_the_model_loads(broken, tmp_path):
    for out, expected in _bad_paths(tmp_path):
        before = tree(tmp_path)
        proc = run_cli("eval", "--model", broken, "--tasks", "paws", "--languages", "en", "--limit", "1",
                       "--out", str(out))
        assert refused(proc, expected), (out, proc.stderr)
        with pytest.raises(AlignlensError, match=expected):
            analyze(ANALYZE, broken, out=out, report=False)
        with pytest.raises(AlignlensError, match=expected):
            train(_train_cfg(), broken, out, force=True, progress=False)
        assert tree(tmp_path) == before and not (tmp_path / "nowhere").exists()


# ---- 16. one run at a time per folder --------------------------------------------------------

_HOLD = ("import sys, time\nfrom alignlens.results.lock import FolderLock\nFolderLock.acquire(sys.argv[1])\n"
         "print('locked', flush=True)\ntime.sleep(600)\n")


@contextmanager
def held_by_another_process(folder: Path):
    """Another process holding `folder`'s lock (as a running alignlens command does)."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


def test_a_second_run_into_a_folder_being_written_is_refused_at_once(runs, broken, tmp_path):
    new = tmp_path / "new"
    with held_by_another_process(new) as holder:
        before = tree(new)
        proc = run_cli("eval", "--model", broken, "--tasks", "paws", "--languages", "en", "--limit", "1",
                       "--out", str(new))
        assert refused(proc, f"another alignlens run (process {holder.pid}) is writing to {new}"), proc.stderr
        with pytest.raises(AlignlensError, match="another alignlens run"):
            analyze(ANALYZE, broken, out=new, report=False)
        with pytest.raises(AlignlensError, match="another alignlens run"):
            train(_train_cfg(), broken, new, progress=False)
        assert tree(new) == before == {LOCK_NAME: before[LOCK_NAME]}
    old = _copy(runs, "train", tmp_path / "t")
    with held_by_another_process(old):
        before = tree(old)
        with pytest.raises(AlignlensError, match="another alignlens run"):
            train(None, None, old, resume=True, progress=False)
        with pytest.raises(AlignlensError, match="another alignlens run"):
            train(_train_cfg(), broken, old, force=True, progress=False)
        assert tree(old) == before


def test_the_lock_is_taken_when_the_run_starts(tmp_path, monkeypatch):
    """Two runs that both passed their checks (the other run locked the folder just after): the
    second to lock is refused and changes nothing. A folder the lock made and nothing filled goes."""
    from alignlens.results import lock

    out = tmp_path / "e"
    monkeypatch.setattr(lock, "probe", lambda folder: None)  # as if the other run locked after our checks
    with held_by_another_process(out):
        before = tree(out)
        with pytest.raises(AlignlensError, match=f"another alignlens run .* is writing to {out}"):
            with OutputFolder(out, "eval").writing():
                pass
        assert tree(out) == before
    monkeypatch.undo()
    fresh = tmp_path / "new" / "e"
    with OutputFolder(fresh, "eval").writing():
        assert (fresh / LOCK_NAME).is_file()
    assert not (tmp_path / "new").exists()


def test_evaluate_holds_the_lock_while_it_runs(tiny_base, tmp_path):
    out = tmp_path / "e"
    probes = []

    class Progress:  # evaluate's progress callbacks: ask another process whether `out` is free
        def add_task(self, *a, **k):
            return 0

        def update(self, *a, **k):
            pass

        def advance(self, *a, **k):
            if not probes:
                probes.append(subprocess.run([sys.executable, "-c", "import sys\nfrom alignlens.results.lock "
                                              "import probe\nprobe(sys.argv[1])", str(out)],
                                             capture_output=True, text=True))

    evaluate(load_model(tiny_base), EvalConfig(tasks=["paws"], languages=["en"], limit=1), out, progress=Progress())
    assert probes and probes[0].returncode != 0 and "another alignlens run" in probes[0].stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(EVAL_FILES)  # the lock file is gone


def test_a_killed_run_s_lock_and_temporaries_block_nothing(tiny_base, tmp_path):
    out = tmp_path / "e"
    with held_by_another_process(out) as holder:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    (out / ".alignlens-tmp-new.x").mkdir()  # a killed run's staging folder
    assert (out / LOCK_NAME).is_file()
    proc = run_cli("eval", "--model", tiny_base, "--tasks", "paws", "--languages", "en", "--limit", "1",
                   "--out", str(out))  # no --force: lock file and temporaries are no content
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(EVAL_FILES)
