"""Localisation by steering (the alignment direction) and by weight scale (W + α·ΔW of a LoRA adapter),
on tiny random models with a LoRA built by peft (random nonzero B) or trained by `alignlens train`."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from alignlens import AlignlensError, data
from alignlens.engine import cached_lengths, encode
from alignlens.evaluate import evaluate_language
from alignlens.labels import label_sets
from alignlens.localize import compare
from alignlens.localize.dose import check_adapter_base, dose_language, dose_summary
from alignlens.localize.steering import (
    Direction, alignment_directions, direction_items, query_means, random_directions, resid_hook, steer_language,
    steering_summary,
)
from alignlens.model import load_model
from alignlens.paired import cluster_bootstrap_delta
from alignlens.train.adapters import adapter_parameters, read_adapter, scaled_weights
from fixtures import one_thread, tiny_hf_model, tiny_tokenizer  # noqa: F401  (module fixture)

LANGS = ("en", "de")


def _mini_task(folder) -> data.TaskSpec:
    """A two-label task with short prompts (emotion's demonstrations, its first 16 items cut to 60
    characters) in English and German: items 0-7 are evaluated, 8-15 are the default training split."""
    emotion = data.load_task("emotion")
    langs = {}
    folder.mkdir()
    for lang in LANGS:
        p = emotion.prompts[lang]
        langs[lang] = {"demonstrations": p.demonstrations, "query_template": p.query_template}
        rows = [{"index": it.index, "label": it.label, "input": it.fields["input"][:60]}
                for it in data.load_items(emotion, lang, limit=16)]
        (folder / f"{lang}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    spec = {"labels": list(emotion.labels), "fields": ["input"], "languages": langs}
    (folder / "task.json").write_text(json.dumps(spec), encoding="utf-8")
    return data.load_task(str(folder))


def _lora(hf, targets, seed=1, b_std=0.3, **cfg):
    """A peft LoRA wrap of a copy of `hf` with random nonzero A and B."""
    from peft import LoraConfig, get_peft_model

    pm = get_peft_model(copy.deepcopy(hf), LoraConfig(target_modules=list(targets), **cfg))
    torch.manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, b_std)
    return pm


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(root, base, aligned, control, spec): a tiny gemma3 base, its LoRA-merged "aligned" model
    (adapter in root/adapter, rank_pattern and alpha_pattern set) and another LoRA as a "control"."""
    root = tmp_path_factory.mktemp("pair")
    tok = tiny_tokenizer()
    hf = tiny_hf_model("gemma3", tok, seed=0, n_layers=2)
    hf.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    pm = _lora(hf, ["q_proj", "v_proj", "down_proj"], r=4, lora_alpha=8, rank_pattern={"down_proj": 2},
               alpha_pattern={"v_proj": 3})
    pm.save_pretrained(root / "adapter")
    pm.merge_and_unload().save_pretrained(root / "merged")
    tok.save_pretrained(root / "merged")
    _lora(hf, ["o_proj"], seed=2, r=2, lora_alpha=2).merge_and_unload().save_pretrained(root / "control")
    tok.save_pretrained(root / "control")
    spec = _mini_task(root / "mini")
    return root, load_model(str(root / "base")), load_model(str(root / "merged")), load_model(str(root / "control")), spec


def _rel(a, b):
    """Largest relative difference of probabilities a and b (the tiny models put little mass on labels)."""
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b)) / np.abs(np.asarray(b))))


def _probs(rows, labels, **where):
    sel = [r for r in rows if all(r[k] == v for k, v in where.items())]
    return np.array([[r["probs"][lab] for lab in labels] for r in sel]), [r["index"] for r in sel]


# ---- adapters ---------------------------------------------------------------------------------


