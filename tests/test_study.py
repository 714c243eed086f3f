"""`alignlens study` on a tiny random model (issue 21): the study file's validation, a whole study
(2 arms x 2 seeds, 3 languages, 12 items, two training steps per seed) run at once, interrupted and
resumed, edited, and run as --arm/--seed cells; study.json's claims."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from alignlens import AlignlensError, RunInterrupted, data
from alignlens.study.collect import write_study_json
from alignlens.study.plan import resolve, step_status
from alignlens.study.runner import run_study
from alignlens.study.spec import load_study
from fixtures import one_thread, save_tiny_base  # noqa: F401  (module fixture)

ARMS = '''
[[arm]]
name = "de"
languages = ["de"]

[[arm]]
name = "de-copy"
languages = ["de"]
control = "copy"
'''


def study_text(model: str, arms: str = ARMS, study: str = "", train: str = "") -> str:
    return f'''
[study]
name = "tiny"
model = "{model}"
tasks = ["emotion"]
languages = ["en", "de", "es"]
items = "0-249"
limit = 12
balanced = true
seeds = [0, 1]
bootstrap_resamples = 200
irrelevant_labels = true
{study}
[train]
per_language = 8
max_len = 640
batch_size = 4
eval_every = 0
save_every = 0
val_fraction = 0.0
lr = 0.05
{train}
{arms}'''


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return str(save_tiny_base(tmp_path_factory.mktemp("tiny") / "gemma3", "gemma3", seed=0))


@pytest.fixture(scope="module")
def files(base, tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    (root / "s.toml").write_text(study_text(base))
    return root


@pytest.fixture(scope="module")
def whole(files):
    """The study run in one command (folder A)."""
    summary = run_study(files / "s.toml", files / "A", progress=False)
    return files / "A", summary


# ---- validation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('languages = ["de"]\n\n[[arm]]', 'langs = ["de"]\nlanguages = ["de"]\n\n[[arm]]', 1),
     r"^\[\[arm\]\] 1 \(name de\): unknown key 'langs'"),
    (lambda t: t.replace('name = "de-copy"', 'name = "de"'), r"^\[\[arm\]\] 2 \(name de\): arm name 'de' is already used by \[\[arm\]\] 1"),
    (lambda t: t.replace('languages = ["en", "de", "es"]', 'languages = ["en", "de", "xx"]'),
     r"^\[study\]: unknown languages for task emotion xx"),
    (lambda t: t.replace('items = "0-249"', 'items = "240-260"'),
     r"^\[\[arm\]\] 1 \(name de\) \(training items\) was trained on task emotion items 250-499: .* overlap"),
    (lambda t: t.replace('languages = ["de"]\n\n[[arm]]', 'languages = ["de"]\ntarget = "de"\n\n[[arm]]', 1),
     r"^\[\[arm\]\] 1 \(name de\): target = 'de' is one of its training languages"),
    (lambda t: t.replace('control = "copy"', 'control = "copy"\ntarget = "es"'),
     r"^\[\[arm\]\] 2 \(name de-copy\): control = \"copy\" .* needs target = \"en\""),
    (lambda t: t.replace('name = "de"\n', 'name = "de"\nquestions = "snli-qt"\ntarget = "es"\n', 1),
     r"SNLI question-translation set .* English targets only"),
    (lambda t: t.replace("lr = 0.05", "lr = 0.05\nthreads = 2"), r"^\[train\]: key 'threads' is set by --threads"),
    (lambda t: t.replace("seeds = [0, 1]", "seeds = [0, 0]"), r"^\[study\]: key 'seeds' lists 0 twice"),
    (lambda t: t.replace("limit = 12", "limit = 13"), r"multiple of the 2 labels"),
    (lambda t: t.replace('name = "de"\n', 'name = "de"\nanalyses = true\n', 1),
     r"^\[\[arm\]\] 1 \(name de\): analyses = true needs analyses = true in \[study\]"),
])
def test_invalid_study_is_one_line_and_writes_nothing(files, tmp_path, edit, message):
    bad = tmp_path / "bad.toml"
    bad.write_text(edit((files / "s.toml").read_text()))
    with pytest.raises(AlignlensError, match=message) as info:
        run_study(bad, tmp_path / "out", progress=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_cli_refusal_is_one_error_line_exit_2(files, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text((files / "s.toml").read_text().replace("balanced = true", "balanced = true\nbalance = 1"))
    r = subprocess.run([sys.executable, "-m", "alignlens", "study", "run", str(bad), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == "error: [study]: unknown key 'balance' (known: analyses, " \
        "analysis_seeds, balanced, batch_size, bootstrap_resamples, irrelevant_labels, irrelevant_words, items, " \
        "keep_merged, languages, limit, model, name, seed, seeds, tasks)"
    assert not (tmp_path / "o").exists()


def test_hashes_name_content_not_paths_and_edits_change_only_their_arm(files, base, tmp_path):
    plan = resolve(load_study(files / "s.toml"), tokenize=False)
    moved = tmp_path / "elsewhere.toml"
    moved.write_text((files / "s.toml").read_text())
    again = resolve(load_study(moved), tokenize=False)
    assert [(s.name, s.hash) for s in plan.steps] == [(s.name, s.hash) for s in again.steps]
    edited = tmp_path / "edited.toml"
    edited.write_text(study_text(base, ARMS.replace('control = "copy"', 'control = "copy"\ntrain = { lr = 0.01 }')))
    changed = {s.name for s, t in zip(plan.steps, resolve(load_study(edited), tokenize=False).steps) if s.hash != t.hash}
    assert changed == {f"{k}/de-copy/seed{s}" for k in ("train", "eval", "irrelevant") for s in (0, 1)}


def test_an_arm_may_leave_out_the_irrelevant_label_steps(files, base, tmp_path):
    """`irrelevant_labels = false` on an arm: its models get no irrelevant-label evaluation (the base
    model and the other arm keep theirs); nothing else of the plan changes."""
    text = study_text(base, ARMS.replace('control = "copy"', 'control = "copy"\nirrelevant_labels = false'))
    (tmp_path / "s.toml").write_text(text)
    full = {s.name: s.hash for s in resolve(load_study(files / "s.toml"), tokenize=False).steps}
    fewer = {s.name: s.hash for s in resolve(load_study(tmp_path / "s.toml"), tokenize=False).steps}
    assert set(full) - set(fewer) == {"irrelevant/de-copy/seed0", "irrelevant/de-copy/seed1"}
    assert all(fewer[name] == full[name] for name in fewer)


def test_lock_refuses_a_second_writer(files, tmp_path):
    """Another process holding OUT's lock (the lock is re-entrant within one process): refused at once."""
    import subprocess
    import sys

    out = tmp_path / "locked"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from alignlens.study.runner import study_lock\n"
                               "with study_lock(__import__('pathlib').Path(sys.argv[1])):\n"
                               "    print('locked', flush=True); time.sleep(120)", str(out)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(AlignlensError, match=r"another alignlens run \(process \d+\) is writing to"):
            run_study(files / "s.toml", out, progress=False)
    finally:
        holder.kill()
        holder.wait()


