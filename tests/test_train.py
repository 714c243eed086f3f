"""Training loop on tiny random models: loss, resume, merged model, errors, presets."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from alignlens import AlignlensError
from alignlens.train import PRESETS, TrainConfig, TrainInterrupted, train
from alignlens.train.examples import collate, encode, load_pairs
from alignlens.train.loss import TargetLossModel, target_loss
from fixtures import one_thread, save_tiny_base, tiny_base  # noqa: F401  (module fixtures)


def _load(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), AutoTokenizer.from_pretrained(folder)


def _cfg(**kw):
    base = dict(languages=["de"], per_language=40, val_fraction=0.1, max_len=160, batch_size=4, epochs=1,
                lr=1e-2, eval_every=3, save_every=0, seed=0)
    base.update(kw)
    return TrainConfig.from_preset("default", **base)


# ---- loss -----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch,overrides", [("gemma3", {"final_logit_softcapping": 30.0}), ("llama", {}), ("gpt2", {})])
def test_target_only_loss_equals_hf_masked_loss(tmp_path, arch, overrides):
    model, tok = _load(save_tiny_base(tmp_path / arch, arch, seed=1, **overrides))
    pairs = load_pairs(_cfg(per_language=5))
    examples, _ = encode(tok, pairs, max_len=80)
    ids, tgt = collate(examples, tok.pad_token_id)
    assert (~tgt).any(dim=1).all() and tgt.any(dim=1).all()
    labels = ids.masked_fill(~tgt, -100)
    ref = model(input_ids=ids, attention_mask=(labels != -100) | (torch.arange(ids.shape[1]) < torch.tensor(
        [len(e.ids) for e in examples])[:, None]), labels=labels).loss
    loss_sum, n = target_loss(model, ids, tgt)
    assert n == int(tgt[:, 1:].sum())
    assert abs(float(loss_sum.detach()) / n - float(ref.detach())) < 1e-5


def test_target_loss_model_under_ddp_all_reduces_every_gradient(tmp_path):
    """The loss runs inside TargetLossModel.forward, so a DDP wrapper around it all-reduces the
    gradient of every parameter (calling the inner module directly would skip the all-reduce)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    model, tok = _load(save_tiny_base(tmp_path / "m", "gemma3", seed=1, final_logit_softcapping=30.0))
    examples, _ = encode(tok, load_pairs(_cfg(per_language=4)), max_len=80)
    ids, tgt = collate(examples, tok.pad_token_id)
    loss, n = TargetLossModel(model)(ids, tgt)
    loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    reduced = []

    def count(state, bucket):  # noqa: ARG001 - world size 1: the all-reduce of a bucket is itself
        reduced.append(bucket.buffer().numel())
        fut = torch.futures.Future()
        fut.set_result(bucket.buffer())
        return fut

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(TargetLossModel(model))
        ddp.register_comm_hook(None, count)
        loss_ddp, n_ddp = ddp(ids, tgt)
        loss_ddp.backward()
    finally:
        dist.destroy_process_group()
    assert n_ddp == n and float(loss_ddp.detach()) == float(loss.detach())
    assert sum(reduced) == sum(p.numel() for p in model.parameters())
    assert all(torch.equal(p.grad, expected[name]) for name, p in model.named_parameters())


def test_encode_appends_eos_and_cuts_to_max_len(tiny_base):
    _, tok = _load(tiny_base)
    pairs = load_pairs(_cfg(per_language=4))
    full, counts = encode(tok, pairs, max_len=10_000)
    assert counts == {"de": {"total": 4, "kept": 4, "truncated": 0, "dropped": 0,
                             "longest": max(len(e.ids) for e in full),
                             "longest_prompt": max(e.n_prompt for e in full)}}
    assert all(e.ids[-1] == tok.eos_token_id for e in full)
    assert all(e.ids[0] == tok.bos_token_id for e in full)
    short, counts = encode(tok, pairs, max_len=min(e.n_prompt for e in full) + 2)
    c = counts["de"]
    assert c["truncated"] + c["dropped"] == len(pairs) and c["kept"] == len(short) == c["truncated"] >= 1
    assert all(len(e.ids) - e.n_prompt == 2 for e in short)


