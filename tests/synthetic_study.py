"""A synthetic study.json (schema alignlens.study/1, the shape `study.collect.collect_study` writes) with
known verdicts, for the study report's tests.

`make_study()` returns the dict: 20 languages, a two-label task (emotion, primary metric AUC) and a
three-label one (snli, primary metric calibrated accuracy), arms with 1-3 seeds (an aligned arm and
its copy control, a dose series zh / zh-de / zh-de-sw-hi, another target, another task's questions),
the irrelevant-label variant, two steps not finished (commands with absolute paths), and claims whose
verdicts are fixed: `VERDICTS`. Effects get seeded random estimates; the claims' effects get the
intervals their verdicts need; one effect per task is "not testable".
"""

from __future__ import annotations

import copy
import hashlib
import zlib

import numpy as np

LANGS = ["en", "zh", "de", "fr", "es", "it", "nl", "ja", "ru", "sv",
         "sl", "pl", "bg", "no", "ms", "is", "hi", "th", "sw", "bn"]  # fmt: skip
LOW = {"sl", "bg", "no", "ms", "is", "hi", "th", "sw", "bn"}
LEVELS = ["items (label-stratified, clustered over languages)", "training seeds"]
ARMS = [
    {"name": "zh-de", "languages": ["zh", "de"], "target": "en", "questions": "same", "control": "none", "seeds": [0, 1, 2]},
    {"name": "zh-de-copy", "languages": ["zh", "de"], "target": "en", "questions": "same", "control": "copy", "seeds": [0, 1, 2]},
    {"name": "zh", "languages": ["zh"], "target": "en", "questions": "same", "control": "none", "seeds": [0]},
    {"name": "zh-de-sw-hi", "languages": ["zh", "de", "sw", "hi"], "target": "en", "questions": "same", "control": "none",
     "seeds": [0]},
    {"name": "sw-hi-zh", "languages": ["sw", "hi"], "target": "zh", "questions": "same", "control": "none", "seeds": [0]},
    {"name": "zh-de-snli", "languages": ["zh", "de"], "target": "en", "questions": "snli-qt", "control": "none",
     "seeds": [0, 1]},
]
#: The claims' verdicts this study.json states (claim id -> verdict).
VERDICTS = {1: "supported", 2: "inconclusive", 3: "mixed", 4: "supported", 5: "contradicted", 6: "not testable",
            7: "inconclusive", 8: "supported"}
OUT = "/home/someone/private/studies/syn"  # an absolute --out in the commands: the report must not show it
FILE = "/home/someone/private/studies/syn.toml"


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _verdict(lo: float, hi: float) -> str:
    return "supported" if lo > 0 else "contradicted" if hi < 0 else "inconclusive"


def stats(estimate: float, half: float, not_testable: str | None = None) -> dict:
    """Estimate, interval estimate ± half, se, p, MDE80, verdict (and sentence) of one entry."""
    lo, hi = estimate - half, estimate + half
    se = half / 1.96
    z = abs(estimate) / se if se else 0.0
    p = float(min(1.0, max(0.0005, 2 * np.exp(-0.717 * z - 0.416 * z * z))))
    v = "not testable" if not_testable else _verdict(lo, hi)
    return {"estimate": estimate, "ci95": None if not_testable else [lo, hi], "se": None if not_testable else se,
            "p": None if not_testable else p, "mde80": None if not_testable else 2.8 * se, "verdict": v,
            "not_testable": not_testable}


def _text(label: str, what: str, metric: str, s: dict) -> str:
    if s["verdict"] == "not testable":
        return f"{label}: not testable ({s['not_testable']})."
    lo, hi = s["ci95"]
    head = f"{label}: {what} {metric} {s['estimate']:+.3f} (95% CI {lo:+.3f} to {hi:+.3f}, p = {s['p']:.2g}, 40 items)"
    if s["verdict"] == "inconclusive":
        return (f"{head}: cannot tell at this n, the interval includes 0; effects smaller than ±{s['mde80']:.3f} (MDE80) "
                "would go undetected.")
    return f"{head}: {'above' if s['estimate'] > 0 else 'below'} 0, {'as claimed' if s['verdict'] == 'supported' else 'against the claim'}."


