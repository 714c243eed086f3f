"""study.json from a study folder (design §3-§5): no model, only the finished steps' files.

`collect_study(DIR)` reads DIR/study.toml and DIR/plan.json, resolves the plan again (hashes, no
tokenizer) and lists every step with its status; a step not finished with its current hash is
"missing", "partial" (interrupted) or "stale" (another hash), with the command that runs it.

Effects (`effects.Resampler`, one per task and variant, so every effect, contrast and trend of a
task is paired on the same item and seed draws): each arm vs its base model, macro over the arm's
language groups (`arm_groups`: all, trained, untrained (neither a training language nor the
target), high-resource, low-resource, untrained low-resource), for every metric of the task
(`effects.task_metrics`); per language (primary metric) with exact McNemar per seed (Holm over the
languages); contrasts on the primary metric: arm pairs that differ in exactly one of (control,
target, questions) with the same languages and model ("control", "target", "questions"), declared
`[[contrast]]`s ("declared"), and within each arm trained − untrained and high − low resource; dose
series (arms that differ only in their language sets, at least two distinct counts): the OLS slope
of the effect on the languages no arm of the series trained against log2(number of training
languages). Diagnostics: collapsed answers (majority-label share >= 0.95) per run and language,
and the training-seed spread of every replicated arm.

Claims (design §4): each from the arms that exist, one verdict and one sentence; an interval that
includes 0 is "inconclusive" (the sentence says what the test could not detect), never a
refutation; a claim no arm tests is "not run"; "mixed" when the arms' verdicts differ.
"""

from __future__ import annotations

import math
from pathlib import Path

from alignlens import AlignlensError, __version__
from alignlens.effects import (Effect, LEVEL_ITEMS, LEVEL_SEEDS, Resampler, RunData, mcnemar_by_language,
                               point_metrics, primary_metric, run_data, task_metrics)
from alignlens.languages import HIGH_RESOURCE, LOW_RESOURCE, paper_order
from alignlens.results import now_iso, read_json, read_jsonl, write_json
from alignlens.results.manifest import git_commit
from alignlens.study.plan import Plan, Step, resolve, step_record, step_status
from alignlens.study.spec import Arm, Study, load_study

SCHEMA = "alignlens.study/1"
COLLAPSE = 0.95
#: Contrasted arm fields, and which arm is `a` (the one the claim is about) in each pair.
CONTRAST_FIELDS = ("control", "target", "questions")


# ---- reading the folder -------------------------------------------------------------------------------


def load_plan(out: Path) -> Plan:
    """The study of a study folder (DIR/study.toml, as last run; its name and the file given from
    DIR/plan.json) resolved again: the same hashes as the run's."""
    out = Path(out)
    if not (out / "study.toml").is_file():
        raise AlignlensError(f"{out}: no study here (no study.toml); run `alignlens study run FILE --out {out}` first")
    plan_json = read_json(out / "plan.json") if (out / "plan.json").is_file() else {}
    study = load_study(out / "study.toml", default_name=plan_json.get("study"), given=plan_json.get("file"))
    return resolve(study, tokenize=False)


def run_name(plan: Plan, step: Step) -> str:
    """The run an evaluation step belongs to: "base" (or "base/<key>" with several base models) or
    "<arm>/seed<S>"."""
    if step.arm is None:
        return "base" if len(plan.models) == 1 else f"base/{step.model_key}"
    return f"{step.arm}/seed{step.seed}"


def base_of(plan: Plan, arm: Arm) -> str:
    key = next(k for k, m in plan.models.items() if m == arm.model)
    return "base" if len(plan.models) == 1 else f"base/{key}"