def test_encode_counts_truncated_and_dropped_per_language(tiny_base):
    _, tok = _load(tiny_base)
    pairs = load_pairs(_cfg(languages=["de", "es"], per_language=12))
    full, _ = encode(tok, pairs, max_len=10_000)
    cut = sorted({e.n_prompt for e in full})[len({e.n_prompt for e in full}) // 2]  # a middle prompt length
    short, counts = encode(tok, pairs, max_len=cut)
    for lang in ("de", "es"):
        mine = [e for e in full if e.lang == lang]
        dropped = sum(e.n_prompt >= cut for e in mine)
        truncated = sum(e.n_prompt < cut < len(e.ids) for e in mine)
        c = counts[lang]
        assert (c["total"], c["dropped"], c["truncated"], c["kept"]) == (12, dropped, truncated, 12 - dropped)
        assert len([e for e in short if e.lang == lang]) == 12 - dropped
    assert sum(c["dropped"] for c in counts.values()) > 0 and sum(c["truncated"] for c in counts.values()) > 0
    assert all(len(e.ids) <= cut and len(e.ids) > e.n_prompt for e in short)


# ---- the loop -------------------------------------------------------------------------------


def test_loss_falls_full_finetuning(tiny_base, tmp_path):
    res = train(_cfg(full=True, lr=3e-3, epochs=3), tiny_base, tmp_path / "out", progress=False)
    assert res.best_val_loss < res.initial_val_loss - 0.5
    steps = [json.loads(x) for x in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in steps if r["event"] == "step"]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5
    assert not (tmp_path / "out" / "adapter").exists() and (tmp_path / "out" / "merged" / "config.json").is_file()


@pytest.fixture(scope="module")
def lora_runs(tiny_base, tmp_path_factory):
    """The same LoRA run (with dropout, so RNG matters) uninterrupted and interrupted + resumed."""
    root = tmp_path_factory.mktemp("runs")
    cfg = dict(epochs=2, lr=5e-2, lora_dropout=0.1, save_every=2, grad_accum=2, batch_size=3)
    a = train(_cfg(**cfg), tiny_base, root / "a", progress=False)

    def interrupt(record):
        if record["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(TrainInterrupted, match="step 3 of") as info:
        train(_cfg(**cfg), tiny_base, root / "b", progress=False, callback=interrupt)
    assert info.value.exit_code == 130 and "(SIGINT)" in str(info.value)
    assert (root / "b" / "checkpoints" / "last.pt").is_file()
    b = train(None, None, root / "b", resume=True, progress=False)
    return root, a, b


def test_lora_loss_falls(lora_runs):
    _, a, _ = lora_runs
    assert a.best_val_loss < a.initial_val_loss - 0.3
    assert a.steps == a.total_steps and a.best_step > 0


def test_resume_equals_uninterrupted(lora_runs):
    from safetensors.torch import load_file

    root, a, b = lora_runs
    assert b.resumed and b.steps == a.steps
    for sub in ("adapter/adapter_model.safetensors", "merged/model.safetensors"):
        wa, wb = load_file(root / "a" / sub), load_file(root / "b" / sub)
        assert wa.keys() == wb.keys()
        assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-6, sub
    assert b.best_val_loss == pytest.approx(a.best_val_loss, abs=1e-6)

    def steps(run):
        rows = [json.loads(x) for x in (root / run / "train_log.jsonl").read_text().splitlines()]
        return [(r["step"], round(r["loss"], 6)) for r in rows if r["event"] == "step"]

    assert steps("a") == steps("b")  # the log has no duplicated steps after resuming
    assert not (root / "b" / "checkpoints").exists()  # deleted after success


def test_merged_equals_adapter_and_loads(lora_runs, tiny_base):
    from peft import PeftModel

    from alignlens.model import load_model

    root, a, _ = lora_runs
    merged, tok = _load(root / "a" / "merged")
    base, _ = _load(tiny_base)
    adapted = PeftModel.from_pretrained(base, root / "a" / "adapter").eval()
    ids = tok(["Prämisse: Ein Hund rennt.\nTranslate the input from German to English:\n"], return_tensors="pt").input_ids
    with torch.no_grad():
        lm, la = merged(ids).logits, adapted(ids).logits
        lb = adapted.get_base_model()
        with adapted.disable_adapter():
            l0 = lb(ids).logits
    assert float((lm - la).abs().max()) <= 1e-4
    assert float((lm - l0).abs().max()) > 1e-3  # training changed the model
    manifest = json.loads((root / "a" / "manifest.json").read_text())
    assert manifest["data"]["languages"] == ["de"] and manifest["data"]["n_val"] == a.n_val == 4
    assert manifest["options"]["lora_r"] == 8 and manifest["base_model"]["spec"] == tiny_base
    assert manifest["best_val_loss"] == a.best_val_loss
    lm_loaded = load_model(str(root / "a"))
    assert lm_loaded.info["trained_languages"] == ["de"]


def test_trainer_driven_by_hand_equals_train(tiny_base, tmp_path):
    """setup + Trainer.start/validate/step/checkpoint/finish give train()'s weights and losses, and
    every loss (training and validation) goes through the TargetLossModel's forward."""
    import dataclasses

    from safetensors.torch import load_file

    from alignlens.train import Checkpoint
    from alignlens.train.run import setup

    cfg = dict(per_language=20, eval_every=0, lora_dropout=0.1, epochs=2)
    ref = train(_cfg(**cfg), tiny_base, tmp_path / "ref", progress=False)
    trainer = setup(_cfg(**cfg), tiny_base, tmp_path / "hand", None, progress=False)
    trainer.start()
    seen = []
    trainer.loss_model.register_forward_hook(lambda module, args, out: seen.append(out[1]))
    assert trainer.validate() == ref.initial_val_loss
    while trainer.state.step < trainer.total_steps:
        trainer.step()
    trainer.validate()
    trainer.checkpoint()
    saved = Checkpoint.load(trainer.ckpt_dir / "last.pt")
    assert dataclasses.replace(saved.state, elapsed=0.0, rng=None) == dataclasses.replace(trainer.state, rng=None)
    assert torch.equal(saved.state.rng["torch"], trainer.state.rng["torch"])
    res = trainer.finish(loop_seconds=1.0)
    assert (res.steps, res.best_val_loss, res.final_train_loss) == (ref.steps, ref.best_val_loss, ref.final_train_loss)
    for sub in ("adapter/adapter_model.safetensors", "merged/model.safetensors"):
        wa, wb = load_file(tmp_path / "ref" / sub), load_file(tmp_path / "hand" / sub)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), sub
    targets = [sum(len(e.ids) - e.n_prompt for e in split) for split in (trainer.data.train, trainer.data.val)]
    assert sum(seen) == 2 * targets[0] + 2 * targets[1]  # 2 epochs, 2 validations


def res_total(exc) -> int:
    """M of 'at step N of M' in an interruption message."""
    import re

    return int(re.search(r"at step \d+ of (\d+)", str(exc)).group(1))


# ---- errors and options ---------------------------------------------------------------------


def test_bad_data_file_names_file_line_field(tiny_base, tmp_path):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"lang": "de", "text": "Hallo", "english": "Hello"}\n{"lang": "de", "text": "Welt"}\n')
    with pytest.raises(AlignlensError, match=r"pairs\.jsonl:2: missing field 'english'"):
        train(_cfg(languages=[], data_files=[str(bad)]), tiny_base, tmp_path / "out", progress=False)
    bad.write_text('{"input": "Hallo\\n", "answer": 5}\n')
    with pytest.raises(AlignlensError, match=r"pairs\.jsonl:1: field 'answer'"):
        train(_cfg(languages=[], data_files=[str(bad)]), tiny_base, tmp_path / "out", progress=False)


