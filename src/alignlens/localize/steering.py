"""Steering the base model with the alignment direction (`alignlens localize`, design §2).

Layers are hidden-state rows, as in the similarity analysis: layer 0 is the embedding output
(`blocks.0.hook_resid_pre`), layer l >= 1 the output of block l − 1 (`blocks.{l-1}.hook_resid_post`,
before the final norm for l = n_layers), i.e. HF's `hidden_states[l]` (the input of block l).
Reading and steering use that one hook per layer (`resid_hook`); adding at
`blocks.{l-1}.hook_resid_post` is adding to the input of block l (`blocks.{l}.hook_resid_pre`),
never both.

The direction (`alignment_directions`): per layer l,

    v_l = mean over languages of [ mean over items of q_l(aligned, item) − mean over items of q_l(base, item) ]

where q_l(model, item) is the mean of the residual at layer l over the item's query positions (its
own tokens after the few-shot prefix, on the evaluation-format prompt: the language's
demonstrations + the item's query) and the items are the task's alignment training-split questions
(`direction_items`: the aligned model's recorded `train_items` when it was trained on this task,
else `data.default_train_items`), never evaluation items (refused) and no labels (only prompts are
run). Languages count equally. The copy-control model's vector is the same with the control in
place of the aligned model (`kind="control"`); random directions (`random_directions`) have the
norm of v_l at every layer (Gaussian, seeded per (seed, layer)).

Steering (`steer_language`): the base model with s·v_l added to the residual at layer l at the
query positions only (the items' own tokens; not the shared few-shot prefix, whose cached pass no
probe sees, not padding, not the content-free queries), through an `engine.Probe`. The unsteered
reference rows (`direction_kind` "base") run the same path with a probe that adds nothing. Each
(direction, layer, scale) is one full forward pass per item batch (the engine's entry at block l
would skip the blocks below l; not used yet).

`steering_summary` pairs every steered condition with the base and the alignment direction with
each control (`compare.paired_effects`).

Both run in one process: under torchrun every rank would compute every batch (no data parallelism).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from alignlens import AlignlensError, data
from alignlens.capture.capturer import EMBED_HOOK, PoolIndex, pool_states, resid_hook_name
from alignlens.config import format_items
from alignlens.engine import Hook, SuffixBatch, nonfinite_error, score_prompts
from alignlens.labels import label_sets
from alignlens.localize.compare import condition_metrics, paired_effects
from alignlens.model import LoadedModel

#: Kinds of steering direction (`Direction.kind`); "base" rows are the unsteered reference.
KINDS = ("alignment", "control", "random")


def resid_hook(layer: int) -> str:
    """The hook of hidden-state row `layer`: `blocks.0.hook_resid_pre` (the embedding output) for 0,
    `blocks.{layer-1}.hook_resid_post` (the output of block layer − 1) for layer >= 1."""
    return EMBED_HOOK if layer == 0 else resid_hook_name(layer - 1)


def check_layers(layers: Sequence[int], n_layers: int) -> list[int]:
    """Distinct layers in 0..n_layers, sorted (AlignlensError naming the first bad one)."""
    bad = [x for x in layers if not isinstance(x, int) or isinstance(x, bool) or not 0 <= x <= n_layers]
    if bad:
        raise AlignlensError(f"steering layer {bad[0]!r} does not exist (layers are 0..{n_layers}: 0 the embedding "
                             "output, l the output of block l - 1)")
    return sorted(set(layers))


@dataclass
class Direction:
    """A steering direction per layer: `vectors` {layer: float64 [d_model] on the CPU}.

    `kind`: "alignment" (aligned − base), "control" (copy control − base) or "random"; `seed`: the
    random direction's seed (None otherwise); `item_ids`: {lang: item indices averaged} (a random
    direction: those of the direction whose norms it copies); `models`: (base, other) specs."""

    kind: str
    vectors: dict[int, torch.Tensor]
    item_ids: dict[str, list[int]] = field(default_factory=dict)
    seed: int | None = None
    models: tuple[str, ...] = ()

    def norms(self) -> dict[int, float]:
        return {layer: float(v.norm()) for layer, v in self.vectors.items()}

    @property
    def name(self) -> str:
        return self.kind if self.seed is None else f"{self.kind}:{self.seed}"


# ---- the direction --------------------------------------------------------------------------


def _trained_items(alignment: Mapping | None, spec: data.TaskSpec) -> tuple[int, ...] | None:
    """The items of `spec` a model was trained on, from its `read_training_split` record (the
    `LoadedModel.info["alignment"]` of an `alignlens train` output); None when it was not trained
    on this task."""
    if not alignment or not alignment.get("task"):
        return None
    folder = alignment.get("task_folder")  # as plan.resolve_plan matches it
    same = alignment["task"] == spec.name or bool(folder and Path(folder).resolve() == spec.folder.resolve())
    return tuple(alignment["train_items"]) if same and alignment.get("train_items") is not None else None


def direction_items(spec: data.TaskSpec, languages: Sequence[str], *, alignment: Mapping | None = None,
                    exclude: Sequence[int] = (), limit: int | None = None) -> dict[str, list[data.Item]]:
    """{lang: items} the direction is averaged over: the task's alignment training split (the
    aligned model's recorded train items when `alignment`, its `LoadedModel.info["alignment"]`, says
    it was trained on this task; else `data.default_train_items`), the first `limit` of them by
    index (the same items in every language). AlignlensError when one of them is in `exclude` (the
    evaluated items) or none is left."""
    train = _trained_items(alignment, spec) or data.default_train_items(spec)
    overlap = sorted(set(train) & set(exclude))
    if overlap:
        raise AlignlensError(f"task {spec.name}: the direction's training-split items {format_items(train, 5)} include "
                             f"{len(overlap)} evaluated item(s) (first: {', '.join(map(str, overlap[:5]))}); evaluate "
                             "held-out items only")
    chosen = sorted(train)[:limit] if limit is not None else sorted(train)
    out = {}
    for lang in languages:
        keep = set(chosen)
        out[lang] = [it for it in data.load_items(spec, lang) if it.index in keep]
        if not out[lang]:
            raise AlignlensError(f"task {spec.name}, language {lang}: none of the training-split items "
                                 f"{format_items(chosen, 5)} is in its file")
    return out


class QueryMeans:
    """`engine.Probe` summing, per layer, each item's residual averaged over its query positions
    (float64 sums over items; padding never enters). `mean()` -> [len(layers), d_model]; `ids`: the
    item ids seen."""

    def __init__(self, layers: Sequence[int], where: str = "") -> None:
        self.layers, self.where = list(layers), where
        self.sums: dict[int, torch.Tensor] = {}
        self.ids: list[int] = []

    def hooks(self, batch: SuffixBatch) -> list[Hook]:
        index = PoolIndex(batch.mask, batch.last)

        def read(layer: int) -> Callable:
            def fn(x: torch.Tensor, hook) -> torch.Tensor:
                q = pool_states(x, index)[1].double().cpu()  # [batch, d_model] query means
                if not bool(torch.isfinite(q).all()):
                    raise nonfinite_error(f"residual at layer {layer}", self.where, batch.ids or batch.rows)
                self.sums[layer] = self.sums.get(layer, 0.0) + q.sum(0)
                return x
            return fn

        return [(resid_hook(layer), read(layer)) for layer in self.layers]

    def after_batch(self, batch: SuffixBatch) -> None:
        self.ids += list(batch.ids)

    def mean(self) -> torch.Tensor:
        return torch.stack([self.sums[layer] / len(self.ids) for layer in self.layers])


def query_means(model: LoadedModel, spec: data.TaskSpec, lang: str, items: Sequence[data.Item],
                layers: Sequence[int], *, batch_size: int = 8) -> tuple[torch.Tensor, list[int]]:
    """(float64 [len(layers), d_model]: mean over `items` of each item's query-position mean of the
    residual at each layer, the item ids run) on the evaluation-format prompts of (`spec`, `lang`)."""
    where = f"task {spec.name}, language {lang} (direction)"
    probe = QueryMeans(layers, where)
    queries = [spec.prompts[lang].query_template.format(**it.fields) for it in items]
    score_prompts(model, data.prompt_prefix(spec, lang), queries, label_sets(model.tokenizer, spec.labels, where),
                  batch_size=batch_size, probes=[probe], item_ids=[it.index for it in items], where=where)
    return probe.mean(), sorted(probe.ids)


def alignment_directions(base: LoadedModel, aligned: LoadedModel, spec: data.TaskSpec,
                         lang_items: Mapping[str, Sequence[data.Item]], layers: Sequence[int], *,
                         kind: str = "alignment", exclude: Sequence[int] = (), batch_size: int = 8) -> Direction:
    """v_l = mean over languages of (mean query-position residual of `aligned` − that of `base`) over
    `lang_items` ({lang: training-split items, `direction_items`}), per layer of `layers` (0..n_layers).
    `kind` "control" for a copy-control model in place of `aligned`. AlignlensError when an item id
    is in `exclude` (the evaluated items) or the models differ in shape."""
    if kind not in ("alignment", "control"):
        raise AlignlensError(f"direction kind {kind!r}: use alignment or control")
    if (base.n_layers, base.d_model) != (aligned.n_layers, aligned.d_model):
        raise AlignlensError(f"{aligned.spec}: {aligned.n_layers} layers x {aligned.d_model}, but the base model "
                             f"{base.spec} has {base.n_layers} x {base.d_model}")
    layers = check_layers(list(layers), base.n_layers)
    excluded = set(exclude)
    for lang, items in lang_items.items():
        bad = sorted(it.index for it in items if it.index in excluded)
        if bad:
            raise AlignlensError(f"task {spec.name}, language {lang}: the direction would average evaluated item(s) "
                                 f"{', '.join(map(str, bad[:5]))}; use training-split items only")
    diffs, ids = [], {}
    for lang, items in lang_items.items():
        mb, ids[lang] = query_means(base, spec, lang, items, layers, batch_size=batch_size)
        ma, _ = query_means(aligned, spec, lang, items, layers, batch_size=batch_size)
        diffs.append(ma - mb)
    v = torch.stack(diffs).mean(0)
    return Direction(kind, {layer: v[i] for i, layer in enumerate(layers)}, ids, None, (base.spec, aligned.spec))


def random_directions(direction: Direction, seeds: Sequence[int]) -> list[Direction]:
    """Per seed, a direction with a standard-normal vector per layer scaled to `direction`'s norm at
    that layer (float64). A layer's vector depends only on (seed, layer), not on the other layers."""
    out = []
    for seed in seeds:
        vectors = {}
        for layer, v in direction.vectors.items():
            r = torch.from_numpy(np.random.default_rng([int(seed), int(layer)]).standard_normal(v.shape[0]))
            vectors[layer] = r * (float(v.norm()) / float(r.norm()))
        out.append(Direction("random", vectors, dict(direction.item_ids), int(seed), direction.models))
    return out