# ---- a whole study ---------------------------------------------------------------------------------------


def _normalised(path: Path, folder: Path, reference: Path) -> dict:
    """A JSON file with `folder` written as `reference` and times/commands left out."""
    doc = json.loads(path.read_text().replace(str(folder), str(reference)))

    def drop(x):
        if isinstance(x, dict):
            return {k: drop(v) for k, v in x.items() if k not in ("created", "started", "finished", "wall_s",
                                                                   "command", "timing_s")}
        if isinstance(x, list):
            return [drop(v) for v in x]
        return x
    return drop(doc)


EVAL_FILES = ("predictions.jsonl", "summary.json")


def test_whole_study_writes_every_step_and_drops_merged(whole):
    out, summary = whole
    plan = resolve(load_study(out / "study.toml"), tokenize=False)
    assert summary.ran == [s.name for s in plan.steps] and not summary.missing and summary.study_json
    for s in plan.steps:
        assert step_status(out, s) == "finished"
    for arm in ("de", "de-copy"):
        for seed in (0, 1):
            train = out / "arms" / arm / f"seed{seed}" / "train"
            assert (train / "adapter").is_dir() and not (train / "merged").exists()
            assert not (out / "arms" / arm / f"seed{seed}" / "eval" / "parts").exists()
    doc = json.loads((out / "study.json").read_text())
    assert doc["schema"] == "alignlens.study/1" and doc["missing"] == []
    sec = doc["tasks"]["emotion"]
    assert sec["primary_metric"] == "auc" and set(sec["runs"]) == {"base", "de/seed0", "de/seed1", "de-copy/seed0",
                                                                   "de-copy/seed1"}
    assert sec["groups"]["de"] == {"all": ["en", "de", "es"], "trained": ["de"], "untrained": ["es"],
                                   "high-resource": ["en", "de", "es"]}
    kinds = {(c["kind"], c["a"], c["b"], c["group"]) for c in sec["contrasts"]}
    assert ("control", "de", "de-copy", "untrained") in kinds and ("trained-untrained", "de", "de", "trained − untrained") in kinds
    assert {k[0] for k in kinds} == {"control", "trained-untrained"}  # no second resource group, no other field differs
    assert doc["variants"]["irrelevant"]["emotion"]["labels"] == ["ox", "horse"]
    e = next(x for x in sec["effects"] if x["id"] == "de vs base / all / auc")
    assert [p["seed"] for p in e["per_seed"]] == [0, 1] and e["levels"][-1] == "training seeds"


