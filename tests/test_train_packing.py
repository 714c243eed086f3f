"""Training batches bucketed by length (`examples.epoch_order`): every example once per epoch in
full steps, deterministic, < 5% padding, and the same loss and gradients as one example per row."""

from __future__ import annotations

import json
import random
import warnings

import pytest
import torch

from alignlens.train import TrainConfig, train
from alignlens.train.examples import collate, encode, epoch_order, load_pairs, micro_batches, padding_share
from alignlens.train.loss import TargetLossModel, validation_loss
from fixtures import one_thread, tiny_base  # noqa: F401  (module fixtures)


def _load(folder, dtype=torch.float64):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        return model, AutoTokenizer.from_pretrained(folder)


def _examples(tok, per_language, langs=("de", "es"), max_len=160):
    cfg = TrainConfig.from_preset("default", languages=list(langs), per_language=per_language)
    return encode(tok, load_pairs(cfg), max_len=max_len)[0]


# ---- the plan -------------------------------------------------------------------------------


def test_bucketed_order_holds_every_example_once_in_full_steps_of_similar_length():
    rng = random.Random(3)
    lengths = [rng.randint(20, 200) for _ in range(203)]
    order = epoch_order(203, seed=5, epoch=0, lengths=lengths, per_step=6, window=8)
    assert sorted(order) == list(range(203))
    steps = [order[k: k + 6] for k in range(0, 203, 6)]
    assert [len(s) for s in steps] == [6] * 33 + [5]  # only the last step is partial
    spread = sum(max(lengths[i] for i in s) - min(lengths[i] for i in s) for s in steps) / len(steps)
    plain = epoch_order(203, seed=5, epoch=0)
    spread_plain = sum(max(lengths[i] for i in plain[k: k + 6]) - min(lengths[i] for i in plain[k: k + 6])
                       for k in range(0, 203, 6)) / len(steps)
    assert spread < spread_plain / 4
    # steps are sorted within a window of 8 steps (48 examples of the seeded shuffle), not globally
    first_window = set(plain[:48])
    assert sum(set(s) <= first_window for s in steps) == 8


def test_plan_is_deterministic_and_ignores_the_global_rng():
    lengths = [(7 * i) % 61 + 3 for i in range(150)]
    torch.manual_seed(0)
    a = epoch_order(150, 1, 2, lengths, per_step=8)
    torch.manual_seed(123)
    random.seed(9)
    b = epoch_order(150, 1, 2, tuple(lengths), per_step=8)
    assert a == b
    assert a != epoch_order(150, 1, 3, lengths, per_step=8)  # another epoch, another plan
    assert a != epoch_order(150, 2, 2, lengths, per_step=8)  # another seed
    assert epoch_order(150, 1, 2) == epoch_order(150, 1, 2)


def test_bucketed_padding_is_below_five_percent_on_the_training_data(tiny_base):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    examples = _examples(tok, per_language=600)
    lengths = [len(e.ids) for e in examples]
    per_step, batch = 8, 8
    real_b, slots_b = padding_share(lengths, micro_batches(epoch_order(len(lengths), 0, 0, lengths, per_step),
                                                           per_step, batch))
    real_r, slots_r = padding_share(lengths, micro_batches(epoch_order(len(lengths), 0, 0), per_step, batch))
    assert real_b == real_r == sum(lengths)
    assert 1 - real_b / slots_b < 0.05 < 0.10 < 1 - real_r / slots_r


# ---- the loss: bucketed micro-batches equal one example per row ------------------------------


def _row_loss_by_hand(model, e):
    """Summed target cross-entropy of one example from the HF model's full-sequence logits."""
    ids = torch.tensor([e.ids])
    model = getattr(model, "get_base_model", lambda: model)()
    logp = torch.log_softmax(model(input_ids=ids).logits[0], dim=-1)  # [T, V]
    pos = torch.arange(e.n_prompt - 1, len(e.ids) - 1)
    return -logp[pos, ids[0, pos + 1]].sum()