def groups(arm: dict, langs: list[str]) -> dict[str, list[str]]:
    trained = [x for x in langs if x in arm["languages"]]
    untrained = [x for x in langs if x not in arm["languages"] and x != arm["target"]]
    g = {"all": list(langs), "trained": trained, "untrained": untrained,
         "high-resource": [x for x in langs if x not in LOW], "low-resource": [x for x in langs if x in LOW],
         "untrained-low-resource": [x for x in untrained if x in LOW]}
    return {k: v for k, v in g.items() if v}


def effect(task: str, arm: dict, group: str, langs: list[str], metric: str, s: dict, base_value: float) -> dict:
    label = f"{arm['name']} vs base / {group}"
    per_seed = []
    if len(arm["seeds"]) > 1:
        r = _rng(task, arm["name"], group, metric, "seeds")
        for seed in arm["seeds"]:
            est = s["estimate"] + float(r.normal(0, 0.01))
            per_seed.append({"seed": seed, "estimate": est, "ci95": [est - 0.05, est + 0.05], "se": 0.025})
    return {"id": f"{arm['name']} vs base / {group} / {metric}", "arm": arm["name"], "vs": "base", "group": group,
            "metric": metric, "kind": "effect", "label": label, "languages": list(langs), **s, "n_items": 40,
            "n_resamples": 2000, "seeds": {arm["name"]: list(arm["seeds"])}, "levels": LEVELS if len(arm["seeds"]) > 1 else LEVELS[:1],
            "a": arm["name"], "b": "base",
            "values": {arm["name"]: base_value + (s["estimate"] or 0.0), "base": base_value}, "per_seed": per_seed,
            "missing_languages": [], "parts": [], "x": None, "n_languages": len(langs),
            "text": _text(label, "Δ", metric, s)}