def test_user_data_file_trains(tiny_base, tmp_path):
    f = tmp_path / "pairs.jsonl"
    f.write_text("".join(json.dumps({"lang": "fr", "text": f"Bonjour {i}", "english": f"Hello {i}"}) + "\n"
                         for i in range(12)))
    res = train(_cfg(languages=None, data_files=[str(f)], eval_every=0), tiny_base, tmp_path / "out", progress=False)
    assert res.n_train + res.n_val == 12 and res.manifest["data"]["languages"] == ["fr"]
    assert res.manifest["data"]["bundled"] == []


def test_no_overwrite_without_force(tiny_base, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "something.txt").write_text("x")
    cfg = _cfg(per_language=8, eval_every=0)
    with pytest.raises(AlignlensError, match="not empty"):
        train(cfg, tiny_base, out, progress=False)
    with pytest.raises(AlignlensError, match="holds no alignlens results"):  # --force cannot tell what is ours
        train(cfg, tiny_base, out, force=True, progress=False)
    (out / "something.txt").unlink()
    train(cfg, tiny_base, out, progress=False)
    (out / "something.txt").write_text("x")
    train(cfg, tiny_base, out, force=True, progress=False)
    assert (out / "manifest.json").is_file()
    assert (out / "something.txt").read_text() == "x"  # --force replaces only train's own files
    with pytest.raises(AlignlensError, match="not empty"):
        train(cfg, tiny_base, out, progress=False)
    with pytest.raises(AlignlensError, match="finished"):
        train(None, None, out, resume=True, progress=False)


