"""Capture shards: one (task, language)'s evaluation result and reduced captures in one
safetensors file, written atomically (`results.atomic_path`), so an interrupted `analyze` resumes
from the finished ones."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from alignlens.capture.capturer import LanguageCapture
from alignlens.evaluate import LanguageResult
from alignlens.results.io import atomic_path


def shard_path(folder: Path, task: str, lang: str) -> Path:
    """`folder/<task>__<lang>.safetensors`."""
    return Path(folder) / f"{task}__{lang}.safetensors"


def save_shard(folder: Path, result: LanguageResult, cap: LanguageCapture) -> Path:
    """Write one (task, language)'s eval result and reduced captures atomically to safetensors.

    Tensors: probs float64 [n, n_labels], gold/indices [n], last/mean [n, n_layers, d_model],
    p_en/p_target [n, n_layers, n_labels], p_en_all/p_target_all [n, n_layers], entropy
    [n, n_layers], neuron_counts int64 [n_layers, d_mlp], neuron_tokens int64 [n_layers], overlap
    uint8 [n_labels], embed [n, 3, d_model] and prompt [n, n_layers, d_model] (the similarity
    states, `LanguageCapture.pooled`); metadata: one key, `alignlens`, a sorted JSON object {task,
    lang, labels, lens_prompts} (safetensors writes several metadata keys in a random order, which would make
    equal shards differ in bytes). `result` is the evaluation pass's (English-label prompts), `cap`
    the capture pass's (prompts `cap.prompts`)."""
    from safetensors.torch import save_file

    n = len(result.indices)
    tensors = {
        "probs": torch.as_tensor(result.probs, dtype=torch.float64), "gold": torch.tensor(result.gold),
        "indices": torch.tensor(result.indices), "last": cap.last.to_tensor(n), "mean": cap.mean.to_tensor(n),
        "p_en": cap.p_en.to_tensor(n), "p_target": cap.p_target.to_tensor(n), "entropy": cap.entropy.to_tensor(n),
        "neuron_counts": cap.neurons.counts, "neuron_tokens": cap.neurons.n_tokens_per_layer,
        "overlap": cap.overlap.to(torch.uint8),
    }
    for name in ("p_en_all", "p_target_all"):
        store = getattr(cap, name)
        if store is not None and len(store):
            tensors[name] = store.to_tensor(n)
    if result.p_content_free is not None:  # contextual calibration (absent in older shards)
        tensors["p_content_free"] = torch.as_tensor(result.p_content_free, dtype=torch.float64)
    for name in ("embed", "prompt"):  # similarity states (absent when loaded from an older shard)
        if len(getattr(cap, name)):
            tensors[name] = getattr(cap, name).to_tensor(n)
    meta = {"alignlens": json.dumps({"task": result.task, "lang": result.lang, "labels": list(result.labels),
                                     "lens_prompts": cap.prompts}, ensure_ascii=False, sort_keys=True)}
    path = shard_path(folder, result.task, result.lang)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    return path


def load_shard(path: Path) -> tuple[LanguageResult, LanguageCapture]:
    """Inverse of `save_shard`. Shards of older runs (no all-label sums, no `lens_prompts`: they
    captured the English-label prompts) load with empty sums and prompts "english-labels"."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
        t = {k: fh.get_tensor(k) for k in fh.keys()}
    if "alignlens" in meta:
        meta = json.loads(meta["alignlens"])
    else:  # shards written before the metadata became one key
        meta = {**meta, "labels": json.loads(meta["labels"])}
    rows = list(range(len(t["indices"])))
    result = LanguageResult(meta["task"], meta["lang"], list(meta["labels"]), t["indices"].tolist(),
                            t["gold"].tolist(), t["probs"].numpy(),
                            t["p_content_free"].numpy() if "p_content_free" in t else None)
    n_layers, d_mlp = t["neuron_counts"].shape
    cap = LanguageCapture.empty(meta["task"], meta["lang"], n_layers, d_mlp, t["overlap"].bool(),
                                meta.get("lens_prompts", "english-labels"))
    for name in ("last", "mean", "p_en", "p_target", "entropy"):
        getattr(cap, name).update(rows, t[name])
    for name in ("p_en_all", "p_target_all"):  # absent from shards of older runs
        if name in t:
            getattr(cap, name).update(rows, t[name])
    for name in ("embed", "prompt"):  # absent from shards of older runs (`pooled` then refuses)
        if name in t:
            getattr(cap, name).update(rows, t[name])
    cap.neurons.counts = t["neuron_counts"].clone()
    cap.neurons.n_tokens_per_layer = t["neuron_tokens"].clone()
    return result, cap
