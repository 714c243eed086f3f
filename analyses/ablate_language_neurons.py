"""Zero one language's top language-specific MLP neurons and measure accuracy drops across languages.

A scripted hook experiment on alignlens's public API (`alignlens.pipeline.run_experiment`):

1. run the task once with no hooks: accuracy per language, and the language-specific neurons
   (LAPE, Tang et al. 2024) from the same capture pass;
2. zero the `--top` neurons most specific to `--language` (lowest entropy first) at
   `blocks.{l}.mlp.hook_post` (the MLP hidden activation: act(gate) * up for gated MLPs);
3. run again; report, per language, the change in accuracy and in the gold label's probability.
   If the neurons are language-specific, the ablated language should lose more than the others.

Usage (a few minutes on the default model on a CPU):
    python analyses/ablate_language_neurons.py --language zh --languages en,zh,de,hi,th --limit 30
Writes a JSON file (default runs/ablate_<language>.json) and prints a table.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from alignlens import AlignlensError
from alignlens.config import AnalyzeConfig
from alignlens.pipeline import run_experiment
from alignlens.model import LoadedModel, load_model
from alignlens.neurons import NeuronOptions, lape_entropy
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


def run(model: LoadedModel, language: str, languages: list[str], task: str = "snli", limit: int = 30,
        top: int = 50, batch_size: int = 8, top_rate: float = 0.05) -> dict:
    """The experiment; returns a JSON-able result."""
    cfg = AnalyzeConfig(tasks=[task], languages=languages, limit=limit, batch_size=batch_size,
                        neurons=NeuronOptions(top_rate=top_rate), bootstrap_resamples=200)
    base = run_experiment(model, cfg)
    neurons = top_specific_neurons(base.analyses, language, top)
    ablated = run_experiment(model, cfg, ablation_hooks(neurons), with_analyses=False)
    rows = {}
    for lang in languages:
        rows[lang] = {
            "accuracy_base": base.accuracy(task, lang), "accuracy_ablated": ablated.accuracy(task, lang),
            "p_gold_base": base.mean_prob_correct(task, lang), "p_gold_ablated": ablated.mean_prob_correct(task, lang),
        }
        rows[lang]["accuracy_change"] = rows[lang]["accuracy_ablated"] - rows[lang]["accuracy_base"]
        rows[lang]["p_gold_relative_change"] = rows[lang]["p_gold_ablated"] / rows[lang]["p_gold_base"] - 1
    others = [rows[lang]["p_gold_relative_change"] for lang in languages if lang != language]
    return {
        "model": model.describe(), "task": task, "ablated_language": language, "n_neurons": len(neurons),
        "neurons": neurons, "limit": limit, "per_language": rows,
        "target_minus_others_p_gold_change": rows[language]["p_gold_relative_change"] - float(np.mean(others)),
        "neuron_options": base.analyses["neurons"]["options"],
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--language", default="zh", help="language whose specific neurons are zeroed")
    ap.add_argument("--languages", default="en,zh,de,hi,th", help="languages evaluated")
    ap.add_argument("--task", default="snli")
    ap.add_argument("--limit", type=int, default=30)
    ap.add_argument("--top", type=int, default=50, help="how many neurons to zero")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    languages = [x for x in args.languages.split(",") if x]
    if args.language not in languages:
        languages.append(args.language)
    model = load_model(args.model)
    result = run(model, args.language, languages, args.task, args.limit, args.top, args.batch_size)
    out = args.out or Path("runs") / f"ablate_{args.language}.json"
    write_json(out, result)
    print(f"zeroed {result['n_neurons']} {args.language}-specific neurons; {args.task}, {args.limit} items per language")
    print(f"{'lang':6s}{'acc base':>10s}{'acc abl.':>10s}{'p(gold) change':>16s}")
    for lang, r in result["per_language"].items():
        mark = " <- ablated" if lang == args.language else ""
        print(f"{lang:6s}{r['accuracy_base']:10.3f}{r['accuracy_ablated']:10.3f}{r['p_gold_relative_change']:+15.1%}{mark}")
    print(f"wrote {out}")


if __name__ == "__main__":
    try:
        main()
    except AlignlensError as exc:
        raise SystemExit(f"error: {exc}")
