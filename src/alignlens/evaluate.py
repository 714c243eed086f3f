"""Few-shot constrained-decoding evaluation runs, as in the paper.

Scoring (paper): prompt = demonstrations + "\\n" + query; one forward pass; at the last
position, for each English label word, sum the next-token probabilities of its *token set*
(`alignlens.labels`); predict the label with the largest sum. The forward passes run in
`alignlens.engine.score_prompts` (prefix key/value cache, padded batches; probabilities equal
to a plain forward pass per prompt).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignlens import data, distributed
from alignlens.config import EvalConfig  # noqa: F401  (re-exported)
from alignlens.engine import Hook, Probe, score_prompts
from alignlens.labels import label_sets
from alignlens.languages import paper_order
from alignlens.model import LoadedModel
from alignlens.plan import RunPlan, plan_for
from alignlens.results import EVAL_FILES, OutputFolder, now_iso
from alignlens.results.manifest import make_manifest, ownership
from alignlens.results.writer import write_eval_files
from alignlens.stats import bootstrap_ci


# ---- evaluation runs ------------------------------------------------------------------------


@dataclass
class LanguageResult:
    task: str
    lang: str
    labels: list[str]
    indices: list[int]
    gold: list[int]
    probs: np.ndarray  # float64 [n_items, n_labels]
    #: float64 [n_labels]: the label probabilities for content-free queries (`CONTENT_FREE`), averaged
    #: as Zhao et al. (2021) do; None when not measured (e.g. shards written before it existed).
    p_content_free: np.ndarray | None = None

    @property
    def pred(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @property
    def correct(self) -> np.ndarray:
        return (self.pred == np.asarray(self.gold)).astype(np.float64)


#: Content-free inputs for contextual calibration (Zhao et al. 2021, "Calibrate before use"): every
#: field of the query is filled with each of these, with the language's own demonstrations.
CONTENT_FREE = ("N/A", "", "[MASK]")


def evaluate_language(
    model: LoadedModel, spec: data.TaskSpec, lang: str, items: Sequence[data.Item], *, batch_size: int = 8,
    prefix_cache: bool = True, fwd_hooks: Sequence[Hook] = (), probes: Sequence[Probe] = (),
    on_batch_done: Callable[[int], None] | None = None,
) -> LanguageResult:
    """Score `items` of one task and language (NumericalError naming them if a probability is NaN/inf).

    `fwd_hooks` apply to every forward pass, `probes` to each batch of queries (`engine.score_prompts`).
    Under torchrun (a running process group) every rank plans the same batches and runs its own
    whole batches (`distributed.my_batches`); the probabilities are then summed over ranks, each
    row from the one rank that computed it (exact), so every rank returns the full result. Probes
    see only this rank's batches (merge them afterwards, e.g. `pipeline.gather_capture`). Every rank
    must call it (collective); a failure on one rank stops all."""
    queries = [spec.prompts[lang].query_template.format(**it.fields) for it in items]
    where = f"task {spec.name}, language {lang}"
    parallel = distributed.world().distributed
    done = [0]

    def advance(n: int) -> None:
        done[0] += n
        if on_batch_done is not None:
            on_batch_done(n)

    from alignlens.metrics import content_free_probs

    probs = distributed.agree(lambda: score_prompts(
        model, data.prompt_prefix(spec, lang), queries, label_sets(model.tokenizer, spec.labels, where),
        batch_size=batch_size, prefix_cache=prefix_cache, fwd_hooks=fwd_hooks, probes=probes,
        on_batch_done=advance, item_ids=[it.index for it in items], where=where,
        select_batches=distributed.my_batches if parallel else None,
        unprobed=content_free_queries(spec, lang), unprobed_where="content-free queries",
    ))
    if parallel:
        probs = torch.tensor(distributed.exact_float_sums(probs.flatten().tolist()),
                             dtype=torch.float64).reshape(probs.shape)
        if on_batch_done is not None and len(items) > done[0]:
            on_batch_done(len(items) - done[0])  # the other ranks' rows
    gold = [spec.labels.index(it.label) for it in items]
    n = len(items)
    return LanguageResult(spec.name, lang, list(spec.labels), [it.index for it in items], gold, probs[:n].numpy(),
                          content_free_probs(list(probs[n:].numpy())))


def content_free_queries(spec: data.TaskSpec, lang: str) -> list[str]:
    """The content-free queries of contextual calibration: `CONTENT_FREE` texts in every field of
    the language's query template. `evaluate_language` scores them after the language's
    demonstrations, in the items' call (`score_prompts(unprobed=...)`: same prefix pass, no
    probes), and keeps each normalised over the labels, averaged, renormalised
    (`metrics.content_free_probs`) as `LanguageResult.p_content_free`."""
    template = spec.prompts[lang].query_template
    return [template.format(**{f: text for f in spec.fields}) for text in CONTENT_FREE]


def summarize(results: list[LanguageResult], bootstrap_resamples: int = 2000, seed: int = 0) -> dict:
    """summary.json: per task and language accuracy, n, 95% bootstrap interval, confusion counts and
    the label-bias-robust metrics of `metrics.classification_metrics` (balanced accuracy, macro-F1,
    two-label ROC-AUC, predicted and gold label counts), the accuracy after contextual calibration
    (`calibrated_accuracy`, with the content-free probabilities it used); per task the means over
    languages."""
    from alignlens.metrics import calibrated_accuracy, classification_metrics

    tasks: dict[str, dict] = {}
    for r in results:
        t = tasks.setdefault(r.task, {"labels": r.labels, "languages": {}})
        correct = r.correct
        lo, hi = bootstrap_ci(correct, n_resamples=bootstrap_resamples, seed=seed)
        confusion = {g: {p: 0 for p in r.labels} for g in r.labels}
        for g, p in zip(r.gold, r.pred):
            confusion[r.labels[g]][r.labels[int(p)]] += 1
        m = classification_metrics(r.gold, r.probs, r.labels)
        calibrated = (calibrated_accuracy(r.gold, r.probs, r.p_content_free)
                      if r.p_content_free is not None and len(r.gold) else None)
        t["languages"][r.lang] = {
            "accuracy": float(correct.mean()) if len(correct) else float("nan"),
            "n": int(len(correct)), "ci95": [lo, hi], "confusion": confusion,
            **{k: m[k] for k in ("balanced_accuracy", "macro_f1", "roc_auc", "predicted_distribution",
                                 "gold_distribution")},
            "calibrated_accuracy": calibrated,
            "p_content_free": None if r.p_content_free is None else dict(zip(r.labels, map(float, r.p_content_free))),
        }
    for t in tasks.values():
        langs = t["languages"].values()
        accs = [v["accuracy"] for v in langs]
        t["mean_accuracy"] = float(np.mean(accs)) if accs else float("nan")
        for key in ("balanced_accuracy", "calibrated_accuracy"):
            vals = [v[key] for v in langs if v[key] is not None]
            t[f"mean_{key}"] = float(np.mean(vals)) if vals else None
    return {"tasks": tasks}


def prediction_rows(results: list[LanguageResult]) -> list[dict]:
    rows = []
    for r in results:
        for i, idx in enumerate(r.indices):
            rows.append({
                "task": r.task, "lang": r.lang, "index": idx, "gold": r.labels[r.gold[i]],
                "pred": r.labels[int(r.pred[i])],
                "probs": {lab: float(r.probs[i, j]) for j, lab in enumerate(r.labels)},
            })
    return rows


def run_eval(
    model: LoadedModel, config: EvalConfig, *, plan: RunPlan | None = None, progress: Any = None,
    fwd_hooks: Sequence[Hook] = (),
) -> list[LanguageResult]:
    """Evaluate every (task, language) of `plan` (None: `plan.resolve_plan(config)`). `progress` is
    a rich Progress or None."""
    plan = plan_for(config, plan)
    bar = progress.add_task("evaluating", total=sum(len(e.items) for e in plan)) if progress is not None else None
    results = []
    for e in plan:
        if progress is not None:
            progress.update(bar, description=f"{e.spec.name} {e.lang}")
        results.append(evaluate_language(
            model, e.spec, e.lang, e.items, batch_size=config.batch_size, prefix_cache=config.prefix_cache,
            fwd_hooks=fwd_hooks,
            on_batch_done=(lambda n: progress.advance(bar, n)) if progress is not None else None,
        ))
    return results


def write_eval(out_dir: Path, results: list[LanguageResult], manifest: dict, config: EvalConfig) -> dict:
    """Write predictions.jsonl, summary.json and manifest.json to `out_dir`; return the summary."""
    summary = summarize(results, config.bootstrap_resamples, config.seed)
    write_eval_files(out_dir, prediction_rows(results), summary, manifest)
    return summary


def evaluate(model: LoadedModel, config: EvalConfig, out_dir: str | Path | None = None, *, force: bool = False,
             progress: Any = None, command: str = "", fwd_hooks: Sequence[Hook] = (), plan: RunPlan | None = None) -> dict:
    """Run an evaluation of `plan`'s items (None: `plan.resolve_plan(config)`); write its files to
    `out_dir` when given. Returns the summary dict.

    The output folder is checked before any work and locked while the run works (another run
    writing there is refused at once); with `force`, only the files its evaluation manifest lists
    are replaced, and only once the new ones are complete (`results.writer.OutputFolder`). Under
    torchrun every rank evaluates its share (`evaluate_language`) and rank 0 alone writes (the
    manifest records `world_size`); every rank returns the summary."""
    if out_dir is None:
        torch.manual_seed(config.seed)
        return summarize(run_eval(model, config, plan=plan, progress=progress, fwd_hooks=fwd_hooks),
                         config.bootstrap_resamples, config.seed)
    folder = OutputFolder(out_dir, "eval", force)
    distributed.agree(folder.check)
    with folder.writing():
        torch.manual_seed(config.seed)
        started = now_iso()
        results = run_eval(model, config, plan=plan, progress=progress, fwd_hooks=fwd_hooks)

        def write() -> dict:
            stage = folder.begin()
            try:
                manifest = make_manifest(model, config, command=command, started=started,
                                         extra={"world_size": distributed.world().size, **ownership("eval", EVAL_FILES)})
                summary = write_eval(stage, results, manifest, config)
                folder.commit()
            except BaseException:
                folder.abort()
                raise
            return summary
        return distributed.broadcast_object(distributed.on_main(write))


def accuracy_table(summary: dict) -> tuple[list[str], list[str], dict[tuple[str, str], float]]:
    """(tasks, languages, {(task, lang): accuracy}) from a summary, languages in paper order."""
    tasks = list(summary["tasks"])
    langs: list[str] = []
    cells = {}
    for t, v in summary["tasks"].items():
        for lang, r in v["languages"].items():
            if lang not in langs:
                langs.append(lang)
            cells[(t, lang)] = r["accuracy"]
    return tasks, paper_order(langs), cells

