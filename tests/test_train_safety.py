"""Training output safety (issue 10): dropped/truncated examples are counted and too many refused,
--resume needs something to resume, interruptions exit 130/143 and say how to resume, --force
replaces only train's own files and only once everything was checked, files honour the umask."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest
import torch

from alignlens import AlignlensError, RunInterrupted
from alignlens.results import TEMP_PREFIX
from alignlens.train import TrainConfig, TrainInterrupted, train
from fixtures import one_thread, tiny_base  # noqa: F401  (module fixtures)
from fixtures import tree_snapshot as _snapshot


def _cfg(**kw):
    base = dict(languages=["de"], per_language=8, val_fraction=0.1, max_len=160, batch_size=4, epochs=1,
                lr=1e-2, eval_every=0, save_every=0, seed=0)
    base.update(kw)
    return TrainConfig.from_preset("default", **base)


def _previous_run(tiny_base: str, out: Path) -> Path:
    """A finished LoRA run (with kept checkpoints) beside files alignlens never wrote."""
    train(_cfg(keep_checkpoints=True, save_every=1), tiny_base, out, progress=False)
    (out / "notes.txt").write_text("my notes")
    (out / "mine").mkdir()
    (out / "mine" / "data.csv").write_text("a,b\n1,2\n")
    assert (out / "merged" / "model.safetensors").is_file() and (out / "checkpoints" / "last.pt").is_file()
    return out


def _fr_file(path: Path) -> Path:
    """10 fr pairs: 5 whose prompt alone is longer than 64 tokens (dropped at --max-len 64),
    2 with a long English target (truncated), 3 short."""
    rows = [{"lang": "fr", "text": "Le chat noir dort sur le grand lit rouge de la maison. " * 6 + str(i),
             "english": f"Cat {i}"} for i in range(5)]
    rows += [{"lang": "fr", "text": f"Bonjour {i}", "english": "The black cat sleeps on the big red bed. " * 6}
             for i in range(2)]
    rows += [{"lang": "fr", "text": f"Salut {i}", "english": f"Hi {i}"} for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ---- 1. dropped and truncated examples ------------------------------------------------------


def test_too_many_dropped_is_refused_before_the_model_loads_or_out_changes(tiny_base, tmp_path, monkeypatch):
    import alignlens.train.run as tr

    out = _previous_run(tiny_base, tmp_path / "out")
    before = _snapshot(out)
    data = _fr_file(tmp_path / "fr.jsonl")

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the drop check")

    monkeypatch.setattr(tr, "load_hf", no_model)
    with pytest.raises(AlignlensError, match=r"language fr: 5 of 10 examples would be dropped \(train \d/\d, val \d/\d\) "
                                             r"because their prompt alone fills --max-len 64, more than the allowed 5%") as info:
        train(_cfg(languages=[], data_files=[str(data)], max_len=64), tiny_base, out, force=True, progress=False)
    assert _snapshot(out) == before
    monkeypatch.undo()
    # the suggested fix works: at that length nothing is dropped
    need = int(re.search(r"raise --max-len to at least (\d+)", str(info.value)).group(1))
    res = train(_cfg(languages=[], data_files=[str(data)], max_len=need), tiny_base, tmp_path / "fixed", progress=False)
    ex = res.manifest["data"]["examples"]
    assert sum(c["dropped"] for split in ex.values() for c in split.values()) == 0
    assert res.n_train + res.n_val == 10
    with pytest.raises(AlignlensError, match="dropped"):
        train(_cfg(languages=[], data_files=[str(data)], max_len=need - 1), tiny_base, tmp_path / "x", progress=False)


def test_dropped_and_truncated_counts_on_console_and_in_manifest(tiny_base, tmp_path, capfd):
    data = _fr_file(tmp_path / "fr.jsonl")
    res = train(_cfg(languages=[], data_files=[str(data)], max_len=64, max_drop_fraction=0.6), tiny_base,
                tmp_path / "out", progress=True)
    err = capfd.readouterr().err
    ex = json.loads((tmp_path / "out" / "manifest.json").read_text())["data"]["examples"]
    assert ex == res.manifest["data"]["examples"] and set(ex) == {"train", "val"}
    tr, va = ex["train"]["fr"], ex["val"]["fr"]
    assert tr["total"] + va["total"] == 10 and tr["dropped"] + va["dropped"] == 5
    assert tr["truncated"] + va["truncated"] == 2
    assert (tr["kept"], va["kept"]) == (res.n_train, res.n_val) and res.n_train + res.n_val == 5
    assert res.manifest["data"]["n_cut_to_max_len"] == 7
    line = (f"training data fr: {tr['kept']}/{tr['total']} train and {va['kept']}/{va['total']} val examples kept; "
            f"2 truncated to --max-len 64 (target cut), 5 dropped")
    assert line in err


def test_max_drop_fraction_is_validated():
    with pytest.raises(AlignlensError, match=r"max drop fraction must be in \[0, 1\] \(got 1.5\)"):
        TrainConfig.from_preset("default", max_drop_fraction=1.5)
    with pytest.raises(AlignlensError, match="max drop fraction"):
        TrainConfig.from_preset("default", max_drop_fraction=-0.1)
    assert TrainConfig.from_preset("default").max_drop_fraction == 0.05


# ---- 2. --resume needs a checkpoint ---------------------------------------------------------


@pytest.mark.parametrize("state", ["missing", "empty", "unrelated file"])
def test_resume_with_nothing_to_resume_is_refused(tiny_base, tmp_path, state):
    out = tmp_path / "out"
    if state != "missing":
        out.mkdir()
    if state == "unrelated file":
        (out / "notes.txt").write_text("x")
    before = _snapshot(tmp_path)
    with pytest.raises(AlignlensError, match=rf"^nothing to resume in {re.escape(str(out))}: no checkpoint .*; "
                                             r"run without --resume to start$"):
        train(None, None, out, resume=True, progress=False)
    with pytest.raises(AlignlensError, match="nothing to resume"):
        train(_cfg(), tiny_base, out, resume=True, progress=False)
    assert _snapshot(tmp_path) == before  # no folder created, nothing trained


def test_resume_from_a_broken_checkpoint_is_one_line(tmp_path):
    last = tmp_path / "out" / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"not a checkpoint")
    with pytest.raises(AlignlensError, match=r"cannot resume from .*last\.pt: unreadable checkpoint \(.*\); "
                                             r"start again with --force instead of --resume$"):
        train(None, None, tmp_path / "out", resume=True, progress=False)
    torch.save({"format": "alignlens-train/1", "config": {}}, last)
    with pytest.raises(AlignlensError, match=r"unreadable checkpoint \(missing model_spec, data_digest, "):
        train(None, None, tmp_path / "out", resume=True, progress=False)


# ---- 3. interruption ------------------------------------------------------------------------


def _process_state():
    return torch.get_num_threads(), signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)


def test_threads_and_signal_handlers_are_restored(tiny_base, tmp_path):
    before = _process_state()
    seen = []
    train(_cfg(threads=2), tiny_base, tmp_path / "ok", progress=False, callback=lambda r: seen.append(_process_state()))
    assert seen[0][0] == 2 and seen[0][1] is not before[1] and seen[0][2] is not before[2]  # the run changed them
    assert _process_state() == before

    def stop(record):
        raise KeyboardInterrupt

    with pytest.raises(TrainInterrupted) as info:
        train(_cfg(threads=2), tiny_base, tmp_path / "stopped", progress=False, callback=stop)
    assert isinstance(info.value, RunInterrupted) and info.value.exit_code == 130
    assert _process_state() == before
    with pytest.raises(AlignlensError, match="dropped"):  # fails inside the run, after threads were set
        train(_cfg(threads=2, max_len=8), tiny_base, tmp_path / "bad", progress=False)
    assert _process_state() == before


def test_global_rngs_are_restored(tiny_base, tmp_path):
    """A run seeds python's, numpy's and torch's global RNGs; they are as before once it returns."""
    import random

    import numpy as np

    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    train(_cfg(lora_dropout=0.1), tiny_base, tmp_path / "out", progress=False)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_interrupted_message_and_resume_cleans_stale_temporaries(tiny_base, tmp_path):
    out = tmp_path / "my run"  # a space: the resume command must quote it

    def stop(record):
        if record["step"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(TrainInterrupted) as info:
        train(_cfg(per_language=20), tiny_base, out, progress=False, callback=stop)
    msg = str(info.value)
    assert re.fullmatch(rf"training of {re.escape(str(out))} interrupted \(SIGINT\) at step 1 of (\d+); kept: "
                        rf"checkpoint at step 1 of \1 in {re.escape(str(out / 'checkpoints' / 'last.pt'))} and the "
                        rf"log; resume with: alignlens train --out '{re.escape(str(out))}' --resume", msg), msg
    stale = out / "checkpoints" / f"{TEMP_PREFIX}last.pt.abc123"
    stale.write_bytes(b"partial")
    res = train(None, None, out, resume=True, progress=False)
    assert res.resumed and res.steps == res.total_steps and not stale.exists()


# ---- 4. checkpoint temporaries and file modes -----------------------------------------------


def test_checkpoints_use_shared_temporaries_and_files_honour_umask(tiny_base, tmp_path, monkeypatch):
    saved_to = []
    real_save = torch.save

    def spy(obj, f, *a, **k):
        if isinstance(f, (str, Path)):
            saved_to.append(Path(f))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", spy)
    out = tmp_path / "out"
    old = os.umask(0o027)
    try:
        train(_cfg(save_every=1, eval_every=1, keep_checkpoints=True), tiny_base, out, progress=False)
    finally:
        os.umask(old)
    ckpts = [p for p in saved_to if p.parent == out / "checkpoints"]
    assert ckpts and all(p.name.startswith(TEMP_PREFIX) for p in ckpts)
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"last.pt", "best.pt"}
    paths = [out, *out.rglob("*")]
    assert not [p for p in paths if p.name.startswith(TEMP_PREFIX)]
    modes = {str(p.relative_to(out)): p.stat().st_mode & 0o777 for p in paths}
    assert modes["manifest.json"] == modes["checkpoints/last.pt"] == modes["train_log.jsonl"] == 0o640
    assert {m for rel, m in modes.items() if (out / rel).is_file()} == {0o640}
    assert {m for rel, m in modes.items() if (out / rel).is_dir()} == {0o750}