# ---- steering -------------------------------------------------------------------------------


class Steer:
    """`engine.Probe` adding `scale`·`vector` to the residual at `layer` (`resid_hook`) at the query
    positions of each batch (real tokens only: padding is left as is). A None vector adds nothing
    (the reference path)."""

    def __init__(self, layer: int, vector: torch.Tensor | None, scale: float) -> None:
        self.name = resid_hook(layer)
        self.add = None if vector is None else vector.double() * float(scale)

    def hooks(self, batch: SuffixBatch) -> list[Hook]:
        if self.add is None:
            return []
        mask = batch.mask

        def fn(x: torch.Tensor, hook) -> torch.Tensor:
            m = mask.to(x.device).unsqueeze(-1)
            return torch.where(m, x + self.add.to(x.device, x.dtype), x)

        return [(self.name, fn)]

    def after_batch(self, batch: SuffixBatch) -> None:
        pass


def _rows(spec: data.TaskSpec, lang: str, items: Sequence[data.Item], probs: np.ndarray, extra: dict) -> list[dict]:
    labels = list(spec.labels)
    return [{"task": spec.name, "lang": lang, "index": it.index, "gold": it.label, **extra,
             "probs": {lab: float(p[j]) for j, lab in enumerate(labels)}, "pred": labels[int(np.argmax(p))]}
            for it, p in zip(items, probs)]


