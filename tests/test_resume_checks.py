"""`alignlens analyze --resume` and interrupted runs (tiny random models): a resumed run equals the
uninterrupted one or is refused (one line, nothing changed): changed task data (each shard's data
hash), another thread count, a finished run; a plain re-run of an interrupted folder points at
--resume; `alignlens report` on an analyze folder says what to run; a run whose numbers fail a
check (exit 3) leaves its folder as it was."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from alignlens import AlignlensError, NumericalError, RunInterrupted, data
from alignlens.config import AnalyzeConfig
from alignlens.pipeline import analyze
from fixtures import one_thread, save_tiny_base  # noqa: F401 - one_thread is autouse

LANGS = ("en", "de", "hi")


def snapshot(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder`, plus its subfolders."""
    out = {}
    for p in sorted(folder.rglob("*")):
        out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alignlens.cli.main", *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The one `error:` line of a failed command (asserts there is exactly one and no traceback)."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return " ".join(proc.stderr[proc.stderr.index("error:"):].split())


class StopAfter:
    """A progress object (`add_task`, `update`, `advance`) that presses Ctrl-C once `n` items are done."""

    def __init__(self, n: int) -> None:
        self.n, self.done = n, 0

    def add_task(self, *args, **kwargs) -> int:
        return 0

    def update(self, *args, **kwargs) -> None:
        pass

    def advance(self, task: int, k: int) -> None:
        self.done += k
        if self.done >= self.n:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """Tiny gemma3 folders: `tiny`, `other` (another seed) and `nan_hi`, whose embeddings are NaN
    for the tokens that only the Hindi prompts use (English and German stay finite)."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    from alignlens.evaluate import content_free_queries

    root = tmp_path_factory.mktemp("models")
    nan_hi = save_tiny_base(root / "nan_hi", "gemma3", seed=0, tie_word_embeddings=False)
    tok = AutoTokenizer.from_pretrained(str(nan_hi))
    spec = data.load_task("paws")

    def ids(lang: str) -> set[int]:
        texts = [data.build_prompt(spec, lang, it) for it in data.load_items(spec, lang)]
        texts += [data.prompt_prefix(spec, lang) + q for q in content_free_queries(spec, lang)]
        return {i for t in texts for i in tok(t)["input_ids"]}
    only_hi = sorted(ids("hi") - ids("en") - ids("de"))
    assert only_hi
    weights = load_file(str(nan_hi / "model.safetensors"))
    weights["model.embed_tokens.weight"][only_hi] = float("nan")
    save_file(weights, str(nan_hi / "model.safetensors"), metadata={"format": "pt"})
    return {"tiny": str(save_tiny_base(root / "tiny", "gemma3", seed=0)),
            "other": str(save_tiny_base(root / "other", "gemma3", seed=1)), "nan_hi": str(nan_hi)}


def _config(task: str = "paws", **kw) -> AnalyzeConfig:
    """The options of `CLI_OPTIONS` (the CLI's defaults otherwise)."""
    base = dict(tasks=(task,), languages=LANGS, limit=2, batch_size=2, lens_prompts="english-labels",
                similarity_resamples=0, save_activations=True)
    return AnalyzeConfig(**{**base, **kw})


def _cli_options(task: str = "paws") -> list[str]:
    return ["--tasks", task, "--languages", ",".join(LANGS), "--limit", "2", "--batch-size", "2",
            "--lens-prompts", "english-labels", "--similarity-resamples", "0", "--save-activations", "--no-report"]


def _interrupt(config: AnalyzeConfig, model: str, out: Path, after: int, compare: str | None = None) -> str:
    """Run `analyze` into `out` and press Ctrl-C once `after` items are done; returns the message."""
    with pytest.raises(RunInterrupted) as info:
        analyze(config, model, compare, out, report=False, progress=StopAfter(after), command="")
    return str(info.value)


def _task_copy(tmp_path: Path) -> Path:
    """The bundled paws task with plain (not gzipped) item files of `LANGS` (and only those languages
    in its task.json: a listed language without an item file is refused), to edit."""
    source = data.load_task("paws").folder
    folder = tmp_path / "paws"
    folder.mkdir()
    spec = json.loads((source / "task.json").read_text(encoding="utf-8"))
    spec["languages"] = {lang: spec["languages"][lang] for lang in LANGS}
    (folder / "task.json").write_text(json.dumps(spec, ensure_ascii=False, indent=1), encoding="utf-8")
    for lang in LANGS:
        (folder / f"{lang}.jsonl").write_bytes(gzip.decompress((source / f"{lang}.jsonl.gz").read_bytes()))
    return folder


def _edit_first_item(path: Path, **changes) -> bytes:
    """Change fields of the first item of a .jsonl file; returns the file's previous bytes."""
    before = path.read_bytes()
    lines = before.decode("utf-8").splitlines()
    row = json.loads(lines[0])
    row.update(changes)
    path.write_text("\n".join([json.dumps(row, ensure_ascii=False)] + lines[1:]) + "\n", encoding="utf-8")
    data._read_items.cache_clear()  # item files are read once per process (a new command reads them again)
    return before


def _put_back(path: Path, payload: bytes) -> None:
    path.write_bytes(payload)
    data._read_items.cache_clear()


# ---- items 2, 3, 20: data, threads, a plain re-run of an interrupted folder --------------------


def test_shard_mismatch_names_the_reason(tiny_gemma, tmp_path):
    from alignlens.capture.shards import save_shard, shard_data_hash, shard_mismatch
    from alignlens.pipeline import capture_run

    cfg = _config(languages=("de",))
    (result,), caps = capture_run(tiny_gemma, cfg)
    spec = data.load_task("paws")
    items = cfg.select_items(data.load_items(spec, "de"), spec.labels)
    h = shard_data_hash(spec, "de", items)
    path = save_shard(tmp_path, result, caps[("paws", "de")], data_hash=h)
    assert shard_mismatch(path, h, result.indices, "english-labels") is None
    assert shard_mismatch(path, h, result.indices + [9], "english-labels") == (
        "shard paws__de.safetensors (task paws, language de) holds other items than this run selects (other "
        "--limit or --items?)")
    assert shard_mismatch(path, h, result.indices, "target-labels").endswith("--lens-prompts english-labels")
    # the hash covers the prompt as well as the items
    other = replace(spec, prompts={**spec.prompts, "de": replace(spec.prompts["de"], query_template=(
        spec.prompts["de"].query_template + " "))})
    assert shard_mismatch(path, shard_data_hash(other, "de", items), result.indices, "english-labels").startswith(
        "the data of task paws, language de changed since the run started")
    older = save_shard(tmp_path / "older", result, caps[("paws", "de")])  # no data hash: cannot be checked
    assert "older alignlens without a hash of its data" in shard_mismatch(older, h, result.indices, "english-labels")
    (tmp_path / "broken.safetensors").write_bytes(b"not a shard")
    assert shard_mismatch(tmp_path / "broken.safetensors", h, [], "english-labels").startswith(
        "shard broken.safetensors cannot be read")


def test_resume_refuses_changed_data_and_threads_then_equals_uninterrupted(models, tmp_path):
    from alignlens.capture.shards import read_shard_info, shard_data_hash

    task = _task_copy(tmp_path)
    cfg = _config(str(task))
    analyze(cfg, models["tiny"], None, tmp_path / "a", report=False)  # uninterrupted, 1 thread
    out = tmp_path / "b"
    message = _interrupt(cfg, models["tiny"], out, after=5)  # en and de finished, hi interrupted
    assert "--resume" in message
    shards = sorted(p.name for p in (out / "base" / "activations").iterdir())
    assert shards == ["paws__de.safetensors", "paws__en.safetensors"]
    spec = data.load_task(task)
    de_items = cfg.select_items(data.load_items(spec, "de"), spec.labels)
    assert read_shard_info(out / "base" / "activations" / "paws__de.safetensors")[0]["data_hash"] == \
        shard_data_hash(spec, "de", de_items)
    before = snapshot(out)

    # item 20: the same command without --resume points at --resume (and says what --force does)
    with pytest.raises(AlignlensError) as info:
        analyze(cfg, models["tiny"], None, out, report=False, command="alignlens analyze --out b")
    assert str(info.value) == (f"output folder {out} holds an interrupted analyze run (base not finished): continue "
                               "it with `alignlens analyze --out b --resume`, or pass --force to start over (its "
                               "finished work is discarded)")

    # item 2: German items changed since the run started -> refused naming task and language
    de_file = task / "de.jsonl"
    old = _edit_first_item(de_file, sentence1="Ein ganz anderer Satz.")
    with pytest.raises(AlignlensError) as info:
        analyze(cfg, models["tiny"], None, out, report=False, resume=True)
    assert str(info.value).startswith(f"cannot resume {out / 'base'}: the data of task paws, language de changed "
                                      "since the run started")
    assert str(info.value).endswith("; use --force to start again")
    _put_back(de_file, old)
    # a gold label is part of every language's shard data (gold labels come from English; a file that
    # states a label must agree with English's, so the item's label changes in every file that has one)
    en_file = task / "en.jsonl"
    first = json.loads(en_file.read_text(encoding="utf-8").splitlines()[0])
    other = next(lab for lab in spec.labels if lab != first["label"])
    olds = {}
    for lang in LANGS:
        path = task / f"{lang}.jsonl"
        if "label" in json.loads(path.read_text(encoding="utf-8").splitlines()[0]):
            olds[path] = _edit_first_item(path, label=other)
    assert en_file in olds
    spec_now = data.load_task(task)
    assert shard_data_hash(spec_now, "de", cfg.select_items(data.load_items(spec_now, "de"), spec.labels)) != \
        shard_data_hash(spec, "de", de_items)
    with pytest.raises(AlignlensError, match="the data of task paws, language en changed"):
        analyze(cfg, models["tiny"], None, out, report=False, resume=True)
    for path, old in olds.items():
        _put_back(path, old)

    # item 3: another thread count -> refused, naming --threads and the saved value
    torch.set_num_threads(2)
    try:
        with pytest.raises(AlignlensError) as info:
            analyze(cfg, models["tiny"], None, out, report=False, resume=True)
    finally:
        torch.set_num_threads(1)
    assert str(info.value) == (f"cannot resume {out}: it was run with --threads 1 (torch CPU threads) and this run "
                               "has 2; resume with --threads 1 (float results differ in the last bits between "
                               "thread counts)")
    # another dtype is refused once the model is loaded, before anything is written
    with pytest.raises(AlignlensError, match=r"it was run in float32 and this run loads the model in bfloat16; "
                                             r"resume with --dtype float32$"):
        analyze(cfg, models["tiny"], None, out, report=False, resume=True, dtype="bfloat16")
    with pytest.raises(AlignlensError, match="give only one of them"):
        analyze(cfg, models["tiny"], None, out, report=False, resume=True, force=True)
    assert snapshot(out) == before

    # the same data, options and threads: the resumed run equals the uninterrupted one (one code path)
    analyze(cfg, models["tiny"], None, out, report=False, resume=True)
    a, b = snapshot(tmp_path / "a" / "base"), snapshot(out / "base")
    for rel in ("predictions.jsonl", "summary.json", "neurons.safetensors", "logit_lens.json",
                "activations/paws__hi.safetensors"):
        assert a[rel] == b[rel], rel
    ma, mb = (json.loads((d / "base" / "manifest.json").read_text()) for d in (tmp_path / "a", out))
    assert mb["status"] == "finished" and mb["torch_threads"] == ma["torch_threads"] == 1
    assert mb["data"]["tasks"]["paws"]["hash"] == ma["data"]["tasks"]["paws"]["hash"]


def test_cli_interrupted_folder_and_threads(models, tmp_path):
    """Through the command: one `error:` line, exit 2, the folder unchanged."""
    out = tmp_path / "b"
    _interrupt(_config(), models["tiny"], out, after=2)
    before = snapshot(out)
    args = ["analyze", "--model", models["tiny"], *_cli_options(), "--out", str(out)]
    proc = run_cli(*args)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "holds an interrupted analyze run (base not finished): continue it with `alignlens analyze" in line
    assert "--resume`, or pass --force to start over" in line
    proc = run_cli(*args, "--resume", "--threads", "2")
    assert proc.returncode == 2 and "it was run with --threads 1" in one_error_line(proc)
    assert snapshot(out) == before


# ---- items 21, 23: finished and half-finished --compare runs -----------------------------------


def test_compare_resume_keeps_finished_role_and_finished_run_is_refused(models, tmp_path):
    from alignlens.report import render_report

    cfg = _config()
    analyze(cfg, models["tiny"], models["other"], tmp_path / "a", report=False)
    out = tmp_path / "b"
    _interrupt(cfg, models["tiny"], out, after=6 + 3, compare=models["other"])  # base done, aligned de interrupted
    base_before = snapshot(out / "base")
    assert "predictions.jsonl" in base_before
    # item 23: the report of an unfinished analyze folder (or of its unfinished role) says how to resume
    for folder, expected in ((out, f"{out} holds an unfinished `alignlens analyze` run (aligned not finished): "
                                   "continue it with `alignlens analyze ... --out"),
                             (out / "aligned", f"{out / 'aligned'}: unfinished `alignlens analyze` run")):
        with pytest.raises(AlignlensError) as info:
            render_report(folder)
        assert str(info.value).startswith(expected) and "--resume" in str(info.value)
    # the aligned role must come with the same --compare
    with pytest.raises(AlignlensError, match=f"cannot resume {out}: it was run with --compare {models['other']}"):
        analyze(cfg, models["tiny"], None, out, report=False, resume=True)
    analyze(cfg, models["tiny"], models["other"], out, report=False, resume=True)
    assert snapshot(out / "base") == base_before  # the finished role is kept as it is, not recomputed
    a, b = snapshot(tmp_path / "a"), snapshot(out)
    for rel in ("aligned/predictions.jsonl", "aligned/neurons.safetensors", "comparison.json"):
        assert a[rel] == b[rel], rel

    # item 21: the run is finished now
    finished = snapshot(out)
    with pytest.raises(AlignlensError) as info:
        analyze(replace(cfg, limit=3), models["tiny"], models["other"], out, report=False, resume=True)
    assert str(info.value) == (
        f"cannot resume {out}: its analyze run is finished (nothing to resume), and options differ from the saved "
        "run's (limit: saved 2, given 3); to analyse with these options use --force (replaces its results) or "
        "another --out")
    with pytest.raises(AlignlensError, match=r"is finished \(nothing to resume\), and it was run with --compare"):
        analyze(cfg, models["tiny"], None, out, report=False, resume=True)
    report_cmd = f"alignlens report {out / 'base'} --compare {out / 'aligned'}"
    with pytest.raises(AlignlensError) as info:
        analyze(cfg, models["tiny"], models["other"], out, report=False, resume=True)
    assert str(info.value) == (f"nothing to resume in {out}: its analyze run is finished; render its report again "
                               f"with `{report_cmd} --force`, or run it again with --force or another --out")
    with pytest.raises(AlignlensError) as info:
        render_report(out)
    assert str(info.value) == f"{out} is an `alignlens analyze` folder, not one run: use `{report_cmd}`"
    assert snapshot(out) == finished
    # --resume of a finished run without its report writes the report only
    res = analyze(cfg, models["tiny"], models["other"], out, report=True, resume=True)
    assert res["report"] == out / "report.pdf" and (out / "report.pdf").is_file()
    after = snapshot(out)
    # every earlier file as it was; OUT/manifest.json is rewritten to list the report it now holds
    assert {k: v for k, v in after.items() if k in finished and k != "manifest.json"} == \
        {k: v for k, v in finished.items() if k != "manifest.json"}
    assert "report.pdf" in json.loads((out / "manifest.json").read_text(encoding="utf-8"))["files"]
    with pytest.raises(AlignlensError, match="nothing to resume"):
        analyze(cfg, models["tiny"], models["other"], out, report=True, resume=True)
    proc = run_cli("report", str(out))
    assert proc.returncode == 2
    assert one_error_line(proc) == (f"error: {out} is an `alignlens analyze` folder, not one run: use `{report_cmd}` "
                                    f"(its report is {out / 'report.pdf'})")


# ---- item 24: a numbers-check failure leaves the folder as it was --------------------------------


def test_numbers_failure_leaves_every_folder_as_it_was(models, tmp_path):
    cfg = _config()
    # a new folder (and its new parents) is removed again, with the shards of the finished languages
    new = tmp_path / "new" / "deeper" / "out"
    with pytest.raises(NumericalError) as info:
        analyze(cfg, models["nan_hi"], None, new, report=False)
    assert str(info.value).startswith("task paws, language hi: non-finite ")
    assert str(info.value).endswith(f"; the new run was discarded ({new} is as it was before); no new shard was "
                                    "kept (a --resume would meet the same numbers)")
    assert not (tmp_path / "new").exists()
    # with a compared model that fails: the base model's finished results go too
    with pytest.raises(NumericalError):
        analyze(cfg, models["tiny"], models["nan_hi"], new, report=False)
    assert not (tmp_path / "new").exists()
    # an empty folder stays, empty
    (tmp_path / "empty").mkdir()
    with pytest.raises(NumericalError):
        analyze(cfg, models["nan_hi"], None, tmp_path / "empty", report=False)
    assert list((tmp_path / "empty").iterdir()) == []
    # earlier results replaced with --force stay as they were
    old = tmp_path / "old"
    analyze(replace(cfg, languages=("en", "de")), models["tiny"], None, old, report=False)
    (old / "notes.txt").write_text("mine", encoding="utf-8")
    before = snapshot(old)
    with pytest.raises(NumericalError, match=f"the earlier results in {old} are unchanged$"):
        analyze(cfg, models["nan_hi"], None, old, report=False, force=True)
    assert snapshot(old) == before
    # a resumed run: the interrupted run is left as it was (the shard computed in this attempt goes)
    out = tmp_path / "resumed"
    _interrupt(cfg, models["nan_hi"], out, after=3)  # en finished
    before = snapshot(out)
    with pytest.raises(NumericalError, match="is as it was before this attempt"):
        analyze(cfg, models["nan_hi"], None, out, report=False, resume=True)
    assert snapshot(out) == before


def test_cli_numbers_failure_exit_3_nothing_written(models, tmp_path):
    out = tmp_path / "n" / "out"
    proc = run_cli("analyze", "--model", models["nan_hi"], *_cli_options(), "--out", str(out))
    assert proc.returncode == 3
    assert "task paws, language hi: non-finite " in one_error_line(proc)
    assert not (tmp_path / "n").exists()
