"""Paired changes between two runs' similarity.json, from the bootstrap replicates each stores.

`replicates` / `mean_replicates` read a task entry's stored replicates back (point estimate plus
the decoded deviations, `resampling.decode_replicates`); `similarity_change` gives the paired change
run b - run a of every measure both runs store, per language and for the mean over languages, and
`summary_interval` the paired change (or the estimate) of an average over languages and rows, each
with its `bc_interval`. Runs pair up only when their bootstrap plans are equal (the same resamples
of the same items).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from alignlens import AlignlensError
from alignlens.similarity.analysis import INTERVAL_METRICS, _json
from alignlens.similarity.resampling import bc_interval, decode_replicates

def similarity_change(base: Mapping, aligned: Mapping, level: float = 0.95, english: str = "en") -> dict:
    """Paired change aligned - base, from two runs' task entries of similarity.json
    (`similarity_analysis` output on the same items), of every measure whose replicates both store:
    per language the paper's measure (pca_pearson) of the PCA languages, and the mean over languages
    of every interval measure (when both runs average the same languages).

    Replicate b of the change is replicate b of ``aligned`` minus replicate b of ``base``: the same
    resample of item indices in both (checked: equal bootstrap plans), so the interval (`bc_interval`
    around the change of the estimates) is paired. Returns {"level", "languages", "variants":
    {"raw"/"robust": {metric: {"per_language": {lang: {"delta", "lo", "hi"} [n_layers]}, "mean":
    {"delta", "lo", "hi"}}}}}. AlignlensError when the runs cannot be paired (no replicates,
    different plans, layers or pooling)."""
    for name, t in (("base", base), ("aligned", aligned)):
        if "bootstrap" not in t:
            raise AlignlensError(f"{name} run has no bootstrap replicates (similarity.json of an older alignlens "
                                 "or --similarity-resamples 0)")
    pa, pb = base["bootstrap"]["plan"], aligned["bootstrap"]["plan"]
    if pa != pb:
        diff = ", ".join(f"{k} {pa.get(k)} vs {pb.get(k)}" for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k))
        raise AlignlensError(f"the runs' bootstrap plans differ ({diff}): their replicates do not pair up")
    if base.get("n_layers") != aligned.get("n_layers") or base.get("pooling") != aligned.get("pooling"):
        raise AlignlensError(f"the runs differ in layers ({base.get('n_layers')} vs {aligned.get('n_layers')}) or "
                             f"pooling ({base.get('pooling')} vs {aligned.get('pooling')})")
    out: dict = {"level": level, "languages": [], "variants": {}}
    variants = ["raw"]
    if "robust" in base and "robust" in aligned and base["robust"]["method"] == aligned["robust"]["method"]:
        variants.append("robust")
    for v in variants:
        res: dict = {}
        for m in INTERVAL_METRICS:
            entry: dict = {"per_language": {}}
            stored = [set(t["bootstrap"]["replicates"].get(v, {}).get("per_language", {}).get(m, {})) for t in (base, aligned)]
            for lang in [lang for lang in base["languages"] if lang in stored[0] & stored[1] and lang != english]:
                est = [_estimate(t, v, m, lang) for t in (base, aligned)]
                delta = est[1] - est[0]
                lo, hi = bc_interval(replicates(aligned, v, m, lang) - replicates(base, v, m, lang), delta, level)
                entry["per_language"][lang] = {"delta": _json(delta), "lo": _json(lo), "hi": _json(hi)}
                out["languages"] += [lang] if lang not in out["languages"] else []
            same_langs = (base["bootstrap"].get("mean_languages", {}).get(m)
                          == aligned["bootstrap"].get("mean_languages", {}).get(m))
            if same_langs and all(m in t["bootstrap"]["replicates"].get(v, {}).get("mean", {}) for t in (base, aligned)):
                est = [arr_of(t["intervals"]["mean"][v][m]["estimate"]) for t in (base, aligned)]
                delta = est[1] - est[0]
                lo, hi = bc_interval(mean_replicates(aligned, v, m) - mean_replicates(base, v, m), delta, level)
                entry["mean"] = {"delta": _json(delta), "lo": _json(lo), "hi": _json(hi),
                                 "languages": list(base["bootstrap"]["mean_languages"][m])}
            if entry["per_language"] or "mean" in entry:
                res[m] = entry
        out["variants"][v] = res
    return out


def arr_of(values: Sequence) -> np.ndarray:
    """A JSON list of numbers / null as float64 (null -> NaN)."""
    return np.array([np.nan if x is None else x for x in values], dtype=np.float64)


def _estimate(task: Mapping, variant: str, metric: str, lang: str) -> np.ndarray:
    src = task["per_language"] if variant == "raw" else task["robust"]["per_language"]
    return arr_of(src[lang][metric])


def replicates(task: Mapping, variant: str, metric: str, lang: str) -> np.ndarray:
    """One language's bootstrap replicates of ``metric`` from a task entry of similarity.json:
    float64 [n_layers, n_resamples] (point estimate + stored deviation). ``variant``: "raw" or "robust"."""
    boot = task.get("bootstrap")
    if not boot:
        raise AlignlensError("no bootstrap replicates (similarity.json of an older alignlens or --similarity-resamples 0)")
    text = boot["replicates"].get(variant, {}).get("per_language", {}).get(metric, {}).get(lang)
    if text is None:
        raise AlignlensError(f"no {variant} bootstrap replicates of {metric} for {lang} (stored: {boot.get('stored')})")
    est = _estimate(task, variant, metric, lang)
    return est[:, None] + decode_replicates(text, len(est), int(boot["plan"]["n_resamples"]))


def mean_replicates(task: Mapping, variant: str, metric: str) -> np.ndarray:
    """Bootstrap replicates [n_layers, n_resamples] of ``metric``'s mean over the task's
    ``bootstrap.mean_languages`` (as ``intervals.mean``)."""
    boot = task.get("bootstrap")
    text = (boot or {}).get("replicates", {}).get(variant, {}).get("mean", {}).get(metric)
    if text is None:
        raise AlignlensError(f"no {variant} bootstrap replicates of the mean {metric}")
    est = arr_of(task["intervals"]["mean"][variant][metric]["estimate"])
    return est[:, None] + decode_replicates(text, len(est), int(boot["plan"]["n_resamples"]))


def summary_interval(
    task: Mapping, variant: str, metric: str, langs: Sequence[str], rows: Sequence[int] | None = None,
    level: float = 0.95, base: Mapping | None = None,
) -> tuple[float, float, float]:
    """(estimate, lo, hi) of ``metric`` averaged over ``langs`` and ``rows`` (default all), with the
    `bc_interval` of the same average of each bootstrap replicate. With ``base`` (another
    run's task entry with the same bootstrap plan), of the paired change task - base instead."""
    def avg(t: Mapping) -> tuple[float, np.ndarray]:
        est = np.stack([_estimate(t, variant, metric, lang) for lang in langs])
        rep = np.stack([replicates(t, variant, metric, lang) for lang in langs])  # [langs, L, B]
        sel = slice(None) if rows is None else list(rows)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(np.nanmean(est[:, sel])), np.nanmean(rep[:, sel], axis=(0, 1))

    if base is not None and base["bootstrap"]["plan"] != task["bootstrap"]["plan"]:
        raise AlignlensError("the runs' bootstrap plans differ: their replicates do not pair up")
    est, rep = avg(task)
    if base is not None:
        est_b, rep_b = avg(base)
        est, rep = est - est_b, rep - rep_b
    lo, hi = bc_interval(rep[None], np.array([est]), level)
    return est, float(lo[0]), float(hi[0])
