"""Zero one language's top language-specific MLP neurons and measure what changes across languages.

A scripted hook experiment on alignlens's public API (`alignlens.pipeline.run_experiment`):

1. **select** the language-specific neurons (LAPE, Tang et al. 2024) on items disjoint from those it
   tests: by default the task's training split (`data.default_train_items`: emotion and paws items
   250-499, snli 300-599; `--select-items` to choose others, `--select-limit` how many per
   language), the tested items being those of `--items` (default: the first `--limit` in file order,
   i.e. the first half). Overlapping selection and test items are refused before the model loads;
   the JSON records both (`selection`, `test_items`);
2. run the tested items with no hooks (base), with the `--top` neurons most specific to `--language`
   (lowest entropy first) zeroed at `blocks.{l}.mlp.hook_post` (the MLP hidden activation:
   act(gate) * up for gated MLPs), and, as a control, with as many random neurons from the same
   layers zeroed (`--control-seed`);
3. report per language and condition: accuracy, balanced accuracy, AUC (two-label tasks, score
   p1 / (p0 + p1)), calibrated accuracy, label shares (`effects.point_metrics`) and the mean
   probability of the gold label, as a difference (`mean_p_gold_diff`, probability units) and a
   relative change (`rel_change_mean_p_gold`); paired tests: exact McNemar per language (base vs
   ablated, control vs ablated; Holm over the languages, `effects.mcnemar_by_language`), and group
   Δs with the label-stratified item bootstrap of `effects.Resampler` (the same draws for every
   condition and language): ablated − base on the ablated language and on the others, their
   difference, ablated − control on the ablated language; each with 95% interval, p, MDE80 and a
   verdict on the claim "zeroing the neurons lowers the metric" (inconclusive: the interval includes
   0, never a refutation).

If the neurons are language-specific, the ablated language should lose more than the others and
more than under the control.

Usage (sentiment, where the default model is above chance; a CPU run of this size takes tens of minutes):
    python analyses/ablate_language_neurons.py --language zh --languages en,zh,de,hi,th \
        --task emotion --items 0-249 --balanced --limit 20
Writes a JSON file (default runs/ablate_<language>.json), the per-item rows beside it
(<stem>_items.jsonl: task, lang, index, gold, condition, pred, probs of every label) and prints a table.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from typing import NamedTuple
from pathlib import Path

import numpy as np
import torch

from alignlens import AlignlensError, data
from alignlens.config import AnalyzeConfig, format_items, parse_items
from alignlens.effects import Resampler, mcnemar_by_language, point_metrics, primary_metric, run_data, task_metrics
from alignlens.evaluate import prediction_rows
from alignlens.model import LoadedModel, load_model
from alignlens.neurons import NeuronOptions, lape_entropy
from alignlens.pipeline import run_experiment
from alignlens.results import write_json, write_jsonl

CONDITIONS = ("base", "ablated", "control")


def top_specific_neurons(analyses: dict, language: str, top: int) -> list[tuple[int, int]]:
    """The `top` neurons specific to `language`, lowest LAPE entropy first, as (layer, index)."""
    report = analyses["neurons"]
    if language not in report["languages"]:
        raise AlignlensError(f"language {language!r} not in this run ({', '.join(report['languages'])})")
    neurons = report["specific"][language]["neurons"]
    if not neurons:
        raise AlignlensError(f"no neuron is specific to {language!r} with these thresholds")
    p = analyses["neuron_tensors"]["activation_probability"].double().numpy()  # [n_lang, L, D]
    entropy = lape_entropy(p)  # [L, D]
    ranked = sorted(neurons, key=lambda n: entropy[n[0], n[1]])
    return [(int(a), int(b)) for a, b in ranked[:top]]


def ablation_hooks(neurons: list[tuple[int, int]]) -> list:
    """Hooks zeroing the given (layer, index) MLP neurons."""
    by_layer: dict[int, list[int]] = defaultdict(list)
    for layer, idx in neurons:
        by_layer[layer].append(idx)
    hooks = []
    for layer, idx in by_layer.items():
        index = torch.tensor(sorted(idx))

        def zero(x: torch.Tensor, hook, index=index) -> torch.Tensor:
            return x.index_fill(-1, index.to(x.device), 0.0)

        hooks.append((f"blocks.{layer}.mlp.hook_post", zero))
    return hooks


def matched_random_neurons(neurons: list[tuple[int, int]], d_mlp: int, seed: int) -> list[tuple[int, int]]:
    """A control set: per layer, as many random neurons as `neurons` has there, none of them in
    `neurons` (same layer profile, no language selection), drawn with numpy's default_rng(seed)."""
    rng = np.random.default_rng(seed)
    by_layer: dict[int, set[int]] = defaultdict(set)
    for layer, idx in neurons:
        by_layer[layer].add(idx)
    out = []
    for layer in sorted(by_layer):
        pool = np.array([i for i in range(d_mlp) if i not in by_layer[layer]])
        out += [(layer, int(i)) for i in sorted(rng.choice(pool, size=len(by_layer[layer]), replace=False))]
    return out