def steer_language(model: LoadedModel, spec: data.TaskSpec, lang: str, items: Sequence[data.Item],
                   directions: Sequence[Direction], layers: Sequence[int], scales: Sequence[float], *,
                   batch_size: int = 8, on_pass_done: Callable[[int], None] | None = None) -> list[dict]:
    """Per-item rows of the base model `model` on (`spec`, `lang`, `items`): first the unsteered
    reference ("base", same path), then every direction x layer x scale:
    {task, lang, index, gold, layer, scale, direction_kind, direction_seed, probs: {label: p}, pred}
    (the reference: layer None, scale 0.0, direction_kind "base", direction_seed None).
    `on_pass_done(n)` after each pass over the items (n items)."""
    layers = check_layers(list(layers), model.n_layers)
    scales = [float(s) for s in scales]
    if not all(math.isfinite(s) for s in scales):
        raise AlignlensError(f"steering scales must be finite numbers, got {scales}")
    for d in directions:
        missing = [layer for layer in layers if layer not in d.vectors]
        if missing:
            raise AlignlensError(f"{d.name} direction has no vector for layer {missing[0]}")
        if d.vectors[layers[0]].shape[0] != model.d_model:
            raise AlignlensError(f"{d.name} direction has {d.vectors[layers[0]].shape[0]} dimensions, the model "
                                 f"{model.d_model}")
    where = f"task {spec.name}, language {lang}"
    prefix, sets = data.prompt_prefix(spec, lang), label_sets(model.tokenizer, spec.labels, where)
    queries = [spec.prompts[lang].query_template.format(**it.fields) for it in items]
    ids = [it.index for it in items]

    def run(probe: Steer, what: str) -> np.ndarray:
        probs = score_prompts(model, prefix, queries, sets, batch_size=batch_size, probes=[probe], item_ids=ids,
                              where=f"{where} ({what})").numpy()
        if on_pass_done is not None:
            on_pass_done(len(items))
        return probs

    rows = _rows(spec, lang, items, run(Steer(0, None, 0.0), "unsteered"),
                 {"layer": None, "scale": 0.0, "direction_kind": "base", "direction_seed": None})
    for d in directions:
        for layer in layers:
            for s in scales:
                probs = run(Steer(layer, d.vectors[layer], s), f"{d.name} direction, layer {layer}, scale {s:g}")
                rows += _rows(spec, lang, items, probs, {"layer": layer, "scale": s, "direction_kind": d.kind,
                                                         "direction_seed": d.seed})
    return rows


