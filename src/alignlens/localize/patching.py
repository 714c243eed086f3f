"""Cross-model activation patching (`alignlens localize`, design §1).

For one (task, language) and its items, a *direction* takes activations from a *source* model
(e.g. the aligned one) into a *receiver* (e.g. the base): at one *site* (`Site`: the residual
stream entering a block, a block's attention output or its MLP output) and at some *positions*
of the prompt — `last` (the prompt's last token), `query` (the item's own tokens after the
few-shot prefix) or `all` (every prompt token, BOS and demonstrations included) — the receiver's
activation is replaced by the source's on the same prompt, and the receiver's label
probabilities are read at the last position. The two models must share a tokenizer (the prompts
are the same tokens) and their shapes.

Cost (the naive method is one full forward per site × item; `bench/localize_vs_naive.py`):
- each model's clean run happens once per item batch, from its few-shot prefix's key/value cache
  (one prefix pass per language), caching the activations of every site the runs need at the
  suffix positions (and the prefix's once per language, for `all`);
- every patched run enters the receiver's decoder at the site's block (`engine.decoder_pass`):
  the blocks below are not computed; `last` and `query` reuse the receiver's clean prefix cache;
- `all` runs its patched prefix once per (language, site, direction), from the site's block, and
  reuses that cache for every item batch of the language. These caches are kept within
  `prefix_budget` bytes: more `all` runs than fit make further passes over the item batches
  (each pass repeats the two clean runs per batch, a small part of the work);
- `last` with `one_token_last` (default) runs only the last token from the site's block, after
  the receiver's clean key/value cache of the batch's other tokens (patching the last position
  changes nothing before it); batches whose prompts reach a sliding attention window take the
  full-suffix path instead.
Label probabilities come from the engine's pooled LM head (`engine.head_probs`). Probabilities
agree with a plain full forward per item with the same patch (`reference_patch`) to float
rounding (tested to 1e-4; `bench/localize_vs_naive.py` checks 1e-5).

Memory: per item batch, each model's clean site activations [batch, width, d_model] per site,
the receiver's clean key/value cache of the batch (for `last`), and the `all` prefix caches.

Runs in one process: under torchrun `patch_language` refuses (every rank would redo it all).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from alignlens import AlignlensError, data, distributed
# the sites, positions and directions (name -> (source, receiver) model roles), defined with the options
from alignlens.config import PATCH_DIRECTIONS as DIRECTIONS, PATCH_POSITIONS as POSITIONS, SITE_KINDS
from alignlens.engine import (HEAD_ROWS, Hook, Unembed, cached_lengths, check_layer_entry, compose_cache,
                              decoder_pass, encode, head_probs, nonfinite_error, plan_batches,
                              suffix_positions, _right_padded)
from alignlens.labels import label_sets
from alignlens.model import LoadedModel

#: Label probabilities below this count as it in log-odds (float32's smallest positive value).
TINY = 1.4e-45


@dataclass(frozen=True)
class Site:
    """Where a patch goes. `resid` layer j in 0..n_layers: the residual stream entering block j
    (j = 0: the embedding output `blocks.0.hook_resid_pre`; j >= 1: `blocks.{j-1}.hook_resid_post`;
    j = n_layers: the last block's output). `attn`/`mlp` layer l in 0..n_layers-1: block l's
    attention / MLP output (`blocks.{l}.hook_attn_out` / `hook_mlp_out`: what the block adds to
    the residual stream; Gemma's post-norms included). A patched run enters at block `layer`."""

    kind: str
    layer: int

    def hook(self) -> str:
        """The TransformerLens hook name of the site (the name rows report)."""
        if self.kind == "resid":
            return "blocks.0.hook_resid_pre" if self.layer == 0 else f"blocks.{self.layer - 1}.hook_resid_post"
        return f"blocks.{self.layer}.hook_{self.kind}_out"


def make_sites(kinds: Sequence[str], n_layers: int, layers: Sequence[int] | None = None) -> list[Site]:
    """The sites of `kinds` at `layers` (None: all): resid at layers in 0..n_layers, attn and mlp
    at blocks 0..n_layers-1 (a layer n_layers has only the resid site). AlignlensError for an
    unknown kind or a layer outside 0..n_layers."""
    bad = [k for k in kinds if k not in SITE_KINDS]
    if bad:
        raise AlignlensError(f"unknown patching site {bad[0]!r} (use {', '.join(SITE_KINDS)})")
    chosen = list(range(n_layers + 1)) if layers is None else sorted(set(layers))
    out_of_range = [x for x in chosen if not 0 <= x <= n_layers]
    if out_of_range:
        raise AlignlensError(f"layer {out_of_range[0]} is outside 0..{n_layers} (this model has {n_layers} blocks)")
    return [Site(k, x) for k in dict.fromkeys(kinds) for x in chosen if k == "resid" or x < n_layers]


@dataclass(frozen=True)
class Direction:
    """Activations go from model `source` to model `receiver` (names in the `models` mapping)."""

    name: str
    source: str
    receiver: str


def directions_by_name(names: Sequence[str]) -> list[Direction]:
    """`DIRECTIONS` by their CLI names (a2b, b2a, c2b); AlignlensError for an unknown one."""
    bad = [n for n in names if n not in DIRECTIONS]
    if bad:
        raise AlignlensError(f"unknown patching direction {bad[0]!r} (use {', '.join(DIRECTIONS)})")
    return [Direction(n, *DIRECTIONS[n]) for n in dict.fromkeys(names)]


@dataclass(frozen=True)
class PatchRun:
    """One patched run per item: `sites` (usually one; several are patched in the same pass, all
    from `direction.source`) at `positions`, entering the receiver at the lowest site's block."""

    direction: Direction
    sites: tuple[Site, ...]
    positions: str

    @property
    def start(self) -> int:
        return min(s.layer for s in self.sites)


def log_odds(probs: np.ndarray, gold: int) -> float:
    """log p_gold − log Σ_{other labels} p (label token-set masses; below `TINY` counts as TINY)."""
    p = np.maximum(np.asarray(probs, dtype=np.float64), TINY)
    return float(math.log(p[gold]) - math.log(max(float(p.sum() - p[gold]), TINY)))


def prompt_tokens(tokenizer: Any, spec: data.TaskSpec, lang: str, items: Sequence[data.Item]) -> tuple[list[list[int]], int]:
    """(token ids of each item's prompt, k): k = the few-shot prefix's tokens every prompt shares
    (as `engine.score_prompts` caches with probes), so positions >= k are the item's own (`query`)."""
    prefix = data.prompt_prefix(spec, lang)
    full = encode(tokenizer, [data.build_prompt(spec, lang, it) for it in items])
    k, _ = cached_lengths(encode(tokenizer, [prefix])[0], full, len(full))
    return full, k


def check_models(models: Mapping[str, LoadedModel], directions: Sequence[Direction]) -> None:
    """AlignlensError unless every direction's models are given and all share one tokenizer
    (same vocabulary and special tokens), block count, width and dtype."""
    for d in directions:
        for role in (d.source, d.receiver):
            if role not in models:
                raise AlignlensError(f"direction {d.name} needs a model {role!r}; given: {', '.join(models)}")
    names = list(dict.fromkeys(r for d in directions for r in (d.source, d.receiver)))
    first = models[names[0]]
    tok0 = first.tokenizer
    for name in names[1:]:
        m, tok = models[name], models[name].tokenizer
        if not _same_tokenizer(tok0, tok):
            raise AlignlensError(f"models {names[0]} and {name} do not share a tokenizer; cross-model patching needs "
                                 "the same tokens for the same prompt (compare models of one family)")
        for what in ("n_layers", "d_model"):
            if getattr(m, what) != getattr(first, what):
                raise AlignlensError(f"models {names[0]} and {name} differ in {what} ({getattr(first, what)} vs "
                                     f"{getattr(m, what)}); cross-model patching needs the same shapes")
        if m.dtype != first.dtype:
            raise AlignlensError(f"models {names[0]} and {name} are loaded in {first.dtype} and {m.dtype}; load both "
                                 "in one dtype")


#: Pairs of tokenizer objects found equal (get_vocab of a 262k vocabulary takes ~1 s), kept alive with them.
_SAME_TOKENIZERS: dict[tuple[int, int], tuple[Any, Any]] = {}


def _same_tokenizer(a: Any, b: Any) -> bool:
    """Same vocabulary and BOS/EOS ids (remembered per pair of objects)."""
    if a is b or (id(a), id(b)) in _SAME_TOKENIZERS:
        return True
    same = ([a.bos_token_id, a.eos_token_id] == [b.bos_token_id, b.eos_token_id] and len(a) == len(b)
            and a.get_vocab() == b.get_vocab())
    if same:
        _SAME_TOKENIZERS[(id(a), id(b))] = (a, b)
    return same


# ---- what each model's clean run keeps --------------------------------------------------------


def _key(site: Site) -> tuple[str, int]:
    return (site.kind, site.layer)


def _capture_hook_name(key: tuple[str, int], n_layers: int) -> str:
    """Where a clean run reads a value: resid row j < n_layers at block j's input (the same
    tensor as block j-1's output), row n_layers at the last block's output."""
    kind, layer = key
    if kind == "resid":
        return f"blocks.{layer}.hook_resid_pre" if layer < n_layers else f"blocks.{n_layers - 1}.hook_resid_post"
    return f"blocks.{layer}.hook_{kind}_out"


def _capture_hooks(keys: Sequence[tuple[str, int]], n_layers: int, store: dict) -> list[Hook]:
    def keep(key: tuple[str, int]) -> Callable:
        def hook(x: torch.Tensor, hook: Any) -> torch.Tensor:
            store[key] = x.detach().clone()
            return x
        return hook
    return [(_capture_hook_name(key, n_layers), keep(key)) for key in keys]


@dataclass
class _Prompts:
    """The language's prompts as tokens: full ids per item, k cached prefix tokens."""

    full: list[list[int]]
    k: int
    pad: int


@dataclass
class _Clean:
    """A model's clean prefix pass of one language: its key/value cache (None when k = 0) and
    the site values [1, k, d_model] the `all` runs need."""

    cache: Any
    values: dict = field(default_factory=dict)


def _replace(x: torch.Tensor, src: torch.Tensor, mode: str, last: torch.Tensor | None) -> torch.Tensor:
    """`x` with the source's values: mode "every" (src [batch, width, d_model] like x: every
    position), "last" (x, src [batch, width, d_model]: each row's last real token, `last` [batch])
    or "one-token" (a one-token run: x [batch, 1, d_model] becomes src [batch, width, d_model] at
    `last`)."""
    src = src.to(device=x.device, dtype=x.dtype)
    if mode == "every":
        return src.clone()
    rows = torch.arange(x.shape[0], device=x.device)
    idx = last.to(x.device)
    if mode == "one-token":
        return src[rows, idx].unsqueeze(1)
    out = x.clone()
    out[rows, idx] = src[rows, idx]
    return out


def _mode(positions: str, one_token: bool) -> str:
    return "one-token" if one_token else ("last" if positions == "last" else "every")


def _site_hooks(run: PatchRun, source_values: dict, n_layers: int, mode: str, last: torch.Tensor | None) -> list[Hook]:
    """Hooks patching every site of `run` except a resid site at its entry block (the entry
    residual itself carries that one)."""
    hooks = []
    for site in run.sites:
        if site.kind == "resid" and site.layer == run.start:
            continue
        src = source_values[_key(site)]

        def patch(x: torch.Tensor, hook: Any, src: torch.Tensor = src) -> torch.Tensor:
            return _replace(x, src, mode, last)
        hooks.append((_capture_hook_name(_key(site), n_layers), patch))
    return hooks


def _entry_residual(run: PatchRun, receiver_values: dict, source_values: dict, mode: str,
                    last: torch.Tensor | None) -> torch.Tensor:
    """The receiver's clean residual entering block `run.start` (at the last token only in a
    one-token run), patched when one of the run's sites is the residual there."""
    clean = receiver_values[("resid", run.start)]
    if any(s.kind == "resid" and s.layer == run.start for s in run.sites):
        return _replace(clean if mode != "one-token" else clean[:, :1], source_values[("resid", run.start)], mode, last)
    if mode == "one-token":
        return clean[torch.arange(clean.shape[0], device=clean.device), last.to(clean.device)].unsqueeze(1)
    return clean


def _one_token_ok(model: LoadedModel, k: int, width: int) -> bool:
    """A one-token run after a batch's clean cache attends exactly as the full suffix's last
    token did unless a sliding attention window could cut it (cache positions count padding)."""
    window = getattr(model.hf_model.config, "sliding_window", None)
    return window is None or k + width + 1 <= int(window)


def _cache_bytes(cache: Any, start: int) -> int:
    """Bytes of a key/value cache's blocks >= start (0 for a cache without per-block tensors)."""
    total = 0
    for layer in list(getattr(cache, "layers", []))[start:]:
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def _plan_passes(runs: Sequence[PatchRun], clean: Mapping[str, _Clean], budget: int) -> list[list[PatchRun]]:
    """Runs per pass over the item batches: every `last`/`query` run and as many `all` runs as
    their patched prefix caches fit in `budget` bytes in the first, the other `all` runs in
    further passes (at least one each)."""
    passes: list[list[PatchRun]] = [[r for r in runs if r.positions != "all"]]
    used = 0
    for r in (r for r in runs if r.positions == "all"):
        size = _cache_bytes(clean[r.direction.receiver].cache, r.start)
        if used and used + size > budget:
            passes.append([])
            used = 0
        passes[-1].append(r)
        used += size
    return [p for p in passes if p] or [[]]


# ---- the runs -----------------------------------------------------------------------------------


def patch_language(models: Mapping[str, LoadedModel], spec: data.TaskSpec, lang: str, items: Sequence[data.Item], *,
                   sites: Sequence[Site], positions: Sequence[str], directions: Sequence[Direction],
                   batch_size: int = 8, progress: Callable[[int], None] | None = None, one_token_last: bool = True,
                   prefix_budget: int = 1 << 30) -> list[dict]:
    """Patch every site at every positions in every direction for the items of (`spec`, `lang`).

    models: name -> model (e.g. {"base": ..., "aligned": ...}); each `Direction` names its source and
    receiver. Returns rows (`run_patches`): one per (item, model) clean run, then one per (item,
    direction, site, positions)."""
    bad = [p for p in positions if p not in POSITIONS]
    if bad:
        raise AlignlensError(f"unknown patching positions {bad[0]!r} (use {', '.join(POSITIONS)})")
    runs = [PatchRun(d, (s,), p) for d in directions for s in sites for p in dict.fromkeys(positions)]
    return run_patches(models, spec, lang, items, runs, batch_size=batch_size, progress=progress,
                       one_token_last=one_token_last, prefix_budget=prefix_budget)


@dataclass
class _Language:
    """What every item batch of one (task, language) call shares."""

    models: Mapping[str, LoadedModel]
    spec: data.TaskSpec
    lang: str
    items: Sequence[data.Item]
    full: list[list[int]]  # token ids of each item's prompt
    k: int  # the few-shot prefix's tokens (cached); positions >= k are the item's own
    gold: list[int]
    index_sets: list[torch.Tensor]
    unembed: dict[str, Unembed]
    need: dict[str, set]  # per model: the site values its clean suffix runs keep
    clean: dict[str, _Clean]
    one_token_last: bool
    n_layers: int
    pad: int

    @property
    def where(self) -> str:
        return f"task {self.spec.name}, language {self.lang}"


@torch.no_grad()
def run_patches(models: Mapping[str, LoadedModel], spec: data.TaskSpec, lang: str, items: Sequence[data.Item],
                runs: Sequence[PatchRun], *, batch_size: int = 8, progress: Callable[[int], None] | None = None,
                one_token_last: bool = True, prefix_budget: int = 1 << 30) -> list[dict]:
    """Clean and patched label probabilities of `items` of (`spec`, `lang`) (see the module docstring).

    Rows (JSON-able dicts): clean {task, lang, index, gold, model, site: "clean", direction: None,
    layer: None, positions: None, probs: {label: p}, logodds, pred} per (model, item), then patched
    {task, lang, index, gold, direction, source, receiver, site, layer, hook, positions, probs,
    logodds, pred} per (run, item) (a run of several sites: site "kind@layer,...", layer its entry
    block). logodds = log p_gold − log Σ_other p; pred = the label of largest probability.
    `batch_size`: items per pass; `progress(n)`: told the items done (in total len(items), spread
    over the passes `prefix_budget` makes). Everything is checked before any model runs;
    NumericalError when a probability is not finite."""
    if distributed.world().distributed:
        raise AlignlensError("cross-model patching runs in one process; run it without torchrun")
    if not runs:
        raise AlignlensError("nothing to patch: no site, positions or direction given")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise AlignlensError(f"batch size must be a positive integer, got {batch_size!r}")
    names = list(dict.fromkeys(r for run in runs for r in (run.direction.source, run.direction.receiver)))
    check_models(models, list(dict.fromkeys(run.direction for run in runs)))
    ref = models[names[0]]
    n_layers = ref.n_layers
    for run in runs:
        if run.positions not in POSITIONS:
            raise AlignlensError(f"unknown patching positions {run.positions!r} (use {', '.join(POSITIONS)})")
        for s in run.sites:
            top = n_layers if s.kind == "resid" else n_layers - 1
            if s.kind not in SITE_KINDS or not 0 <= s.layer <= top:
                raise AlignlensError(f"site {s.kind} at layer {s.layer}: not a site of a {n_layers}-block model")
            if s.kind == "resid" and s.layer == n_layers and len(run.sites) > 1:
                raise AlignlensError("the last block's output (resid at layer n_layers) can only be patched alone")
    where = f"task {spec.name}, language {lang}"
    sets = label_sets(ref.tokenizer, spec.labels, where)
    if not items:
        return []
    full, k = prompt_tokens(ref.tokenizer, spec, lang, items)
    for name in names[1:]:
        if models[name].tokenizer is not ref.tokenizer and prompt_tokens(models[name].tokenizer, spec, lang, items) != (full, k):
            raise AlignlensError(f"{where}: models {names[0]} and {name} tokenize the prompts differently")
    for name in dict.fromkeys(run.direction.receiver for run in runs):
        check_layer_entry(models[name])

    need: dict[str, set] = {n: set() for n in names}
    need_prefix: dict[str, set] = {n: set() for n in names}  # the site values each prefix pass keeps (`all`)
    for run in runs:
        d = run.direction
        for target in ([need] + ([need_prefix] if run.positions == "all" else [])):
            target[d.receiver].add(("resid", run.start))
            target[d.source].update(_key(s) for s in run.sites)
    clean: dict[str, _Clean] = {}
    for n in names:
        clean[n] = _Clean(None)
        if k > 0:
            _, clean[n].cache = decoder_pass(models[n], ids=torch.tensor([full[0][:k]], device=models[n].device),
                                             fwd_hooks=_capture_hooks(sorted(need_prefix[n]), n_layers, clean[n].values),
                                             keep_cache=True)
    ctx = _Language(models, spec, lang, items, full, k, [spec.labels.index(it.label) for it in items],
                    [torch.tensor(s_, dtype=torch.long) for s_ in sets],
                    {n: Unembed.from_hf(models[n].hf_model) for n in names}, need, clean, one_token_last, n_layers,
                    ref.tokenizer.pad_token_id if ref.tokenizer.pad_token_id is not None else 0)
    passes = _plan_passes(runs, clean, prefix_budget)
    batches = plan_batches([len(f) for f in full], len(full), batch_size)
    rows: list[dict] = []
    units, total_units, reported = 0, len(passes) * len(items), 0
    for p, pass_runs in enumerate(passes):
        prefixes = {run: _patched_prefix(models, clean, run, n_layers) for run in pass_runs
                    if run.positions == "all" and k > 0}
        for b in batches:
            rows += _patch_batch(ctx, prefixes, pass_runs, b, with_clean=p == 0)
            units += len(b)
            now = units * len(items) // total_units
            if progress is not None and now > reported:
                progress(now - reported)
            reported = now
        prefixes.clear()
    return rows


def _patched_prefix(models: Mapping[str, LoadedModel], clean: Mapping[str, _Clean], run: PatchRun, n_layers: int) -> Any:
    """The receiver's key/value cache of the few-shot prefix with `run`'s sites patched at every
    prefix position (an `all` run), computed from the run's entry block; blocks below from the
    receiver's clean prefix cache."""
    d = run.direction
    receiver = models[d.receiver]
    residual = _entry_residual(run, clean[d.receiver].values, clean[d.source].values, "every", None)
    _, cache = decoder_pass(receiver, layer=run.start, residual=residual, keep_cache=True,
                            fwd_hooks=_site_hooks(run, clean[d.source].values, n_layers, "every", None))
    return compose_cache(clean[d.receiver].cache, cache, run.start)


def _row_probs(probs: np.ndarray, g: int, labels: Sequence[str]) -> dict:
    return {"probs": {lab: float(probs[j]) for j, lab in enumerate(labels)}, "logodds": log_odds(probs, g),
            "pred": labels[int(np.argmax(probs))]}


def _patch_batch(ctx: _Language, prefixes: Mapping[PatchRun, Any], runs: Sequence[PatchRun], b: list[int], *,
                 with_clean: bool) -> list[dict]:
    """One item batch (`b`: positions in the item list): each model's clean suffix run (keeping the
    site values the runs need; with `with_clean` its rows too), then every run of the pass; the LM
    head on all final states of a receiver at once (chunks of HEAD_ROWS)."""
    models, k, n_layers = ctx.models, ctx.k, ctx.n_layers
    names = list(ctx.clean)
    dev = models[names[0]].device
    ids, mask = _right_padded([ctx.full[i][k:] for i in b], ctx.pad, dev)
    attn, pos = suffix_positions(mask, k)
    last = mask.sum(1) - 1
    rows_idx = torch.arange(len(b), device=dev)
    width = ids.shape[1]
    one_token = {n: ctx.one_token_last and _one_token_ok(models[n], k, width)
                 and any(r.positions == "last" and r.direction.receiver == n for r in runs) for n in names}
    values: dict[str, dict] = {}
    caches: dict[str, Any] = {}
    states: dict[str, list[tuple[Any, torch.Tensor]]] = {n: [] for n in names}
    for n in names:
        values[n] = {}
        h, caches[n] = decoder_pass(models[n], ids=ids, cache=ctx.clean[n].cache, attention_mask=attn, position_ids=pos,
                                    fwd_hooks=_capture_hooks(sorted(ctx.need[n]), n_layers, values[n]),
                                    keep_cache=one_token[n])
        if with_clean:
            states[n].append((("clean", n), h[rows_idx.to(h.device), last.to(h.device)]))
    for run in runs:
        d = run.direction
        src, rcv = values[d.source], values[d.receiver]
        if run.positions == "last" and one_token[d.receiver]:
            mode = "one-token"
            keep = (torch.arange(width, device=dev).unsqueeze(0) < last.unsqueeze(1)).long()
            am = torch.cat([attn[:, :k], keep, torch.ones((len(b), 1), dtype=torch.long, device=dev)], dim=1)
            h, _ = decoder_pass(models[d.receiver], layer=run.start, residual=_entry_residual(run, rcv, src, mode, last),
                                cache=caches[d.receiver], attention_mask=am, position_ids=(k + last).unsqueeze(1),
                                fwd_hooks=_site_hooks(run, src, n_layers, mode, last))
            states[d.receiver].append((run, h[:, 0]))
            continue
        mode = _mode(run.positions, False)
        cache = prefixes.get(run, ctx.clean[d.receiver].cache) if run.positions == "all" else ctx.clean[d.receiver].cache
        h, _ = decoder_pass(models[d.receiver], layer=run.start, residual=_entry_residual(run, rcv, src, mode, last),
                            cache=cache, attention_mask=attn, position_ids=pos,
                            fwd_hooks=_site_hooks(run, src, n_layers, mode, last))
        states[d.receiver].append((run, h[rows_idx.to(h.device), last.to(h.device)]))
    values.clear()
    caches.clear()
    return [row for n in names if states[n] for row in _rows(ctx, n, states[n], b)]


def _rows(ctx: _Language, model: str, states: list[tuple[Any, torch.Tensor]], b: list[int]) -> list[dict]:
    """Rows of one receiver's runs on batch `b`: the LM head on all their final states [len(b), d_model]
    at once (chunks of HEAD_ROWS), label probabilities, log-odds, prediction."""
    labels = list(ctx.spec.labels)
    flat = torch.cat([s for _, s in states])
    probs = torch.cat([head_probs(ctx.unembed[model], flat[i:i + HEAD_ROWS], ctx.index_sets)
                       for i in range(0, flat.shape[0], HEAD_ROWS)]).numpy()
    out = []
    for j, (tag, _) in enumerate(states):
        block = probs[j * len(b):(j + 1) * len(b)]
        bad = [ctx.items[b[r]].index for r in range(len(b)) if not np.isfinite(block[r]).all()]
        if bad:
            what = "clean" if isinstance(tag, tuple) else f"{tag.direction.name} {_site_name(tag)} {tag.positions}"
            raise nonfinite_error(f"label probabilities ({what})", ctx.where, bad, ctx.models[model].dtype)
        for r, i in enumerate(b):
            g = ctx.gold[i]
            base = {"task": ctx.spec.name, "lang": ctx.lang, "index": ctx.items[i].index, "gold": labels[g]}
            if isinstance(tag, tuple):  # ("clean", model name)
                out.append({**base, "model": model, "direction": None, "site": "clean", "layer": None,
                            "positions": None, **_row_probs(block[r], g, labels)})
                continue
            out.append({**base, "direction": tag.direction.name, "source": tag.direction.source,
                        "receiver": tag.direction.receiver, "site": _site_name(tag),
                        "layer": tag.sites[0].layer if len(tag.sites) == 1 else tag.start,
                        "hook": ",".join(s.hook() for s in tag.sites), "positions": tag.positions,
                        **_row_probs(block[r], g, labels)})
    return out


def _site_name(run: PatchRun) -> str:
    return run.sites[0].kind if len(run.sites) == 1 else ",".join(f"{s.kind}@{s.layer}" for s in run.sites)


# ---- the naive method, for checking ---------------------------------------------------------------


@torch.no_grad()
def reference_patch(source: LoadedModel, receiver: LoadedModel, ids: Sequence[int], k: int,
                    runs: Sequence[tuple[Sequence[Site], str]], label_sets_: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """The naive method, for checking: one plain full forward of `source` on the prompt's token
    `ids` (no cache) keeping every site's activation at its `Site.hook`, then per run (sites,
    positions) one plain full forward of `receiver` with hooks setting those sites to the source's
    values at `positions` (last: the last token; query: tokens k..; all: every token); label-set
    probabilities from the last position's logits. float64 [n_labels] per run."""
    x = torch.tensor([list(ids)], device=source.device)
    t = x.shape[1]
    kept: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable:
        def hook(a: torch.Tensor, hook: Any) -> torch.Tensor:
            kept[name] = a.detach().clone()
            return a
        return hook

    names = list(dict.fromkeys(s.hook() for sites, _ in runs for s in sites))
    with source.bridge.hooks(fwd_hooks=[(n, keep(n)) for n in names]):
        source.hf_model(input_ids=x)
    out = []
    for sites, positions in runs:
        span = {"last": slice(t - 1, t), "query": slice(k, t), "all": slice(0, t)}[positions]

        def patch(a: torch.Tensor, hook: Any, name: str = "") -> torch.Tensor:
            b = a.clone()
            b[:, span] = kept[name][:, span].to(b)
            return b
        hooks = [(s.hook(), lambda a, hook, name=s.hook(): patch(a, hook, name)) for s in sites]
        with receiver.bridge.hooks(fwd_hooks=hooks):
            logits = receiver.hf_model(input_ids=x.to(receiver.device), logits_to_keep=1).logits[0, -1]
        probs = torch.softmax(logits.float(), dim=-1)
        out.append(torch.stack([probs[list(s)].sum() for s in label_sets_]).double().cpu().numpy())
    return out
