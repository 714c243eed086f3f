"""Language-specific MLP neurons (Tang et al. 2024, "Language-Specific Neurons", LAPE).

Input per language: counts [n_layers, d_mlp] of tokens whose MLP activation (after the
nonlinearity; for gated MLPs the gate's ``act_fn(gate)``) is > 0, and the token count.
Activation probability ``p[lang, layer, neuron] = count / n_tokens``.

LAPE, following Tang et al.'s released code (``identify.py``):

1. normalise p over languages to a distribution per neuron; entropy (nats) per neuron;
2. candidates: neurons with some language's p above the ``filter_rate`` quantile of all
   p values (over languages, layers and neurons);
3. select the ``round(top_rate * N)`` candidates with the LOWEST entropy, where N is the
   number of all neurons (``top_rate_of="all"``, Tang's code) or of candidates
   (``top_rate_of="candidates"``); ties are broken by (layer, neuron) order;
4. a selected neuron is specific to language l if ``p[l]`` exceeds the
   ``activation_bar_ratio`` quantile of all p values (a neuron may be specific to
   several languages).

Quantiles use Tang's definition: the k-th smallest value with k = round(ratio * n_values).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict

import numpy as np
import torch
from scipy import stats as sps

from alignlens import AlignlensError
from alignlens.capture.reducers import ActivationCounter
from alignlens.config import NeuronOptions  # noqa: F401  (re-exported: defined with the other run options)

__all__ = [
    "NeuronOptions",
    "activation_probability",
    "lape_entropy",
    "kth_quantile",
    "select_specific",
    "jaccard",
    "jaccard_matrix",
    "neuron_report",
    "compare_neurons",
]

CountState = ActivationCounter | Mapping[str, torch.Tensor]


_SOURCES = {
    "filter_rate": "Tang et al. 2024 code (identify.py): 0.95",
    "top_rate": "project issue: 0.05 (Tang et al. 2024 code uses 0.01)",
    "top_rate_of": "Tang et al. 2024 code: round(top_rate * all neurons), non-candidates excluded",
    "activation_bar_ratio": "Tang et al. 2024 code (identify.py): 0.95",
    "active_threshold": "alignlens: None = the activation bar (p > activation_bar_value)",
    "quantile": "Tang et al. 2024 code: kthvalue(round(ratio * n_values)) of all p over languages, layers, neurons",
}


def _state(x: CountState) -> tuple[np.ndarray, np.ndarray]:
    """-> counts float64 [L, D], n_tokens float64 [L]."""
    if isinstance(x, ActivationCounter):
        x = x.state_dict()
    counts = np.asarray(torch.as_tensor(x["counts"]).detach().cpu().double().numpy())
    n = np.asarray(torch.as_tensor(x["n_tokens"]).detach().cpu().double().numpy())
    if counts.ndim != 2:
        raise AlignlensError(f"neurons: counts must be [n_layers, d_mlp], got {counts.shape}")
    n = np.broadcast_to(n, (counts.shape[0],)) if n.ndim == 0 else n
    if n.shape != (counts.shape[0],):
        raise AlignlensError(f"neurons: n_tokens shape {n.shape} does not fit counts {counts.shape}")
    if np.any(n <= 0):
        raise AlignlensError("neurons: a language has no counted tokens")
    if np.any(n != n[0]):
        raise AlignlensError(f"neurons: layers saw different token counts {n.tolist()}")
    if np.any(counts < 0) or np.any(counts > n[:, None]):
        raise AlignlensError("neurons: counts must be within 0..n_tokens")
    return counts, n


def activation_probability(states: Mapping[str, CountState]) -> tuple[list[str], np.ndarray, dict[str, int]]:
    """-> (languages, p float64 [n_lang, n_layers, d_mlp], n_tokens {lang: int})."""
    langs = list(states)
    if not langs:
        raise AlignlensError("neurons: no languages given")
    ps, ns = [], {}
    for lang in langs:
        counts, n = _state(states[lang])
        ps.append(counts / n[:, None])
        ns[lang] = int(n[0])
    if any(p.shape != ps[0].shape for p in ps):
        raise AlignlensError(f"neurons: languages differ in shape {[p.shape for p in ps]}")
    return langs, np.stack(ps), ns


def lape_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy (nats) over languages of p normalised per neuron: [n_lang, ...] -> [...].

    A neuron that never fires in any language gets 0 (as Tang's code; it is never a candidate).
    """
    p = np.asarray(p, dtype=np.float64)
    total = p.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        h = sps.entropy(p, axis=0)
    return np.where(total > 0, h, 0.0)


