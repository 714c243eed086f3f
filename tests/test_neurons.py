import json

import numpy as np
import pytest
import torch

from alignlens import AlignlensError
from alignlens.neurons import NeuronOptions, compare_neurons, kth_quantile, neuron_report
from alignlens.capture.reducers import ActivationCounter

LANGS = ["en", "zh", "de", "sw", "bn"]
L, D, N_TOK = 4, 50, 1000
# planted language-specific neurons: lang -> [(layer, neuron), ...]
PLANTED = {"en": [(0, 3), (3, 7)], "zh": [(1, 10), (1, 11)], "de": [(2, 0), (0, 49)],
           "sw": [(3, 20), (2, 21)], "bn": [(1, 30), (3, 31)]}


def _states(planted=PLANTED, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.1, 0.5, size=(L, D))  # shared, language-agnostic neurons
    out = {}
    for lang in LANGS:
        p = np.clip(base + rng.normal(0, 0.01, size=(L, D)), 0, 1)
        for other, cells in planted.items():
            for layer, j in cells:
                p[layer, j] = 0.9 if other == lang else 0.02
        out[lang] = {"counts": torch.from_numpy(np.round(p * N_TOK).astype(np.int64)),
                     "n_tokens": torch.tensor(N_TOK)}
    return out


def _found(rep):
    return {lang: sorted(tuple(x) for x in rep["specific"][lang]["neurons"]) for lang in rep["languages"]}


def test_planted_neurons_found():
    rep, tensors = neuron_report(_states(), NeuronOptions(top_rate=0.05))  # k = round(0.05 * 200) = 10
    json.dumps(rep, allow_nan=False)
    assert _found(rep) == {lang: sorted(cells) for lang, cells in PLANTED.items()}
    assert rep["n_layers"] == L and rep["d_mlp"] == D and rep["languages"] == LANGS
    assert rep["n_tokens"] == {lang: N_TOK for lang in LANGS}
    assert rep["specific"]["zh"]["count"] == 2
    assert rep["specific"]["zh"]["count_per_layer"] == [0, 2, 0, 0]
    p = tensors["activation_probability"]
    assert p.dtype == torch.float32 and tuple(p.shape) == (5, L, D)
    assert p[1, 1, 10].item() == pytest.approx(0.9)


def test_thresholds_and_sources_recorded():
    states = _states()
    rep, _ = neuron_report(states)
    o = rep["options"]
    assert (o["filter_rate"], o["top_rate"], o["activation_bar_ratio"]) == (0.95, 0.05, 0.95)
    assert o["top_rate_of"] == "all" and o["active_threshold"] is None
    for k in ("filter_rate", "top_rate", "activation_bar_ratio", "active_threshold", "quantile"):
        assert isinstance(o["sources"][k], str) and o["sources"][k]
    p = np.stack([s["counts"].numpy() / N_TOK for s in states.values()]).reshape(-1)
    kth = np.sort(p)[round(0.95 * p.size) - 1]  # Tang's kthvalue definition, computed directly
    assert o["thresholds"]["filter_value"] == pytest.approx(kth)
    assert o["thresholds"]["activation_bar_value"] == pytest.approx(kth)
    assert o["thresholds"]["active_value"] == pytest.approx(kth)
    assert o["thresholds"]["n_selected"] == 10
    assert o["thresholds"]["n_neurons"] == L * D
    assert kth_quantile(np.arange(1, 11), 0.5) == 5.0


