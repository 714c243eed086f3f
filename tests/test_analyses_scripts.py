"""The scripted hook experiments in analyses/ run on the public API."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

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


def test_ablation_experiment_runs_and_changes_the_ablated_language(tiny_gemma):
    mod = _load("ablate_language_neurons")
    result = mod.run(tiny_gemma, "de", ["en", "de", "hi"], task="snli", limit=4, top=8, batch_size=4, top_rate=0.2)
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