def arm_groups(arm: Arm, languages: list[str]) -> dict[str, list[str]]:
    """The language groups of an arm's effects (empty ones left out): all, trained (its training
    languages), untrained (neither a training language nor the target), high-resource,
    low-resource, untrained-low-resource."""
    trained = [x for x in languages if x in arm.languages]
    untrained = [x for x in languages if x not in arm.languages and x != arm.target]
    groups = {"all": list(languages), "trained": trained, "untrained": untrained,
              "high-resource": [x for x in languages if x in HIGH_RESOURCE],
              "low-resource": [x for x in languages if x in LOW_RESOURCE],
              "untrained-low-resource": [x for x in untrained if x in LOW_RESOURCE]}
    return {k: v for k, v in groups.items() if v}


# ---- study.json ------------------------------------------------------------------------------------------


def collect_study(out: str | Path) -> dict:
    """study.json of the study folder `out` (schema `SCHEMA`; see the module docstring and the design's §5)."""
    out = Path(out)
    plan = load_plan(out)
    study = plan.study
    steps, missing = [], []
    for s in plan.steps:
        status = step_status(out, s)
        rec = step_record(out, s) or {}
        done = status == "finished"
        steps.append({"name": s.name, "kind": s.kind, "run": run_name(plan, s) if s.kind != "train" else s.run,
                      "hash": s.hash, "status": status,
                      "manifest": f"{s.folder}/manifest.json" if done else None,
                      "wall_s": rec.get("wall_s") if done else None,
                      "finished": rec.get("finished") if done else None,
                      "commit": _step_commit(out / s.folder / "manifest.json") if done else None,
                      "command": _step_command(plan, out, s)})
        if status != "finished":
            missing.append(s.name)
    runs = _read_runs(plan, out)
    tasks, variants = {}, {}
    for variant, section in (("standard", tasks), ("irrelevant", variants.setdefault("irrelevant", {}))):
        for task in [_name(t) for t in study.tasks]:
            got = {name: r[task] for name, r in runs.get(variant, {}).items() if task in r}
            if got:
                section[task] = task_section(plan, task, variant, got)
    if not variants["irrelevant"]:
        variants = {}
    levels = [LEVEL_ITEMS] + ([LEVEL_SEEDS] if any(len(a.seeds) > 1 for a in study.arms) else [])
    return {
        "schema": SCHEMA, "name": study.name, "created": now_iso(),
        "alignlens": {"version": __version__, "commit": git_commit()},
        "study": study.options(), "arms": [a.describe() for a in study.arms], "steps": steps, "missing": missing,
        "resampling": {"n_resamples": study.bootstrap_resamples, "seed": study.seed, "levels": levels},
        "tasks": tasks, "variants": variants, "claims": claims(plan, tasks, variants),
    }


def _name(task: str) -> str:
    from alignlens import data

    return data.load_task(task).name


def _step_commit(manifest: Path) -> str | None:
    """The git commit a finished step's manifest records (None when it records none or is unreadable)."""
    try:
        m = read_json(manifest)
    except AlignlensError:
        return None
    commit = m.get("git_commit") if isinstance(m, dict) else None
    return commit if isinstance(commit, str) else None


def _step_command(plan: Plan, out: Path, step: Step) -> str:
    from alignlens.study.runner import step_command

    return step_command(plan, out, step)


def _read_runs(plan: Plan, out: Path) -> dict[str, dict[str, dict[str, RunData]]]:
    """{variant: {run name: {task: RunData}}} of every finished evaluation step."""
    runs: dict = {}
    for s in plan.steps:
        if s.kind not in ("eval", "irrelevant") or step_status(out, s) != "finished":
            continue
        folder = out / s.folder
        name = run_name(plan, s)
        rd = run_data(read_jsonl(folder / "predictions.jsonl"), read_json(folder / "summary.json"), name=name,
                      seed=s.seed)
        runs.setdefault(s.variant, {})[name] = rd
    return runs


def write_study_json(out: str | Path, *, pdf: bool = True, progress=None) -> Path:
    """Write DIR/study.json (atomically) and, with `pdf`, render DIR/study.pdf from it (with
    study_figures/ and study_tables/: `report.study.render_study`; `progress(done, total, what)` per
    page). Returns the study.json path."""
    out = Path(out)
    path = out / "study.json"
    write_json(path, collect_study(out))
    if pdf:
        from alignlens.report.study import render_study

        render_study(path, out / "study.pdf", progress=progress)
    return path