def test_delta_equals_merged_minus_base(pair):
    from safetensors.torch import load_file

    root = pair[0]
    adapter = read_adapter(root)
    wb, wm = load_file(root / "base" / "model.safetensors"), load_file(root / "merged" / "model.safetensors")
    changed = {k for k in wb if not torch.equal(wb[k], wm[k])}
    assert changed == set(adapter.weight_names()) and len(changed) == 6
    for module, delta in adapter.deltas.items():
        assert float((wm[f"{module}.weight"] - wb[f"{module}.weight"] - delta).abs().max()) <= 1e-6
    assert adapter.rank["model.layers.0.mlp.down_proj"] == 2 and adapter.scaling["model.layers.0.mlp.down_proj"] == 4.0
    assert adapter.scaling["model.layers.1.self_attn.v_proj"] == 3 / 4 and adapter.scaling["model.layers.1.self_attn.q_proj"] == 2.0


def test_delta_fan_in_fan_out_and_rslora(tmp_path):
    """GPT-2's Conv1D stores [in, out] (fan_in_fan_out: ΔW transposed); rsLoRA scales by alpha / sqrt(r)."""
    tok = tiny_tokenizer("bytelevel")
    hf = tiny_hf_model("gpt2", tok, seed=0)
    pm = _lora(hf, ["c_attn", "c_fc"], r=4, lora_alpha=6, fan_in_fan_out=True, use_rslora=True)
    pm.save_pretrained(tmp_path / "adapter")
    merged = pm.merge_and_unload()
    adapter = read_adapter(tmp_path / "adapter")
    base, new = dict(hf.named_parameters()), dict(merged.named_parameters())
    assert len(adapter.deltas) == 4 and all(s == 3.0 for s in adapter.scaling.values())
    for module, delta in adapter.deltas.items():
        assert float((new[f"{module}.weight"] - base[f"{module}.weight"] - delta).detach().abs().max()) <= 1e-6


def test_scaled_weights_and_exact_restore(pair):
    _, base, _, _, _ = pair
    adapter = read_adapter(pair[0])
    before = {n: p.detach().clone() for n, p in base.hf_model.named_parameters()}
    params = adapter_parameters(base.hf_model, adapter)
    module = "model.layers.1.self_attn.q_proj"
    w0 = params[module].detach().clone()
    with scaled_weights(base.hf_model, adapter, 0.7):
        assert float((params[module].detach() - (w0 + 0.7 * adapter.deltas[module])).abs().max()) <= 1e-6
        assert float((params[module].detach() - w0).abs().max()) > 1e-2
    with pytest.raises(RuntimeError, match="inside"):
        with scaled_weights(base.hf_model, adapter, -1.5):
            raise RuntimeError("inside")
    with scaled_weights(base.hf_model, adapter, 0.0):
        assert all(torch.equal(p, before[n]) for n, p in base.hf_model.named_parameters())
    # restored: the same tensors, bit for bit (one path: a copy put back)
    assert all(torch.equal(p, before[n]) for n, p in base.hf_model.named_parameters())


def test_dose_alpha_zero_is_base_and_one_is_merged(pair):
    _, base, aligned, _, spec = pair
    adapter = read_adapter(pair[0])
    items = data.load_items(spec, "de")[:4]
    rows = dose_language(base, adapter, spec, "de", items, [0, 1, 0.5])
    labels = list(spec.labels)
    ref_base = evaluate_language(base, spec, "de", items, batch_size=8)
    ref_aligned = evaluate_language(aligned, spec, "de", items, batch_size=8)
    p0, ids = _probs(rows, labels, alpha=0.0)
    p1, _ = _probs(rows, labels, alpha=1.0)
    ph, _ = _probs(rows, labels, alpha=0.5)
    assert ids == [it.index for it in items]
    assert _rel(p0, ref_base.probs) <= 1e-6
    assert _rel(p1, ref_aligned.probs) <= 1e-5
    assert _rel(ref_aligned.probs, ref_base.probs) > 0.05  # the adapter matters at this tolerance
    assert _rel(ph, p0) > 1e-2 and _rel(ph, p1) > 1e-2
    cf1 = rows[[r["alpha"] for r in rows].index(1.0)]["p_content_free"]
    assert _rel([cf1[k] for k in labels], ref_aligned.p_content_free) <= 1e-5
    summary = dose_summary(rows, n_resamples=100)
    assert summary["alphas"] == [0.0, 0.5, 1.0] and summary["by_alpha"]["0"]["vs_base"] is None
    lang = summary["by_alpha"]["1"]["metrics"][spec.name]["languages"]["de"]
    assert lang["calibrated_accuracy"] is not None and abs(sum(lang["shares"].values()) - 1) < 1e-12
    assert summary["by_alpha"]["0.5"]["vs_base"][spec.name]["languages"]["de"]["n"] == 4