def test_options_change_selection():
    states = _states()
    # fewer slots than planted neurons: exactly round(0.02 * 200) = 4 selected, all planted
    rep, _ = neuron_report(states, NeuronOptions(top_rate=0.02))
    found = {c for cells in _found(rep).values() for c in cells}
    planted = {c for cells in PLANTED.values() for c in cells}
    assert len(found) == 4 and found <= planted
    # top rate of candidates instead of all neurons: fewer slots
    rep_c, _ = neuron_report(states, NeuronOptions(top_rate=0.5, top_rate_of="candidates"))
    n_cand = rep_c["options"]["thresholds"]["n_candidates"]
    assert rep_c["options"]["thresholds"]["n_selected"] == round(0.5 * n_cand)
    # a bar at the maximum probability: nothing is specific
    rep_bar, _ = neuron_report(states, NeuronOptions(activation_bar_ratio=1.0))
    assert all(rep_bar["specific"][lang]["count"] == 0 for lang in LANGS)
    # candidates need p above the maximum: no candidates, nothing selected
    rep_f, _ = neuron_report(states, NeuronOptions(filter_rate=1.0))
    assert rep_f["options"]["thresholds"]["n_candidates"] == 0
    assert all(rep_f["specific"][lang]["count"] == 0 for lang in LANGS)
    with pytest.raises(AlignlensError):
        NeuronOptions(top_rate=0.0)


def _tang_reference(p_lang_first: np.ndarray, top_rate: float, filter_rate: float, bar_ratio: float):
    """Literal port of Tang et al.'s identify.py activation() (torch), returns bool [n_lang, L, D]."""
    activation_probs = torch.from_numpy(p_lang_first).permute(1, 2, 0).double()  # layer x inter x lang
    normed = activation_probs / activation_probs.sum(dim=-1, keepdim=True)
    normed[torch.isnan(normed)] = 0
    log_probs = torch.where(normed > 0, normed.log(), 0)
    entropy = -torch.sum(normed * log_probs, dim=-1)
    flattened_probs = activation_probs.flatten()
    top_prob_value = flattened_probs.kthvalue(round(len(flattened_probs) * filter_rate)).values.item()
    top_position = (activation_probs > top_prob_value).sum(dim=-1)
    entropy[top_position == 0] = torch.inf
    flattened_entropy = entropy.flatten()
    _, index = flattened_entropy.topk(round(len(flattened_entropy) * top_rate), largest=False)
    row_index, col_index = index // entropy.size(1), index % entropy.size(1)
    selected_probs = activation_probs[row_index, col_index].transpose(0, 1)  # lang x n
    bar = flattened_probs.kthvalue(round(len(flattened_probs) * bar_ratio)).values.item()
    lang, indice = torch.where(selected_probs > bar)
    out = np.zeros(p_lang_first.shape, dtype=bool)
    for li, k in zip(lang.tolist(), indice.tolist()):
        out[li, row_index[k], col_index[k]] = True
    return out


@pytest.mark.parametrize("top_rate,filter_rate,bar", [(0.01, 0.95, 0.95), (0.05, 0.9, 0.95), (0.1, 0.8, 0.9)])
def test_matches_tang_reference_on_random_data(top_rate, filter_rate, bar):
    rng = np.random.default_rng(7)
    n = 10**7  # continuous-looking probabilities, no ties
    counts = rng.beta(0.5, 2.0, size=(6, 6, 80))
    counts[:, :, :8] *= rng.uniform(0.05, 3.0, size=(6, 1, 1))  # some language dependence
    counts = np.round(np.clip(counts, 0, 1) * n).astype(np.int64)
    states = {f"l{i}": {"counts": torch.from_numpy(counts[i]), "n_tokens": torch.full((6,), n)} for i in range(6)}
    rep, _ = neuron_report(states, NeuronOptions(top_rate=top_rate, filter_rate=filter_rate, activation_bar_ratio=bar))
    expected = _tang_reference(counts / n, top_rate, filter_rate, bar)
    for i, lang in enumerate(states):
        assert sorted(map(tuple, rep["specific"][lang]["neurons"])) == sorted(map(tuple, np.argwhere(expected[i])))
    assert expected.sum() > 0


def _jaccard_sets(a: set, b: set):
    return len(a & b) / len(a | b) if a | b else None


