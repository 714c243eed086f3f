"""Logit lens (nostalgebraist 2020; Wendler et al. 2024) on label words, as the paper's
`zsm_emotion_2shot.py`.

Pure summary: given, per language, the lens probabilities at every layer (final norm +
unembedding applied to the last-position residual after each block), report per-layer means with
95% Student-t intervals over items of

* ``p_en``: probability of the gold label's English token set (the paper's "latent");
* ``p_target``: the same for the gold label's target-language token set (the paper's "out");
* ``p_en_all`` / ``p_target_all``: probability of the union of every label's English (target-language)
  token sets, each token counted once (the paper's "all_possible_latent" / "all_possible_out");
* ``p_correct``: ``p_en[gold] / sum_labels p_en`` (the correct label among the English label words);
* ``entropy_bits``: entropy of the full next-token distribution, in bits.

Items whose gold label's English and target-language token sets collide (`labels.label_overlap`)
are dropped for that language (as Wendler et al. 2024 and the paper), except for English itself.
Per language the report also gives where ``p_target`` and ``p_en`` peak (layer, value, relative
depth layer / (layers - 1)) and the gold-label counts of the kept items: when they all have one gold
label (the others' words overlap), the language's lens mean is that label's alone (`one_label`).
`notes` say so, and name each language left with no item, pointing to ``--lens-overlap first-token``
when the strict token-set rule dropped them.
The model side (``lens_label_probs``: residual states -> these probabilities) runs in the capture
pass, `alignlens.capture.capturer`, on the prompts `AnalyzeConfig.lens_prompts` names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from alignlens import AlignlensError
from alignlens.stats import mean_ci

__all__ = ["LensCapture", "entropy_bits", "lens_summary", "lens_report", "curve_peak", "language_notes"]

_METRICS = ("p_en", "p_target", "p_en_all", "p_target_all", "p_correct", "entropy_bits")


def entropy_bits(logits: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Entropy in bits of softmax(``logits``) over the last dim: [..., V] -> [...] float64.

    Computed from ``log_softmax`` in float64 (stable for large logits; -inf logits
    contribute 0). Returns a tensor for a tensor input, an ndarray for an ndarray input.
    """
    is_np = not isinstance(logits, torch.Tensor)
    x = torch.as_tensor(logits).to(torch.float64)
    logp = torch.log_softmax(x, dim=-1)
    p = logp.exp()
    h = -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(dim=-1) / math.log(2.0)
    return h.numpy() if is_np else h


@dataclass
class LensCapture:
    """Captured lens quantities for one language (tensors or arrays).

    p_en: [n_items, n_layers, n_labels] summed probability of each label's English token set.
    p_target: [n_items, n_layers, n_labels] the same for the target-language token sets.
    entropy_bits: [n_items, n_layers] entropy of the lens distribution (bits).
    gold: [n_items] int gold label index.
    overlap: [n_labels] bool, True if the label's English and target token sets collide.
    p_en_all, p_target_all: [n_items, n_layers] probability of the union of all labels' English
    (target) token sets; None when not captured (shards of older runs): then not reported.
    """

    p_en: torch.Tensor | np.ndarray
    p_target: torch.Tensor | np.ndarray
    entropy_bits: torch.Tensor | np.ndarray
    gold: torch.Tensor | np.ndarray
    overlap: torch.Tensor | np.ndarray
    p_en_all: torch.Tensor | np.ndarray | None = None
    p_target_all: torch.Tensor | np.ndarray | None = None