#: What the change fields of the result hold (written into the JSON as "units").
UNITS = {
    "accuracy_change": "accuracy_ablated - accuracy_base (proportion: 0.21 = 21 points)",
    "mean_p_gold_diff": "p_gold_ablated - p_gold_base: difference of the mean P(gold) (probability: 0.014 = 1.4 points)",
    "rel_change_mean_p_gold": "p_gold_ablated / p_gold_base - 1: relative change of the mean P(gold) (0.025 = +2.5% of "
                              "the base value, not points)",
    "control_*": "the same for the random-neuron control (control instead of ablated)",
    "target_minus_others_*": "the ablated language's value minus the mean over the other languages",
    "target_minus_control_*": "the ablated language's value minus its control value",
    "metrics": "per condition (base, ablated, control): effects.point_metrics on all tested items of the language "
               "(accuracy, balanced_accuracy, auc of p1/(p0+p1) for two labels, calibrated_accuracy, label_shares, "
               "majority_label, majority_share)",
    "mcnemar_p_*": "exact McNemar p of accuracy on the same items, *_holm: Holm-adjusted over the languages",
    "mcnemar_discordant_*": "[b01, b10]: items the first condition got wrong and the second right, and the reverse",
    "effects": "group Δs (a - b, proportions) with a label-stratified item bootstrap (effects.Resampler), verdict "
               "on the claim Δ < 0 (zeroing lowers the metric)",
}  # fmt: skip


def selected_indices(cfg: AnalyzeConfig, task: str, languages: list[str]) -> dict[str, list[int]]:
    """The item indices `cfg` selects per language (data only, no model)."""
    spec = data.load_task(task)
    return {lang: [it.index for it in cfg.select_items(data.load_items(spec, lang), spec.labels,
                                                       where=f"task {task}, language {lang}")] for lang in languages}


def check_disjoint(selection: dict[str, list[int]], tested: dict[str, list[int]]) -> None:
    """Refuse selection items that are also tested (the neurons would be chosen on the test items)."""
    for lang, idx in tested.items():
        both = sorted(set(idx) & set(selection.get(lang, ())))
        if both:
            raise AlignlensError(f"--select-items and --items share {len(both)} item(s) of {lang} "
                                 f"({format_items(both, 5)}): select the neurons on other items than those tested "
                                 "(default: the task's training split)")


def _per_language(task: str, lang: str, runs: dict) -> dict:
    """Accuracy and mean P(gold) per condition and their changes (`UNITS`)."""
    res = {c: next(r for r in run.results if r.task == task and r.lang == lang) for c, run in runs.items()}
    if not res["base"].indices == res["ablated"].indices == res["control"].indices:
        raise AlignlensError(f"{task} {lang}: the conditions evaluated different items")
    row = {"n": len(res["base"].indices)}
    for name, run in runs.items():
        row[f"accuracy_{name}"] = run.accuracy(task, lang)
        row[f"p_gold_{name}"] = run.mean_prob_correct(task, lang)
    row["accuracy_change"] = row["accuracy_ablated"] - row["accuracy_base"]
    row["mean_p_gold_diff"] = row["p_gold_ablated"] - row["p_gold_base"]
    row["control_mean_p_gold_diff"] = row["p_gold_control"] - row["p_gold_base"]
    row["rel_change_mean_p_gold"] = row["p_gold_ablated"] / row["p_gold_base"] - 1
    row["control_rel_change_mean_p_gold"] = row["p_gold_control"] / row["p_gold_base"] - 1
    return row