def test_dose_refusals(pair, tmp_path):
    _, base, _, _, spec = pair
    adapter = read_adapter(pair[0])
    items = data.load_items(spec, "de")[:2]
    with pytest.raises(AlignlensError, match="twice"):
        dose_language(base, adapter, spec, "de", items, [0, 1, 0.0])
    with pytest.raises(AlignlensError, match="finite"):
        dose_language(base, adapter, spec, "de", items, [float("nan")])
    other = copy.copy(adapter)
    other.base_model = {"spec": "elsewhere", "hash": "0" * 64}
    base_hash = base.hash
    base.hash = "f" * 64
    try:
        with pytest.raises(AlignlensError, match="trained on base model elsewhere"):
            check_adapter_base(base, other)
    finally:
        base.hash = base_hash
    tok = tiny_tokenizer()
    _lora(tiny_hf_model("gemma3", tok, seed=0, n_layers=3), ["down_proj"], r=2, lora_alpha=2).save_pretrained(
        tmp_path / "a3")
    deeper = read_adapter(tmp_path / "a3")
    with pytest.raises(AlignlensError, match="model.layers.2.mlp.down_proj, which this model does not have"):
        adapter_parameters(tiny_hf_model("gemma3", tok, seed=0, n_layers=2), deeper)
    with pytest.raises(AlignlensError, match=r"has weight \(64, 128\) in this model but ΔW \(64, 96\)"):
        adapter_parameters(tiny_hf_model("gemma3", tok, seed=0, n_layers=3, intermediate_size=128), deeper)


@pytest.mark.parametrize("change,message", [
    ({"use_dora": True}, "DoRA"), ({"peft_type": "IA3"}, "not LoRA"), ({"lora_bias": True}, "LoRA biases"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"), ({"r": 0}, "positive"),
])
def test_adapter_config_refusals(pair, tmp_path, change, message):
    import shutil

    shutil.copytree(pair[0] / "adapter", tmp_path / "adapter")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    cfg.update(change)
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AlignlensError, match=message):
        read_adapter(tmp_path)