def kth_quantile(values: np.ndarray, ratio: float) -> float:
    """k-th smallest of ``values`` with k = round(ratio * n) (Tang et al.'s kthvalue), k >= 1."""
    flat = np.sort(np.asarray(values, dtype=np.float64).reshape(-1))
    k = min(max(round(ratio * flat.size), 1), flat.size)
    return float(flat[k - 1])


def select_specific(p: np.ndarray, options: NeuronOptions = NeuronOptions()) -> tuple[np.ndarray, dict]:
    """LAPE selection on p [n_lang, L, D] -> (specific bool [n_lang, L, D], thresholds dict)."""
    p = np.asarray(p, dtype=np.float64)
    n_lang, n_layers, d_mlp = p.shape
    entropy = lape_entropy(p).reshape(-1)  # [L*D]
    filter_value = kth_quantile(p, options.filter_rate)
    candidate = (p > filter_value).any(axis=0).reshape(-1)
    n_candidates = int(candidate.sum())
    base = entropy.size if options.top_rate_of == "all" else n_candidates
    k = min(round(options.top_rate * base), n_candidates)
    order = np.argsort(np.where(candidate, entropy, np.inf), kind="stable")
    selected = np.zeros(entropy.size, dtype=bool)
    selected[order[:k]] = True
    bar = kth_quantile(p, options.activation_bar_ratio)
    specific = (p > bar) & selected.reshape(1, n_layers, d_mlp)
    thresholds = {
        "filter_value": filter_value,
        "activation_bar_value": bar,
        "n_neurons": int(entropy.size),
        "n_candidates": n_candidates,
        "n_selected": int(k),
        "max_selected_entropy_nats": float(entropy[order[k - 1]]) if k else None,
    }
    return specific, thresholds


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|a & b| / |a | b| of two bool masks of equal shape; NaN if both are empty."""
    union = int(np.logical_or(a, b).sum())
    return float(np.logical_and(a, b).sum() / union) if union else float("nan")


def jaccard_matrix(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Jaccard between languages of bool masks [n_lang, L, D] -> (overall [n, n], per_layer [L, n, n])."""
    m = np.asarray(masks, dtype=bool)
    n_lang, n_layers = m.shape[:2]

    def jac(x: np.ndarray) -> np.ndarray:  # x [n_lang, K] bool -> [n_lang, n_lang]
        xf = x.astype(np.float64)
        inter = xf @ xf.T
        size = xf.sum(axis=1)
        union = size[:, None] + size[None, :] - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, inter / np.where(union > 0, union, 1.0), np.nan)

    overall = jac(m.reshape(n_lang, -1))
    per_layer = np.stack([jac(m[:, layer]) for layer in range(n_layers)])
    return overall, per_layer


def _json(x):
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 0:
        v = float(arr)
        return None if np.isnan(v) else v
    return [_json(v) for v in arr]