def task_section(task: str, labels: list[str], variant: str, overrides: dict[str, dict]) -> dict:
    primary = "auc" if len(labels) == 2 else "calibrated_accuracy"
    metrics = (["auc"] if len(labels) == 2 else []) + ["calibrated_accuracy", "accuracy", "balanced_accuracy"]
    arms = ARMS if variant == "standard" else [a for a in ARMS if a["name"] in ("zh-de",)]
    langs = LANGS if len(labels) == 2 else LANGS[:8]
    effects, per_language, contrasts, runs = [], [], [], {}
    for a in arms:
        for g, gl in groups(a, langs).items():
            for m in metrics:
                r = _rng(task, variant, a["name"], g, m)
                s = overrides.get(f"{a['name']} vs base / {g} / {m}") or stats(float(r.normal(0.02, 0.03)), 0.05)
                effects.append(effect(task, a, g, gl, m, s, 0.7))
        for x in langs:
            r = _rng(task, variant, a["name"], x)
            s = stats(float(r.normal(0.03 if x in a["languages"] else 0.01, 0.05)), 0.07)
            per_language.append({"arm": a["name"], "lang": x, "metric": primary, **{k: s[k] for k in
                                 ("estimate", "ci95", "se", "p", "mde80", "verdict")}, "n_items": 40,
                                 "mcnemar": [{"seed": seed, "b01": 5, "b10": 3, "p": 0.73, "p_holm": 1.0} for seed in a["seeds"]]})

    def contrast(kind: str, a: str, b: str, group: str, s: dict) -> dict:
        label = f"({a}) − ({b}) / {group}" if kind not in ("trained-untrained", "resource") else f"{a}: {group}"
        return {"id": f"{a} − {b} / {group} / {primary}", "kind": kind, "a": a, "b": b, "group": group, "metric": primary,
                "label": label, "languages": langs, **s, "n_items": 40, "n_resamples": 2000, "seeds": {},
                "levels": LEVELS, "values": {}, "per_seed": [], "missing_languages": [], "parts": [], "x": None,
                "n_languages": len(langs), "text": _text(label, "Δ", primary, s)}

    if variant == "standard":
        for g in ("all", "trained", "untrained"):
            cid = f"zh-de − zh-de-copy / {g} / {primary}"
            contrasts.append(contrast("control", "zh-de", "zh-de-copy", g, overrides.get(cid) or stats(0.03, 0.05)))
            contrasts.append(contrast("questions", "zh-de-snli", "zh-de", g, stats(-0.01, 0.04)))
        for a in arms:
            contrasts.append(contrast("trained-untrained", a["name"], a["name"], "trained − untrained", stats(0.02, 0.04)))
            contrasts.append(contrast("resource", a["name"], a["name"], "high-resource − low-resource", stats(-0.01, 0.05)))
    trends = []
    if variant == "standard":
        series = ["zh", "zh-de", "zh-de-sw-hi"]
        untrained = [x for x in langs if x not in ("zh", "de", "sw", "hi", "en")]
        t = overrides.get("trend") or stats(0.015, 0.01)
        points = [{"arm": n, **{k: v for k, v in stats(0.01 + 0.015 * i, 0.03).items() if k != "not_testable"},
                   "n_items": 40} for i, n in enumerate(series)]
        trends.append({"id": f"dose {', '.join(series)} / untrained-by-series / {primary}", "arms": series,
                       "n_languages": [1, 2, 4], "x_scale": "log2(number of training languages)",
                       "group": "untrained-by-series", "languages": untrained, "metric": primary, "slope": t["estimate"],
                       "points": points, "kind": "trend", "label": "slope of Δ over log2(training languages)", **t,
                       "n_items": 40, "n_resamples": 2000, "seeds": {}, "levels": LEVELS, "values": {}, "per_seed": [],
                       "missing_languages": [], "parts": [], "x": [0.0, 1.0, 2.0], "n_languages_x": 3,
                       "text": _text("slope of Δ over log2(training languages)", "slope", primary, t)})
    run_names = ["base"] + [f"{a['name']}/seed{s}" for a in arms for s in a["seeds"]]
    collapsed = []
    for rn in run_names:
        runs[rn] = {}
        for x in langs:
            r = _rng(task, variant, rn, x)
            shares = r.dirichlet(np.ones(len(labels)) * 2)
            if rn.startswith("zh-de-copy") and x in ("fr", "sw"):
                shares = np.array([1.0] + [0.0] * (len(labels) - 1))
            maj = int(shares.argmax())
            runs[rn][x] = {"accuracy": float(r.uniform(0.4, 0.9)), "balanced_accuracy": float(r.uniform(0.4, 0.9)),
                           "auc": float(r.uniform(0.5, 0.95)) if len(labels) == 2 else None,
                           "calibrated_accuracy": float(r.uniform(0.4, 0.9)),
                           "label_shares": {lab: float(v) for lab, v in zip(labels, shares)},
                           "majority_share": float(shares[maj]), "n": 40}
            if shares[maj] >= 0.95:
                collapsed.append({"run": rn, "lang": x, "label": labels[maj], "share": float(shares[maj])})
    spread = [{"arm": a["name"], "group": "all", "metric": primary,
               "per_seed": next(e["per_seed"] for e in effects if e["id"] == f"{a['name']} vs base / all / {primary}"),
               "sd": 0.01} for a in arms if len(a["seeds"]) > 1]
    return {"labels": labels, "languages": langs, "variant": variant, "primary_metric": primary, "metrics": metrics,
            "n_items": {x: 40 for x in langs}, "n_items_shared": 40,
            "groups": {a["name"]: groups(a, langs) for a in arms}, "runs": runs, "effects": effects,
            "per_language": per_language, "contrasts": contrasts, "trends": trends,
            "diagnostics": {"collapse_threshold": 0.95, "collapsed": collapsed, "seed_spread": spread},
            "missing_runs": []}