def item_rows(runs: dict) -> list[dict]:
    """Per-item rows of every condition: task, lang, index, gold, condition, pred, probs {label: p}."""
    return [{**row, "condition": c} for c, run in runs.items() for row in prediction_rows(run.results)]


def group_effects(task: str, language: str, languages: list[str], arrays: dict, n_resamples: int, seed: int) -> dict:
    """Group Δs of every metric of the task on one `Resampler` (paired draws), verdict for Δ < 0.
    `arrays`: {condition: {task: effects.RunData}}."""
    plan = Resampler({c: arrays[c][task] for c in CONDITIONS}, languages, n_resamples=n_resamples, seed=seed)
    labels = arrays["base"][task].labels
    metrics = list(task_metrics(labels))
    plan.prepare(metrics)
    others = [x for x in languages if x != language]
    out: dict = {"primary_metric": primary_metric(labels), "n_items": plan.n_items, "levels": plan.levels(CONDITIONS),
                 "n_resamples": n_resamples, "seed": seed, "by_metric": {}}
    for m in metrics:
        target = plan.effect("ablated", "base", m, [language], f"ablated vs base / {language}")
        rows = {"ablated_vs_base_target": target,
                "control_vs_base_target": plan.effect("control", "base", m, [language], f"control vs base / {language}"),
                "ablated_vs_control_target": plan.effect("ablated", "control", m, [language],
                                                         f"ablated vs control / {language}")}
        if others:
            rest = plan.effect("ablated", "base", m, others, "ablated vs base / other languages")
            rows["ablated_vs_base_others"] = rest
            rows["target_minus_others"] = plan.contrast(target, rest, f"(ablated vs base / {language}) − (others)")
        out["by_metric"][m] = {k: e.to_json(direction=-1) for k, e in rows.items()}
    return out


class Plan(NamedTuple):
    """The tested and the selection configuration, their items per language, and the selection in words."""

    cfg: AnalyzeConfig
    sel_cfg: AnalyzeConfig
    tested: dict[str, list[int]]
    selected: dict[str, list[int]]
    select: str  # the selection's item indices ("250-499")
    rule: str


def plan(task: str, languages: list[str], limit: int | None = 20, items: str | None = None, balanced: bool = False,
         batch_size: int = 8, top_rate: float = 0.05, select_items: str | None = None,
         select_limit: int | None = -1) -> Plan:
    """Check the options on the data alone (no model): the tested items (`items`, `limit`) and the
    selection items (`select_items`, default the task's training split; `select_limit` per language,
    -1: `limit`), which must not overlap (AlignlensError naming the shared items)."""
    select = select_items or format_items(data.default_train_items(task))
    common = dict(tasks=[task], languages=languages, balanced=balanced, batch_size=batch_size,
                  neurons=NeuronOptions(top_rate=top_rate), bootstrap_resamples=200)
    cfg = AnalyzeConfig(limit=limit, items=parse_items(items), **common)
    sel_cfg = AnalyzeConfig(limit=limit if select_limit == -1 else select_limit,
                            items=parse_items(select, "--select-items"), **common)
    tested, selected = selected_indices(cfg, task, languages), selected_indices(sel_cfg, task, languages)
    check_disjoint(selected, tested)
    rule = "the task's training split (data.default_train_items)" if select_items is None else "--select-items"
    return Plan(cfg, sel_cfg, tested, selected, select, rule)