# ---- one task and variant ---------------------------------------------------------------------------


def task_section(plan: Plan, task: str, variant: str, runs: dict[str, RunData]) -> dict:
    """study.json's `tasks.<task>` (or `variants.irrelevant.<task>`): runs, effects, per-language
    effects, contrasts, trends and diagnostics of one task and variant, all on one Resampler."""
    study = plan.study
    labels = next(iter(runs.values())).labels
    languages = paper_order(sorted({lang for r in runs.values() for lang in r.langs}))
    primary = primary_metric(labels)
    metrics = list(task_metrics(labels))
    arms = {a.name: a for a in study.arms}
    bases = sorted({n for n in runs if n == "base" or n.startswith("base/")})
    seeded = {a: sorted((r for n, r in runs.items() if n.startswith(f"{a}/seed")), key=lambda r: r.seed)
              for a in arms}
    seeded = {a: rs for a, rs in seeded.items() if rs and base_of(plan, arms[a]) in runs}
    resampler = Resampler({**{b: runs[b] for b in bases}, **seeded}, languages,
                          n_resamples=study.bootstrap_resamples, seed=study.seed)
    resampler.prepare(metrics)
    book = _Book(resampler)
    groups = {a: arm_groups(arms[a], languages) for a in seeded}
    for a in seeded:
        for g, langs in groups[a].items():
            for m in metrics:
                book.effect(a, base_of(plan, arms[a]), g, langs, m)
    per_language = []
    for a in seeded:
        base = runs[base_of(plan, arms[a])]
        tests = {r.seed: mcnemar_by_language(base, r, languages) for r in seeded[a]}
        for lang in languages:
            e = resampler.effect(a, base_of(plan, arms[a]), primary, languages=[lang], label=f"{a} vs base / {lang}")
            per_language.append({"arm": a, "lang": lang, "metric": primary, **_stats(e),
                                 "mcnemar": [{"seed": s, **{k: t[lang][k] for k in ("b01", "b10", "p", "p_holm")}}
                                             for s, t in tests.items() if lang in t]})
    contrasts = _contrasts(plan, book, groups, seeded, primary, languages)
    trends = _trends(plan, book, seeded, primary, languages)
    shares = {name: {lang: point_metrics(r, lang) for lang in languages if lang in r.langs} for name, r in runs.items()}
    collapsed = [{"run": name, "lang": lang, "label": m["majority_label"], "share": m["majority_share"]}
                 for name, per in shares.items() for lang, m in per.items()
                 if m["majority_share"] is not None and m["majority_share"] >= COLLAPSE]
    spread = [{"arm": a, "group": "all", "metric": primary, "per_seed": e["per_seed"],
               "sd": _sd([p["estimate"] for p in e["per_seed"]])}
              for a in seeded if len(seeded[a]) > 1 for e in [book.get(a, "all", primary)] if e is not None]
    return {
        "labels": list(labels), "languages": languages, "variant": variant, "primary_metric": primary,
        "metrics": metrics, "n_items": {lang: int(runs[bases[0]].langs[lang].gold.size) if bases and lang in
                                        runs[bases[0]].langs else None for lang in languages},
        "n_items_shared": resampler.n_items, "groups": groups,
        "runs": {name: {lang: {k: m[k] for k in ("accuracy", "balanced_accuracy", "auc", "calibrated_accuracy",
                                                  "label_shares", "majority_share", "n")} for lang, m in per.items()}
                 for name, per in shares.items()},
        "effects": book.entries, "per_language": per_language, "contrasts": contrasts, "trends": trends,
        "diagnostics": {"collapse_threshold": COLLAPSE, "collapsed": collapsed, "seed_spread": spread},
        "missing_runs": sorted({f"{a.name}/seed{s}" for a in study.arms for s in a.seeds} - set(runs)),
    }


