"""The scripted hook experiments in analyses/ run on the public API."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from alignlens import AlignlensError

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "analyses" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ablation_hooks_zero_exactly_the_chosen_neurons(tiny_gemma):
    mod = _load("ablate_language_neurons")
    seen = {}

    def record(x, hook):
        seen[hook.name] = x.detach().clone()
        return x

    ids = torch.tensor([tiny_gemma.tokenizer("Hallo Welt, wie geht es?").input_ids])
    hooks = mod.ablation_hooks([(0, 3), (0, 5), (1, 7)])
    with tiny_gemma.bridge.hooks(fwd_hooks=hooks + [("blocks.0.mlp.hook_post", record), ("blocks.1.mlp.hook_post", record)]):
        tiny_gemma.hf_model(ids)
    post0 = next(v for k, v in seen.items() if k.startswith("blocks.0"))
    post1 = next(v for k, v in seen.items() if k.startswith("blocks.1"))
    assert torch.all(post0[..., [3, 5]] == 0) and torch.all(post1[..., 7] == 0)
    assert post0[..., 4].abs().sum() > 0 and post1[..., 6].abs().sum() > 0


def test_ablation_experiment_runs_and_changes_the_ablated_language(tiny_gemma, tmp_path):
    mod = _load("ablate_language_neurons")
    result = mod.run(tiny_gemma, "de", ["en", "de", "hi"], task="snli", limit=4, top=8, batch_size=4, top_rate=0.2,
                     n_resamples=200)
    assert result["n_neurons"] == 8 and len(result["neurons"]) == 8
    assert set(result["per_language"]) == {"en", "de", "hi"}
    de = result["per_language"]["de"]
    assert de["p_gold_ablated"] != pytest.approx(de["p_gold_base"], rel=1e-6)
    assert result["neuron_options"]["top_rate"] == 0.2
    # the control zeroes other neurons with the same layer profile, so its P(gold) differs from both
    ctrl = sorted(result["control_neurons"])
    assert len(ctrl) == 8 and not set(ctrl) & set(map(tuple, result["neurons"]))
    assert de["p_gold_control"] != pytest.approx(de["p_gold_ablated"], rel=1e-6)
    for row in result["per_language"].values():
        assert 0.0 <= row["mcnemar_p_base_vs_ablated"] <= row["mcnemar_p_base_vs_ablated_holm"] <= 1.0
        for c in ("base", "ablated", "control"):
            m = row["metrics"][c]
            assert m["n"] == 4 and m["auc"] is None  # three labels: no AUC
            assert sum(m["label_shares"].values()) == pytest.approx(1.0) and m["calibrated_accuracy"] is not None
            assert m["accuracy"] == pytest.approx(row[f"accuracy_{c}"], abs=1e-12)
    # selected on the task's training split (snli 300-599), tested on the first items: disjoint
    assert result["selection"]["items"] == "300-599" and result["selection"]["indices"]["de"] == "300-303"
    assert result["test_items"]["de"] == "0-3"
    # every item of every condition, with every label's probability; p_gold recomputed from them
    rows = result["item_rows"]
    assert len(rows) == 3 * 3 * 4 and {r["condition"] for r in rows} == {"base", "ablated", "control"}
    for c in ("base", "ablated"):
        mine = [r for r in rows if r["condition"] == c and r["lang"] == "de"]
        assert set(mine[0]) == {"task", "lang", "index", "gold", "pred", "probs", "condition"}
        assert sum(r["probs"][r["gold"]] for r in mine) / 4 == pytest.approx(de[f"p_gold_{c}"], abs=1e-9)
    # group Δs on the label-stratified bootstrap: 4 items are too few for a test, and it says so
    eff = result["effects"]
    assert eff["primary_metric"] == "calibrated_accuracy" and eff["n_items"] == 4
    for name in ("ablated_vs_base_target", "ablated_vs_base_others", "target_minus_others", "ablated_vs_control_target"):
        e = eff["by_metric"]["accuracy"][name]
        assert e["verdict"] == "not testable" and "fewer than 10" in e["not_testable"]
    target = eff["by_metric"]["accuracy"]["ablated_vs_base_target"]
    assert target["estimate"] == pytest.approx(de["accuracy_ablated"] - de["accuracy_base"], abs=1e-12)
    out = tmp_path / "ablate_de.json"
    items = mod.write_result(result, out)
    assert items == tmp_path / "ablate_de_items.jsonl" and len(items.read_text().splitlines()) == len(rows)
    written = json.loads(out.read_text())
    assert "item_rows" not in written and written["item_rows_file"] == "ablate_de_items.jsonl"
    assert any("<- ablated" in line for line in mod.table_lines(written))


def test_ablation_refuses_selection_items_that_are_tested():
    mod = _load("ablate_language_neurons")
    with pytest.raises(AlignlensError, match=r"--select-items and --items share 2 item\(s\) of en \(2-3\)"):
        mod.plan("snli", ["en", "de"], limit=4, select_items="2-9")
    p = mod.plan("emotion", ["en"], limit=4, items="0-249", select_limit=6)
    assert p.select == "250-499" and p.selected["en"] == [250, 251, 252, 253, 254, 255] and p.tested["en"] == [0, 1, 2, 3]


def test_matched_random_neurons_keep_the_layer_profile_and_avoid_the_chosen_ones():
    mod = _load("ablate_language_neurons")
    chosen = [(0, 1), (0, 2), (3, 5)]
    ctrl = mod.matched_random_neurons(chosen, d_mlp=4, seed=1)
    assert sorted(l for l, _ in ctrl) == [0, 0, 3]
    assert sorted(i for l, i in ctrl if l == 0) == [0, 3]  # the only two neurons of layer 0 left
    assert not set(ctrl) & set(chosen)
    assert ctrl == mod.matched_random_neurons(chosen, d_mlp=4, seed=1)  # deterministic for a seed
    assert any(mod.matched_random_neurons([(0, 0)], d_mlp=50, seed=s) != mod.matched_random_neurons([(0, 0)], d_mlp=50, seed=0)
               for s in range(1, 5))