def _np(x, dtype=np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.double() if dtype == np.float64 else x
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def _json(arr: np.ndarray) -> list:
    return [None if np.isnan(v) else float(v) for v in np.asarray(arr, dtype=np.float64)]


def curve_peak(mean) -> dict | None:
    """Where a per-layer mean curve [n_layers] peaks: {"layer", "value", "relative_depth" (layer /
    (n_layers - 1))}; the first layer of the maximum; None when no value is finite."""
    m = np.asarray([np.nan if v is None else v for v in mean], dtype=np.float64)
    if not np.isfinite(m).any():
        return None
    i = int(np.nanargmax(m))
    return {"layer": i, "value": float(m[i]), "relative_depth": i / max(len(m) - 1, 1)}


def kept_gold_counts(cap: LensCapture, drop_overlap: bool = True) -> list[int]:
    """How many kept items (`lens_summary`'s rule) have each gold label: [n_labels] counts."""
    gold = _np(cap.gold, np.int64).reshape(-1)
    overlap = _np(cap.overlap, np.bool_).reshape(-1)
    keep = ~overlap[gold] if drop_overlap else np.ones(gold.shape[0], dtype=bool)
    return [int(c) for c in np.bincount(gold[keep], minlength=overlap.shape[0])]


def language_notes(per_language: Mapping[str, dict], overlap_rule: str | None, labels=None) -> list[str]:
    """What a reader must know about some languages' lens means (logit_lens.json `notes`): those
    left with no item by the overlap rule (with the looser rule to use when it was the token-set
    one) and those whose kept items all have one gold label. `labels` names the label indices."""
    rule = overlap_rule or "token-set"
    notes = []
    for lang, e in per_language.items():
        dropped = e.get("n_dropped_overlap") or 0
        if e.get("n") == 0 and dropped:
            how = ("share a token (token-set rule); --lens-overlap first-token (drop an item only when the two sets' "
                   "first tokens are equal, as Wendler et al. 2024) keeps them" if rule == "token-set" else
                   f"collide under the {rule} rule")
            notes.append(f"{lang}: no item kept: all {dropped} items' gold labels have English and target-language "
                         f"token sets that {how}")
        elif e.get("one_label"):
            counts = e.get("kept_gold_counts") or []
            j = next(k for k, c in enumerate(counts) if c)
            name = f"'{labels[j]}'" if labels is not None and j < len(labels) else f"index {j}"
            notes.append(f"{lang}: all {e['n']} kept items have the gold label {name} (the other labels' words overlap "
                         "and are dropped), so its lens means are that label's alone")
    return notes


def lens_summary(
    cap: LensCapture, drop_overlap: bool = True, confidence: float = 0.95
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], int, int]:
    """Per-layer (mean, lo, hi), each float64 [n_layers], of the metrics for one language
    (``p_en_all``/``p_target_all`` only when captured).

    Returns (metrics, n_kept, n_dropped_overlap). ``p_correct`` is NaN for an item whose
    label words have zero total English mass at a layer (NaN then propagates to that mean).
    """
    p_en, p_tg, ent = _np(cap.p_en), _np(cap.p_target), _np(cap.entropy_bits)
    gold = _np(cap.gold, np.int64).reshape(-1)
    overlap = _np(cap.overlap, np.bool_).reshape(-1)
    if p_en.ndim != 3 or p_tg.shape != p_en.shape:
        raise AlignlensError(f"lens: p_en / p_target must be equal [n_items, n_layers, n_labels], "
                             f"got {p_en.shape} / {p_tg.shape}")
    n_items, n_layers, n_labels = p_en.shape
    if ent.shape != (n_items, n_layers) or gold.shape != (n_items,) or overlap.shape != (n_labels,):
        raise AlignlensError(f"lens: shapes disagree: entropy {ent.shape}, gold {gold.shape}, "
                             f"overlap {overlap.shape} for p_en {p_en.shape}")
    if n_items and (gold.min() < 0 or gold.max() >= n_labels):
        raise AlignlensError(f"lens: gold label index out of range 0..{n_labels - 1}")

    sums = {}
    for name in ("p_en_all", "p_target_all"):
        value = getattr(cap, name)
        if value is not None:
            sums[name] = _np(value)
            if sums[name].shape != (n_items, n_layers):
                raise AlignlensError(f"lens: {name} must be [n_items, n_layers] = {(n_items, n_layers)}, "
                                     f"got {sums[name].shape}")

    keep = ~overlap[gold] if drop_overlap else np.ones(n_items, dtype=bool)
    p_en, p_tg, ent, gold = p_en[keep], p_tg[keep], ent[keep], gold[keep]
    idx = np.arange(gold.shape[0])
    gold_en = p_en[idx, :, gold]  # [n, n_layers]
    gold_tg = p_tg[idx, :, gold]
    with np.errstate(invalid="ignore", divide="ignore"):
        total = p_en.sum(axis=-1)
        p_correct = np.where(total > 0, gold_en / np.where(total > 0, total, 1.0), np.nan)
    values = {"p_en": gold_en, "p_target": gold_tg, "p_correct": p_correct, "entropy_bits": ent,
              **{name: v[keep] for name, v in sums.items()}}
    out = {}
    for name in (m for m in _METRICS if m in values):
        if gold.shape[0] == 0:
            nan = np.full(n_layers, np.nan)
            out[name] = (nan, nan.copy(), nan.copy())
        else:
            out[name] = mean_ci(values[name], confidence=confidence, axis=0)
    return out, int(keep.sum()), int((~keep).sum())