def run(model: LoadedModel, language: str, languages: list[str], task: str = "emotion", limit: int = 20,
        top: int = 50, batch_size: int = 8, top_rate: float = 0.05, items: str | None = None,
        balanced: bool = False, control_seed: int = 0, select_items: str | None = None,
        select_limit: int | None = -1, n_resamples: int = 2000, seed: int = 0) -> dict:
    """The experiment: neurons selected on the selection items (`plan`), then base, the `top`
    `language`-specific neurons zeroed, and as many random neurons from the same layers zeroed, on
    the tested items. Returns a JSON-able result; its "item_rows" (per-item rows of every condition)
    are written beside the JSON by `write_result`."""
    p = plan(task, languages, limit, items, balanced, batch_size, top_rate, select_items, select_limit)
    cfg = p.cfg
    selection = run_experiment(model, p.sel_cfg)
    neurons = top_specific_neurons(selection.analyses, language, top)
    control_neurons = matched_random_neurons(neurons, model.d_mlp, control_seed)
    runs = {"base": run_experiment(model, cfg, with_analyses=False),
            "ablated": run_experiment(model, cfg, ablation_hooks(neurons), with_analyses=False),
            "control": run_experiment(model, cfg, ablation_hooks(control_neurons), with_analyses=False)}
    rows_all = item_rows(runs)
    arrays = {c: run_data([r for r in rows_all if r["condition"] == c], runs[c].summary, name=c) for c in CONDITIONS}
    rows = {lang: _per_language(task, lang, runs) for lang in languages}
    for lang in languages:
        rows[lang]["metrics"] = {c: point_metrics(arrays[c][task], lang) for c in CONDITIONS}
    for key, (a, b) in (("mcnemar_p_base_vs_ablated", ("base", "ablated")),
                        ("mcnemar_p_control_vs_ablated", ("control", "ablated"))):
        tests = mcnemar_by_language(arrays[a][task], arrays[b][task], languages)
        for lang in languages:
            t = tests.get(lang, {})
            rows[lang][key], rows[lang][key + "_holm"] = t.get("p"), t.get("p_holm")
            rows[lang][key.replace("_p_", "_discordant_")] = [t.get("b01"), t.get("b10")]
    target = rows[language]
    out = {
        "model": model.describe(), "task": task, "ablated_language": language, "n_neurons": len(neurons),
        "neurons": neurons, "control_neurons": control_neurons, "control_seed": control_seed,
        "limit": limit, "items": items, "balanced": balanced,
        "selection": {"items": p.select, "limit": p.sel_cfg.limit, "balanced": balanced, "rule": p.rule,
                      "indices": {lang: format_items(v) for lang, v in p.selected.items()}},
        "test_items": {lang: format_items(v) for lang, v in p.tested.items()},
        "units": UNITS, "per_language": rows,
        "effects": group_effects(task, language, languages, arrays, n_resamples, seed),
    }  # fmt: skip
    for key in ("mean_p_gold_diff", "rel_change_mean_p_gold"):
        others = [rows[lang][key] for lang in languages if lang != language]
        out[f"target_minus_others_{key}"] = target[key] - float(np.mean(others)) if others else None
        out[f"target_minus_control_{key}"] = target[key] - target[f"control_{key}"]
    out["neuron_options"] = selection.analyses["neurons"]["options"]
    out["item_rows"] = rows_all
    return out


def write_result(result: dict, out: Path) -> Path:
    """`out` (the result without its item rows) and the item rows beside it (<stem>_items.jsonl)."""
    result = dict(result)
    rows = result.pop("item_rows")
    items_path = out.with_name(f"{out.stem}_items.jsonl")
    result["item_rows_file"] = items_path.name
    write_jsonl(items_path, rows)
    write_json(out, result)
    return items_path


def _pct(x) -> str:
    return "   —" if x is None else f"{x * 100:4.0f}"


