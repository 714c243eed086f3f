"""Cross-model activation patching (`alignlens.localize`): entering the decoder at a block
(`engine.decoder_pass`), the patched runs against a plain full forward with the same patch, the
checks of the design (self-patching, last block, attention-only LoRA) and the recovery statistics."""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest
import torch

from fixtures import one_thread, tiny_pair  # noqa: F401  (one_thread: autouse)

from alignlens import AlignlensError, data, distributed
from alignlens.engine import check_layer_entry, compose_cache, decoder_pass
from alignlens.labels import label_sets
from alignlens.localize import (Direction, PatchRun, Site, directions_by_name, log_odds, make_sites, patch_language,
                                recovery, reference_patch, run_patches)
from alignlens.localize import patching as patching_mod
from alignlens.localize.patching import prompt_tokens
from alignlens.localize.recovery import GAP_TOO_SMALL, item_weights

POSITIONS = ["last", "query", "all"]
TEXTS = ["A fine film.", "Dull and slow.", "I loved it!", "Bad acting, bad plot.", "Warm and funny.", "Boring."]


def short_spec() -> data.TaskSpec:
    """The emotion task with two short demonstrations, so tiny-model prompts stay under 64 tokens."""
    spec = data.load_task("emotion")
    demos = 'Great fun.\nEmotion: "positive"\nAwful.\nEmotion: "negative"'
    prompts = {lang: data.LanguagePrompt(demos, spec.prompts[lang].query_template) for lang in ("en", "de")}
    return dataclasses.replace(spec, prompts=prompts)


def short_items(lang: str = "en", n: int = 4) -> list[data.Item]:
    return [data.Item("emotion", lang, i, ("positive", "negative")[i % 2], {"input": TEXTS[i]}) for i in range(n)]


@pytest.fixture(scope="module")
def gemma_pair():
    """Tiny gemma3 base and its attention-LoRA copy; a sliding window longer than the prompts."""
    return tiny_pair("gemma3", n_layers=3, sliding_window=256)


def _probs(row: dict, labels) -> np.ndarray:
    return np.array([row["probs"][lab] for lab in labels])


def _patched(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["site"] != "clean"]


def _clean(rows: list[dict], model: str) -> dict[int, dict]:
    return {r["index"]: r for r in rows if r["site"] == "clean" and r["model"] == model}


# ---- entering the decoder at a block --------------------------------------------------------------


@pytest.mark.parametrize("arch,tok", [("gemma3", "sentencepiece"), ("llama", "bytelevel"), ("gpt2", "bytelevel")])
def test_entering_at_each_block_reproduces_a_full_pass_without_computing_the_blocks_below(arch, tok):
    base, _ = tiny_pair(arch, tok, n_layers=3, targets=("c_attn",) if arch == "gpt2" else ("q_proj", "v_proj"))
    n = base.n_layers
    ids = torch.tensor([[2, 10, 11, 12, 13, 14, 15, 16, 17]])
    rows: dict[int, torch.Tensor] = {}

    def keep(j):
        def hook(x, hook):
            rows[j] = x.clone()
            return x
        return hook

    names = [f"blocks.{j}.hook_resid_pre" for j in range(n)] + [f"blocks.{n - 1}.hook_resid_post"]
    full, _ = decoder_pass(base, ids=ids, fwd_hooks=[(name, keep(j)) for j, name in enumerate(names)])
    _, prefix = decoder_pass(base, ids=ids[:, :5], keep_cache=True)
    for layer in range(n + 1):
        fired: list[int] = []
        spy = (lambda name: name.startswith("blocks."), lambda x, hook: fired.append(int(hook.name.split(".")[1])))
        got, _ = decoder_pass(base, layer=layer, residual=rows[layer], fwd_hooks=[spy])
        assert torch.allclose(got, full, atol=1e-5), layer
        assert fired and min(fired, default=n) >= layer if layer < n else not fired
        # after a cached prefix: the suffix alone, entering at the block
        got, _ = decoder_pass(base, layer=layer, residual=rows[layer][:, 5:], cache=prefix)
        assert torch.allclose(got, full[:, 5:], atol=1e-5), layer
        # a prefix run entering at the block fills the blocks from there; the blocks below come from the full run
        _, from_layer = decoder_pass(base, layer=layer, residual=rows[layer][:, :5], keep_cache=True)
        got, _ = decoder_pass(base, layer=layer, residual=rows[layer][:, 5:],
                              cache=compose_cache(prefix, from_layer, layer))
        assert torch.allclose(got, full[:, 5:], atol=1e-5), layer
    again, _ = decoder_pass(base, ids=ids)  # the stubs are gone
    assert torch.allclose(again, full, atol=1e-6)


