"""Weight-scale dose response of a LoRA alignment (`alignlens localize`, design §3).

For an `alignlens train` output with `adapter/`, the base model's adapted weights are set to
W + α·ΔW (ΔW = B·A·lora_alpha/r per module, `train.adapters`) for each α of a grid, and the task is
evaluated as `alignlens eval` does (`evaluate.evaluate_language`: the few-shot prompts, the
content-free queries for contextual calibration). α = 0 is the base model (its weights untouched),
α = 1 the trainer's merged model; α outside [0, 1] extrapolates. The weights are restored exactly
after every α.

Rows: {task, lang, index, gold, alpha, probs: {label: p}, pred, p_content_free: {label: p}} (the
content-free distribution of that language and α, the same in each of its rows). `dose_summary`
gives per α the metrics per language and language group (accuracy, balanced accuracy, AUC, label
shares, calibrated accuracy) and the paired effects of each α against α = 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from alignlens import AlignlensError, data
from alignlens.evaluate import evaluate_language
from alignlens.localize.compare import condition_metrics, paired_effects
from alignlens.model import LoadedModel
from alignlens.train.adapters import LoraAdapter, adapter_parameters, scaled_weights


def check_alphas(alphas: Sequence[float]) -> list[float]:
    """Distinct finite α values, in the order given (AlignlensError naming a bad or repeated one)."""
    out: list[float] = []
    for a in alphas:
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a):
            raise AlignlensError(f"--alphas: {a!r} is not a finite number")
        if float(a) in out:
            raise AlignlensError(f"--alphas: {a:g} is given twice")
        out.append(float(a))
    if not out:
        raise AlignlensError("--alphas: no value given")
    return out


def check_adapter_base(model: LoadedModel, adapter: LoraAdapter) -> None:
    """Refuse an adapter trained on another base model: the training manifest's base-model hash must
    equal the loaded model's when both are known, and every adapted weight must exist with ΔW's shape
    (`adapter_parameters`)."""
    recorded = (adapter.base_model or {}).get("hash")
    if recorded and model.hash and recorded != model.hash:
        spec = (adapter.base_model or {}).get("spec")
        raise AlignlensError(f"{adapter.path}: trained on base model {spec} (hash {recorded[:12]}), not on the loaded "
                             f"{model.spec} (hash {model.hash[:12]}); use --model {spec}")
    adapter_parameters(model.hf_model, adapter)


def dose_language(model: LoadedModel, adapter: LoraAdapter, spec: data.TaskSpec, lang: str,
                  items: Sequence[data.Item], alphas: Sequence[float], *, batch_size: int = 8,
                  on_pass_done: Callable[[int], None] | None = None) -> list[dict]:
    """Per-item rows of the base `model` with W + α·ΔW (`adapter`) for each α of `alphas`, on
    (`spec`, `lang`, `items`): {task, lang, index, gold, alpha, probs: {label: p}, pred,
    p_content_free: {label: p}}. The weights are restored exactly after each α (also on error).
    `on_pass_done(n)` after each α's pass (n items)."""
    alphas = check_alphas(alphas)
    check_adapter_base(model, adapter)
    labels = list(spec.labels)
    rows = []
    for alpha in alphas:
        with scaled_weights(model.hf_model, adapter, alpha):
            res = evaluate_language(model, spec, lang, list(items), batch_size=batch_size)
        cf = None if res.p_content_free is None else {lab: float(p) for lab, p in zip(labels, res.p_content_free)}
        for i, it in enumerate(items):
            rows.append({"task": spec.name, "lang": lang, "index": it.index, "gold": it.label, "alpha": alpha,
                         "probs": {lab: float(p) for lab, p in zip(labels, res.probs[i])},
                         "pred": labels[int(res.pred[i])], "p_content_free": cf})
        if on_pass_done is not None:
            on_pass_done(len(items))
    return rows


def dose_summary(rows: Sequence[Mapping], groups: Mapping[str, Sequence[str]] | None = None, *,
                 n_resamples: int = 2000, seed: int = 0) -> dict:
    """Aggregates of `dose_language` rows: {"alphas": [sorted], "by_alpha": {str(α): {"alpha",
    "metrics": `compare.condition_metrics` (per language and group: accuracy, balanced accuracy, AUC,
    label shares, calibrated accuracy), "vs_base": `compare.paired_effects` against α = 0 (None for
    α = 0 itself, or when α = 0 was not run)}}, "n_resamples", "seed"}. `groups` None: {"all": every
    language}."""
    by: dict[float, list[Mapping]] = {}
    for row in rows:
        by.setdefault(float(row["alpha"]), []).append(row)
    base = by.get(0.0)
    out = {}
    for alpha in sorted(by):
        vs = paired_effects(base, by[alpha], groups, n_resamples=n_resamples, seed=seed) \
            if base is not None and alpha != 0.0 else None
        out[f"{alpha:g}"] = {"alpha": alpha, "metrics": condition_metrics(by[alpha], groups), "vs_base": vs}
    return {"alphas": sorted(by), "by_alpha": out, "n_resamples": n_resamples, "seed": seed}