def lens_report(
    per_lang: Mapping[str, LensCapture],
    english: str = "en",
    drop_overlap: bool = True,
    confidence: float = 0.95,
    *,
    prompts: str | None = None,
    overlap_rule: str | None = None,
    labels=None,
) -> dict:
    """JSON-able logit-lens summary. Overlap-dropping is skipped for ``english``.

    Schema::

        {"n_layers": L, ["lens_prompts": "target-labels" | "english-labels", "overlap_rule": str,]
         "per_language": {lang: {"n": int, "n_dropped_overlap": int, "kept_gold_counts": [n_labels],
            "one_label": bool, "p_target_peak": {"layer", "value", "relative_depth"} | None, "p_en_peak": ...,
            "p_en": {"mean": [L], "lo": [L], "hi": [L]}, "p_target": {...},
            ["p_en_all": {...}, "p_target_all": {...},] "p_correct": {...}, "entropy_bits": {...}}},
         "notes": [str]}

    `prompts` (as "lens_prompts") and `overlap_rule` (how the values were captured) are recorded when given; the
    all-label sums when captured. `one_label`: every kept item has the same gold label (n > 0). `notes`
    (`language_notes`; `labels` names the label indices there): languages with no kept item and
    one-label languages. NaN (e.g. n == 0 after dropping) is reported as None.
    """
    if not per_lang:
        raise AlignlensError("lens_report: no languages given")
    out: dict = {"n_layers": None}
    if prompts is not None:
        out["lens_prompts"] = prompts
    if overlap_rule is not None:
        out["overlap_rule"] = overlap_rule
    out["per_language"] = {}
    for lang, cap in per_lang.items():
        metrics, n, dropped = lens_summary(cap, drop_overlap=drop_overlap and lang != english, confidence=confidence)
        n_layers = len(metrics["p_en"][0])
        if out["n_layers"] is None:
            out["n_layers"] = n_layers
        elif out["n_layers"] != n_layers:
            raise AlignlensError(f"lens_report: {lang} has {n_layers} layers, expected {out['n_layers']}")
        counts = kept_gold_counts(cap, drop_overlap=drop_overlap and lang != english)
        entry: dict = {"n": n, "n_dropped_overlap": dropped, "kept_gold_counts": counts,
                       "one_label": n > 0 and sum(c > 0 for c in counts) == 1,
                       "p_target_peak": curve_peak(metrics["p_target"][0]), "p_en_peak": curve_peak(metrics["p_en"][0])}
        for name in (m for m in _METRICS if m in metrics):
            mean, lo, hi = metrics[name]
            entry[name] = {"mean": _json(mean), "lo": _json(lo), "hi": _json(hi)}
        out["per_language"][lang] = entry
    out["notes"] = language_notes(out["per_language"], overlap_rule, labels)
    return out