def test_presets_and_overrides():
    d = TrainConfig.from_preset("default")
    assert (d.per_language, d.epochs, d.lr, d.batch_size, d.val_fraction) == (600, 1, 5e-4, 8, 0.05)
    assert d.resolved_languages() == ["zh", "de"] and d.lora_targets == ["q_proj", "v_proj"]
    p = TrainConfig.from_preset("paper", lr=None, epochs=2, languages="zh,sw")
    assert (p.lr, p.epochs, p.batch_size * p.grad_accum, p.per_language) == (5e-5, 2, 16, 10000)
    assert p.languages == ["zh", "sw"] and p.preset == "paper"
    assert set(PRESETS) == {"default", "paper"}
    with pytest.raises(AlignlensError, match="unknown preset"):
        TrainConfig.from_preset("fast")
    with pytest.raises(AlignlensError, match="unknown training option"):
        TrainConfig.from_preset("default", learning_rate=1.0)
    with pytest.raises(AlignlensError, match="warmup"):
        TrainConfig.from_preset("default", warmup=2)
    assert TrainConfig.from_dict(d.to_dict()) == d


def test_sigterm_checkpoints_and_resume_checks_options(tiny_base, tmp_path):
    import os
    import signal

    out = tmp_path / "out"
    before = signal.getsignal(signal.SIGTERM)

    def term(record):
        if record["step"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    cfg = _cfg(per_language=20, eval_every=0)
    with pytest.raises(TrainInterrupted, match="step 2 of") as info:
        train(cfg, tiny_base, out, callback=term, progress=False)
    assert info.value.exit_code == 143 and "(SIGTERM)" in str(info.value)
    assert f"checkpoint at step 2 of {res_total(info.value)} in {out / 'checkpoints' / 'last.pt'}" in str(info.value)
    assert str(info.value).endswith(f"resume with: alignlens train --out {out} --resume")
    assert signal.getsignal(signal.SIGTERM) is before
    assert (out / "checkpoints" / "last.pt").is_file()
    with pytest.raises(AlignlensError, match=r"different options \(--lr 0\.001 \(saved: 0\.01\)\)"):
        train(_cfg(per_language=20, eval_every=0, lr=1e-3), None, out, resume=True, progress=False)
    with pytest.raises(AlignlensError, match="not empty"):
        train(cfg, tiny_base, out, progress=False)
    res = train(_cfg(per_language=20, eval_every=0, threads=1), tiny_base, out, resume=True, progress=False)
    assert res.resumed and res.steps == res.total_steps == res_total(info.value)
    assert res.manifest["training"]["sessions"] == 2


def test_training_manifest_shares_the_provenance_keys_of_evaluation_manifests(tmp_path, tiny_base):
    """Eval and train manifests start with the same keys (results.manifest.provenance)."""
    from alignlens.results.manifest import provenance

    out = tmp_path / "run"
    train(_cfg(epochs=1), tiny_base, out, progress=False, command="alignlens train --out run")
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    shared = list(provenance(command="", model={}, data={}, options={}, seed=0, started="", finished=None))
    assert list(manifest)[: len(shared)] == shared
    assert manifest["command"] == "alignlens train --out run"
    assert manifest["model"]["spec"] == manifest["base_model"]["spec"] == tiny_base
    assert manifest["finished"] is not None and manifest["seed"] == manifest["options"]["seed"]


def test_training_progress_lines_when_redirected(tmp_path, tiny_base, monkeypatch, capsys):
    """With output redirected (not a terminal), training prints plain progress lines with steps and ETA."""
    monkeypatch.setenv("ALIGNLENS_PROGRESS", "lines")
    monkeypatch.setenv("ALIGNLENS_PROGRESS_SECONDS", "0")
    result = train(_cfg(epochs=1), tiny_base, tmp_path / "run", progress=True)
    err = capsys.readouterr().err
    assert f"{result.total_steps}/{result.total_steps} (100%)" in err and "train steps (loss" in err