def test_adapter_file_refusals(pair, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    with pytest.raises(AlignlensError, match="no LoRA adapter"):
        read_adapter(tmp_path)
    (tmp_path / "full" / "merged").mkdir(parents=True)
    with pytest.raises(AlignlensError, match="full fine-tuning"):
        read_adapter(tmp_path / "full")
    shutil.copytree(pair[0] / "adapter", tmp_path / "emb")
    weights = tmp_path / "emb" / "adapter_model.safetensors"
    tensors = load_file(weights)
    save_file({**tensors, "base_model.model.model.embed_tokens.lora_embedding_A": torch.ones(2, 8)}, weights)
    with pytest.raises(AlignlensError, match="not a plain LoRA weight"):
        read_adapter(tmp_path / "emb")
    save_file({k: v for k, v in tensors.items() if "layers.0.self_attn.q_proj.lora_B" not in k}, weights)
    with pytest.raises(AlignlensError, match="has lora_A but no lora_B"):
        read_adapter(tmp_path / "emb")
    weights.unlink()
    with pytest.raises(AlignlensError, match="missing"):
        read_adapter(tmp_path / "emb")


def test_trainer_output_dose_reproduces_its_merged_model(tmp_path):
    """An `alignlens train` LoRA run: ΔW from its adapter/ equals merged/ − base, and α = 1 on the base
    model reproduces merged/'s probabilities (the trainer's own merge)."""
    from safetensors.torch import load_file

    from alignlens.train import TrainConfig, train
    from fixtures import save_tiny_base

    base_dir = save_tiny_base(tmp_path / "base", "gemma3", seed=0)
    cfg = TrainConfig.from_preset("default", languages=["de"], per_language=8, val_fraction=0.0, max_len=160,
                                  batch_size=4, epochs=1, lr=5e-2, eval_every=0, save_every=0, seed=0)
    train(cfg, str(base_dir), tmp_path / "run", progress=False)
    adapter = read_adapter(tmp_path / "run")
    assert adapter.base_model is not None and sorted({m.rsplit(".", 1)[1] for m in adapter.deltas}) == ["q_proj", "v_proj"]
    wb, wm = load_file(base_dir / "model.safetensors"), load_file(tmp_path / "run" / "merged" / "model.safetensors")
    for module, delta in adapter.deltas.items():
        assert float((wm[f"{module}.weight"] - wb[f"{module}.weight"] - delta).abs().max()) <= 1e-6
    base, merged = load_model(str(base_dir)), load_model(str(tmp_path / "run"))
    assert adapter.base_model["hash"] == base.hash  # what check_adapter_base compares
    check_adapter_base(base, adapter)
    spec = data.load_task("snli")
    items = data.load_items(spec, "de", limit=2)
    rows = dose_language(base, adapter, spec, "de", items, [1.0])
    p1, _ = _probs(rows, list(spec.labels))
    ref = evaluate_language(merged, spec, "de", items).probs
    assert _rel(p1, ref) <= 1e-5
    assert _rel(evaluate_language(base, spec, "de", items).probs, ref) > 1e-3  # training changed the model


# ---- the direction ------------------------------------------------------------------------------


def test_direction_uses_training_items_only(pair):
    _, base, aligned, _, spec = pair
    evaluated = [it.index for it in data.load_items(spec, "en")[:8]]
    chosen = direction_items(spec, LANGS, exclude=evaluated, limit=3)
    assert {lang: [it.index for it in items] for lang, items in chosen.items()} == {"en": [8, 9, 10], "de": [8, 9, 10]}
    d = alignment_directions(base, aligned, spec, chosen, [0, 1, 2], exclude=evaluated)
    assert d.item_ids == {"en": [8, 9, 10], "de": [8, 9, 10]} and not set(evaluated) & set(d.item_ids["de"])
    recorded = direction_items(spec, ["de"], alignment={"task": spec.name, "train_items": (12, 14)}, exclude=evaluated)
    assert [it.index for it in recorded["de"]] == [12, 14]
    by_folder = direction_items(spec, ["de"], alignment={"task": "renamed", "task_folder": str(spec.folder),
                                                         "train_items": (13,)})
    other_task = direction_items(spec, ["de"], alignment={"task": "snli", "train_items": (300, 301)}, limit=2)
    assert [it.index for it in by_folder["de"]] == [13] and [it.index for it in other_task["de"]] == [8, 9]
    with pytest.raises(AlignlensError, match="evaluated item"):
        direction_items(spec, ["de"], exclude=[0, 9])
    with pytest.raises(AlignlensError, match="evaluated item"):
        alignment_directions(base, aligned, spec, {"de": data.load_items(spec, "de")[:2]}, [1], exclude=evaluated)


def _full_forward_query_mean(model, spec, lang, item, layer, k):
    """Independent: the whole prompt in one plain forward, the residual at `layer` averaged over positions >= k."""
    ids = torch.tensor(encode(model.tokenizer, [data.build_prompt(spec, lang, item)]))
    seen = {}

    def keep(x, hook):
        seen["x"] = x[0, k:].double().mean(0)
        return x

    with torch.no_grad(), model.bridge.hooks(fwd_hooks=[(resid_hook(layer), keep)]):
        model.hf_model(input_ids=ids)
    return seen["x"]


def _k(model, spec, lang, items):
    """The few-shot prefix tokens the engine caches with probes (`cached_lengths`)."""
    full = encode(model.tokenizer, [data.build_prompt(spec, lang, it) for it in items])
    return cached_lengths(encode(model.tokenizer, [data.prompt_prefix(spec, lang)])[0], full, len(full))[0]


def test_direction_is_the_mean_query_difference(pair):
    _, base, aligned, _, spec = pair
    chosen = direction_items(spec, LANGS, limit=2)
    layers = [0, 1, 2]
    d = alignment_directions(base, aligned, spec, chosen, layers, batch_size=1)
    expected = {layer: torch.zeros(base.d_model, dtype=torch.float64) for layer in layers}
    for lang, items in chosen.items():
        k = _k(base, spec, lang, items)
        for layer in layers:
            diff = [_full_forward_query_mean(aligned, spec, lang, it, layer, k)
                    - _full_forward_query_mean(base, spec, lang, it, layer, k) for it in items]
            expected[layer] += torch.stack(diff).mean(0) / len(chosen)
    assert float(d.vectors[0].abs().max()) <= 1e-6  # the LoRA leaves the embeddings alone
    for layer in (1, 2):
        assert float(d.vectors[layer].norm()) > 1e-2
        assert float((d.vectors[layer] - expected[layer]).abs().max()) <= 1e-5
    same, _ = query_means(base, spec, "de", chosen["de"], [2], batch_size=2)
    again, _ = query_means(base, spec, "de", chosen["de"], [2], batch_size=1)
    assert float((same - again).abs().max()) <= 1e-5


def test_random_directions_have_the_directions_norms():
    v = {0: torch.zeros(8, dtype=torch.float64), 3: torch.arange(8.0, dtype=torch.float64),
         5: torch.ones(8, dtype=torch.float64)}
    d = Direction("alignment", v, {"de": [1, 2]})
    rand = random_directions(d, [0, 1, 2])
    for r in rand:
        assert r.kind == "random" and r.item_ids == {"de": [1, 2]}
        for layer, norm in d.norms().items():
            assert abs(r.norms()[layer] - norm) <= 1e-9 * max(1.0, norm)
    assert float((rand[0].vectors[3] - rand[1].vectors[3]).abs().max()) > 0.1
    only3 = random_directions(Direction("alignment", {3: v[3]}), [0])[0]
    assert float((only3.vectors[3] - rand[0].vectors[3]).abs().max()) <= 1e-12  # depends on (seed, layer) only


# ---- steering -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def steered(pair):
    _, base, aligned, control, spec = pair
    chosen = direction_items(spec, LANGS, limit=3)
    d = alignment_directions(base, aligned, spec, chosen, [1, 2])
    c = alignment_directions(base, control, spec, chosen, [1, 2], kind="control")
    dirs = [d, c] + random_directions(d, [0])
    rows = []
    for lang in LANGS:
        rows += steer_language(base, spec, lang, data.load_items(spec, lang)[:8], dirs, [1, 2], [0.0, 8.0],
                               batch_size=4)
    return dirs, rows


def test_steering_scale_zero_equals_base(pair, steered):
    spec = pair[4]
    _, rows = steered
    labels = list(spec.labels)
    for lang in LANGS:
        base, ids = _probs(rows, labels, lang=lang, direction_kind="base")
        assert ids == list(range(8))
        for kind in ("alignment", "control", "random"):
            for layer in (1, 2):
                zero, zids = _probs(rows, labels, lang=lang, direction_kind=kind, layer=layer, scale=0.0)
                moved, _ = _probs(rows, labels, lang=lang, direction_kind=kind, layer=layer, scale=8.0)
                assert zids == ids and _rel(zero, base) <= 1e-6
                assert _rel(moved, base) > 1e-2


def test_steering_equals_a_full_forward_with_the_addition(pair, steered):
    """Steered probabilities equal one plain whole-prompt forward per item with s·v added at the
    query positions (>= the cached prefix length) at the layer's hook."""
    _, base, _, _, spec = pair
    dirs, rows = steered
    labels = list(spec.labels)
    sets = label_sets(base.tokenizer, spec.labels)
    items = data.load_items(spec, "de")[:8]
    k = _k(base, spec, "de", items)
    for layer in (1, 2):
        got, _ = _probs(rows, labels, lang="de", direction_kind="alignment", layer=layer, scale=8.0)
        add = 8.0 * dirs[0].vectors[layer].float()

        def steer(x, hook):
            x = x.clone()
            x[:, k:] += add
            return x

        ref = []
        for it in items[:3]:
            ids = torch.tensor(encode(base.tokenizer, [data.build_prompt(spec, "de", it)]))
            with torch.no_grad(), base.bridge.hooks(fwd_hooks=[(resid_hook(layer), steer)]):
                p = torch.softmax(base.hf_model(input_ids=ids).logits[0, -1].float(), -1)
            ref.append([float(p[list(s)].sum()) for s in sets])
        assert _rel(got[:3], np.array(ref)) <= 1e-4


def test_steering_summary(pair, steered):
    spec = pair[4]
    _, rows = steered
    s = steering_summary(rows, {"all": list(LANGS), "de": ["de"]}, n_resamples=200)
    conds = {(c["direction_kind"], c["direction_seed"], c["layer"], c["scale"]): c for c in s["conditions"]}
    assert len(conds) == 3 * 2 * 2
    a = conds[("alignment", None, 2, 8.0)]
    assert set(a["vs"]) == {"base", "control", "random:0"}
    assert set(conds[("random", 0, 2, 8.0)]["vs"]) == {"base"}
    g = a["vs"]["base"][spec.name]["groups"]["all"]
    assert g["n_items"] == 8 and set(g["shares"]) == set(spec.labels) and g["auc"] is not None
    assert g["prior_only"] in (True, False)
    lang = a["vs"]["base"][spec.name]["languages"]["de"]
    assert lang["n"] == 8 and lang["p_holm"] >= lang["mcnemar"]["p_value"]
    zero = conds[("alignment", None, 2, 0.0)]["vs"]["base"][spec.name]["groups"]["all"]
    assert zero["accuracy"]["delta"] == 0.0 and zero["prior_only"] is False


# ---- the paired effects ---------------------------------------------------------------------------


def _rows(probs, gold, lang="de", task="t", labels=("no", "yes")):
    return [{"task": task, "lang": lang, "index": i, "gold": labels[g], "probs": dict(zip(labels, map(float, p))),
             "pred": labels[int(np.argmax(p))]} for i, (p, g) in enumerate(zip(probs, gold))]


def test_weighted_auc_and_group_bootstrap_match_paired():
    from alignlens import metrics as M

    rng = np.random.default_rng(0)
    n = 40
    gold = rng.integers(0, 2, n)
    pa = rng.uniform(size=n)
    pa[:6] = 0.5  # ties
    pb = np.clip(pa + 0.3 * (gold - 0.5) + rng.normal(0, 0.1, n), 0.01, 0.99)
    w = rng.integers(0, 3, size=(5, n)).astype(float)
    for row in w:
        sel = np.repeat(np.arange(n), row.astype(int))
        assert abs(compare.weighted_auc(gold, pa, row[None])[0] - M.roc_auc(gold[sel], pa[sel])) <= 1e-12
    langs = {"de": (pa, pb), "sw": (pb, pa * 0.5 + 0.2)}
    rows_a = sum((_rows(np.c_[1 - a, a], gold, lang) for lang, (a, _) in langs.items()), [])
    rows_b = sum((_rows(np.c_[1 - b, b], gold, lang) for lang, (_, b) in langs.items()), [])
    eff = compare.paired_effects(rows_a, rows_b, {"all": ["de", "sw"]}, n_resamples=300, seed=3)["t"]["groups"]["all"]

    def ranks(x):  # AUC depends on ranks only: integer ranks pass through cluster_bootstrap_delta's pred
        return np.unique(x, return_inverse=True)[1]

    ref = cluster_bootstrap_delta({l: gold for l in langs}, {l: ranks(a) for l, (a, _) in langs.items()},
                                  {l: ranks(b) for l, (_, b) in langs.items()}, {l: list(range(n)) for l in langs},
                                  {"all": ["de", "sw"]}, metric=lambda g, s: M.roc_auc(g, s), n_resamples=300, seed=3)
    assert abs(eff["auc"]["delta"] - ref["all"]["delta"]) <= 1e-12
    assert np.allclose(eff["auc"]["ci95"], ref["all"]["ci95"], atol=1e-12) and eff["auc"]["n_undefined"] == 0
    share = cluster_bootstrap_delta({l: gold for l in langs},  # the same label-stratified draws; metric: share "yes"
                                    {l: (a > 0.5).astype(int) for l, (a, _) in langs.items()},
                                    {l: (b > 0.5).astype(int) for l, (_, b) in langs.items()},
                                    {l: list(range(n)) for l in langs}, {"all": ["de", "sw"]},
                                    metric=lambda g, p: float(np.mean(p == 1)), n_resamples=300, seed=3)
    assert abs(eff["shares"]["yes"]["delta"] - share["all"]["delta"]) <= 1e-12
    assert np.allclose(eff["shares"]["yes"]["ci95"], share["all"]["ci95"], atol=1e-12)


def test_prior_only_flag():
    rng = np.random.default_rng(1)
    n = 60
    gold = np.repeat([0, 1], n // 2)
    score = np.clip(0.5 + 0.15 * (gold - 0.5) + rng.normal(0, 0.12, n), 0.02, 0.98)
    base = _rows(np.c_[1 - score, score], gold)
    shifted = score ** 0.3  # monotone: the same ranking (AUC), most items now predicted "yes"
    prior = compare.paired_effects(base, _rows(np.c_[1 - shifted, shifted], gold), n_resamples=500)["t"]["groups"]["all"]
    assert prior["auc"]["delta"] == 0.0 and prior["shares"]["yes"]["ci95"][0] > 0 and prior["prior_only"] is True
    better = np.where(gold == 1, 0.8, 0.2)  # ranks perfectly, shares stay balanced
    real = compare.paired_effects(base, _rows(np.c_[1 - better, better], gold), n_resamples=500)["t"]["groups"]["all"]
    assert real["auc"]["ci95"][0] > 0 and real["prior_only"] is False and real["accuracy_moved"] is True
    three = _rows(np.c_[score, 1 - score, np.full(n, 0.1)], gold, labels=("a", "b", "c"))
    assert compare.paired_effects(three, three, n_resamples=50)["t"]["groups"]["all"]["prior_only"] is None


# ---- the real model -------------------------------------------------------------------------------


@pytest.mark.integration
def test_gemma_steering_equals_full_forward(gemma):
    spec = data.load_task("emotion")
    items = data.load_items(spec, "de", limit=2)
    rng = np.random.default_rng(0)
    v = torch.from_numpy(rng.standard_normal(gemma.d_model))
    layer = 9
    d = Direction("random", {layer: v * (20.0 / float(v.norm()))}, seed=0)
    rows = steer_language(gemma, spec, "de", items, [d], [layer], [0.0, 1.0], batch_size=2)
    labels = list(spec.labels)
    base, _ = _probs(rows, labels, direction_kind="base")
    zero, _ = _probs(rows, labels, direction_kind="random", scale=0.0)
    got, _ = _probs(rows, labels, direction_kind="random", scale=1.0)
    assert _rel(zero, base) <= 1e-6
    assert _rel(got, base) > 1e-2
    k = _k(gemma, spec, "de", items)
    sets = label_sets(gemma.tokenizer, spec.labels)
    add = d.vectors[layer].float()

    def steer(x, hook):
        x = x.clone()
        x[:, k:] += add
        return x

    for i, it in enumerate(items):
        ids = torch.tensor(encode(gemma.tokenizer, [data.build_prompt(spec, "de", it)]))
        with torch.no_grad(), gemma.bridge.hooks(fwd_hooks=[(resid_hook(layer), steer)]):
            p = torch.softmax(gemma.hf_model(input_ids=ids).logits[0, -1].float(), -1)
        assert _rel(got[i], np.array([float(p[list(s)].sum()) for s in sets])) <= 1e-4
