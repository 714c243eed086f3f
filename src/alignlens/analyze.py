"""The main job: evaluation + one capture pass + all analyses (+ report), for one or two models.

`analyze(AnalyzeConfig(...), "gemma-3-270m", compare="runs/aligned", out="runs/analysis")` writes

    out/base/      the --model:   predictions.jsonl, summary.json, similarity.json, logit_lens.json,
                                  neurons.json, neurons.safetensors, manifest.json
                                  [activations/<task>__<lang>.safetensors with --save-activations]
    out/aligned/   the --compare model (same files), when given
    out/comparison.json           neuron changes between the two models, when --compare is given
    out/report.pdf                the PDF report (and its figures and tables)

Analyses are pure functions of the captured tensors (`similarity`, `lens`, `neurons`), so a
run saved with --save-activations can be re-analysed without the model (`analyze_shards`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from alignlens import AlignlensError, data
from alignlens.capture import Capturer, LanguageCapture, check_neuron_hooks, load_shard, save_shard, shard_path
from alignlens.evaluate import EvalConfig, LanguageResult, evaluate_language, make_manifest, task_languages, write_eval
from alignlens.lens import lens_report
from alignlens.models import LoadedModel, load_model
from alignlens.neurons import NeuronOptions, compare_neurons, neuron_report
from alignlens.reducers import ActivationCounter
from alignlens.results import now_iso, prepare_out_dir, read_json, write_json
from alignlens.similarity import similarity_report


@dataclass
class AnalyzeConfig:
    """Options of `alignlens analyze` (recorded in each run's manifest)."""

    tasks: list[str] = field(default_factory=lambda: ["snli"])
    languages: list[str] | None = None
    limit: int | None = 20
    batch_size: int = 8
    seed: int = 0
    pair_layers: list[int] | None = None  # layers of the all-pairs matrices; None: 1/4, 1/2, 3/4, last
    neurons: NeuronOptions = field(default_factory=NeuronOptions)
    save_activations: bool = False
    bootstrap_resamples: int = 2000
    #: When the logit lens drops an item: "token-set" (its gold label's English and target token
    #: sets share a token) or "first-token" (their first tokens are equal, as Wendler et al.).
    lens_overlap: str = "token-set"

    def eval_config(self) -> EvalConfig:
        return EvalConfig(tasks=self.tasks, languages=self.languages, limit=self.limit, batch_size=self.batch_size,
                          seed=self.seed, prefix_cache=True, bootstrap_resamples=self.bootstrap_resamples)


def default_pair_layers(n_layers: int) -> list[int]:
    return sorted({max(0, n_layers // 4 - 1), n_layers // 2 - 1, (3 * n_layers) // 4 - 1, n_layers - 1})


def capture_run(
    model: LoadedModel, config: AnalyzeConfig, *, shard_dir: Path | None = None, progress: Any = None,
    fwd_hooks: list = (),
) -> tuple[list[LanguageResult], dict[tuple[str, str], LanguageCapture]]:
    """Evaluate and capture every (task, language) in one pass each. With `shard_dir`, finished
    (task, language) shards found there are loaded instead of recomputed, and new ones are saved."""
    check_neuron_hooks(model)
    plan = []
    for t in config.tasks:
        spec = data.load_task(t)
        for lang in task_languages(spec, config.languages):
            plan.append((spec, lang, data.load_items(spec, lang, config.limit)))
    bar = progress.add_task("capturing", total=sum(len(i) for _, _, i in plan)) if progress is not None else None
    results, captures = [], {}
    for spec, lang, items in plan:
        path = shard_path(shard_dir, spec.name, lang) if shard_dir is not None else None
        if path is not None and path.is_file():
            result, cap = load_shard(path)
            if result.indices != [it.index for it in items]:
                raise AlignlensError(f"{path}: saved items differ from this run's (other --limit?); use --force")
            if progress is not None:
                progress.advance(bar, len(items))
        else:
            if progress is not None:
                progress.update(bar, description=f"{model.spec.split('/')[-1][:24]} {spec.name} {lang}")
            capturer = Capturer(model, spec, lang, config.lens_overlap)
            result = evaluate_language(
                model, spec, lang, items, batch_size=config.batch_size, fwd_hooks=fwd_hooks,
                batch_hooks=capturer.batch_hooks, after_batch=capturer.after_batch,
                on_batch_done=(lambda n: progress.advance(bar, n)) if progress is not None else None,
            )
            cap = capturer.capture
            if path is not None:
                save_shard(shard_dir, result, cap)
        results.append(result)
        captures[(spec.name, lang)] = cap
    return results, captures


def analyses(
    results: list[LanguageResult], captures: dict[tuple[str, str], LanguageCapture], config: AnalyzeConfig,
) -> dict[str, Any]:
    """All analyses from captured tensors (pure; no model). Returns the JSON-able results and
    the neuron tensors: {"similarity", "logit_lens", "neurons", "neuron_tensors"}."""
    by_task: dict[str, dict[str, tuple[LanguageResult, LanguageCapture]]] = {}
    for r in results:
        by_task.setdefault(r.task, {})[r.lang] = (r, captures[(r.task, r.lang)])
    similarity: dict = {"tasks": {}}
    lens: dict = {"tasks": {}}
    notes: list[str] = []
    for task, per_lang in by_task.items():
        lens["tasks"][task] = lens_report({lang: cap.lens(r.gold) for lang, (r, cap) in per_lang.items()})
        lens["tasks"][task]["overlap_rule"] = config.lens_overlap
        if "en" not in per_lang:
            notes.append(f"similarity for {task} skipped: English is not among the languages")
            continue
        n = min(len(r.indices) for r, _ in per_lang.values())
        if any(r.indices[:n] != per_lang["en"][0].indices[:n] for r, _ in per_lang.values()):
            raise AlignlensError(f"{task}: items are not parallel across languages")
        mean = {lang: cap.mean.to_tensor()[:n] for lang, (_, cap) in per_lang.items()}
        last = {lang: cap.last.to_tensor()[:n] for lang, (_, cap) in per_lang.items()}
        n_layers = next(iter(mean.values())).shape[1]
        similarity["tasks"][task] = similarity_report(mean, last, config.pair_layers or default_pair_layers(n_layers))
    if notes:
        similarity["notes"] = notes
    counters: dict[str, ActivationCounter] = {}
    for (task, lang), cap in captures.items():
        if lang in counters:
            counters[lang].merge(cap.neurons)
        else:
            counters[lang] = ActivationCounter.from_state_dict(cap.neurons.state_dict())
    order = data.paper_order(sorted(counters))
    neurons, tensors = neuron_report({lang: counters[lang] for lang in order}, config.neurons)
    neurons["tasks"] = sorted(by_task)
    return {"similarity": similarity, "logit_lens": lens, "neurons": neurons, "neuron_tensors": tensors}


def write_analyses(run_dir: Path, out: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    write_json(run_dir / "similarity.json", out["similarity"])
    write_json(run_dir / "logit_lens.json", out["logit_lens"])
    write_json(run_dir / "neurons.json", out["neurons"])
    save_file({k: v.contiguous() for k, v in out["neuron_tensors"].items()}, str(run_dir / "neurons.safetensors"))


def analyze_model(
    model: LoadedModel, config: AnalyzeConfig, run_dir: Path, *, progress: Any = None, command: str = "",
    extra_manifest: dict | None = None,
) -> dict:
    """Evaluate, capture and analyse one model into `run_dir` (which must exist). Returns the summary."""
    started = now_iso()
    t0 = time.time()
    torch.manual_seed(config.seed)
    shard_dir = run_dir / "activations" if config.save_activations else None
    results, captures = capture_run(model, config, shard_dir=shard_dir, progress=progress)
    t_capture = time.time() - t0
    out = analyses(results, captures, config)
    write_analyses(run_dir, out)
    options = asdict(config)
    manifest = make_manifest(model, config.eval_config(), command=command, started=started,
                             extra={"options": options, "timing_s": {"capture": round(t_capture, 1),
                                                                     "total": round(time.time() - t0, 1)},
                                    **(extra_manifest or {})})
    return write_eval(run_dir, results, manifest, config.eval_config())


def analyze(
    config: AnalyzeConfig, model: str = "gemma-3-270m", compare: str | None = None, out: str | Path = "runs/analysis",
    *, force: bool = False, resume: bool = False, device: str = "auto", dtype: str = "auto", report: bool = True,
    progress: Any = None, command: str = "", log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """The main job. Returns {"runs": {name: summary}, "report": path or None}."""
    out = Path(out)
    if resume:
        out.mkdir(parents=True, exist_ok=True)
        config.save_activations = True
    else:
        prepare_out_dir(out, force)
    specs = [("base", model)] + ([("aligned", compare)] if compare else [])
    summaries = {}
    for name, spec in specs:
        run_dir = out / name
        run_dir.mkdir(exist_ok=True)
        log(f"loading {spec}")
        m = load_model(spec, device=device, dtype=dtype)
        summaries[name] = analyze_model(m, config, run_dir, progress=progress, command=command,
                                        extra_manifest={"role": name})
        del m
    if compare:
        a = _load_neurons(out / "base")
        b = _load_neurons(out / "aligned")
        write_json(out / "comparison.json", compare_neurons(a, b))
    report_path = None
    if report:
        from alignlens.report import render_report

        log("rendering report")
        report_path = render_report(out / "base", out / "aligned" if compare else None, out / "report.pdf", force=True)
    return {"runs": summaries, "report": report_path}


def _load_neurons(run_dir: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    return read_json(run_dir / "neurons.json"), load_file(str(run_dir / "neurons.safetensors"))


def analyze_shards(run_dir: str | Path, config: AnalyzeConfig | None = None) -> dict[str, Any]:
    """Re-run the analyses of a run saved with --save-activations, without the model."""
    run_dir = Path(run_dir)
    paths = sorted((run_dir / "activations").glob("*.safetensors"))
    if not paths:
        raise AlignlensError(f"{run_dir}/activations: no saved shards (run analyze with --save-activations)")
    results, captures = [], {}
    for p in paths:
        r, c = load_shard(p)
        results.append(r)
        captures[(r.task, r.lang)] = c
    return analyses(results, captures, config or AnalyzeConfig())


# ---- scripted hook experiments ---------------------------------------------------------------


@dataclass
class ExperimentResult:
    """What `run_experiment` returns: eval summary, per-language results, captures and analyses."""

    summary: dict
    results: list[LanguageResult]
    captures: dict[tuple[str, str], LanguageCapture]
    analyses: dict[str, Any] | None

    def accuracy(self, task: str, lang: str) -> float:
        return self.summary["tasks"][task]["languages"][lang]["accuracy"]

    def mean_prob_correct(self, task: str, lang: str) -> float:
        """Mean summed probability of the gold label's token set (a smoother metric than accuracy)."""
        r = next(r for r in self.results if r.task == task and r.lang == lang)
        return float(r.probs[range(len(r.gold)), r.gold].mean())


def run_experiment(
    model: LoadedModel, config: AnalyzeConfig, fwd_hooks: list = (), *, with_analyses: bool = True, progress: Any = None,
) -> ExperimentResult:
    """Run the tasks' prompts with user hooks and get metrics and captures back.

    `fwd_hooks`: TransformerLens (hook name or name filter, fn(activation, hook) -> activation)
    pairs applied to every forward pass (few-shot prefix and queries), e.g. to ablate, patch or
    steer; the capture reads activations after them. Example: zero MLP neuron 7 of layer 3 with
    `("blocks.3.mlp.hook_post", lambda x, hook: x.index_fill(-1, torch.tensor([7]), 0.0))`.
    """
    from alignlens.evaluate import summarize

    results, captures = capture_run(model, config, progress=progress, fwd_hooks=list(fwd_hooks))
    summary = summarize(results, config.bootstrap_resamples, config.seed)
    return ExperimentResult(summary, results, captures, analyses(results, captures, config) if with_analyses else None)