def neuron_report(
    states: Mapping[str, CountState], options: NeuronOptions | None = None
) -> tuple[dict, dict[str, torch.Tensor]]:
    """LAPE language-specific neurons and overlaps.

    ``states``: lang -> ActivationCounter or its state dict {"counts": [L, D], "n_tokens": [L] or []}.

    Returns (report, tensors) with tensors {"activation_probability": float32 [n_lang, L, D]} and::

        {"options": {<NeuronOptions fields>, "sources": {...}, "thresholds": {...}},
         "n_layers": L, "d_mlp": D, "languages": [...], "n_tokens": {lang: int},
         "specific": {lang: {"count": int, "count_per_layer": [L], "neurons": [[layer, index], ...]}},
         "overlap": {"active": {"overall": n x n, "per_layer": [L][n][n]},
                     "specific": {"overall": ..., "per_layer": ...}}}

    Jaccard of two empty sets is None.
    """
    options = options or NeuronOptions()
    langs, p, n_tokens = activation_probability(states)
    _, n_layers, d_mlp = p.shape
    specific, thresholds = select_specific(p, options)
    active_value = thresholds["activation_bar_value"] if options.active_threshold is None else options.active_threshold
    thresholds["active_value"] = float(active_value)
    active = p > active_value
    overlap = {}
    for name, masks in (("active", active), ("specific", specific)):
        overall, per_layer = jaccard_matrix(masks)
        overlap[name] = {"overall": _json(overall), "per_layer": _json(per_layer)}
    report = {
        "options": {**asdict(options), "sources": dict(_SOURCES), "thresholds": thresholds},
        "n_layers": int(n_layers),
        "d_mlp": int(d_mlp),
        "languages": langs,
        "n_tokens": n_tokens,
        "specific": {
            lang: {
                "count": int(specific[i].sum()),
                "count_per_layer": [int(c) for c in specific[i].sum(axis=1)],
                "neurons": [[int(layer), int(j)] for layer, j in np.argwhere(specific[i])],
            }
            for i, lang in enumerate(langs)
        },
        "overlap": overlap,
    }
    return report, {"activation_probability": torch.from_numpy(p.astype(np.float32))}


def _specific_mask(report: dict, lang: str) -> np.ndarray:
    mask = np.zeros((report["n_layers"], report["d_mlp"]), dtype=bool)
    for layer, j in report["specific"][lang]["neurons"]:
        mask[layer, j] = True
    return mask


_OPTION_KEYS = ("filter_rate", "top_rate", "top_rate_of", "activation_bar_ratio", "active_threshold")


def compare_neurons(a: tuple[dict, Mapping[str, torch.Tensor]], b: tuple[dict, Mapping[str, torch.Tensor]]) -> dict:
    """Compare two models' ``neuron_report`` outputs (e.g. base vs aligned), on their common languages.

    Schema::

        {"languages": [...], "per_language": {lang: {"jaccard_specific": float|None,
            "count_a": int, "count_b": int, "count_per_layer_a": [L], "count_per_layer_b": [L]}},
         "mean_abs_activation_probability_change_per_layer": [L]}

    The last entry is mean over common languages and neurons of |p_b - p_a| per layer.
    """
    (ra, ta), (rb, tb) = a, b
    if (ra["n_layers"], ra["d_mlp"]) != (rb["n_layers"], rb["d_mlp"]):
        raise AlignlensError(
            f"compare_neurons: shapes differ ({ra['n_layers']}x{ra['d_mlp']} vs {rb['n_layers']}x{rb['d_mlp']})"
        )
    diff = [k for k in _OPTION_KEYS if ra["options"].get(k) != rb["options"].get(k)]
    if diff:
        raise AlignlensError(f"compare_neurons: the two reports used different options: {diff}")
    langs = [lang for lang in ra["languages"] if lang in rb["languages"]]
    if not langs:
        raise AlignlensError("compare_neurons: no common languages")
    pa = np.asarray(ta["activation_probability"], dtype=np.float64)[[ra["languages"].index(x) for x in langs]]
    pb = np.asarray(tb["activation_probability"], dtype=np.float64)[[rb["languages"].index(x) for x in langs]]
    per_language = {}
    for lang in langs:
        sa, sb = ra["specific"][lang], rb["specific"][lang]
        j = jaccard(_specific_mask(ra, lang), _specific_mask(rb, lang))
        per_language[lang] = {
            "jaccard_specific": None if np.isnan(j) else j,
            "count_a": int(sa["count"]),
            "count_b": int(sb["count"]),
            "count_per_layer_a": list(sa["count_per_layer"]),
            "count_per_layer_b": list(sb["count_per_layer"]),
        }
    return {
        "languages": langs,
        "per_language": per_language,
        "mean_abs_activation_probability_change_per_layer": _json(np.abs(pb - pa).mean(axis=(0, 2))),
    }
