"""Capture shards: one (task, language)'s evaluation result and reduced captures in one
safetensors file, written atomically (`results.atomic_path`), so an interrupted `analyze` resumes
from the finished ones. Each shard records a hash of the data it was computed from
(`shard_data_hash`); `shard_mismatch` says why a saved shard cannot be reused by a run."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from alignlens.capture.capturer import LanguageCapture
from alignlens.data import Item, TaskSpec
from alignlens.evaluate import LanguageResult
from alignlens.results.io import atomic_path


def shard_path(folder: Path, task: str, lang: str) -> Path:
    """`folder/<task>__<lang>.safetensors`."""
    return Path(folder) / f"{task}__{lang}.safetensors"


def shard_data_hash(spec: TaskSpec, lang: str, items: Sequence[Item]) -> str:
    """sha256 of the data one (task, language) shard is computed from: the task's labels, fields and
    shots, the language's prompt (demonstrations, query template, label words; the target-label
    lens prompts derive from these) and the selected items (index, gold label, which comes from
    the English file, and text fields), as canonical JSON (so reformatting a file changes nothing)."""
    payload = {"labels": list(spec.labels), "fields": list(spec.fields), "shots": spec.shots,
               "prompt": dataclasses.asdict(spec.prompts[lang]),
               "items": [[it.index, it.label, it.fields] for it in items]}
    text = json.dumps(payload, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def save_shard(folder: Path, result: LanguageResult, cap: LanguageCapture, *, data_hash: str | None = None) -> Path:
    """Write one (task, language)'s eval result and reduced captures atomically to safetensors.

    Tensors: probs float64 [n, n_labels], gold/indices [n], last/mean [n, n_layers, d_model],
    p_en/p_target [n, n_layers, n_labels], p_en_all/p_target_all [n, n_layers], entropy
    [n, n_layers], neuron_counts int64 [n_layers, d_mlp], neuron_tokens int64 [n_layers], overlap
    uint8 [n_labels], embed [n, 3, d_model] and prompt [n, n_layers, d_model] (the similarity
    states, `LanguageCapture.pooled`); metadata: one key, `alignlens`, a sorted JSON object {task,
    lang, labels, lens_prompts, data_hash} (safetensors writes several metadata keys in a random order, which
    would make equal shards differ in bytes). `data_hash`: `shard_data_hash` of the data the shard was
    computed from (left out when None). `result` is the evaluation pass's (English-label prompts), `cap`
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
    info = {"task": result.task, "lang": result.lang, "labels": list(result.labels), "lens_prompts": cap.prompts}
    if data_hash is not None:
        info["data_hash"] = data_hash
    meta = {"alignlens": json.dumps(info, ensure_ascii=False, sort_keys=True)}
    path = shard_path(folder, result.task, result.lang)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    return path


def load_shard(path: Path) -> tuple[LanguageResult, LanguageCapture]:
    """Inverse of `save_shard`. Shards of older runs (no all-label sums, no `lens_prompts`: they
    captured the English-label prompts) load with empty sums and prompts "english-labels"."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = _metadata(fh.metadata())
        t = {k: fh.get_tensor(k) for k in fh.keys()}
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


def _metadata(raw: dict[str, str] | None) -> dict:
    raw = raw or {}
    if "alignlens" in raw:
        return json.loads(raw["alignlens"])
    return {**raw, "labels": json.loads(raw.get("labels", "[]"))}  # shards written before the metadata became one key


def read_shard_info(path: Path) -> tuple[dict, list[int]]:
    """(metadata {task, lang, labels, lens_prompts, data_hash (absent in older shards)}, item
    indices) of a saved shard, without loading its other tensors."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return _metadata(fh.metadata()), fh.get_tensor("indices").tolist()


def shard_mismatch(path: Path, data_hash: str, indices: Sequence[int], lens_prompts: str) -> str | None:
    """Why the saved shard at `path` cannot be reused by a run whose (task, language) has data
    `data_hash` (`shard_data_hash`), items `indices` and capture prompts `lens_prompts`; None if
    it can. An unreadable shard, or one without a data hash (older alignlens), cannot be checked."""
    try:
        meta, saved = read_shard_info(path)
    except Exception as exc:  # noqa: BLE001 - safetensors raises several kinds for a damaged file
        return f"shard {path.name} cannot be read ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})"
    where = f"task {meta.get('task')}, language {meta.get('lang')}"
    if meta.get("data_hash") is None:
        return (f"shard {path.name} ({where}) was written by an older alignlens without a hash of its data, "
                "so it cannot be checked against the current data")
    if meta["data_hash"] != data_hash:
        return (f"the data of {where} changed since the run started (its items, gold labels or prompts differ "
                f"from those shard {path.name} was computed from)")
    if list(saved) != list(indices):
        return f"shard {path.name} ({where}) holds other items than this run selects (other --limit or --items?)"
    if meta.get("lens_prompts", "english-labels") != lens_prompts:
        return f"shard {path.name} ({where}) was captured with --lens-prompts {meta.get('lens_prompts', 'english-labels')}"
    return None
