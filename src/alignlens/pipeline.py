"""The pipeline of `alignlens analyze`: evaluation + capture + all analyses (+ report), for one or two models.

The evaluation runs on the English-label prompts; the capture (logit lens, states, neurons) on the
target-label prompts by default (`--lens-prompts target-labels`: a second pass per task and
language, `capture_run`), or in the same pass (`english-labels`).

`analyze(AnalyzeConfig(...), "gemma-3-270m", compare="runs/aligned", out="runs/analysis")` writes

    out/base/      the --model:   predictions.jsonl, summary.json, similarity.json, logit_lens.json,
                                  neurons.json, neurons.safetensors, manifest.json
                                  [activations/<task>__<lang>.safetensors with --save-activations]
    out/aligned/   the --compare model (same files), when given
    out/manifest.json             which command wrote the folder and every file it wrote there
                                  (the roles' manifests list theirs too): what --force may replace
    out/comparison.json           paired accuracy statistics and neuron changes, when --compare is given
    out/report.pdf                the PDF report (and its figures and tables)

Analyses are pure functions of the captured tensors (`similarity`, `lens`, `neurons`), so a
run saved with --save-activations can be re-analysed without the model (`analyze_shards`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from alignlens import AlignlensError, NumericalError, RunInterrupted, data, distributed
from alignlens.capture.capturer import Capturer, LanguageCapture, check_neuron_hooks
from alignlens.capture.reducers import ActivationCounter, RowStore
from alignlens.capture.shards import load_shard, save_shard, shard_data_hash, shard_mismatch, shard_path
from alignlens.config import AnalyzeConfig, check_rows
from alignlens.engine import score_prompts
from alignlens.evaluate import LanguageResult, evaluate_language, write_eval
from alignlens.labels import label_sets
from alignlens.results.manifest import folder_manifest, make_manifest, ownership
from alignlens.results.writer import ANALYSIS_FILES, files_under, read_owner, write_analysis_files
from alignlens.languages import paper_order
from alignlens.lens import lens_report
from alignlens.model import LoadedModel, load_model
from alignlens.neurons import compare_neurons, neuron_report
from alignlens.plan import RunPlan, plan_for
from alignlens.results import OutputFolder, now_iso, read_json, read_jsonl, write_json
from alignlens.results.schema import resume_command
from alignlens.resume import FolderBefore, check_resume, check_resume_model, refuse_interrupted
from alignlens.similarity import similarity_analysis


def default_pair_layers(n_layers: int) -> list[int]:
    return sorted({max(0, n_layers // 4 - 1), n_layers // 2 - 1, (3 * n_layers) // 4 - 1, n_layers - 1})


def _capture_pass(model: LoadedModel, spec: data.TaskSpec, lang: str, items: Sequence[data.Item], capturer: Capturer,
                  batch_size: int, fwd_hooks: list, on_batch_done: Callable[[int], None] | None) -> None:
    """The separate capture pass: the items' queries after `spec`'s demonstrations (`plan.capture_spec`),
    run through the engine for `capturer` only (its label probabilities are dropped: accuracy comes
    from the evaluation pass; no content-free queries)."""
    where = f"task {spec.name}, language {lang} (capture pass, target-label prompts)"
    queries = [spec.prompts[lang].query_template.format(**it.fields) for it in items]
    parallel = distributed.world().distributed  # this rank's whole batches of the one plan (see evaluate_language)
    distributed.agree(lambda: score_prompts(
        model, data.prompt_prefix(spec, lang), queries, label_sets(model.tokenizer, spec.labels, where),
        batch_size=batch_size, fwd_hooks=fwd_hooks, probes=[capturer], on_batch_done=on_batch_done,
        item_ids=[it.index for it in items], where=where, select_batches=distributed.my_batches if parallel else None))


def gather_capture(cap: LanguageCapture) -> LanguageCapture:
    """Under torchrun: every rank's part of one (task, language) capture, merged on every rank
    (collective). Per-item rows (`RowStore`s, keyed by the item's position) are gathered and
    united: each row was computed by exactly one rank, so the merged store equals one process's.
    The neuron counts (int64) are summed over ranks: exact in any order. Alone: `cap` as is."""
    if not distributed.world().distributed:
        return cap
    stores = {f.name: getattr(cap, f.name) for f in dataclasses.fields(cap) if isinstance(getattr(cap, f.name), RowStore)}
    parts = distributed.gather_objects({name: st.state_dict() for name, st in stores.items()})
    for name, st in stores.items():
        merged = RowStore(st.dtype)
        for part in parts:
            merged.merge(RowStore.from_state_dict(part[name], st.dtype))
        setattr(cap, name, merged)
    counter = cap.neurons
    counts = distributed.sum_ints(counter.counts.flatten().tolist())
    n_tokens = distributed.sum_ints(counter.n_tokens_per_layer.tolist())
    counter.counts = torch.tensor(counts, dtype=torch.int64).reshape(counter.counts.shape)
    counter.n_tokens_per_layer = torch.tensor(n_tokens, dtype=torch.int64)
    return cap


def capture_run(
    model: LoadedModel, config: AnalyzeConfig, *, plan: RunPlan | None = None, shard_dir: Path | None = None,
    progress: Any = None, fwd_hooks: list = (),
) -> tuple[list[LanguageResult], dict[tuple[str, str], LanguageCapture]]:
    """Evaluate and capture every (task, language) of `plan` (None: `plan.resolve_plan(config)`).
    The evaluation (predictions, accuracy) always runs on the English-label prompts; the capture
    (lens, states, neurons) on `config.lens_prompts`: with "target-labels" a second pass on the
    target-label prompts (`PlanEntry.capture`), else (or where those equal the evaluation prompts)
    the same pass. With `shard_dir`, finished (task, language) shards found there are loaded instead
    of recomputed (refused, AlignlensError, when their data, items or prompts differ:
    `shards.shard_mismatch`), and new ones are saved with their data hash."""
    check_neuron_hooks(model)
    plan = plan_for(config, plan)
    total = sum(len(e.items) * (1 if e.capture is None else 2) for e in plan)
    bar = progress.add_task("capturing", total=total) if progress is not None else None
    done = (lambda n: progress.advance(bar, n)) if progress is not None else None
    results, captures = [], {}
    for e in plan:
        path = shard_path(shard_dir, e.spec.name, e.lang) if shard_dir is not None else None
        data_hash = shard_data_hash(e.spec, e.lang, e.items) if path is not None else None
        passes = 1 if e.capture is None else 2
        # rank 0's view of the saved shards decides for every rank (it alone writes them)
        if path is not None and distributed.broadcast_object(path.is_file()):
            why = shard_mismatch(path, data_hash, [it.index for it in e.items], config.lens_prompts)
            if why is not None:
                raise AlignlensError(f"cannot reuse {path}: {why}; use --force to start again")
            result, cap = load_shard(path)
            if progress is not None:
                progress.advance(bar, len(e.items) * passes)
        else:
            if progress is not None:
                progress.update(bar, description=f"{model.spec.split('/')[-1][:24]} {e.spec.name} {e.lang}")
            capturer = Capturer(model, e.spec, e.lang, config.lens_overlap, config.lens_prompts)
            result = evaluate_language(
                model, e.spec, e.lang, e.items, batch_size=config.batch_size, fwd_hooks=fwd_hooks,
                probes=[capturer] if e.capture is None else [], on_batch_done=done,
            )
            if e.capture is not None:  # the capture pass: same items, target-label demonstrations
                _capture_pass(model, e.capture, e.lang, e.items, capturer, config.batch_size, fwd_hooks, done)
            cap = gather_capture(capturer.capture)
            if path is not None:
                distributed.on_main(lambda: save_shard(shard_dir, result, cap, data_hash=data_hash))
        results.append(result)
        captures[(e.spec.name, e.lang)] = cap
    return results, captures


def run_analyses(
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
        modes = sorted({cap.prompts for _, cap in per_lang.values()})
        if len(modes) > 1:
            raise AlignlensError(f"{task}: captures of different --lens-prompts ({', '.join(modes)}) cannot be analysed together")
        lens["tasks"][task] = lens_report({lang: cap.lens(r.gold) for lang, (r, cap) in per_lang.items()},
                                          prompts=modes[0], overlap_rule=config.lens_overlap)
        if "en" not in per_lang:
            notes.append(f"similarity for {task} skipped: English is not among the languages")
            continue
        n = min(len(r.indices) for r, _ in per_lang.values())
        if any(r.indices[:n] != per_lang["en"][0].indices[:n] for r, _ in per_lang.values()):
            raise AlignlensError(f"{task}: items are not parallel across languages")
        similarity["tasks"][task] = task_similarity(task, per_lang, n, config)
    modes = {t["lens_prompts"] for t in lens["tasks"].values()}
    if len(modes) == 1:
        lens = {"lens_prompts": modes.pop(), **lens}
    if notes:
        similarity["notes"] = notes
    counters: dict[str, ActivationCounter] = {}
    for (task, lang), cap in captures.items():
        if lang in counters:
            counters[lang].merge(cap.neurons)
        else:
            counters[lang] = ActivationCounter.from_state_dict(cap.neurons.state_dict())
    order = paper_order(sorted(counters))
    neurons, tensors = neuron_report({lang: counters[lang] for lang in order}, config.neurons)
    neurons["tasks"] = sorted(by_task)
    return {"similarity": similarity, "logit_lens": lens, "neurons": neurons, "neuron_tensors": tensors}


def task_similarity(task: str, per_lang: dict[str, tuple[LanguageResult, LanguageCapture]], n: int,
                    config: AnalyzeConfig) -> dict:
    """similarity.json's entry of one task: `similarity.similarity_analysis` of the first `n` items'
    states (`LanguageCapture.pooled`: row 0 the embedding output, row l + 1 block l's output) pooled
    as `config.similarity_pooling`, with the config's PCA languages, scatter layers, resamples (seed
    `config.seed`, so two runs' replicates pair up) and robust variant."""
    mean = {lang: cap.pooled(config.similarity_pooling)[:n] for lang, (_, cap) in per_lang.items()}
    last = {lang: cap.pooled("last")[:n] for lang, (_, cap) in per_lang.items()}
    n_rows = next(iter(mean.values())).shape[1]
    rows = list(config.pair_layers) if config.pair_layers else [l + 1 for l in default_pair_layers(n_rows - 1)]
    try:
        out = similarity_analysis(mean, last, rows, pooling=config.similarity_pooling,
                                  pca_languages=config.pca_languages, scatter_layers=config.scatter_layers,
                                  n_resamples=config.similarity_resamples, seed=config.seed,
                                  robust=config.similarity_robust)
    except AlignlensError as e:
        raise AlignlensError(f"similarity of task {task}: {e}") from None
    out["capture_prompts"] = next(iter(per_lang.values()))[1].prompts
    return out


def analyze_model(
    model: LoadedModel, config: AnalyzeConfig, run_dir: Path, *, plan: RunPlan | None = None, progress: Any = None,
    command: str = "", extra_manifest: dict | None = None,
) -> dict:
    """Evaluate, capture and analyse one model into `run_dir` (which must exist), on `plan`'s items
    (None: `plan.resolve_plan(config)`). Returns the summary.

    A manifest marked `"status": "running"` is written first, so `--resume` can check that it
    continues the same model and options; the final manifest replaces it. Under torchrun every rank
    captures its whole batches (`capture_run`), rank 0 alone analyses and writes (the manifest
    records `world_size`); every rank returns the summary (collective)."""
    started = now_iso()
    t0 = time.time()
    check_rows(config.pair_layers, model.n_layers)
    check_rows(config.scatter_layers, model.n_layers, "--scatter-layers")
    plan = plan_for(config, plan)
    torch.manual_seed(config.seed)
    manifest = make_manifest(model, config.eval_config(), command=command, started=started,
                             extra={"options": config.to_dict(), **(extra_manifest or {}),
                                    "world_size": distributed.world().size,
                                    **ownership("analyze", analysis_files(config, plan))})
    distributed.on_main(lambda: write_json(run_dir / "manifest.json", {**manifest, "status": "running", "finished": None}))
    shard_dir = run_dir / "activations" if config.save_activations else None
    results, captures = capture_run(model, config, plan=plan, shard_dir=shard_dir, progress=progress)
    t_capture = time.time() - t0

    def finish() -> dict:
        out = run_analyses(results, captures, config)
        write_analysis_files(run_dir, out["similarity"], out["logit_lens"], out["neurons"], out["neuron_tensors"])
        final = {**manifest, "status": "finished", "finished": now_iso(),
                 "timing_s": {"capture": round(t_capture, 1), "total": round(time.time() - t0, 1)}}
        return write_eval(run_dir, results, final, config.eval_config())
    return distributed.broadcast_object(distributed.on_main(finish))


def analysis_files(config: AnalyzeConfig, plan: RunPlan) -> list[str]:
    """The files `analyze_model` writes into a run folder (relative paths): the evaluation and
    analysis files and, with --save-activations, one shard per (task, language) of `plan`."""
    files = [f for f in ANALYSIS_FILES if f != "activations"]
    if config.save_activations:
        files += [f"activations/{shard_path(Path(), e.spec.name, e.lang)}" for e in plan]
    return files


def analyze(
    config: AnalyzeConfig, model: str = "gemma-3-270m", compare: str | None = None, out: str | Path = "runs/analysis",
    *, force: bool = False, resume: bool = False, device: str = "auto", dtype: str = "auto", report: bool = True,
    progress: Any = None, command: str = "", log: Callable[[str], None] = lambda s: None,
    report_progress: Callable[[int, int, str], None] | None = None,
    device_map: str | dict | None = None, max_memory: str | dict | None = None, plan: RunPlan | None = None,
) -> dict[str, Any]:
    """The main job. Returns {"runs": {name: summary}, "report": path or None, "trained_languages": [...]}.

    Everything is checked before a model is loaded (options, models, the data: `plan`, resolved from
    `config` and the models by `plan.resolve_plan` unless given, output folder), and the
    folder stays locked until the run ends (a second run into it is refused at once). A new folder
    is written directly; over an earlier analyze run (`force`: only the files its manifests list
    are replaced), the new run is staged and swapped in at the end, so a failure leaves the
    earlier results as they were; when the numbers fail a check
    (NumericalError, exit 3) nothing is kept: a new folder is removed again, an empty one emptied.
    Without `force` an interrupted run in `out` is refused with the --resume to continue it.
    `resume` continues the run in `out` exactly (`resume.check_resume`: same model(s), options,
    torch threads and task data, else refused before any model loads), keeping its finished roles
    and (task, language) shards; a finished run is refused (nothing to resume) unless its report is
    missing and `report` (then only the comparison and report are written).
    `device_map`/`max_memory`: place each model over several devices as it loads (`model.load_model`)."""
    from alignlens.model import check_dtype, check_model_spec, check_placement

    check_placement(device_map, max_memory, device)
    out = Path(out).expanduser()
    specs = [("base", model)] + ([("aligned", compare)] if compare else [])
    for _, spec in specs:
        check_model_spec(spec)
        n_layers = _peek_n_layers(spec)
        if n_layers is not None:
            check_rows(config.pair_layers, n_layers)
            check_rows(config.scatter_layers, n_layers, "--scatter-layers")
    check_dtype(dtype, device)
    plan = plan_for(config, plan, [spec for _, spec in specs])
    if resume and force:
        raise AlignlensError("--resume continues the run in --out and --force starts it again: give only one of them")
    folder = OutputFolder(out, "analyze", force, resume=resume)
    saved: dict[str, dict | None] = {}
    done: set[str] = set()
    before = FolderBefore.take(out)
    if resume:
        saved, done = check_resume(out, specs, config, plan, report=report)
        config = dataclasses.replace(config, save_activations=True)
    elif not force:
        refuse_interrupted(out, command)
    with folder.writing():  # one run at a time in `out`, until the end
        if resume:
            stage = out
        else:  # under torchrun rank 0 alone prepares the folder; the others learn where it is
            stage = distributed.broadcast_object(distributed.on_main(folder.begin))
        started = now_iso()
        state = {"role": None}
        try:
            summaries, trained = _analyze_roles(config, plan, specs, stage, saved, done, device, dtype, progress, command,
                                                log, state, placement={"device_map": device_map, "max_memory": max_memory})

            def finish() -> Path | None:  # rank 0 alone: comparison, report, the swap into place
                if compare:
                    write_json(stage / "comparison.json", compare_models(stage / "base", stage / "aligned", trained, config))
                state["role"] = "report"
                report_path = None
                if report:
                    from alignlens.report import render_report

                    log("rendering report")
                    render_report(stage / "base", stage / "aligned" if compare else None, stage / "report.pdf", force=True,
                                  **({"progress": report_progress} if report_progress else {}))
                    report_path = out / "report.pdf"
                write_json(stage / "manifest.json", analyze_manifest(stage, specs, command, started))
                folder.commit()
                return report_path
            report_path = distributed.broadcast_object(distributed.on_main(finish))
        except KeyboardInterrupt:
            raise RunInterrupted(_interrupted_message(out, stage, folder, config, state["role"], command)) from None
        except NumericalError as exc:  # exit 3: nothing written (a resumed run's folder as before this attempt)
            # rank 0 alone, no collective: the other ranks may be failing elsewhere
            if stage != out:
                if distributed.is_main():
                    folder.abort()
                kept = f"the new run was discarded; the earlier results in {out} are unchanged"
            else:
                if distributed.is_main():
                    before.restore()
                kept = (f"{out} is as it was before this attempt (the interrupted run, unchanged)" if resume else
                        f"the new run was discarded ({out} is as it was before)")
                if config.save_activations:
                    kept += "; no new shard was kept (a --resume would meet the same numbers)"
            raise NumericalError(f"{exc}; {kept}") from None
        except BaseException:
            if stage != out and distributed.is_main():
                folder.abort()
            raise
    return {"runs": summaries, "report": report_path, "trained_languages": trained}


def analyze_manifest(folder: Path, specs: list[tuple[str, str]], command: str, started: str) -> dict:
    """OUT/manifest.json of an analyze run: the command, the models by role, and every file the
    run wrote in OUT (its roles' listed files, comparison.json, the report and its folders)."""
    files = set(files_under(folder, ["comparison.json", "report.pdf", "report_figures", "report_tables"]))
    for role, _ in specs:
        owner = read_owner(folder / role)
        files |= {f"{role}/{f}" for f in (owner.files if owner else ()) if (folder / role / f).exists()}
    return folder_manifest("analyze", files, command=command, started=started,
                           extra={"models": {role: spec for role, spec in specs}})


def _analyze_roles(config: AnalyzeConfig, plan: RunPlan, specs: list[tuple[str, str]], stage: Path, saved: dict, done: set[str],
                   device: str, dtype: str, progress: Any, command: str, log: Callable[[str], None],
                   state: dict, placement: dict | None = None) -> tuple[dict, list[str]]:
    """Load and analyse each (role, model) in turn, except the roles in `done` (finished before a
    resume: their files are kept and read back); returns the summaries and the languages the
    compared (aligned) model was trained on, from its training manifest."""
    summaries, trained = {}, []
    for name, spec in specs:
        state["role"] = name
        run_dir = stage / name
        if name in done:
            log(f"{name}: finished before, kept as it is")
            summaries[name] = read_json(run_dir / "summary.json")
            if name == "aligned":
                trained = list((saved.get(name) or {}).get("trained_languages", []))
            continue
        distributed.on_main(lambda: run_dir.mkdir(exist_ok=True))
        log(f"loading {spec}")
        m = load_model(spec, device=device, dtype=dtype, **(placement or {}))
        check_resume_model(saved.get(name), m, run_dir)
        summaries[name] = analyze_model(m, config, run_dir, plan=plan, progress=progress, command=command,
                                        extra_manifest={"role": name, "run_models": dict(specs)})
        if name == "aligned":
            trained = list(m.info.get("trained_languages", []))
        del m
    return summaries, trained


def _peek_n_layers(spec: str) -> int | None:
    """The layer count from a local model folder's config.json, without loading weights (None if unknown)."""
    from transformers import AutoConfig

    from alignlens.model import DEFAULT_MODEL, default_model_dir

    path = default_model_dir() if spec == DEFAULT_MODEL else Path(spec).expanduser()
    if (path / "merged" / "config.json").is_file():
        path = path / "merged"
    if not (path / "config.json").is_file():
        return None
    try:
        cfg = AutoConfig.from_pretrained(str(path)).get_text_config()
    except (OSError, ValueError):
        return None
    n = getattr(cfg, "num_hidden_layers", None)
    return int(n) if n is not None else None


def _interrupted_message(out: Path, stage: Path, folder: OutputFolder, config: AnalyzeConfig, role: str | None,
                         command: str) -> str:
    what = f"analyze interrupted ({role or 'starting'})"
    if stage != out:  # a staged run over earlier results: drop it, the earlier results stay
        folder.abort()
        return f"{what}; the earlier results in {out} are unchanged and the partial new run was discarded"
    resume = resume_command(command, out)
    if config.save_activations:
        return f"{what}; finished (task, language) shards are kept in {out}/*/activations; continue with: {resume}"
    return (f"{what}; partial results are in {out} (nothing resumable without --save-activations); "
            f"continue with: {resume}")


def compare_models(base_dir: Path, aligned_dir: Path, trained: list[str], config: AnalyzeConfig) -> dict:
    """comparison.json: paired statistics of accuracy (`paired.compare_runs`: per language McNemar with
    Holm/BH, paired intervals, item-cluster bootstrap macro deltas per language group) and the
    neuron changes (`neurons.compare_neurons`), computed once here and read by the report."""
    from alignlens.paired import compare_runs, language_groups

    rows = [read_jsonl(d / "predictions.jsonl") for d in (base_dir, aligned_dir)]
    langs = sorted({r["lang"] for r in rows[0]})
    accuracy = compare_runs(rows[0], rows[1], language_groups(langs, trained),
                            n_resamples=config.bootstrap_resamples, seed=config.seed)
    return {"accuracy": accuracy, "neurons": compare_neurons(_load_neurons(base_dir), _load_neurons(aligned_dir))}


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
    return run_analyses(results, captures, config or AnalyzeConfig())


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
    return ExperimentResult(summary, results, captures, run_analyses(results, captures, config) if with_analyses else None)