# ---- 5. --force ------------------------------------------------------------------------------


def test_force_replaces_only_train_files(tiny_base, tmp_path):
    out = _previous_run(tiny_base, tmp_path / "out")
    old_log = (out / "train_log.jsonl").read_bytes()
    res = train(_cfg(full=True, lr=1e-3), tiny_base, out, force=True, progress=False)  # full: no adapter
    assert (out / "notes.txt").read_text() == "my notes" and (out / "mine" / "data.csv").read_text() == "a,b\n1,2\n"
    assert not (out / "adapter").exists() and not (out / "checkpoints").exists()  # the old run's are gone
    assert (out / "train_log.jsonl").read_bytes() != old_log
    assert json.loads((out / "manifest.json").read_text())["training"]["method"] == "full" == res.manifest["training"]["method"]


@pytest.mark.parametrize("failure", ["lora targets", "model path", "data file", "too many dropped", "device",
                                     "option"])
def test_failing_forced_run_leaves_previous_run_byte_identical(tiny_base, tmp_path, failure):
    out = _previous_run(tiny_base, tmp_path / "out")
    before = _snapshot(out)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"lang": "de", "text": "Hallo"}\n')
    cases = {
        "lora targets": (lambda: _cfg(lora_targets=["no_such_proj"]), tiny_base, r"--lora-targets no_such_proj: no such module in "),
        "model path": (lambda: _cfg(), str(tmp_path / "no-such-model"), "no such model folder"),
        "data file": (lambda: _cfg(languages=[], data_files=[str(bad)]), tiny_base, r"bad\.jsonl:1: missing field"),
        "too many dropped": (lambda: _cfg(max_len=8), tiny_base, "would be dropped"),
        "device": (lambda: _cfg(device="cuda:0"), tiny_base, "CUDA is not available"),
        "option": (lambda: TrainConfig(languages=["de"], epochs=0), tiny_base, "epochs must be >= 1"),
    }
    make_cfg, model, message = cases[failure]
    if failure == "device" and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(AlignlensError, match=message):
        train(make_cfg(), model, out, force=True, progress=False)
    assert _snapshot(out) == before


def test_force_refuses_the_current_folder(tiny_base, tmp_path, monkeypatch):
    out = _previous_run(tiny_base, tmp_path / "out")
    before = _snapshot(out)
    monkeypatch.chdir(out)
    with pytest.raises(AlignlensError, match="refusing to write results into the current folder"):
        train(_cfg(), tiny_base, ".", force=True, progress=False)
    assert _snapshot(out) == before