def _claim(cid: int, claim: str, verdict: str, refs: list[tuple[str, str, str]], text: str, metric="auc") -> dict:
    return {"id": cid, "claim": claim, "metric": metric,
            "test": "label-stratified item-cluster x training-seed bootstrap, 2000 resamples; "
                    + ("OLS slope over log2(training languages)" if cid == 4 else "macro Δ over the group"),
            "effects": [{"task": t, "variant": v, "id": i} for t, v, i in refs], "related": [], "verdict": verdict,
            "text": f"{claim} {text}"}


def make_study() -> dict:
    """The synthetic study.json (see the module docstring)."""
    emo = {
        "zh-de vs base / trained / auc": stats(0.08, 0.04),  # claim 1 supported
        "zh-de vs base / untrained / auc": stats(0.02, 0.05),  # claim 2 inconclusive
        "zh-de vs base / untrained-low-resource / auc": stats(0.06, 0.03),  # claim 3: one supported ...
        "zh-de-sw-hi vs base / untrained-low-resource / auc": stats(0.01, 0.04),  # ... one inconclusive: mixed
        "sw-hi-zh vs base / untrained / auc": stats(-0.09, 0.04),  # claim 5 contradicted
        "zh-de-snli vs base / untrained / auc": stats(0.0, 0.0, "zero-width interval: every resample gave +0"),  # 6
        "zh-de − zh-de-copy / untrained / auc": stats(0.03, 0.05),  # claim 7 inconclusive
        "trend": stats(0.02, 0.012),  # claim 4 supported
    }
    tasks = {"emotion": task_section("emotion", ["positive", "negative"], "standard", emo),
             "snli": task_section("snli", ["entailment", "neutral", "contradiction"], "standard", {})}
    irrelevant = {"emotion": task_section("emotion", ["ox", "horse"], "irrelevant",
                                          {"zh-de vs base / all / auc": stats(0.05, 0.03)})}
    for sec in (*tasks.values(), *irrelevant.values()):  # one more not testable effect in every task
        arm = "zh" if "zh" in sec["groups"] else "zh-de"
        e = next(x for x in sec["effects"] if x["group"] == "high-resource" and x["arm"] == arm
                 and x["metric"] == sec["primary_metric"])
        e.update(stats(0.01, 0.0, "3 shared items (fewer than 10)"))
        e["text"] = _text(e["label"], "Δ", e["metric"], e)
    steps = []
    for a in [None, *ARMS]:
        for seed in ([None] if a is None else a["seeds"]):
            for kind in (("eval", "irrelevant") if a is None else ("train", "eval")):
                name = f"{kind}/base/gemma-3-270m" if a is None else f"{kind}/{a['name']}/seed{seed}"
                missing = name in ("eval/zh-de-snli/seed1", "train/zh-de-snli/seed1")
                arm_opt = "base" if a is None else f"{a['name']} --seed {seed}"
                steps.append({"name": name, "kind": kind, "run": "base" if a is None else f"{a['name']}/seed{seed}",
                              "hash": hashlib.sha256(name.encode()).hexdigest(), "status": "missing" if missing else "finished",
                              "manifest": None if missing else f"{name}/manifest.json",
                              "wall_s": None if missing else 300.0 + len(name), "finished": None if missing else
                              "2026-12-07T22:00:00+00:00", "commit": None if missing else "4651be54f520cb1b6beced799dcd57d2d1bf8754",
                              "command": f"alignlens study run {FILE} --out {OUT} --arm {arm_opt}"})
    t = "Supported, every interval above 0: zh-de vs base / trained Δ auc +0.080 (95% CI +0.040 to +0.120; supported)."
    claims = [
        _claim(1, "Question alignment improves the trained languages.", "supported",
               [("emotion", "standard", "zh-de vs base / trained / auc")], t),
        _claim(2, "Question alignment improves languages it was not trained on (spontaneous multilingual transfer).",
               "inconclusive", [("emotion", "standard", "zh-de vs base / untrained / auc")],
               "Inconclusive, not refuted: every interval includes 0, so effects smaller than the MDE80 shown could not be "
               "detected at this n: zh-de vs base / untrained Δ auc +0.020 (95% CI -0.030 to +0.070, MDE80 ±0.071; inconclusive)."),
        _claim(3, "Question alignment also improves low-resource languages.", "mixed",
               [("emotion", "standard", "zh-de vs base / untrained-low-resource / auc"),
                ("emotion", "standard", "zh-de-sw-hi vs base / untrained-low-resource / auc")],
               "Mixed across arms: zh-de vs base / untrained-low-resource Δ auc +0.060 (95% CI +0.030 to +0.090; "
               "supported); zh-de-sw-hi vs base / untrained-low-resource Δ auc +0.010 (95% CI -0.030 to +0.050, MDE80 "
               "±0.057; inconclusive)."),
        _claim(4, "More training languages help more (dose-response over the number of training languages).", "supported",
               [("emotion", "standard", "dose zh, zh-de, zh-de-sw-hi / untrained-by-series / auc")],
               "Supported, every interval above 0: slope of Δ over log2(training languages) slope auc +0.020 (95% CI "
               "+0.008 to +0.032; supported)."),
        _claim(5, "Other translation targets than English work too.", "contradicted",
               [("emotion", "standard", "sw-hi-zh vs base / untrained / auc")],
               "Contradicted, every interval below 0: sw-hi-zh vs base / untrained Δ auc -0.090 (95% CI -0.130 to -0.050; "
               "contradicted)."),
        _claim(6, "Questions of another task help too (cross-task alignment).", "not testable",
               [("emotion", "standard", "zh-de-snli vs base / untrained / auc")],
               "Not testable: zero-width interval: every resample gave +0."),
        _claim(7, "It is alignment, not generic fine-tuning: the aligned model beats the copy control.", "inconclusive",
               [("emotion", "standard", "zh-de − zh-de-copy / untrained / auc")],
               "Inconclusive, not refuted: every interval includes 0, so effects smaller than the MDE80 shown could not be "
               "detected at this n: (zh-de) − (zh-de-copy) / untrained Δ auc +0.030 (95% CI -0.020 to +0.080, MDE80 "
               "±0.071; inconclusive)."),
        _claim(8, "The gain persists with irrelevant label words.", "supported",
               [("emotion", "irrelevant", "zh-de vs base / all / auc")],
               "Supported, every interval above 0: zh-de vs base / all Δ auc +0.050 (95% CI +0.020 to +0.080; supported)."),
    ]
    claims[6]["related"] = ["zh-de − zh-de-copy / all / auc"]
    study = {"name": "syn", "model": "gemma-3-270m", "tasks": ["emotion", "snli"], "languages": "all", "items": "0-249",
             "limit": 40, "balanced": True, "seeds": [0], "batch_size": 8, "analyses": False, "analysis_seeds": "first",
             "irrelevant_labels": True, "irrelevant_words": {"positive": "ox", "negative": "horse"},
             "bootstrap_resamples": 2000, "seed": 0, "keep_merged": False,
             "train": {"per_language": 24, "max_len": 640}}
    return copy.deepcopy({
        "schema": "alignlens.study/1", "name": "syn", "created": "2026-12-08T10:00:00+00:00",
        "alignlens": {"version": "0.1.0", "commit": "953bfbbd99e5cce89220bb1c612cd978f6a21b3c"},
        "study": study, "arms": [{**a, "model": "gemma-3-270m", "train": {"lr": 0.001} if a["name"] == "zh" else {}}
                                 for a in ARMS],
        "steps": steps, "missing": [s["name"] for s in steps if s["status"] != "finished"],
        "resampling": {"n_resamples": 2000, "seed": 0, "levels": LEVELS},
        "tasks": tasks, "variants": {"irrelevant": irrelevant}, "claims": claims})