class _Book:
    """The effects of one task and variant, computed once each, with their study.json entries."""

    def __init__(self, resampler: Resampler) -> None:
        self.r = resampler
        self.effects: dict[tuple, Effect] = {}
        self.entries: list[dict] = []

    def effect(self, a: str, b: str, group: str, langs: list[str], metric: str, record: bool = True) -> Effect:
        key = (a, b, group, tuple(langs), metric)
        if key not in self.effects:
            e = self.r.effect(a, b, metric, languages=langs, label=f"{a} vs base / {group}")
            self.effects[key] = e
            if record:
                self.entries.append(_entry({"id": effect_id(a, group, metric), "arm": a, "vs": "base", "group": group,
                                            "metric": metric}, e))
        return self.effects[key]

    def get(self, a: str, group: str, metric: str) -> dict | None:
        return next((x for x in self.entries if x["id"] == effect_id(a, group, metric)), None)


def _entry(head: dict, e: Effect) -> dict:
    """A study.json entry: `head` (id, kind, arms, group, ...) then the effect's `to_json` fields it does not set."""
    return {**head, **{k: v for k, v in e.to_json().items() if k not in head}}


def effect_id(arm: str, group: str, metric: str) -> str:
    return f"{arm} vs base / {group} / {metric}"


def _stats(e: Effect) -> dict:
    return {"estimate": e.estimate, "ci95": e.ci95, "se": e.se, "p": e.p, "mde80": e.mde80, "verdict": e.verdict(),
            "n_items": e.n_items}