def test_overlap_matrices():
    states = _states()
    rep, tensors = neuron_report(states, NeuronOptions(active_threshold=0.45))
    p = tensors["activation_probability"].double().numpy()
    spec = {lang: set(map(tuple, rep["specific"][lang]["neurons"])) for lang in LANGS}
    ov = rep["overlap"]
    assert rep["options"]["thresholds"]["active_value"] == 0.45
    for i, a in enumerate(LANGS):
        for j, b in enumerate(LANGS):
            assert ov["specific"]["overall"][i][j] == _jaccard_sets(spec[a], spec[b])
            act_a = set(map(tuple, np.argwhere(p[i] > 0.45)))
            act_b = set(map(tuple, np.argwhere(p[j] > 0.45)))
            assert ov["active"]["overall"][i][j] == pytest.approx(_jaccard_sets(act_a, act_b))
            for layer in range(L):
                sa = {c for c in spec[a] if c[0] == layer}
                sb = {c for c in spec[b] if c[0] == layer}
                assert ov["specific"]["per_layer"][layer][i][j] == _jaccard_sets(sa, sb)
    assert ov["specific"]["overall"][0][0] == 1.0 and ov["specific"]["overall"][0][1] == 0.0
    assert len(ov["active"]["per_layer"]) == L


def test_counter_input_equals_state_input_and_errors():
    rng = np.random.default_rng(3)
    counters, dicts = {}, {}
    for lang in LANGS[:3]:
        c = ActivationCounter(2, 8)
        acts = torch.from_numpy(rng.normal(size=(2, 3, 5, 8)))
        for layer in range(2):
            c.update(layer, acts[layer])
        counters[lang], dicts[lang] = c, c.state_dict()
    r1, t1 = neuron_report(counters, NeuronOptions(top_rate=0.5))
    r2, t2 = neuron_report(dicts, NeuronOptions(top_rate=0.5))
    assert r1 == r2 and torch.equal(t1["activation_probability"], t2["activation_probability"])
    assert r1["n_tokens"] == {lang: 15 for lang in LANGS[:3]}
    bad = dict(dicts, en={"counts": torch.ones(2, 8, dtype=torch.int64), "n_tokens": torch.tensor([15, 14])})
    with pytest.raises(AlignlensError):
        neuron_report(bad)
    with pytest.raises(AlignlensError):
        neuron_report(dict(dicts, en={"counts": torch.ones(3, 8, dtype=torch.int64), "n_tokens": torch.tensor(15)}))


def test_compare_neurons():
    moved = dict(PLANTED, zh=[(1, 10), (2, 40)])  # one zh neuron moves from (1, 11) to (2, 40)
    a = neuron_report(_states(PLANTED), NeuronOptions(top_rate=0.05))
    b = neuron_report(_states(moved), NeuronOptions(top_rate=0.05))
    cmp = compare_neurons(a, b)
    json.dumps(cmp, allow_nan=False)
    assert cmp["languages"] == LANGS
    zh = cmp["per_language"]["zh"]
    assert zh["jaccard_specific"] == pytest.approx(1 / 3)
    assert zh["count_a"] == zh["count_b"] == 2
    assert zh["count_per_layer_a"] == [0, 2, 0, 0] and zh["count_per_layer_b"] == [0, 1, 1, 0]
    assert cmp["per_language"]["en"]["jaccard_specific"] == 1.0
    pa, pb = a[1]["activation_probability"].double().numpy(), b[1]["activation_probability"].double().numpy()
    expected = [np.mean(np.abs(pb[:, layer] - pa[:, layer])) for layer in range(L)]
    np.testing.assert_allclose(cmp["mean_abs_activation_probability_change_per_layer"], expected, rtol=1e-12)
    assert cmp["mean_abs_activation_probability_change_per_layer"][1] > 0
    with pytest.raises(AlignlensError):
        compare_neurons(a, neuron_report(_states(moved), NeuronOptions(top_rate=0.01)))
