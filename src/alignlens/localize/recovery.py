"""Recovery of a patched gap, per language and language group (pure numpy, no model, no files).

Per item, from the rows of `patching.run_patches`: the receiver's clean log-odds r, the source's
clean log-odds s and the patched run's p (gold vs the other labels). For a (task, direction,
site, layer, positions) cell and a set of languages (one language or a group) with the same items:

    gap = mean(s − r)        recovery R = mean(p − r) / mean(s − r)

means over every (language, item) of the set: a ratio of means, so items with a small gap do not
blow it up. R = 1: patching the site moves the receiver all the way to the source; 0: not at all.

Intervals: a label-stratified item-cluster bootstrap: each resample draws, within each gold-label
stratum, as many items as it has, with replacement, and uses the same draw in every language of
the set (an item is the same question in every language) and for every cell (`item_weights`).
95% percentile intervals; `gap_mde80` = (z_0.975 + z_0.80) × the bootstrap SE of the gap ≈ 2.80 SE,
the gap a test at α = 0.05 detects with 80% power (normal approximation).

R is reported only where the gap's interval excludes 0; elsewhere the cell's status is "gap too
small" (its gap, interval and MDE say how small): a site cannot recover a difference the two
models do not reliably show.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

from alignlens import AlignlensError

#: z_0.975 + z_0.80: the minimal detectable effect at α = 0.05 (two-sided) with 80% power, in SEs.
MDE_Z = 1.959963984540054 + 0.8416212335729143
GAP_TOO_SMALL = "gap too small"


def item_weights(gold: np.ndarray, n_resamples: int, seed: int, chunk: int = 256) -> Iterator[np.ndarray]:
    """Bootstrap draws of items as counts, float64 [c, n] per block of <= `chunk` resamples: within
    each gold-label stratum (`gold` [n] label ids) its size is drawn with replacement, so every
    resample keeps the label counts. Deterministic given `seed`.

    TODO(effects): switch to `alignlens.effects.Resampler.item_weights` once `effects` is merged
    (same semantics and the same draws: SeedSequence(seed, spawn_key=(0,)), strata in label order)."""
    gold = np.asarray(gold)
    n = gold.size
    strata = [np.flatnonzero(gold == c) for c in np.unique(gold)]
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    for start in range(0, n_resamples, chunk):
        c = min(chunk, n_resamples - start)
        idx = np.concatenate([pos[rng.integers(0, len(pos), (c, len(pos)))] for pos in strata], axis=1)
        flat = (idx + (np.arange(c) * n)[:, None]).ravel()
        yield np.bincount(flat, minlength=c * n).reshape(c, n).astype(np.float64)


def _interval(values: np.ndarray) -> list[float] | None:
    v = values[np.isfinite(values)]
    if not v.size:
        return None
    lo, hi = np.quantile(v, [0.025, 0.975])
    return [float(lo), float(hi)]


def _cell_key(row: Mapping) -> tuple:
    return (row["task"], row["direction"], row["site"], row["layer"], row["positions"])


def recovery(rows: Iterable[Mapping], groups: Mapping[str, Sequence[str]] | None = None, *,
             n_resamples: int = 2000, seed: int = 0) -> list[dict]:
    """Recovery per (task, direction, site, layer, positions) cell, for each language and each
    group (name -> languages; default `paired.language_groups` of the rows' languages).

    Returns one dict per (cell, language or group): {task, direction, source, receiver, site, layer,
    positions, scope: "language"|"group", name, languages (those with items), n_items (items
    shared by them), gap, gap_ci95, gap_mde80, status: "ok"|"gap too small"|"no items", recovery,
    recovery_ci95} (recovery and its interval None unless status is "ok"; a recovery interval
    leaves out resamples whose gap is exactly 0). AlignlensError when an item's gold label differs
    between languages or a cell lacks an item its languages' clean runs have."""
    if not isinstance(n_resamples, int) or n_resamples < 2:
        raise ValueError(f"n_resamples must be an integer >= 2, got {n_resamples!r}")
    clean: dict[tuple, dict[int, float]] = {}
    gold: dict[tuple, dict[int, str]] = {}
    cells: dict[tuple, dict[str, dict[int, float]]] = {}
    roles: dict[tuple, tuple[str, str]] = {}
    for r in rows:
        gold.setdefault((r["task"], r["lang"]), {})[int(r["index"])] = r["gold"]
        if r["site"] == "clean":
            clean.setdefault((r["task"], r["lang"], r["model"]), {})[int(r["index"])] = float(r["logodds"])
            continue
        key = _cell_key(r)
        cells.setdefault(key, {}).setdefault(r["lang"], {})[int(r["index"])] = float(r["logodds"])
        roles[(r["task"], r["direction"])] = (r["source"], r["receiver"])
    out: list[dict] = []
    for task, direction in dict.fromkeys((k[0], k[1]) for k in cells):
        source, receiver = roles[(task, direction)]
        langs = [lang for (t, lang) in gold if t == task
                 and (t, lang, source) in clean and (t, lang, receiver) in clean]
        if groups is None:
            from alignlens.paired import language_groups

            task_groups = language_groups(langs)
        else:
            task_groups = groups
        scopes = [("language", lang, [lang]) for lang in langs] + [("group", g, list(v)) for g, v in task_groups.items()]
        keys = [k for k in cells if k[0] == task and k[1] == direction]
        for scope, name, members in scopes:
            out += _scope(task, direction, source, receiver, scope, name, [m for m in dict.fromkeys(members) if m in langs],
                          keys, clean, gold, cells, n_resamples, seed)
    return out


def _scope(task: str, direction: str, source: str, receiver: str, scope: str, name: str, langs: list[str],
           keys: list[tuple], clean: dict, gold: dict, cells: dict, n_resamples: int, seed: int) -> list[dict]:
    """The cells `keys` of one (task, direction) over the languages `langs` (see `recovery`)."""
    items = sorted(set.intersection(*[set(clean[(task, lang, source)]) & set(clean[(task, lang, receiver)])
                                      for lang in langs])) if langs else []
    base = {"task": task, "direction": direction, "source": source, "receiver": receiver, "scope": scope,
            "name": name, "languages": langs, "n_items": len(items)}
    if not items:
        return [{**base, "site": k[2], "layer": k[3], "positions": k[4], "gap": None, "gap_ci95": None,
                 "gap_mde80": None, "status": "no items", "recovery": None, "recovery_ci95": None} for k in keys]
    labels = {gold[(task, lang)][i] for lang in langs for i in items}
    for i in items:
        seen = {gold[(task, lang)][i] for lang in langs}
        if len(seen) > 1:
            raise AlignlensError(f"task {task}, item {i}: gold labels {sorted(seen)} differ between languages")
    label_id = {lab: j for j, lab in enumerate(sorted(labels))}
    g = np.array([label_id[gold[(task, langs[0])][i]] for i in items])
    r = np.array([[clean[(task, lang, receiver)][i] for i in items] for lang in langs])
    gap_items = (np.array([[clean[(task, lang, source)][i] for i in items] for lang in langs]) - r).sum(0)
    d_items = np.empty((len(items), len(keys)))
    for c, k in enumerate(keys):
        for li, lang in enumerate(langs):
            got = cells[k].get(lang, {})
            missing = [i for i in items if i not in got]
            if missing:
                raise AlignlensError(f"task {task}, language {lang}: no {k[1]} {k[2]} layer {k[3]} {k[4]} row for item "
                                     f"{missing[0]} (incomplete patching rows)")
        d_items[:, c] = sum(np.array([cells[k][lang][i] for i in items]) - r[li] for li, lang in enumerate(langs))
    total = len(langs) * len(items)
    gaps, ratios = [], []
    for w in item_weights(g, n_resamples, seed):
        gsum = w @ gap_items
        gaps.append(gsum / (len(langs) * w.sum(1)))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios.append((w @ d_items) / gsum[:, None])
    gap_draws, ratio_draws = np.concatenate(gaps), np.concatenate(ratios)
    gap = float(gap_items.sum() / total)
    gap_ci = _interval(gap_draws)
    significant = gap_ci is not None and (gap_ci[0] > 0 or gap_ci[1] < 0)
    stats = {"gap": gap, "gap_ci95": gap_ci, "gap_mde80": float(MDE_Z * gap_draws.std(ddof=1))}
    out = []
    for c, k in enumerate(keys):
        row = {**base, "site": k[2], "layer": k[3], "positions": k[4], **stats}
        if significant:
            row.update(status="ok", recovery=float(d_items[:, c].sum() / gap_items.sum()),
                       recovery_ci95=_interval(ratio_draws[:, c]))
        else:
            row.update(status=GAP_TOO_SMALL, recovery=None, recovery_ci95=None)
        out.append(row)
    return out