def _sd(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    if len(vals) < 2:
        return None
    mean = sum(vals) / len(vals)
    return math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def _differs(a: Arm, b: Arm) -> list[str]:
    return [f for f in CONTRAST_FIELDS if getattr(a, f) != getattr(b, f)]


def _oriented(field: str, x: Arm, y: Arm) -> tuple[Arm, Arm]:
    """(a, b) of an automatic contrast: the aligned arm minus the control, the other target minus
    English, the other questions minus the same-task ones (else in file order)."""
    first = {"control": lambda arm: arm.control == "none", "target": lambda arm: arm.target != "en",
             "questions": lambda arm: arm.questions != "same"}[field]
    return (x, y) if first(x) or not first(y) else (y, x)


def _contrasts(plan: Plan, book: _Book, groups: dict, seeded: dict, metric: str, languages: list[str]) -> list[dict]:
    study = plan.study
    arms = [a for a in study.arms if a.name in seeded]
    out = []

    def add(kind: str, a: str, b: str, group: str, e: Effect) -> None:
        out.append(_entry({"id": f"{a} − {b} / {group} / {metric}", "kind": kind, "a": a, "b": b, "group": group,
                           "metric": metric}, e))

    for i, x in enumerate(arms):
        for y in arms[i + 1:]:
            diff = _differs(x, y)
            if len(diff) != 1 or set(x.languages) != set(y.languages) or x.model != y.model:
                continue
            a, b = _oriented(diff[0], x, y)
            for g in ("all", "trained", "untrained"):
                if g in groups[a.name]:
                    ea = book.effect(a.name, base_of(plan, a), g, groups[a.name][g], metric)
                    eb = book.effect(b.name, base_of(plan, b), g, groups[b.name][g], metric)
                    add(diff[0], a.name, b.name, g, book.r.contrast(ea, eb, f"({a.name}) − ({b.name}) / {g}"))
    for a_name, b_name in study.contrasts:
        if a_name not in seeded or b_name not in seeded:
            continue
        a, b = study.arm(a_name), study.arm(b_name)
        untrained = [x for x in languages if x not in (*a.languages, *b.languages, a.target, b.target)]
        for g, langs in (("all", list(languages)), ("untrained-by-both", untrained)):
            if langs:
                ea = book.effect(a.name, base_of(plan, a), g, langs, metric, record=g == "all")
                eb = book.effect(b.name, base_of(plan, b), g, langs, metric, record=g == "all")
                add("declared", a.name, b.name, g, book.r.contrast(ea, eb, f"({a.name}) − ({b.name}) / {g}"))
    for a in arms:
        for kind, (g1, g2) in (("trained-untrained", ("trained", "untrained")),
                               ("resource", ("high-resource", "low-resource"))):
            if g1 in groups[a.name] and g2 in groups[a.name]:
                e1 = book.effect(a.name, base_of(plan, a), g1, groups[a.name][g1], metric)
                e2 = book.effect(a.name, base_of(plan, a), g2, groups[a.name][g2], metric)
                add(kind, a.name, a.name, f"{g1} − {g2}", book.r.contrast(e1, e2, f"{a.name}: {g1} − {g2}"))
    return out


def dose_series(study: Study, available: set[str]) -> list[list[Arm]]:
    """Groups of arms that differ only in their language sets (same model, target, questions, control
    and training options), with at least two distinct numbers of languages."""
    import json

    series: dict[str, list[Arm]] = {}
    for a in study.arms:
        if a.name in available:
            key = json.dumps([a.model, a.target, a.questions, a.control, a.train], sort_keys=True)
            series.setdefault(key, []).append(a)
    return [arms for arms in series.values() if len({len(a.languages) for a in arms}) >= 2]


def _trends(plan: Plan, book: _Book, seeded: dict, metric: str, languages: list[str]) -> list[dict]:
    out = []
    for arms in dose_series(plan.study, set(seeded)):
        trained = {x for a in arms for x in (*a.languages, a.target)}
        group = [x for x in languages if x not in trained]
        if not group:
            continue
        effects = [book.effect(a.name, base_of(plan, a), "untrained-by-series", group, metric, record=False) for a in arms]
        n = [len(a.languages) for a in arms]
        t = book.r.trend(effects, [math.log2(k) for k in n], "slope of Δ over log2(training languages)")
        out.append(_entry({"id": f"dose {', '.join(a.name for a in arms)} / untrained-by-series / {metric}",
                           "arms": [a.name for a in arms], "n_languages": n,
                           "x_scale": "log2(number of training languages)", "group": "untrained-by-series",
                           "languages": group, "metric": metric, "slope": t.estimate,
                           "points": [{"arm": a.name, **_stats(e)} for a, e in zip(arms, effects)]}, t))
    return out


# ---- claims ------------------------------------------------------------------------------------------------


CLAIMS = (
    (1, "Question alignment improves the trained languages."),
    (2, "Question alignment improves languages it was not trained on (spontaneous multilingual transfer)."),
    (3, "Question alignment also improves low-resource languages."),
    (4, "More training languages help more (dose-response over the number of training languages)."),
    (5, "Other translation targets than English work too."),
    (6, "Questions of another task help too (cross-task alignment)."),
    (7, "It is alignment, not generic fine-tuning: the aligned model beats the copy control."),
    (8, "The gain persists with irrelevant label words."),
)


def claims(plan: Plan, tasks: dict, variants: dict) -> list[dict]:
    """The paper's claims (§4), each with its effects, one verdict and one sentence."""
    study = plan.study
    aligned = [a for a in study.arms if a.control == "none"]
    resamples = study.bootstrap_resamples
    out = []
    for cid, text in CLAIMS:
        picked: list[tuple[str, str, dict]] = []  # (task, variant, entry)
        related: list[dict] = []
        need = ""
        for task, sec in (variants.get("irrelevant", {}) if cid == 8 else tasks).items():
            m = sec["primary_metric"]
            variant = sec["variant"]

            def eff(arm: Arm, group: str) -> dict | None:
                return next((e for e in sec["effects"] if e["id"] == effect_id(arm.name, group, m)), None)

            if cid in (1, 2, 8):
                group = {1: "trained", 2: "untrained", 8: "all"}[cid]
                picked += [(task, variant, e) for a in aligned for e in [eff(a, group)] if e]
            elif cid == 3:
                for a in aligned:
                    e = eff(a, "untrained-low-resource") or eff(a, "low-resource")
                    if e:
                        picked.append((task, variant, e))
            elif cid == 4:
                picked += [(task, variant, t) for t in sec["trends"]
                           if all(study.arm(n).control == "none" for n in t["arms"])]
            elif cid == 5:
                picked += [(task, variant, e) for a in aligned if a.target != "en" for e in [eff(a, "untrained")] if e]
                related += [c for c in sec["contrasts"] if c["kind"] == "target"]
            elif cid == 6:
                picked += [(task, variant, e) for a in aligned if a.questions != "same"
                           for e in [eff(a, "untrained")] if e]
                related += [c for c in sec["contrasts"] if c["kind"] == "questions"]
            elif cid == 7:
                picked += [(task, variant, c) for c in sec["contrasts"] if c["kind"] == "control" and c["group"] == "untrained"]
                related += [c for c in sec["contrasts"] if c["kind"] == "control" and c["group"] != "untrained"]
        need = {1: "an aligned arm (control = \"none\") evaluated in its training languages",
                2: "an aligned arm and evaluation languages it was not trained on",
                3: "an aligned arm and low-resource evaluation languages (sl bg no ms is hi th sw bn)",
                4: "aligned arms that differ only in their languages", 5: "an arm with another target",
                6: "an arm with another task's questions", 7: "an aligned arm and its copy control (same languages)",
                8: "irrelevant_labels = true and an aligned arm"}[cid]
        verdict, sentence = _verdict(picked, need, resamples)
        metric = sorted({e["metric"] for _, _, e in picked})
        out.append({"id": cid, "claim": text, "metric": metric[0] if len(metric) == 1 else (metric or None),
                    "test": f"label-stratified item-cluster x training-seed bootstrap, {resamples} resamples; "
                            f"{'OLS slope over log2(training languages)' if cid == 4 else 'macro Δ over the group'}",
                    "effects": [{"task": t, "variant": v, "id": e["id"]} for t, v, e in picked],
                    "related": [c["id"] for c in related], "verdict": verdict, "text": f"{text} {sentence}"})
    return out


def _verdict(picked: list[tuple[str, str, dict]], need: str, resamples: int) -> tuple[str, str]:
    """(verdict, one sentence) of a claim from its effects' verdicts (direction +1)."""
    if not picked:
        return "not run", f"Not run: no arm of this study tests it (it needs {need})."
    testable = [(t, e) for t, _, e in picked if e["verdict"] != "not testable"]
    if not testable:
        why = picked[0][2].get("not_testable") or "degenerate data"
        return "not testable", f"Not testable: {why}."
    kinds = {e["verdict"] for _, e in testable}
    verdict = kinds.pop() if len(kinds) == 1 else "mixed"
    multi = len({t for t, _ in testable}) > 1
    parts = []
    for task, e in testable:
        what = "slope" if e.get("kind") == "trend" else "Δ"
        lo, hi = e["ci95"]
        extra = f", MDE80 ±{e['mde80']:.3f}" if e["verdict"] == "inconclusive" else ""
        parts.append(f"{task + ': ' if multi else ''}{e['label']} {what} {e['metric']} {e['estimate']:+.3f} "
                     f"(95% CI {lo:+.3f} to {hi:+.3f}{extra}; {e['verdict']})")
    body = "; ".join(parts)
    lead = {"supported": "Supported, every interval above 0",
            "contradicted": "Contradicted, every interval below 0",
            "inconclusive": "Inconclusive, not refuted: every interval includes 0, so effects smaller than the "
                            "MDE80 shown could not be detected at this n",
            "mixed": "Mixed across arms"}[verdict]
    return verdict, f"{lead}: {body}."