class _AddOutsideBody(torch.nn.Module):
    """A decoder whose loop adds each block's output to the residual itself (not `hidden = layer(hidden)`)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(20, 8)
        self.layers = torch.nn.ModuleList([torch.nn.Linear(8, 8) for _ in range(2)])
        self.norm = torch.nn.LayerNorm(8)

    def forward(self, input_ids=None, inputs_embeds=None, **kwargs):
        h = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        for layer in self.layers:
            h = h + layer(h)
        return types.SimpleNamespace(last_hidden_state=self.norm(h), past_key_values=None)


def test_entry_check_refuses_a_decoder_loop_it_cannot_enter():
    from alignlens.decoder_entry import check_entry

    body = _AddOutsideBody()
    with pytest.raises(AlignlensError, match="not supported for this architecture"):
        check_entry(body, body.norm, 2, 20, torch.device("cpu"))
    with pytest.raises(AlignlensError, match="not supported"):  # the verdict is remembered
        check_entry(body, body.norm, 2, 20, torch.device("cpu"))


def test_entry_check_passes_on_the_tiny_models(gemma_pair):
    check_layer_entry(gemma_pair[0])
    check_layer_entry(gemma_pair[1])


# ---- the design's checks ----------------------------------------------------------------------------


def test_patching_a_model_with_its_own_activations_changes_no_probability(gemma_pair, monkeypatch):
    base = gemma_pair[0]
    spec, items = short_spec(), short_items(n=4)
    widths: list[int] = []
    real = patching_mod.decoder_pass

    def spy(model, **kw):
        if kw.get("residual") is not None:
            widths.append(kw["residual"].shape[1])
        return real(model, **kw)

    monkeypatch.setattr(patching_mod, "decoder_pass", spy)
    rows = patch_language({"base": base, "aligned": base}, spec, "en", items, sites=make_sites(["resid", "attn", "mlp"], 3),
                          positions=POSITIONS, directions=directions_by_name(["a2b"]), batch_size=3)
    assert 1 in widths  # the one-token `last` runs ran
    clean = _clean(rows, "base")
    patched = _patched(rows)
    assert len(patched) == len(items) * (4 + 3 + 3) * 3
    worst = max(np.abs(_probs(r, spec.labels) - _probs(clean[r["index"]], spec.labels)).max() for r in patched)
    assert worst <= 1e-6


def test_patching_all_positions_at_the_last_block_gives_the_source_probabilities(gemma_pair):
    base, aligned = gemma_pair
    spec, items = short_spec(), short_items(n=4)
    rows = patch_language({"base": base, "aligned": aligned}, spec, "en", items, sites=[Site("resid", 3)],
                          positions=["all"], directions=directions_by_name(["a2b", "b2a"]))
    for d, source in (("a2b", "aligned"), ("b2a", "base")):
        src = _clean(rows, source)
        got = [r for r in rows if r["direction"] == d]
        assert len(got) == len(items)
        for r in got:
            assert np.abs(_probs(r, spec.labels) - _probs(src[r["index"]], spec.labels)).max() <= 1e-5
    gap = max(np.abs(_probs(a, spec.labels) - _probs(_clean(rows, "base")[i], spec.labels)).max()
              for i, a in _clean(rows, "aligned").items())
    assert gap > 1e-3  # the two models differ: the check could fail


def test_attention_only_lora_patching_every_attention_output_gives_the_aligned_model(gemma_pair):
    base, aligned = gemma_pair
    spec, items = short_spec(), short_items(n=4)
    a2b = Direction("a2b", "aligned", "base")
    runs = [PatchRun(a2b, tuple(Site("attn", l) for l in range(3)), "all"),
            PatchRun(a2b, tuple(Site("mlp", l) for l in range(3)), "all"),  # control: MLPs are not what changed
            PatchRun(a2b, (Site("attn", 0), Site("attn", 1)), "all")]  # control: every block's is needed
    rows = run_patches({"base": base, "aligned": aligned}, spec, "en", items, runs)
    want = _clean(rows, "aligned")

    def worst(site: str) -> float:
        got = [r for r in _patched(rows) if r["site"] == site]
        assert len(got) == len(items)
        return max(np.abs(_probs(r, spec.labels) - _probs(want[r["index"]], spec.labels)).max() for r in got)

    assert worst("attn@0,attn@1,attn@2") <= 1e-5
    assert worst("mlp@0,mlp@1,mlp@2") > 1e-3
    assert worst("attn@0,attn@1") > 1e-4


@pytest.mark.parametrize("arch,tok,overrides", [
    ("gemma3", "sentencepiece", {"sliding_window": 256}),
    ("gemma3", "sentencepiece", {"sliding_window": 24}),  # prompts beyond the window: full-suffix `last` runs
    ("llama", "bytelevel", {}),
    ("gpt2", "bytelevel", {}),
])
def test_patched_probabilities_equal_a_plain_forward_with_the_same_patch(arch, tok, overrides):
    base, aligned = tiny_pair(arch, tok, n_layers=3, targets=("c_attn",) if arch == "gpt2" else ("q_proj", "v_proj"),
                              **overrides)
    spec, items = short_spec(), short_items("de", n=3)
    models = {"base": base, "aligned": aligned}
    sites = make_sites(["resid", "attn", "mlp"], 3)
    directions = directions_by_name(["a2b", "b2a"])
    full, k = prompt_tokens(base.tokenizer, spec, "de", items)
    assert k > 0 and len({len(f) for f in full}) > 1  # a cached prefix and padded batches
    window = overrides.get("sliding_window")
    assert window is None or (window < 64) == (max(len(f) for f in full) >= window)  # 24: beyond it; 256: within
    sets = label_sets(base.tokenizer, spec.labels)
    runs = [((s,), p) for s in sites for p in POSITIONS]
    reference = {(i, d.name): reference_patch(models[d.source], models[d.receiver], full[i], k, runs, sets)
                 for i in range(len(items)) for d in directions}
    for one_token in (True, False):
        rows = patch_language(models, spec, "de", items, sites=sites, positions=POSITIONS, directions=directions,
                              batch_size=2, one_token_last=one_token)
        by_key = {(r["index"], r["direction"], r["site"], r["layer"], r["positions"]): r for r in _patched(rows)}
        assert len(by_key) == len(items) * len(directions) * len(sites) * 3
        worst = 0.0
        for i, it in enumerate(items):
            for d in directions:
                for ((s,), p), want in zip(runs, reference[(i, d.name)]):
                    row = by_key[(it.index, d.name, s.kind, s.layer, p)]
                    worst = max(worst, np.abs(_probs(row, spec.labels) - want).max())
                    assert row["pred"] == spec.labels[int(np.argmax(_probs(row, spec.labels)))]
                    assert row["logodds"] == pytest.approx(log_odds(_probs(row, spec.labels), spec.labels.index(it.label)))
        assert worst <= 1e-4, (one_token, worst)


def test_a_small_prefix_budget_splits_the_all_runs_into_passes_with_the_same_rows(gemma_pair):
    spec, items = short_spec(), short_items(n=3)
    models = {"base": gemma_pair[0], "aligned": gemma_pair[1]}
    kw = dict(sites=make_sites(["resid", "attn"], 3, [0, 2]), positions=POSITIONS,
              directions=directions_by_name(["a2b"]), batch_size=2)
    told: list[int] = []
    one = patch_language(models, spec, "en", items, **kw)
    many = patch_language(models, spec, "en", items, prefix_budget=1, progress=told.append, **kw)
    assert sum(told) == len(items) and len(told) > 2  # several passes, progress spread over them
    key = lambda r: (r["index"], r.get("model"), r["direction"], r["site"], r["layer"], r["positions"])  # noqa: E731
    a, b = {key(r): r for r in one}, {key(r): r for r in many}
    assert a.keys() == b.keys() and len(a) == len(one) == len(many)
    assert max(np.abs(_probs(a[x], spec.labels) - _probs(b[x], spec.labels)).max() for x in a) <= 1e-6


# ---- refusals and small parts ---------------------------------------------------------------------


def test_models_must_share_a_tokenizer_and_shapes(gemma_pair):
    other, _ = tiny_pair("llama", "bytelevel", n_layers=3)
    deeper, _ = tiny_pair("gemma3", n_layers=4)
    spec, items = short_spec(), short_items(n=2)
    kw = dict(sites=[Site("resid", 1)], positions=["last"], directions=directions_by_name(["a2b"]))
    with pytest.raises(AlignlensError, match="do not share a tokenizer"):
        patch_language({"base": gemma_pair[0], "aligned": other}, spec, "en", items, **kw)
    deeper.tokenizer = gemma_pair[0].tokenizer
    with pytest.raises(AlignlensError, match="differ in n_layers"):
        patch_language({"base": gemma_pair[0], "aligned": deeper}, spec, "en", items, **kw)
    with pytest.raises(AlignlensError, match="needs a model 'aligned'"):
        patch_language({"base": gemma_pair[0]}, spec, "en", items, **kw)
    pair = {"base": gemma_pair[0], "aligned": gemma_pair[1]}
    with pytest.raises(AlignlensError, match="unknown patching positions"):
        patch_language(pair, spec, "en", items, **{**kw, "positions": ["first"]})
    with pytest.raises(AlignlensError, match="batch size must be a positive integer"):
        patch_language(pair, spec, "en", items, batch_size=0, **kw)
    with pytest.raises(AlignlensError, match="not a site of a 3-block model"):
        patch_language(pair, spec, "en", items, **{**kw, "sites": [Site("attn", 3)]})
    assert patch_language(pair, spec, "en", [], **kw) == []


def test_patching_refuses_to_run_under_torchrun(gemma_pair, monkeypatch):
    monkeypatch.setattr(distributed, "world", lambda: distributed.World(rank=0, local_rank=0, size=2))
    with pytest.raises(AlignlensError, match="one process"):
        patch_language({"base": gemma_pair[0], "aligned": gemma_pair[1]}, short_spec(), "en", short_items(n=2),
                       sites=[Site("resid", 1)], positions=["last"], directions=directions_by_name(["a2b"]))


def test_sites_hooks_and_directions():
    sites = make_sites(["resid", "attn", "mlp"], 2)
    assert [(s.kind, s.layer) for s in sites] == [("resid", 0), ("resid", 1), ("resid", 2), ("attn", 0), ("attn", 1),
                                                  ("mlp", 0), ("mlp", 1)]
    assert [s.hook() for s in sites[:4]] == ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post",
                                              "blocks.1.hook_resid_post", "blocks.0.hook_attn_out"]
    assert [(s.kind, s.layer) for s in make_sites(["mlp", "resid"], 2, [2, 0])] == [("mlp", 0), ("resid", 0), ("resid", 2)]
    with pytest.raises(AlignlensError, match="layer 3 is outside 0..2"):
        make_sites(["resid"], 2, [3])
    with pytest.raises(AlignlensError, match="unknown patching site 'ffn'"):
        make_sites(["ffn"], 2)
    assert [(d.source, d.receiver) for d in directions_by_name(["a2b", "b2a", "c2b"])] == [
        ("aligned", "base"), ("base", "aligned"), ("control", "base")]
    with pytest.raises(AlignlensError, match="unknown patching direction"):
        directions_by_name(["x2y"])


def test_log_odds():
    assert log_odds(np.array([0.6, 0.2]), 0) == pytest.approx(np.log(3.0))
    assert log_odds(np.array([0.1, 0.2, 0.3]), 2) == pytest.approx(np.log(0.3 / 0.3))
    assert log_odds(np.array([0.1, 0.2, 0.3]), 0) == pytest.approx(np.log(0.1 / 0.5))
    assert np.isfinite(log_odds(np.array([0.0, 1.0]), 0))


# ---- recovery --------------------------------------------------------------------------------------


def _rows(langs, n_items, receiver, source, patched, site="attn", layer=1):
    """Synthetic rows: receiver/source/patched log-odds functions of (lang, item)."""
    out = []
    for lang in langs:
        for i in range(n_items):
            base = {"task": "emotion", "lang": lang, "index": i, "gold": ("positive", "negative")[i % 2]}
            for model, f in (("base", receiver), ("aligned", source)):
                out.append({**base, "model": model, "site": "clean", "direction": None, "logodds": f(lang, i)})
            out.append({**base, "direction": "a2b", "source": "aligned", "receiver": "base", "site": site,
                        "layer": layer, "positions": "last", "logodds": patched(lang, i)})
    return out


def test_recovery_is_the_ratio_of_mean_differences_with_an_interval():
    rng = np.random.default_rng(0)
    r = {(lang, i): rng.normal() for lang in ("de", "zh") for i in range(40)}
    gap = {(lang, i): 1.0 + 0.5 * rng.normal() for lang in ("de", "zh") for i in range(40)}
    noise = {(lang, i): 0.3 * rng.normal() for lang in ("de", "zh") for i in range(40)}
    rows = _rows(["de", "zh"], 40, lambda l, i: r[l, i], lambda l, i: r[l, i] + gap[l, i],
                 lambda l, i: r[l, i] + 0.5 * gap[l, i] + noise[l, i])
    out = recovery(rows, {"both": ["de", "zh"]}, n_resamples=500, seed=1)
    cell = {(c["scope"], c["name"]): c for c in out}
    for name, langs in (("de", ["de"]), ("zh", ["zh"]), ("both", ["de", "zh"])):
        c = cell[("group" if name == "both" else "language", name)]
        keys = [(l, i) for l in langs for i in range(40)]
        want = sum(0.5 * gap[k] + noise[k] for k in keys) / sum(gap[k] for k in keys)
        assert c["status"] == "ok" and c["n_items"] == 40 and c["recovery"] == pytest.approx(want)
        assert c["gap"] == pytest.approx(np.mean([gap[k] for k in keys]))
        lo, hi = c["recovery_ci95"]
        assert lo < want < hi and hi - lo < 0.5
        assert c["gap_ci95"][0] > 0 and c["gap_mde80"] > 0
    assert recovery(rows, {"both": ["de", "zh"]}, n_resamples=500, seed=1) == out  # deterministic


def test_recovery_is_withheld_where_the_gap_is_not_significant():
    rng = np.random.default_rng(2)
    g = rng.normal(size=30)
    g -= g.mean()  # no gap on average
    rows = _rows(["de"], 30, lambda l, i: 0.0, lambda l, i: g[i], lambda l, i: 0.5 * g[i])
    (c,) = [c for c in recovery(rows, {}, n_resamples=400) if c["scope"] == "language"]
    assert c["status"] == GAP_TOO_SMALL and c["recovery"] is None and c["recovery_ci95"] is None
    assert c["gap_ci95"][0] < 0 < c["gap_ci95"][1] and c["gap_mde80"] > 0


def test_recovery_refuses_incomplete_rows_and_inconsistent_gold():
    rows = _rows(["de"], 6, lambda l, i: 0.0, lambda l, i: 1.0, lambda l, i: 0.5)
    with pytest.raises(AlignlensError, match="no a2b attn layer 1 last row for item 5"):
        recovery([r for r in rows if not (r["site"] != "clean" and r["index"] == 5)], {}, n_resamples=10)
    rows2 = _rows(["de", "zh"], 6, lambda l, i: 0.0, lambda l, i: 1.0, lambda l, i: 0.5)
    for r in rows2:
        if r["lang"] == "zh" and r["index"] == 0:
            r["gold"] = "negative"
    with pytest.raises(AlignlensError, match="gold labels"):
        recovery(rows2, {"both": ["de", "zh"]}, n_resamples=10)


def test_item_weights_keep_each_label_count_and_are_deterministic():
    gold = np.array([0, 0, 0, 1, 1, 2, 0, 1])
    blocks = list(item_weights(gold, 300, seed=3, chunk=128))
    assert [b.shape for b in blocks] == [(128, 8), (128, 8), (44, 8)]
    w = np.concatenate(blocks)
    for c in (0, 1, 2):
        assert np.all(w[:, gold == c].sum(1) == (gold == c).sum())
    assert np.all(w[:, gold == 2] == 1)  # a one-item stratum is always drawn once
    assert w.std(0).min() >= 0 and w[:, gold == 0].std() > 0
    assert all(np.array_equal(a, b) for a, b in zip(blocks, item_weights(gold, 300, seed=3, chunk=128)))


# ---- the real model -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma_aligned(gemma):
    """Gemma-3-270m changed by a merged random LoRA on q_proj/v_proj (a stand-in for an aligned model)."""
    from fixtures import lora_merged

    from alignlens.model import LoadedModel, load_hf, wrap_bridge

    hf, _, _ = load_hf("gemma-3-270m", "cpu", "float32", tokenizer=gemma.tokenizer)
    hf = lora_merged(hf, r=8, scale=0.02)
    return LoadedModel(wrap_bridge("gemma-lora", hf, gemma.tokenizer, gemma.device, gemma.dtype), gemma.tokenizer,
                       "gemma-lora", "gemma-lora", None, gemma.device, gemma.dtype)


@pytest.mark.integration
def test_gemma_patched_probabilities_equal_a_plain_forward(gemma, gemma_aligned):
    spec = data.load_task("emotion")
    items = [it for it in data.load_items(spec, "zh", limit=24) if it.index in (11, 20)]
    models = {"base": gemma, "aligned": gemma_aligned}
    sites = make_sites(["resid", "attn", "mlp"], gemma.n_layers, [0, 9, gemma.n_layers])
    rows = patch_language(models, spec, "zh", items, sites=sites, positions=POSITIONS,
                          directions=directions_by_name(["a2b"]), batch_size=2)
    full, k = prompt_tokens(gemma.tokenizer, spec, "zh", items)
    sets = label_sets(gemma.tokenizer, spec.labels)
    by_key = {(r["index"], r["site"], r["layer"], r["positions"]): r for r in _patched(rows)}
    runs = [((s,), p) for s in sites for p in POSITIONS]
    worst = 0.0
    for i, it in enumerate(items):
        for ((s,), p), want in zip(runs, reference_patch(gemma_aligned, gemma, full[i], k, runs, sets)):
            worst = max(worst, np.abs(_probs(by_key[(it.index, s.kind, s.layer, p)], spec.labels) - want).max())
    assert worst <= 1e-4
    src, rcv = _clean(rows, "aligned"), _clean(rows, "base")
    assert max(np.abs(_probs(src[i], spec.labels) - _probs(rcv[i], spec.labels)).max() for i in src) > 1e-3


@pytest.mark.integration
def test_gemma_self_patching_changes_no_probability(gemma):
    """<= 1e-6 where the patched run repeats the clean run's products (full-suffix runs); the one-token
    `last` runs multiply [batch, 1] instead of [batch, width] matrices, another rounding: <= 1e-5."""
    spec = data.load_task("emotion")
    items = [it for it in data.load_items(spec, "zh", limit=24) if it.index in (11, 20)]
    for one_token, limit in ((False, 1e-6), (True, 1e-5)):
        rows = patch_language({"base": gemma, "aligned": gemma}, spec, "zh", items,
                              sites=make_sites(["resid", "attn", "mlp"], gemma.n_layers, [0, 9, 17]),
                              positions=POSITIONS, directions=directions_by_name(["a2b"]), batch_size=2,
                              one_token_last=one_token)
        clean = _clean(rows, "base")
        assert max(np.abs(_probs(r, spec.labels) - _probs(clean[r["index"]], spec.labels)).max()
                   for r in _patched(rows)) <= limit