def test_claims_never_call_an_interval_with_zero_a_refutation(whole):
    out, _ = whole
    doc = json.loads((out / "study.json").read_text())
    sections = [*doc["tasks"].values(), *doc["variants"].get("irrelevant", {}).values()]
    entries = [x for sec in sections for key in ("effects", "contrasts", "trends") for x in sec[key]]
    assert entries
    for x in entries:
        if x["ci95"] is not None and x["ci95"][0] <= 0 <= x["ci95"][1]:
            assert x["verdict"] in ("inconclusive", "not testable"), x["id"]
            if x["verdict"] == "inconclusive":
                assert "cannot tell" in x["text"] and "MDE80" in x["text"]
    claims = {c["id"]: c for c in doc["claims"]}
    assert [c["verdict"] for c in doc["claims"] if c["verdict"] == "not run"] and claims[4]["verdict"] == "not run"
    by_id = {(t, x["id"]): x for t, sec in doc["tasks"].items() for key in ("effects", "contrasts") for x in sec[key]}
    for c in doc["claims"]:
        verdicts = {by_id[(e["task"], e["id"])]["verdict"] for e in c["effects"] if (e["task"], e["id"]) in by_id}
        if verdicts == {"inconclusive"}:
            assert c["verdict"] == "inconclusive" and "not refuted" in c["text"]
        assert c["verdict"] != "contradicted" or verdicts == {"contradicted"}