@pytest.mark.parametrize("arch", ["gemma3-lora", "gpt2-full"])
def test_bucketed_steps_give_the_loss_and_gradients_of_one_example_per_row(tiny_base, tmp_path, arch):
    """float64. Gemma's RMSNorms compute in float32 whatever the model's dtype, so their weights'
    gradients are float32 sums: on Gemma the trained LoRA weights are compared (float64 sums), on
    GPT-2 (float64 LayerNorm) every weight (full fine-tuning)."""
    from fixtures import save_tiny_base

    from alignlens.train.run import wrap_lora

    if arch == "gemma3-lora":
        model, tok = _load(tiny_base)
        model = wrap_lora(model, TrainConfig.from_preset("default"))
        with torch.no_grad():  # LoRA B starts at zero (then A has no gradient): make both count
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.1)
    else:
        model, tok = _load(save_tiny_base(tmp_path / "gpt2", "gpt2", seed=2, resid_pdrop=0.0, embd_pdrop=0.0,
                                          attn_pdrop=0.0))  # no dropout: train mode is deterministic
    model.train()
    loss_model = TargetLossModel(model)
    examples = _examples(tok, per_language=12)
    lengths = [len(e.ids) for e in examples]
    per_step, batch = 6, 3
    order = epoch_order(len(examples), 0, 0, lengths, per_step)
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
    for k in range(0, 3 * per_step, per_step):  # three optimizer steps of two micro-batches each
        step = [examples[i] for i in order[k: k + per_step]]
        n_target = sum(len(e.ids) - e.n_prompt for e in step)
        total = 0.0
        for mb in micro_batches(range(len(step)), per_step, batch):
            ids, tgt = collate([step[i] for i in mb], tok.pad_token_id)
            assert (ids == tok.pad_token_id).any() or len({len(step[i].ids) for i in mb}) == 1
            loss, n = loss_model(ids, tgt)
            (loss / n_target).backward()
            total += float(loss.detach())
        grads = [p.grad.clone() for p in params]
        model.zero_grad(set_to_none=True)
        by_hand = sum(_row_loss_by_hand(model, e) for e in step) / n_target
        by_hand.backward()
        assert abs(total / n_target - float(by_hand.detach())) < 1e-10
        for name, g, p in zip(names, grads, params):
            scale = max(1.0, float(p.grad.abs().max()))  # sums over many positions: relative to the largest entry
            assert float((g - p.grad).abs().max()) < 1e-10 * scale, name
        model.zero_grad(set_to_none=True)


def test_validation_loss_is_the_mean_over_target_tokens(tiny_base):
    model, tok = _load(tiny_base)
    examples = _examples(tok, per_language=5)
    with torch.no_grad():
        by_hand = sum(float(_row_loss_by_hand(model, e)) for e in examples)
    n = sum(len(e.ids) - e.n_prompt for e in examples)
    val = validation_loss(TargetLossModel(model), examples, 3, tok.pad_token_id, torch.device("cpu"))
    assert abs(val - by_hand / n) < 1e-10


# ---- the trainer ----------------------------------------------------------------------------


