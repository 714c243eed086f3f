"""`alignlens localize` end to end on tiny random models: the command, its files and their
consistency (a recovery recomputed from patching.jsonl, dose α = 1 against the aligned model's clean
run), refusals before any model loads, --force's scope, and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from alignlens import AlignlensError, data
from alignlens.config import LocalizeConfig
from alignlens.results import read_jsonl
from alignlens.results.writer import files_under
from fixtures import lora_merged, one_thread, save_tiny_base, tree_snapshot  # noqa: F401  (module fixture)

LANGS = ("en", "de")


def _mini_task(folder: Path) -> Path:
    """A two-label task (emotion's prompts, its first 16 items cut to 60 characters) in en, de and
    zh: items 0-7 are evaluated, 8-15 are the default training split."""
    emotion = data.load_task("emotion")
    folder.mkdir()
    langs = {}
    for lang in ("en", "de", "zh"):
        p = emotion.prompts[lang]
        langs[lang] = {"demonstrations": p.demonstrations, "query_template": p.query_template}
        rows = [{"index": it.index, "label": it.label, "input": it.fields["input"][:60]}
                for it in data.load_items(emotion, lang, limit=16)]
        (folder / f"{lang}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (folder / "task.json").write_text(json.dumps({"labels": list(emotion.labels), "fields": ["input"],
                                                  "languages": langs}), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """{"root", "task", "base", "aligned" (an `alignlens train` LoRA output on the mini task's items
    8-15, de), "copy" (its copy control), "noisy" (the base with a merged random LoRA on q/v, a plain
    model folder: no adapter)}."""
    from alignlens.train import TrainConfig, train

    root = tmp_path_factory.mktemp("localize")
    task = _mini_task(root / "mini")
    base = save_tiny_base(root / "base", "gemma3", seed=0)
    for name, extra in (("aligned", {}), ("copy", {"control": "copy"})):
        cfg = TrainConfig.from_preset("default", task=str(task), languages=["de"], per_language=8, val_fraction=0.0,
                                      max_len=200, batch_size=4, epochs=2, lr=5e-2, eval_every=0, save_every=0,
                                      seed=0, **extra)
        train(cfg, str(base), root / name, progress=False)
    from transformers import AutoModelForCausalLM

    noisy = lora_merged(AutoModelForCausalLM.from_pretrained(str(base)), ("q_proj", "v_proj"), r=4, seed=3, scale=0.6)
    noisy.save_pretrained(root / "noisy")
    for f in base.iterdir():
        if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
            (root / "noisy" / f.name).write_bytes(f.read_bytes())
    return {"root": root, "task": str(task), "base": str(base), "aligned": str(root / "aligned"),
            "copy": str(root / "copy"), "noisy": str(root / "noisy")}


def _args(p: dict, out: Path, *extra: str, compare: str | None = None) -> list[str]:
    return ["localize", "--model", p["base"], "--compare", compare or p["aligned"], "--tasks", p["task"],
            "--languages", ",".join(LANGS), "--items", "0-7", "--limit", "4", "--balanced", "--bootstrap-resamples", "200",
            "--random-directions", "1", "--steer-scales", "1,4", "--alphas", "0,1", "--out", str(out), *extra]


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    """The `alignlens` command in this process: (exit code, stdout, stderr)."""
    from alignlens.cli.main import _run

    code = 0
    try:
        _run(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    got = capsys.readouterr()
    return code, got.out, got.err


@pytest.fixture(scope="module")
def full_run(pair, tmp_path_factory):
    """The real command (a subprocess, output piped) with a copy control: every analysis runs."""
    out = tmp_path_factory.mktemp("runs") / "full"
    proc = subprocess.run([sys.executable, "-m", "alignlens.cli.main", *_args(pair, out, "--control", pair["copy"],
                                                                            "--threads", "1")],
                          capture_output=True, text=True, timeout=900, env={**os.environ,
                                                                           "ALIGNLENS_PROGRESS_SECONDS": "0.01"})
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_cli_writes_every_file_consistently(pair, full_run):
    out, proc = full_run
    assert "patching" in proc.stderr and "wrote" in proc.stderr  # progress lines when piped, then the closing line
    names = {"patching.jsonl", "steering.jsonl", "dose.jsonl", "localize.json", "manifest.json", "report.pdf"}
    assert names <= {p.name for p in out.iterdir()} and not (out / "parts").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "localize" and manifest["status"] == "finished"
    assert set(manifest["files"]) == files_under(out)  # it lists every file the run wrote, and only those
    assert manifest["models"] == {"base": pair["base"], "aligned": pair["aligned"], "control": pair["copy"]}
    assert manifest["model"]["aligned"]["hash"] and manifest["data"]["tasks"]["mini"]["hash"]
    assert manifest["options"]["items"] == "0-7" and manifest["seed"] == 0

    rows = read_jsonl(out / "patching.jsonl")
    items = {lang: sorted({r["index"] for r in rows if r["lang"] == lang}) for lang in LANGS}
    gold = {r["index"]: r["gold"] for r in rows}
    assert items["en"] == items["de"] and len(items["en"]) == 4 and set(items["en"]) <= set(range(8))
    assert sorted(gold[i] for i in items["en"]) == ["negative", "negative", "positive", "positive"]  # --balanced
    clean = [r for r in rows if r["site"] == "clean"]
    assert len(clean) == 3 * 2 * 4  # 3 models x 2 languages x 4 items
    patched = [r for r in rows if r["site"] != "clean"]
    n_sites = 3 + 2 + 2  # resid at 0..2, attn and mlp at 0..1 (2 blocks)
    assert len(patched) == 3 * n_sites * 3 * 2 * 4  # directions a2b, b2a, c2b x sites x positions x languages x items
    assert {r["direction"] for r in patched} == {"a2b", "b2a", "c2b"}
    for r in rows:
        assert abs(sum(r["probs"].values())) <= 1 + 1e-6 and r["pred"] in r["probs"]

    doc = json.loads((out / "localize.json").read_text())
    assert doc["format"] == "alignlens-localize/1" and doc["dose"]["alphas"] == [0.0, 1.0]
    # the steering direction averaged training-split questions only, never an evaluated item
    dirs = doc["steering"]["directions"]["mini"]
    assert {d["kind"] for d in dirs} == {"alignment", "control", "random"}
    for d in dirs:
        assert all(set(ids) <= set(range(8, 16)) for ids in d["items"].values())
    # dose α = 1 on the base model reproduces the aligned model's clean probabilities (another path: 1e-4)
    dose = {(r["lang"], r["index"]): r for r in read_jsonl(out / "dose.jsonl") if r["alpha"] == 1.0}
    aligned = {(r["lang"], r["index"]): r for r in clean if r["model"] == "aligned"}
    assert dose.keys() == aligned.keys()
    for k, r in dose.items():
        for lab, p in r["probs"].items():
            assert abs(p - aligned[k]["probs"][lab]) <= 1e-4 * max(p, 1e-12) + 1e-9
    steer = read_jsonl(out / "steering.jsonl")
    assert {(r["direction_kind"], r["scale"]) for r in steer} >= {("base", 0.0), ("alignment", 4.0), ("control", 1.0)}
    summary = (out / "report_tables" / "summary.txt").read_text()
    assert "mini, a2b (aligned → base)" in summary and "Steering mini" in summary


def _recompute(rows: list[dict], direction: str, site: str, layer: int, positions: str, langs) -> tuple[float, float]:
    """(gap, recovery) of one cell over `langs`, from the per-item rows (ratio of means)."""
    src, rcv = {"a2b": ("aligned", "base"), "b2a": ("base", "aligned")}[direction]
    lo = {(r["lang"], r["index"], r["model"]): r["logodds"] for r in rows if r["site"] == "clean"}
    gap, num = [], []
    for r in rows:
        if (r["direction"], r["site"], r["layer"], r["positions"]) == (direction, site, layer, positions) and r["lang"] in langs:
            receiver = lo[(r["lang"], r["index"], rcv)]
            gap.append(lo[(r["lang"], r["index"], src)] - receiver)
            num.append(r["logodds"] - receiver)
    return float(np.mean(gap)), float(np.sum(num) / np.sum(gap))


def test_recovery_recomputed_from_the_rows(pair, tmp_path, capsys):
    """A pair with a large difference (no adapter: no dose): localize.json's recovery equals the
    ratio of means recomputed from patching.jsonl; the gap is significant; the report names sites."""
    out = tmp_path / "noisy"
    code, stdout, err = cli(_args(pair, out, "--no-steer", "--positions", "last,all", compare=pair["noisy"]), capsys)
    assert code == 0, err
    doc = json.loads((out / "localize.json").read_text())
    assert "adapter" in doc["dose"]["skipped"] and not (out / "dose.jsonl").exists()
    assert doc["steering"] == {"skipped": "no steering (--no-steer)"} and not (out / "steering.jsonl").exists()
    rows = read_jsonl(out / "patching.jsonl")
    cells = [r for r in doc["patching"]["recovery"] if r["status"] == "ok"]
    assert cells, "the noisy pair should show a significant gap"
    checked = 0
    for r in cells:
        if (r["site"], r["layer"]) in (("resid", 1), ("attn", 0)):
            gap, rec = _recompute(rows, r["direction"], r["site"], r["layer"], r["positions"], r["languages"])
            assert abs(gap - r["gap"]) <= 1e-9 * max(1.0, abs(gap)) and abs(rec - r["recovery"]) <= 1e-9 * max(1.0, abs(rec))
            assert r["recovery_ci95"][0] <= r["recovery"] <= r["recovery_ci95"][1]
            checked += 1
    assert checked >= 4
    # patching every position of the residual stream entering the last block's output row gives the source
    last = [r for r in cells if r["site"] == "resid" and r["layer"] == 2 and r["positions"] == "all"]
    assert last and all(abs(r["recovery"] - 1.0) <= 1e-4 for r in last)
    assert "recovery significantly above 0 at" in stdout or "no site's recovery is significant" in stdout


def _no_model(monkeypatch):
    import alignlens.model

    def refuse(*a, **k):
        raise AssertionError("a model was loaded")
    monkeypatch.setattr(alignlens.model, "load_model", refuse)


@pytest.mark.parametrize("change, message", [
    (["--sites", "resid,foo"], "--sites: unknown 'foo'"),
    (["--layers", "7"], "--layers: layer 7 does not exist"),
    (["--steer-layers", "3"], "--steer-layers: layer 3 does not exist"),
    (["--items", "8-15"], "was trained on task mini items 8-15"),
    (["--directions", "a2b,c2b"], "c2b patches the copy-control model into the base: give --control"),
    (["--limit", "3"], "--balanced needs --limit to be a multiple of the 2 labels"),
    (["--languages", "en,xx"], "xx"),
    (["--alphas", "1,1"], "--alphas: 1 given more than once"),
    (["--compare", "/nonexistent/aligned"], "/nonexistent/aligned"),
    (["--resume"], "no interrupted localize run to resume"),
    (["--resume", "--force"], "give only one of them"),
])
def test_refusals_before_any_model_or_file(pair, tmp_path, capsys, monkeypatch, change, message):
    _no_model(monkeypatch)
    out = tmp_path / "out"
    args = _args(pair, out, "--no-report")
    for flag, value in zip(change[::2], change[1::2] + [None]):  # replace given options, or add a flag
        if flag in args and value is not None:
            args[args.index(flag) + 1] = value
        else:
            args += [flag] + ([value] if value is not None else [])
    code, stdout, err = cli(args, capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in " ".join(err.split()), err
    assert not out.exists()


def test_out_is_a_file_or_another_commands_folder(pair, tmp_path, capsys, monkeypatch):
    _no_model(monkeypatch)
    f = tmp_path / "file"
    f.write_text("mine")
    code, _, err = cli(_args(pair, f), capsys)
    assert code == 2 and "is not a folder" in err
    other = tmp_path / "eval"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"alignlens_version": "0", "git_commit": None, "kind": "eval",
                                                     "files": ["manifest.json"]}))
    before = tree_snapshot(other)
    code, _, err = cli(_args(pair, other, "--force"), capsys)
    assert code == 2 and "alignlens localize does not replace it" in err and tree_snapshot(other) == before


FAST = ("--no-steer", "--no-dose", "--no-report", "--sites", "resid", "--positions", "last")


def test_force_replaces_only_its_own_files(pair, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = cli(_args(pair, out, *FAST, "--directions", "a2b"), capsys)
    assert code == 0, err
    (out / "notes.txt").write_text("the user's", encoding="utf-8")
    first = json.loads((out / "manifest.json").read_text())
    before = tree_snapshot(out)
    code, _, err = cli(_args(pair, out, *FAST, "--directions", "a2b"), capsys)
    assert code == 2 and "pass --force" in err and tree_snapshot(out) == before
    code, _, err = cli(_args(pair, out, *FAST, "--directions", "b2a", "--force"), capsys)
    assert code == 0, err
    assert (out / "notes.txt").read_text(encoding="utf-8") == "the user's"
    second = json.loads((out / "manifest.json").read_text())
    assert second["options"]["directions"] == ["b2a"] and first["options"]["directions"] == ["a2b"]
    assert {r["direction"] for r in read_jsonl(out / "patching.jsonl") if r["direction"]} == {"b2a"}
    assert set(second["files"]) == files_under(out) - {"notes.txt"}


def test_interrupted_run_resumes_exactly(pair, tmp_path, capsys, monkeypatch):
    """Interrupted after its first (task, language): refused without --resume; --resume redoes only the
    rest and writes the same bytes as an uninterrupted run (one computational path)."""
    from alignlens.localize import run

    whole = tmp_path / "whole"
    assert cli(_args(pair, whole, *FAST), capsys)[0] == 0
    out = tmp_path / "cut"
    real = run._run_cell
    calls = []

    def stop_second(plan, loaded, cell, *a, **k):
        calls.append(cell.lang)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(plan, loaded, cell, *a, **k)
    monkeypatch.setattr(run, "_run_cell", stop_second)
    code, _, err = cli(_args(pair, out, *FAST), capsys)
    assert code == 130 and "interrupted:" in err and "--resume" in err
    assert (out / "parts" / "mini__en.json").is_file() and not (out / "patching.jsonl").exists()
    code, _, err = cli(_args(pair, out, *FAST), capsys)
    assert code == 2 and "interrupted localize run" in err and "--resume" in err
    code, _, err = cli(_args(pair, out, *FAST, "--alphas", "0,2", "--resume"), capsys)
    assert code == 2 and "options alphas" in err
    calls.clear()
    code, _, err = cli(_args(pair, out, *FAST, "--resume"), capsys)
    assert code == 0, err
    assert calls == ["de"]  # only the unfinished part ran
    assert (out / "patching.jsonl").read_bytes() == (whole / "patching.jsonl").read_bytes()
    assert not (out / "parts").exists()


def test_api_refuses_a_wrong_config_type(pair, tmp_path):
    from alignlens.localize.run import localize

    with pytest.raises(AlignlensError, match="LocalizeConfig"):
        localize({"tasks": ["mini"]}, pair["base"], pair["aligned"], tmp_path / "x")
    assert LocalizeConfig(layers="all").layers is None


def _doc(gap_ci, recoveries):
    """A minimal localize.json content: one task, direction a2b, resid at layers 0..3, `last` positions."""
    rows = [{"task": "t", "direction": "a2b", "source": "aligned", "receiver": "base", "scope": "group", "name": "all",
             "languages": ["de"], "n_items": 8, "site": "resid", "layer": layer, "positions": "last", "gap": 0.5,
             "gap_ci95": gap_ci, "gap_mde80": 0.2, "status": "ok" if gap_ci[0] > 0 else "gap too small",
             "recovery": rec if gap_ci[0] > 0 else None, "recovery_ci95": ci if gap_ci[0] > 0 else None}
            for layer, (rec, ci) in enumerate(recoveries)]
    return {"format": "alignlens-localize/1", "models": {"base": "b", "aligned": "a"}, "tasks": {"t": ["de"]},
            "groups": {"all": ["de"]}, "options": {"bootstrap_resamples": 200},
            "patching": {"directions": {"a2b": {"source": "aligned", "receiver": "base"}}, "sites": ["resid"],
                         "positions": ["last"], "recovery": rows},
            "steering": {"skipped": "no steering (--no-steer)"}, "dose": {"skipped": "no dose"}}


def test_report_names_significant_layers_or_says_nothing_is(tmp_path):
    from alignlens.report.localize import build, render_localize, summary_lines

    named = summary_lines(_doc([0.2, 0.8], [(0.1, [-0.2, 0.4]), (0.6, [0.3, 0.9]), (0.9, [0.5, 1.2]), (1.0, [0.9, 1.1])]))
    assert any("recovery significantly above 0 at: resid layers 1–3 (last positions)" in line for line in named)
    assert not any("Nothing is localised" in line for line in named)
    none = summary_lines(_doc([0.2, 0.8], [(0.1, [-0.2, 0.4])] * 4))
    assert any("no site's recovery is significant" in line for line in none)
    assert any("Nothing is localised" in line for line in none)
    small = _doc([-0.1, 0.8], [(None, None)] * 4)
    lines = summary_lines(small)
    assert any("gap is too small to localise" in line for line in lines) and any("Nothing is localised" in l for l in lines)
    assert len(build(small).pages) == 1
    path = tmp_path / "localize.json"
    path.write_text(json.dumps(small), encoding="utf-8")
    render_localize(path, tmp_path / "report.pdf")
    assert (tmp_path / "report.pdf").stat().st_size > 0 and (tmp_path / "report_tables" / "recovery.csv").is_file()
    path.write_text(json.dumps({**small, "format": "other"}), encoding="utf-8")
    with pytest.raises(AlignlensError, match="not a localize.json"):
        render_localize(path, tmp_path / "again.pdf")
    assert not (tmp_path / "again.pdf").exists()


@pytest.mark.integration
def test_gemma_patched_with_itself_changes_nothing(tmp_path, capsys):
    """Gemma-3-270m as base and as "aligned": every patched run (each site, layer, positions and
    direction) gives the clean run's label probabilities (1e-5 relative; another computational path),
    and the gap is reported as too small to localise."""
    out = tmp_path / "gemma"
    code, stdout, err = cli(["localize", "--compare", "gemma-3-270m", "--tasks", "emotion", "--languages", "de",
                             "--items", "0-3", "--limit", "2", "--balanced", "--layers", "0,9,18", "--positions",
                             "last,all", "--no-steer", "--no-dose", "--no-report", "--bootstrap-resamples", "100",
                             "--out", str(out)], capsys)
    assert code == 0, err
    rows = read_jsonl(out / "patching.jsonl")
    clean = {(r["index"], r["model"]): r["probs"] for r in rows if r["site"] == "clean"}
    patched = [r for r in rows if r["site"] != "clean"]
    assert len(patched) == 2 * (3 + 2 + 2) * 2 * 2  # directions x sites (resid 0,9,18; attn, mlp 0,9) x positions x items
    for r in patched:
        ref = clean[(r["index"], r["receiver"])]
        for lab, p in r["probs"].items():
            assert abs(p - ref[lab]) <= 1e-5 * ref[lab] + 1e-12
    assert "too small to localise" in stdout