def test_remerged_model_gives_the_evaluated_probabilities(whole):
    from alignlens.evaluate import evaluate_language
    from alignlens.model import load_model
    from alignlens.study.steps import ensure_merged

    out, _ = whole
    train = out / "arms" / "de" / "seed0" / "train"
    ensure_merged(train, load_study(out / "study.toml").model)
    assert (train / "merged" / "config.json").is_file()
    spec = data.load_task("emotion")
    rows = [json.loads(x) for x in (out / "arms" / "de" / "seed0" / "eval" / "predictions.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["lang"] == "de"]
    items = [it for it in data.load_items(spec, "de") if it.index in {r["index"] for r in rows}]
    res = evaluate_language(load_model(str(train)), spec, "de", items, batch_size=8)
    saved = np.array([[r["probs"][lab] for lab in spec.labels] for r in rows])
    assert np.abs(res.probs - saved).max() <= 1e-6 * max(1.0, float(saved.max()))
    shutil.rmtree(train / "merged")


def test_interrupted_and_resumed_equals_uninterrupted(whole, files):
    out_a, _ = whole
    out = files / "B"
    calls = {"train": 0, "part": 0}

    def stop_training(record):
        calls["train"] += 1
        if calls["train"] == 3:  # step 1 of train/de/seed1
            raise KeyboardInterrupt

    with pytest.raises(RunInterrupted, match=r"in step train/de/seed1 .*continue with: alignlens study run ") as info:
        run_study(files / "s.toml", out, progress=False, train_callback=stop_training)
    assert info.value.exit_code == 130 and (out / "arms/de/seed1/train/checkpoints/last.pt").is_file()

    def stop_eval(task, lang):
        calls["part"] += 1
        if calls["part"] == 1:  # the first (task, language) of eval/de/seed1
            raise KeyboardInterrupt

    with pytest.raises(RunInterrupted, match=r"in step eval/de/seed1 \(finished \(task, language\) parts are kept\)"):
        run_study(files / "s.toml", out, progress=False, on_part=stop_eval)
    assert sorted(p.name for p in (out / "arms/de/seed1/eval/parts").iterdir()) == ["emotion__en.json"]
    summary = run_study(files / "s.toml", out, progress=False)
    assert summary.ran[0] == "eval/de/seed1" and "train/de/seed1" in summary.kept
    for step in resolve(load_study(out / "study.toml"), tokenize=False).steps:
        folder_a, folder_b = out_a / step.folder, out / step.folder
        if step.kind == "train":
            from safetensors.torch import load_file

            wa, wb = (load_file(f / "adapter" / "adapter_model.safetensors") for f in (folder_a, folder_b))
            assert all(bool((wa[k] == wb[k]).all()) for k in wa), step.name  # one computational path
            continue
        for name in EVAL_FILES:
            assert (folder_a / name).read_bytes() == (folder_b / name).read_bytes(), f"{step.name} {name}"
        assert _normalised(folder_b / "manifest.json", out, out_a) == _normalised(folder_a / "manifest.json", out_a, out_a)
    assert _normalised(out / "study.json", out, out_a) == _normalised(out_a / "study.json", out_a, out_a)

    # editing one arm re-runs only that arm's steps; the others are kept
    (files / "edited.toml").write_text(study_text(
        load_study(files / "s.toml").model, ARMS.replace('control = "copy"', 'control = "copy"\ntrain = { lr = 0.01 }')))
    summary = run_study(files / "edited.toml", out, progress=False)
    assert sorted(summary.ran) == sorted(f"{k}/de-copy/seed{s}" for k in ("train", "eval", "irrelevant") for s in (0, 1))
    assert len(summary.kept) == 8 and summary.study_json is not None
    for name in EVAL_FILES:
        assert (out / "arms/de/seed0/eval" / name).read_bytes() == (out_a / "arms/de/seed0/eval" / name).read_bytes()


def test_cells_then_report_equal_the_single_command(whole, files):
    out_a, _ = whole
    out = files / "C"
    first = run_study(files / "s.toml", out, arm="base", progress=False)
    assert first.ran == ["eval/base/gemma3", "irrelevant/base/gemma3"] and first.study_json is None
    for arm in ("de-copy", "de"):
        for seed in (1, 0):
            cell = run_study(files / "s.toml", out, arm=arm, seed=seed, progress=False)
            assert cell.ran == [f"{k}/{arm}/seed{seed}" for k in ("train", "eval", "irrelevant")]
    assert cell.study_json is not None  # the last cell finished the plan
    (out / "study.json").unlink()
    write_study_json(out)
    assert _normalised(out / "study.json", out, out_a) == _normalised(out_a / "study.json", out_a, out_a)
    with pytest.raises(AlignlensError, match="--seed 5: arm de has no seed 5"):
        run_study(files / "s.toml", out, arm="de", seed=5, progress=False)


def test_bundled_studies_validate():
    from alignlens.study.spec import bundled_studies

    assert {"quick", "paper"} <= set(bundled_studies())
    quick, paper = load_study("quick"), load_study("paper")
    assert quick.name == "quick" and [a.name for a in quick.arms] == ["zh-de", "zh-de-copy"] and quick.seeds == (0, 1)
    assert paper.limit == 120 and paper.balanced and paper.languages is None and paper.irrelevant_labels
    assert {a.name: a.seeds for a in paper.arms}["zh-de"] == (0, 1, 2)
    assert {(a.target, a.questions) for a in paper.arms} >= {("zh", "same"), ("en", "snli-qt")}


def test_analysis_step_and_force(base, tmp_path):
    one_arm = '\n[[arm]]\nname = "de"\nlanguages = ["de"]\nseeds = [0]\n'
    path = tmp_path / "a.toml"
    path.write_text(study_text(base, one_arm).replace("irrelevant_labels = true", "analyses = true"))
    out = tmp_path / "out"
    first = run_study(path, out, progress=False)
    assert first.ran == ["eval/base/gemma3", "analysis/base/gemma3", "train/de/seed0", "eval/de/seed0",
                         "analysis/de/seed0"]
    for run in ("base/gemma3", "arms/de/seed0"):
        folder = out / run / "analysis"
        assert all((folder / f).is_file() for f in ("similarity.json", "logit_lens.json", "neurons.json",
                                                     "predictions.jsonl"))
        assert len(list((folder / "activations").glob("*.safetensors"))) == 3
        # the analysis pass evaluates on the same path as the eval step
        assert (folder / "predictions.jsonl").read_bytes() == (out / run / "eval" / "predictions.jsonl").read_bytes()
    again = run_study(path, out, arm="de", force=True, progress=False)
    assert again.ran == ["train/de/seed0", "eval/de/seed0", "analysis/de/seed0"] and not again.kept


def test_cli_check_prints_the_plan_with_statuses(whole, files):
    out, _ = whole
    r = subprocess.run([sys.executable, "-m", "alignlens", "study", "check", str(files / "s.toml"), "--out", str(out)],
                       capture_output=True, text=True, env={**__import__("os").environ, "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if "/seed" in line or "/base/" in line]
    assert len(rows) == 14 and all("finished" in line for line in rows)
    assert "0 of 14 steps to run" in r.stdout


def test_study_lock_is_rank_zeros_alone(tmp_path, monkeypatch):
    # under torchrun only rank 0 holds OUT's lock; another rank neither takes it nor sees it as a rival run
    from alignlens.results.lock import LOCK_NAME, FolderLock
    from alignlens.results.writer import OutputFolder
    from alignlens.study.runner import study_lock

    out = tmp_path / "s"
    held = FolderLock.acquire(out)  # rank 0's, as if in another process: drop this process's record of it
    key = next(k for k, v in FolderLock._held.items() if v is held)
    FolderLock._held.pop(key)
    try:
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "1")
        with study_lock(out):
            pass
        OutputFolder(out, "eval").check()  # no "another alignlens run is writing" on rank 1
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(AlignlensError, match="another alignlens run"):
            OutputFolder(out, "eval").check()
    finally:
        FolderLock._held[key] = held
        held.release()
    assert not (out / LOCK_NAME).exists()