def test_trainer_runs_the_bucketed_plan_and_the_manifest_records_it(tiny_base, tmp_path):
    cfg = TrainConfig.from_preset("default", languages=["de", "es"], per_language=40, val_fraction=0.1,
                                  max_len=160, batch_size=3, grad_accum=2, epochs=2, lr=1e-2, eval_every=0,
                                  save_every=0, seed=4)
    res = train(cfg, tiny_base, tmp_path / "out", progress=False)
    from alignlens.train.examples import build_data
    from transformers import AutoTokenizer

    data = build_data(cfg, load_pairs(cfg), AutoTokenizer.from_pretrained(tiny_base), progress=False)
    lengths = [len(e.ids) for e in data.train]
    per_step = 6
    planned = []
    for epoch in range(2):
        order = epoch_order(len(lengths), 4, epoch, lengths, per_step)
        planned += [sum(lengths[i] for i in order[k: k + per_step]) for k in range(0, len(order), per_step)]
    rows = [json.loads(x) for x in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert [r["tokens"] for r in rows if r["event"] == "step"] == planned
    b = res.manifest["training"]["batching"]
    assert b["scheme"] == "bucketed" and b["real_tokens"] == 2 * sum(lengths)
    real, slots = 0, 0
    for epoch in range(2):
        r, s = padding_share(lengths, micro_batches(epoch_order(len(lengths), 4, epoch, lengths, per_step), per_step, 3))
        real, slots = real + r, slots + s
    assert b["token_slots"] == slots and b["padding_share"] == pytest.approx(1 - real / slots, abs=1e-4)


def _interrupted_after_step_2(cfg: dict, model, out):
    """Train with `cfg` until Ctrl-C after step 2; the checkpoint's path."""
    from alignlens.train import TrainInterrupted

    def stop(record):
        if record["step"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(TrainInterrupted):
        train(TrainConfig.from_preset("default", **cfg), model, out, progress=False, callback=stop)
    return out / "checkpoints" / "last.pt"


def _train_lengths(cfg: dict, model) -> list[int]:
    """Tokens per training example of `cfg`'s data (what the step plans are built from)."""
    from transformers import AutoTokenizer

    from alignlens.train.examples import build_data

    c = TrainConfig.from_preset("default", **cfg)
    return [len(e.ids) for e in build_data(c, load_pairs(c), AutoTokenizer.from_pretrained(model), progress=False).train]


def test_a_checkpoint_from_before_bucketing_resumes_its_random_order(tiny_base, tmp_path):
    import dataclasses

    from alignlens.train import Checkpoint

    cfg = dict(languages=["de"], per_language=40, val_fraction=0.1, max_len=160, batch_size=4, epochs=1,
               lr=1e-2, eval_every=0, save_every=0, seed=1)

    out = tmp_path / "out"
    path = _interrupted_after_step_2(cfg, tiny_base, out)
    ckpt = Checkpoint.load(path)
    assert ckpt.config["batching"] == "bucketed"
    legacy = {k: v for k, v in ckpt.config.items() if k != "batching"}  # as saved before bucketing
    dataclasses.replace(ckpt, config=legacy).save(path)
    res = train(None, None, out, resume=True, progress=False)
    assert res.manifest["training"]["batching"]["scheme"] == "random"
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    tokens = [r["tokens"] for r in rows if r["event"] == "step"]
    lengths = _train_lengths(cfg, tiny_base)

    def planned(order):
        return [sum(lengths[i] for i in order[k: k + 4]) for k in range(0, len(order), 4)]

    bucketed, random_ = planned(epoch_order(len(lengths), 1, 0, lengths, 4)), planned(epoch_order(len(lengths), 1, 0))
    assert tokens[:2] == bucketed[:2] and tokens[2:] == random_[2:] != bucketed[2:]


def test_random_batching_is_an_option_that_a_resume_keeps(tiny_base, tmp_path):
    from alignlens import AlignlensError
    from alignlens.train import Checkpoint

    with pytest.raises(AlignlensError, match="unknown batching 'sorted'"):
        TrainConfig.from_preset("default", batching="sorted")
    cfg = dict(languages=["de"], per_language=40, val_fraction=0.1, max_len=160, batch_size=4, epochs=1,
               lr=1e-2, eval_every=0, save_every=0, seed=2, batching="random")

    out = tmp_path / "out"
    assert Checkpoint.load(_interrupted_after_step_2(cfg, tiny_base, out)).config["batching"] == "random"
    with pytest.raises(AlignlensError, match=r"different options \(--batching bucketed \(saved: random\)\)"):
        train(TrainConfig.from_preset("default", **{**cfg, "batching": "bucketed"}), tiny_base, out, resume=True,
              progress=False)
    res = train(None, None, out, resume=True, progress=False)
    assert res.manifest["training"]["batching"]["scheme"] == "random"
    lengths = _train_lengths(cfg, tiny_base)
    order = epoch_order(len(lengths), 2, 0)  # the seeded shuffle, no lengths: random batching
    planned = [sum(lengths[i] for i in order[k: k + 4]) for k in range(0, len(order), 4)]
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["tokens"] for r in rows if r["event"] == "step"] == planned


# ---- the fused frozen LM head -----------------------------------------------------------------


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_fused_frozen_head_equals_logits_and_cross_entropy(monkeypatch, softcap):
    from alignlens.train import loss as loss_mod

    monkeypatch.setattr(loss_mod, "FUSED_LOGITS", 3 * 50)  # chunks of 3 rows (vocab 50): 7 rows -> 3 chunks
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(50, 8, generator=gen, dtype=torch.float64)
    rows = torch.randn(7, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 50, (7,), generator=gen)
    fused = loss_mod._FrozenHeadCrossEntropy.apply(rows, weight, labels, softcap)
    (2.5 * fused).backward()
    g_fused = rows.grad.clone()
    rows.grad = None
    logits = rows @ weight.T
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    plain = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
    (2.5 * plain).backward()
    assert abs(float(fused.detach()) - float(plain.detach())) < 1e-10
    assert float((g_fused - rows.grad).abs().max()) < 1e-10


def test_target_loss_uses_the_fused_head_only_for_a_frozen_head(tiny_base, monkeypatch):
    from alignlens.train import loss as loss_mod
    from alignlens.train.run import wrap_lora

    calls = []
    real = loss_mod._FrozenHeadCrossEntropy.apply
    monkeypatch.setattr(loss_mod._FrozenHeadCrossEntropy, "apply", lambda *a: calls.append(1) or real(*a))
    model, tok = _load(tiny_base)
    ids, tgt = collate(_examples(tok, per_language=2), tok.pad_token_id)
    lora = TargetLossModel(wrap_lora(model, TrainConfig.from_preset("default")))
    lora(ids, tgt)
    assert calls == [1]
    with torch.no_grad():  # validation: the plain path
        lora(ids, tgt)
    full, _ = _load(tiny_base)
    TargetLossModel(full)(ids, tgt)  # full fine-tuning trains the head: the plain path
    assert calls == [1]