# ---- statistics -----------------------------------------------------------------------------


def _condition_key(row: Mapping) -> tuple:
    return (row["direction_kind"], row["direction_seed"], row["layer"], row["scale"])


def steering_summary(rows: Sequence[Mapping], groups: Mapping[str, Sequence[str]] | None = None, *,
                     n_resamples: int = 2000, seed: int = 0) -> dict:
    """Aggregates of `steer_language` rows (any tasks and languages).

    Returns {"base": condition_metrics of the reference rows, "conditions": [{"direction_kind",
    "direction_seed", "layer", "scale", "metrics": condition_metrics, "vs": {name:
    compare.paired_effects}}], "n_resamples", "seed"}. Every steered condition is compared with
    "base" (Δ = steered − base); the alignment direction also with "control" and each "random:<seed>"
    at the same layer and scale (Δ = alignment − that control). Per language: exact McNemar with Holm
    and BH across the task's languages (one family per comparison, layer and scale), accuracy, AUC
    and label shares of both; per group: item-cluster bootstrap macro Δs of accuracy, balanced
    accuracy, AUC and each label's share, and `prior_only` ("moves only the label prior": a label
    share's Δ interval excludes 0 while the AUC Δ interval includes 0; see `compare.prior_only`).
    `groups` None: {"all": every language}."""
    by: dict[tuple, list[Mapping]] = {}
    for row in rows:
        by.setdefault(_condition_key(row), []).append(row)
    base = [key for key in by if key[0] == "base"]
    if not base:
        raise AlignlensError("steering rows hold no unsteered reference (direction_kind 'base')")
    base_rows = by[base[0]]
    opts = {"n_resamples": n_resamples, "seed": seed}
    conditions = []
    for key, cond in by.items():
        kind, dseed, layer, scale = key
        if kind == "base":
            continue
        vs = {"base": paired_effects(base_rows, cond, groups, **opts)}
        if kind == "alignment":
            for other, other_rows in by.items():
                if other[0] in ("control", "random") and other[2:] == (layer, scale):
                    name = other[0] if other[1] is None else f"{other[0]}:{other[1]}"
                    vs[name] = paired_effects(other_rows, cond, groups, **opts)
        conditions.append({"direction_kind": kind, "direction_seed": dseed, "layer": layer, "scale": scale,
                           "metrics": condition_metrics(cond, groups), "vs": vs})
    return {"base": condition_metrics(base_rows, groups), "conditions": conditions, **opts}
