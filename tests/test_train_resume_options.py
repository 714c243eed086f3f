"""`alignlens train` options (issue 19): `--resume` refuses every option given with another value than
the saved run's (naming it, before anything loads) and records each session's command and runtime
options; `--lora-targets` are checked against the model's modules before data or weights load; every
numeric option is range-checked. Each refusal: one `error:` line, exit code 2, nothing written."""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alignlens import AlignlensError
from alignlens.train import Checkpoint, TrainConfig, TrainInterrupted, train
from alignlens.train.config import LIBRARY_ONLY, MAX_SEED, option_flag
from fixtures import one_thread, tiny_base  # noqa: F401  (module fixtures)
from fixtures import tree_snapshot as _snapshot

ORIGINAL = "alignlens train --out run --languages de --per-language 20 (the first session)"


def _cfg(**kw) -> TrainConfig:
    base = dict(languages=["de"], per_language=20, val_fraction=0.1, max_len=160, batch_size=4, epochs=1,
                lr=1e-2, eval_every=0, save_every=0, seed=0)
    return TrainConfig.from_preset("default", **{**base, **kw})


@pytest.fixture(scope="module")
def interrupted(tiny_base, tmp_path_factory) -> Path:
    """A LoRA run of `_cfg()` stopped by Ctrl-C after step 1 (copy it before resuming it)."""
    out = tmp_path_factory.mktemp("interrupted") / "run"

    def stop(record):
        if record["step"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(TrainInterrupted):
        train(_cfg(), tiny_base, out, progress=False, callback=stop, command=ORIGINAL)
    return out


@pytest.fixture
def nothing_loads(monkeypatch):
    """Fail the test if training data, the tokenizer or the model's weights are loaded."""
    import alignlens.train.run as tr

    def loaded(*a, **k):
        raise AssertionError("data or a model was loaded before the refusal")

    for name in ("load_pairs", "load_training_tokenizer", "load_hf"):
        monkeypatch.setattr(tr, name, loaded)


def run_cli(*args: str) -> int:
    """`alignlens ARGS` in this process (so `nothing_loads` applies); its exit code."""
    from alignlens.cli.main import main

    before = signal.getsignal(signal.SIGTERM), sys.argv
    sys.argv = ["alignlens", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    finally:
        signal.signal(signal.SIGTERM, before[0])
        sys.argv = before[1]
    return code


def _refused(capsys, *args: str) -> str:
    """Run the CLI, check it refused with exit code 2 and one `error:` line; return that line."""
    capsys.readouterr()
    code = run_cli(*args)
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


# ---- 1. --resume with changed options ---------------------------------------------------------

RESUME_REFUSED = re.compile(r"error: cannot resume with different options \((.*)\); omit them to continue with "
                            r"the saved ones, or start again with --force")

CHANGED = [  # (arguments, how the message names the option)
    (["--lr", "0.1"], "--lr 0.1 (saved: 0.01)"),
    (["--per-language", "9"], "--per-language 9 (saved: 20)"),
    (["--languages", "zh"], "--languages zh (saved: de)"),
    (["-b", "2"], "--batch-size 2 (saved: 4)"),
    (["--epochs", "2"], "--epochs 2 (saved: 1)"),
    (["--model", "gemma-3-270m"], "--model gemma-3-270m (saved: {tiny})"),
    (["--full"], "--full on (saved: off)"),
    (["--control", "copy"], "--control copy (saved: none)"),
    (["--seed", "3"], "--seed 3 (saved: 0)"),
    (["--device", "cuda"], "--device cuda (saved: auto)"),
    (["--max-len", "100"], "--max-len 100 (saved: 160)"),
    (["--lora-r", "4"], "--lora-r 4 (saved: 8)"),
    (["--preset", "paper"], "--preset paper (saved: default)"),
    (["--lora-targets", "q_proj,k_proj"], "--lora-targets q_proj,k_proj (saved: q_proj,v_proj)"),
]


@pytest.mark.parametrize("args,named", CHANGED, ids=[" ".join(a) for a, _ in CHANGED])
def test_resume_refuses_each_changed_option_before_anything_loads(interrupted, tiny_base, nothing_loads, capsys,
                                                                  args, named):
    before = _snapshot(interrupted)
    line = _refused(capsys, "train", "--out", str(interrupted), "--resume", *args, "--threads", "1")
    match = RESUME_REFUSED.fullmatch(line)
    assert match and match.group(1) == named.format(tiny=tiny_base), line  # only that option, not the others
    assert _snapshot(interrupted) == before


def test_resume_names_every_changed_option_at_once(interrupted, nothing_loads, capsys):
    before = _snapshot(interrupted)
    line = _refused(capsys, "train", "--out", str(interrupted), "--resume", "--lr", "0.01", "--epochs", "3",
                    "--languages", "de", "--lora-alpha", "32")
    assert RESUME_REFUSED.fullmatch(line).group(1) == "--epochs 3 (saved: 1); --lora-alpha 32 (saved: 16)"
    assert _snapshot(interrupted) == before


def test_library_resume_with_given_options(interrupted, nothing_loads):
    with pytest.raises(AlignlensError, match=r"^cannot resume with different options \(--data x\.jsonl \(saved: none\); "
                                             r"--lr 0\.5 \(saved: 0\.01\)\)"):
        train(None, None, interrupted, resume=True, progress=False, options={"lr": 0.5, "data_files": ["x.jsonl"]})
    with pytest.raises(AlignlensError, match=r"unknown training option\(s\) learning_rate"):
        train(None, None, interrupted, resume=True, progress=False, options={"learning_rate": 0.5})


def test_resume_with_the_same_options_and_new_runtime_options_records_each_session(interrupted, tiny_base, tmp_path,
                                                                                   monkeypatch, capsys):
    """Options equal to the saved ones (spelled otherwise) are accepted; --threads and
    --keep-checkpoints apply to the new session; the manifest keeps the first command and lists
    every session with its command and runtime options."""
    out = tmp_path / "run"
    shutil.copytree(interrupted, out)
    monkeypatch.chdir(Path(tiny_base).parent)
    args = ["train", "--out", str(out), "--resume", "--model", f"./{Path(tiny_base).name}", "--lr", "1e-2",
            "--languages", "de", "-b", "4", "--lora-targets", "v_proj,q_proj", "--preset", "default",
            "--threads", "1", "--keep-checkpoints"]
    code = run_cli(*args)
    assert code == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["command"] == ORIGINAL
    log = manifest["training"]["session_log"]
    assert [s["session"] for s in log] == [1, 2] and manifest["training"]["sessions"] == 2
    assert log[0]["command"] == ORIGINAL and (log[0]["threads"], log[0]["keep_checkpoints"]) == (None, False)
    assert log[1]["command"].startswith(f"alignlens train --out {out} --resume --model ./")
    assert (log[1]["threads"], log[1]["keep_checkpoints"]) == (1, True)
    assert log[0]["started"] <= log[1]["started"]
    assert (out / "checkpoints" / "last.pt").is_file()  # --keep-checkpoints applied
    assert manifest["options"]["lr"] == 0.01 and manifest["options"]["lora_targets"] == ["q_proj", "v_proj"]


def test_resume_of_a_checkpoint_without_a_session_log(interrupted, tmp_path):
    """A checkpoint saved before sessions were logged: the first command is unknown (""), not the
    resuming one; the log starts with the resumed session."""
    out = tmp_path / "run"
    shutil.copytree(interrupted, out)
    last = out / "checkpoints" / "last.pt"
    raw = torch.load(last, map_location="cpu", weights_only=False)
    del raw["state"]["session_log"]
    torch.save(raw, last)
    assert Checkpoint.load(last).state.session_log == []
    res = train(None, None, out, resume=True, progress=False, command="alignlens train --out run --resume")
    assert res.manifest["command"] == ""
    assert [(s["session"], s["command"]) for s in res.manifest["training"]["session_log"]] == [
        (2, "alignlens train --out run --resume")]


def test_resume_differences_compare_resolved_values(tmp_path, monkeypatch):
    saved = TrainConfig.from_preset("default")  # languages None = zh,de
    assert saved.resume_differences({"languages": "zh,de", "per_language": 600, "lr": 5e-4, "threads": 3,
                                     "keep_checkpoints": True, "lora_targets": ["v_proj", "q_proj"]}) == []
    assert saved.resume_differences({"languages": ["de", "zh"]}) == ["--languages de,zh (saved: none)"]
    assert saved.resume_differences({"task": None, "control": None}) == []
    emotion = TrainConfig.from_preset("default", task="emotion")
    assert emotion.train_items == "250-499"
    assert emotion.resume_differences({"train_items": "250-300,301-499", "task": "emotion"}) == []
    assert emotion.resume_differences({"train_items": "0-249"}) == ["--train-items 0-249 (saved: 250-499)"]
    data = tmp_path / "pairs.jsonl"
    monkeypatch.chdir(tmp_path)
    files = TrainConfig(languages=[], data_files=["pairs.jsonl"])
    assert files.resume_differences({"data_files": [str(data)]}) == []
    assert files.resume_differences({"data_files": [str(tmp_path / "other.jsonl")]}) != []


def test_every_option_is_named_by_its_train_flag():
    """`option_flag` (the spelling of refusals) is a real `alignlens train` flag for every option
    but the library-only ones, and every option has one."""
    import dataclasses

    import typer

    from alignlens.cli.main import app

    command = typer.main.get_command(app).commands["train"]
    flags = {p.name: p.opts for p in command.params}
    for f in dataclasses.fields(TrainConfig):
        if f.name in LIBRARY_ONLY:
            assert f.name not in flags and option_flag(f.name) == f.name
        else:
            assert option_flag(f.name) in flags[f.name], f.name


def test_device_cuda_without_a_gpu_is_refused_before_anything_loads(tmp_path, tiny_base, nothing_loads, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    line = _refused(capsys, "train", "--model", tiny_base, "--out", str(tmp_path / "new"), "--device", "cuda")
    assert line == "error: device 'cuda' requested but CUDA is not available"
    assert not (tmp_path / "new").exists()


# ---- 2. --lora-targets against the model's modules ---------------------------------------------

LINEAR = "down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj"


def test_unknown_lora_target_is_refused_before_data_or_weights_load(tmp_path, tiny_base, nothing_loads, capsys):
    line = _refused(capsys, "train", "--model", tiny_base, "--out", str(tmp_path / "new"), "--languages", "de",
                    "--lora-targets", "bogus_proj")
    assert line == (f"error: --lora-targets bogus_proj: no such module in {tiny_base} (its Linear modules: {LINEAR}); "
                    f"choose among them, or use --full")
    assert not (tmp_path / "new").exists()


def test_lora_targets_match_as_peft_matches(tiny_base, nothing_loads):
    from alignlens.train.run import check_lora_targets

    check_lora_targets(_cfg(lora_targets=["self_attn.q_proj", "down_proj", "model.layers.0.mlp.up_proj"]), tiny_base)
    with pytest.raises(AlignlensError, match=r"^--lora-targets mlp,attn\.q_proj: no such module"):
        check_lora_targets(_cfg(lora_targets=["q_proj", "mlp", "attn.q_proj"]), tiny_base)  # a block, a partial name
    check_lora_targets(_cfg(full=True, lora_targets=["bogus"]), tiny_base)  # full fine-tuning: no LoRA


def test_lora_targets_on_a_resume_are_checked_against_the_model(interrupted, tmp_path):
    """A saved run's targets that match the model pass the check (the resume trains)."""
    out = tmp_path / "run"
    shutil.copytree(interrupted, out)
    assert train(None, None, out, resume=True, progress=False).resumed


# ---- 3. range checks of every numeric option ----------------------------------------------------

BAD = [
    (dict(lora_alpha=-3), r"LoRA alpha must be > 0 \(got -3\)"),
    (dict(lora_alpha=0), r"LoRA alpha must be > 0 \(got 0\)"),
    (dict(lora_dropout=-0.1), r"LoRA dropout must be in \[0, 1\)"),
    (dict(warmup=-0.1), r"warmup is a fraction"),
    (dict(weight_decay=-1.0), r"weight decay must be a finite number >= 0 \(got -1.0\)"),
    (dict(weight_decay=math.nan), r"weight decay must be a finite number >= 0 \(got nan\)"),
    (dict(eval_every=-1), r"--eval-every must be >= 0 \(got -1"),
    (dict(save_every=-5), r"--save-every must be >= 0 \(got -5"),
    (dict(seed=-1), rf"seed must be in 0\.\.{MAX_SEED} \(got -1\)"),
    (dict(seed=MAX_SEED + 1), rf"seed must be in 0\.\.{MAX_SEED} \(got {MAX_SEED + 1}\)"),
    (dict(seed=1.5), r"--seed must be a whole number \(got 1\.5\)"),
    (dict(seed=True), r"--seed must be a whole number \(got True\)"),
    (dict(lr=math.inf), r"lr must be a finite number > 0 \(got inf\)"),
    (dict(lr=math.nan), r"lr must be a finite number > 0 \(got nan\)"),
    (dict(max_grad_norm=math.inf), r"max grad norm must be a finite number >= 0 \(got inf"),
    (dict(max_grad_norm=-1.0), r"max grad norm must be a finite number >= 0 \(got -1.0"),
    (dict(epochs=1.5), r"--epochs must be a whole number \(got 1\.5\)"),
    (dict(full=1), r"--full must be true or false \(got 1\)"),
    (dict(val_fraction="0.1"), r"--val-fraction must be a number \(got '0\.1'\)"),
    (dict(lora_targets=["q_proj", "q_proj"]), r"--lora-targets: q_proj given more than once"),
    (dict(lora_targets=["q_proj", ""]), r"--lora-targets: empty list or empty entry"),
    (dict(device="tpu"), r"unknown device 'tpu'"),
]


@pytest.mark.parametrize("options,message", BAD, ids=[str(o) for o, _ in BAD])
def test_out_of_range_options_are_refused(options, message):
    with pytest.raises(AlignlensError, match=message):
        _cfg(**options)


def test_range_edges_are_accepted():
    for options in (dict(seed=0), dict(seed=MAX_SEED), dict(lora_alpha=1), dict(weight_decay=0.0), dict(warmup=0.0),
                    dict(max_grad_norm=0.0), dict(eval_every=0, save_every=0), dict(full=True, lora_alpha=-3)):
        _cfg(**options)
    with pytest.raises(AlignlensError, match="unknown preset 'fast'"):
        TrainConfig(preset="fast").validate()


def test_lora_alpha_through_the_cli(tmp_path, tiny_base, nothing_loads, capsys):
    line = _refused(capsys, "train", "--model", tiny_base, "--out", str(tmp_path / "new"), "--lora-alpha", "-3")
    assert line == "error: LoRA alpha must be > 0 (got -3)"
    assert not (tmp_path / "new").exists()


def test_the_largest_seed_seeds_every_rank():
    """numpy takes seeds below 2**32: a rank's seed (`rank_seed`, up to 2**63) is reduced for it,
    a run seed is used as it is."""
    from alignlens.train.run import rank_seed, seed_all

    seed_all(rank_seed(MAX_SEED, 1))  # numpy alone would refuse this seed
    seed_all(5)
    first = np.random.rand()
    np.random.seed(5)
    assert np.random.rand() == first


def test_library_options_without_resume_build_the_config(tiny_base, tmp_path):
    """`train(None, model, out, options=...)` starts a run from the preset and the given options."""
    options = dict(languages=["de"], per_language=8, val_fraction=0.1, max_len=160, batch_size=4, lr=1e-2,
                   eval_every=0, save_every=0, lora_alpha=8, preset="default")
    res = train(None, tiny_base, tmp_path / "run", progress=False, options=options)
    assert res.manifest["options"] == _cfg(**{k: v for k, v in options.items() if k != "preset"}).to_dict()
    assert res.manifest["options"]["lora_alpha"] == 8 and res.n_train + res.n_val == 8