def table_lines(result: dict) -> list[str]:
    """The printed table of a result: accuracies, AUC and the majority-label share per condition, the
    change of the mean P(gold) in points with the relative change in parentheses, the Holm-adjusted
    McNemar p; then the group Δs of the primary metric with their intervals."""
    lines = [f"acc, AUC, maj = majority-label share (%), each base / {result['ablated_language']}-specific zeroed / "
             "random zeroed; dP(gold): difference of the mean gold-label probability in points (relative change, % of "
             "the base value)",
             f"{'lang':6s}{'acc b/a/c':>16s}{'AUC b/a/c':>16s}{'maj b/a/c':>16s}{'dP(gold) abl.':>20s}"
             f"{'dP(gold) ctrl':>20s}{'p McNemar (Holm)':>18s}"]  # fmt: skip
    for lang, r in result["per_language"].items():
        mark = " <- ablated" if lang == result["ablated_language"] else ""
        m = r.get("metrics") or {}
        trio = {k: "/".join(_pct((m.get(c) or {}).get(k)).strip() for c in CONDITIONS)
                for k in ("accuracy", "auc", "majority_share")}
        abl = f"{r['mean_p_gold_diff'] * 100:+.1f} pt ({r['rel_change_mean_p_gold']:+.1%})"
        ctl = f"{r['control_mean_p_gold_diff'] * 100:+.1f} pt ({r['control_rel_change_mean_p_gold']:+.1%})"
        p = r["mcnemar_p_base_vs_ablated_holm"]
        lines.append(f"{lang:6s}{trio['accuracy']:>16s}{trio['auc']:>16s}{trio['majority_share']:>16s}"
                     f"{abl:>20s}{ctl:>20s}{'—' if p is None else f'{p:.3f}':>18s}{mark}")
    eff = result.get("effects") or {}
    m = eff.get("primary_metric")
    for key, e in ((eff.get("by_metric") or {}).get(m) or {}).items():
        lines.append(f"{key}: {e['text']}")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--language", default="zh", help="language whose specific neurons are zeroed")
    ap.add_argument("--languages", default="en,zh,de,hi,th", help="languages evaluated")
    ap.add_argument("--task", default="emotion", help="a task the model is above chance on (default: emotion)")
    ap.add_argument("--items", default=None, help="tested item indices, e.g. 0-249 (as alignlens analyze --items)")
    ap.add_argument("--balanced", action="store_true", help="label-balanced items (as alignlens analyze --balanced)")
    ap.add_argument("--limit", type=int, default=20, help="tested items per language")
    ap.add_argument("--select-items", default=None,
                    help="item indices the neurons are selected on (default: the task's training split, e.g. emotion "
                         "250-499); must not overlap the tested items")
    ap.add_argument("--select-limit", type=int, default=-1, help="selection items per language (default: --limit)")
    ap.add_argument("--top", type=int, default=50, help="how many neurons to zero")
    ap.add_argument("--control-seed", type=int, default=0, help="seed of the matched random-neuron control")
    ap.add_argument("--bootstrap-resamples", type=int, default=2000, help="resamples of the group Δs' intervals")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    languages = [x for x in args.languages.split(",") if x]
    if args.language not in languages:
        languages.append(args.language)
    plan(args.task, languages, args.limit, args.items, args.balanced, args.batch_size,  # checked before the model loads
         select_items=args.select_items, select_limit=args.select_limit)
    model = load_model(args.model)
    result = run(model, args.language, languages, args.task, args.limit, args.top, args.batch_size,
                 items=args.items, balanced=args.balanced, control_seed=args.control_seed,
                 select_items=args.select_items, select_limit=args.select_limit, n_resamples=args.bootstrap_resamples)
    out = args.out or Path("runs") / f"ablate_{args.language}.json"
    items_path = write_result(result, out)
    print(f"zeroed {result['n_neurons']} {args.language}-specific neurons, selected on items {result['selection']['items']} "
          f"(control: as many random neurons in the same layers); {args.task}, {args.limit} tested items per language")
    print("\n".join(table_lines(result)))
    print(f"wrote {out} and {items_path}")


if __name__ == "__main__":
    try:
        main()
    except AlignlensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
