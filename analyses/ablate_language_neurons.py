"""Zero one language's top language-specific MLP neurons and measure accuracy drops across languages.

A scripted hook experiment on alignlens's public API (`alignlens.pipeline.run_experiment`):

1. run the task once with no hooks: accuracy per language, and the language-specific neurons
   (LAPE, Tang et al. 2024) from the same capture pass;
2. zero the `--top` neurons most specific to `--language` (lowest entropy first) at
   `blocks.{l}.mlp.hook_post` (the MLP hidden activation: act(gate) * up for gated MLPs);
3. run again; report, per language, the change in accuracy and in the mean probability of the gold
   label, both as a difference (`mean_p_gold_diff`, probability units: 0.014 = 1.4 points) and as a
   relative change (`rel_change_mean_p_gold` = ablated / base - 1: 0.025 = +2.5% of the base value);
4. control: zero as many random neurons from the same layers (`--control-seed`) and run again.
   If the neurons are language-specific, the ablated language should lose more than the others,
   and more than under the control. Per language: exact McNemar (base vs ablated, control vs
   ablated, on the same items), Holm-adjusted over the languages.

Usage (sentiment, where the default model is above chance; a CPU run of this size takes tens of minutes):
    python analyses/ablate_language_neurons.py --language zh --languages en,zh,de,hi,th \
        --task emotion --items 0-249 --balanced --limit 20
Writes a JSON file (default runs/ablate_<language>.json) and prints a table.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from alignlens import AlignlensError
from alignlens.config import AnalyzeConfig, parse_items
from alignlens.pipeline import run_experiment
from alignlens.model import LoadedModel, load_model
from alignlens.neurons import NeuronOptions, lape_entropy
from alignlens.paired import holm, mcnemar_exact
from alignlens.results import write_json


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
}  # fmt: skip


def _per_language(task: str, lang: str, base, ablated, control) -> dict:
    """Accuracy, mean P(gold) and their changes for one language (`UNITS`), with exact McNemar
    p-values of base vs ablated and of control vs ablated on the same items (paired)."""
    def res(run):
        return next(r for r in run.results if r.task == task and r.lang == lang)

    rb, ra, rc = res(base), res(ablated), res(control)
    assert rb.indices == ra.indices == rc.indices  # the same items in the same order
    row = {"n": len(rb.indices)}
    for name, run in (("base", base), ("ablated", ablated), ("control", control)):
        row[f"accuracy_{name}"] = run.accuracy(task, lang)
        row[f"p_gold_{name}"] = run.mean_prob_correct(task, lang)
    row["accuracy_change"] = row["accuracy_ablated"] - row["accuracy_base"]
    row["mean_p_gold_diff"] = row["p_gold_ablated"] - row["p_gold_base"]
    row["control_mean_p_gold_diff"] = row["p_gold_control"] - row["p_gold_base"]
    row["rel_change_mean_p_gold"] = row["p_gold_ablated"] / row["p_gold_base"] - 1
    row["control_rel_change_mean_p_gold"] = row["p_gold_control"] / row["p_gold_base"] - 1
    row["mcnemar_p_base_vs_ablated"] = mcnemar_exact(rb.correct > 0, ra.correct > 0)["p_value"]
    row["mcnemar_p_control_vs_ablated"] = mcnemar_exact(rc.correct > 0, ra.correct > 0)["p_value"]
    return row


def run(model: LoadedModel, language: str, languages: list[str], task: str = "emotion", limit: int = 20,
        top: int = 50, batch_size: int = 8, top_rate: float = 0.05, items: str | None = None,
        balanced: bool = False, control_seed: int = 0) -> dict:
    """The experiment (base, the `top` `language`-specific neurons zeroed, and as many random
    neurons from the same layers zeroed); returns a JSON-able result."""
    cfg = AnalyzeConfig(tasks=[task], languages=languages, limit=limit, items=parse_items(items),
                        balanced=balanced, batch_size=batch_size, neurons=NeuronOptions(top_rate=top_rate),
                        bootstrap_resamples=200)
    base = run_experiment(model, cfg)
    neurons = top_specific_neurons(base.analyses, language, top)
    control_neurons = matched_random_neurons(neurons, model.d_mlp, control_seed)
    ablated = run_experiment(model, cfg, ablation_hooks(neurons), with_analyses=False)
    control = run_experiment(model, cfg, ablation_hooks(control_neurons), with_analyses=False)
    rows = {lang: _per_language(task, lang, base, ablated, control) for lang in languages}
    for key in ("mcnemar_p_base_vs_ablated", "mcnemar_p_control_vs_ablated"):
        for lang, p_adj in zip(languages, holm([rows[lang][key] for lang in languages])):
            rows[lang][key + "_holm"] = p_adj
    target = rows[language]
    out = {
        "model": model.describe(), "task": task, "ablated_language": language, "n_neurons": len(neurons),
        "neurons": neurons, "control_neurons": control_neurons, "control_seed": control_seed,
        "limit": limit, "items": items, "balanced": balanced, "units": UNITS, "per_language": rows,
    }  # fmt: skip
    for key in ("mean_p_gold_diff", "rel_change_mean_p_gold"):
        others = [rows[lang][key] for lang in languages if lang != language]
        out[f"target_minus_others_{key}"] = target[key] - float(np.mean(others)) if others else None
        out[f"target_minus_control_{key}"] = target[key] - target[f"control_{key}"]
    out["neuron_options"] = base.analyses["neurons"]["options"]
    return out


def table_lines(result: dict) -> list[str]:
    """The printed table of a result: accuracies, and the change of the mean P(gold) in points with
    the relative change in parentheses (labelled as such), and the Holm-adjusted McNemar p."""
    lines = ["dP(gold): difference of the mean gold-label probability in points (in parentheses: relative change, "
             "% of the base value)",
             f"{'lang':6s}{'acc base':>10s}{'acc abl.':>10s}{'acc ctrl':>10s}{'dP(gold) abl.':>20s}{'dP(gold) ctrl':>20s}"
             f"{'p McNemar (Holm)':>18s}"]  # fmt: skip
    for lang, r in result["per_language"].items():
        mark = " <- ablated" if lang == result["ablated_language"] else ""
        abl = f"{r['mean_p_gold_diff'] * 100:+.1f} pt ({r['rel_change_mean_p_gold']:+.1%})"
        ctl = f"{r['control_mean_p_gold_diff'] * 100:+.1f} pt ({r['control_rel_change_mean_p_gold']:+.1%})"
        lines.append(f"{lang:6s}{r['accuracy_base']:10.3f}{r['accuracy_ablated']:10.3f}{r['accuracy_control']:10.3f}"
                     f"{abl:>20s}{ctl:>20s}{r['mcnemar_p_base_vs_ablated_holm']:18.3f}{mark}")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--language", default="zh", help="language whose specific neurons are zeroed")
    ap.add_argument("--languages", default="en,zh,de,hi,th", help="languages evaluated")
    ap.add_argument("--task", default="emotion", help="a task the model is above chance on (default: emotion)")
    ap.add_argument("--items", default=None, help="item indices, e.g. 0-249 (as alignlens analyze --items)")
    ap.add_argument("--balanced", action="store_true", help="label-balanced items (as alignlens analyze --balanced)")
    ap.add_argument("--limit", type=int, default=20, help="items per language")
    ap.add_argument("--top", type=int, default=50, help="how many neurons to zero")
    ap.add_argument("--control-seed", type=int, default=0, help="seed of the matched random-neuron control")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    languages = [x for x in args.languages.split(",") if x]
    if args.language not in languages:
        languages.append(args.language)
    model = load_model(args.model)
    result = run(model, args.language, languages, args.task, args.limit, args.top, args.batch_size,
                 items=args.items, balanced=args.balanced, control_seed=args.control_seed)
    out = args.out or Path("runs") / f"ablate_{args.language}.json"
    write_json(out, result)
    print(f"zeroed {result['n_neurons']} {args.language}-specific neurons (control: as many random neurons in the "
          f"same layers); {args.task}, {args.limit} items per language")
    print("\n".join(table_lines(result)))
    print(f"wrote {out}")


if __name__ == "__main__":
    try:
        main()
    except AlignlensError as exc:
        raise SystemExit(f"error: {exc}")
