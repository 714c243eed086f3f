"""The `alignlens` command: a thin typer shell over the alignlens API.

Over 600 lines because typer declares every option inline in its command's signature (name, default
from the frozen config, range, help text): the module is mostly those declarations, one command per
section; the logic each command calls lives in the API (config, pipeline, train, study, localize)."""

from __future__ import annotations

import errno
import inspect
import os
import shlex
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from alignlens import AlignlensError
from alignlens.config import AnalyzeConfig, EvalConfig, LocalizeConfig, NeuronOptions
from alignlens.model import DEFAULT_MODEL

app = typer.Typer(
    name="alignlens",
    help=(
        "Interpretability-first analysis of multilingual LLMs (reproduces Zhang et al., EMNLP 2024, "
        "'Getting More from Less'). Default model: Gemma-3-270m base, embedded (no download).\n\n"
        "Exit codes: 0 done; 1 internal error; 2 bad input or refused (nothing changed); 3 numbers failed a "
        "check (e.g. NaN probabilities; nothing written); 130 Ctrl-C; 143 SIGTERM (interrupted runs say "
        "what was kept and how to resume). Progress: a bar on a terminal, plain lines with ETA when output "
        "is redirected; ALIGNLENS_PROGRESS=bar|lines|off overrides, ALIGNLENS_PROGRESS_SECONDS sets the "
        "line interval (default 10)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="List and show the bundled (or your own) tasks and languages.", no_args_is_help=True)
app.add_typer(data_app, name="data")
study_app = typer.Typer(
    help=("The paper's settings as one replicated experiment: a TOML file names the arms (training languages, "
          "target, questions, copy control, seeds); `study run` trains and evaluates every arm and seed on the same "
          "held-out items, reusing every step already finished with the same content hash; `study report` writes "
          "study.json: each arm's effect vs the base model with a label-stratified item x seed bootstrap interval, "
          "p, MDE80, contrasts, dose-response trends and a verdict on each of the paper's claims. Bundled studies: "
          "quick (20-45 min on a 2-core CPU), paper (the paper's arms; many hours on a CPU)."),
    no_args_is_help=True)
app.add_typer(study_app, name="study")
console = Console(stderr=True, soft_wrap=True)  # status lines stay whole (paths copy-paste) when redirected
out_console = Console()

MODEL_HELP = "Model: 'gemma-3-270m' (embedded default), a local HF folder (e.g. an `alignlens train` output) or a hub name."
DEVICE_HELP = "auto (GPU if present, else CPU), cpu, cuda, cuda:N."
DTYPE_HELP = "auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16, float16 (GPU only)."
DEVICE_MAP_HELP = ("For models larger than one device: place the layers as the weights load (accelerate device_map): "
                   "auto, balanced, balanced_low_0, sequential, or a JSON object {module: device} (or a .json file) "
                   "with devices 0, 1, cuda:N, cpu, disk. Excludes --device and torchrun.")
MAX_MEMORY_HELP = "With --device-map: memory per device, e.g. 0=20GiB,1=20GiB,cpu=60GiB (the rest goes to disk)."
TASKS_HELP = "Comma-separated task names (emotion, snli, paws) or task folders."
ITEMS_HELP = ("Item indices to use, e.g. 0-249 or 1,5,10-19 (the same items in every language), applied before "
              "--limit. Runs refuse items an aligned model was trained on (`alignlens train --task` trains on "
              "the second half by default, so use e.g. --items 0-249 for sentiment).")
BALANCED_HELP = ("Label-balanced items: the first limit/n_labels items of each English gold label (in index order); "
                 "refused when --limit is not a multiple of the label count or a label has too few items.")
FORCE_HELP = ("Replace an earlier run of this command in --out: only the files its alignlens manifest lists (other "
              "files are kept; a folder of another command or without an alignlens manifest is refused; the old "
              "results stay until the new ones are complete).")


def _csv(value: Optional[str]) -> Optional[list[str]]:
    if value is None:
        return None
    return [v.strip() for v in value.split(",")]  # empty or repeated entries are refused by the config


def _command_line() -> str:
    return "alignlens " + " ".join(shlex.quote(a) for a in sys.argv[1:])


#: What an interruption of the running command keeps, asked when Ctrl-C/SIGTERM arrives (`_start`).
_interrupt_note: list[Callable[[], str]] = []


def _start(kept: Callable[[], str], home: bool = True) -> None:
    """Start of a command that runs for a while: refuse a bad ALIGNLENS_PROGRESS or
    ALIGNLENS_PROGRESS_SECONDS (and, for commands that load models, ALIGNLENS_HOME) before anything
    else, and note `kept`, which says what an interruption keeps (the `interrupted:` line)."""
    from alignlens.progress import check_env

    check_env()
    if home:
        from alignlens.model import alignlens_home

        alignlens_home()
    _interrupt_note[:] = [kept]


def _eval_kept(out: Optional[Path]) -> Callable[[], str]:
    """What an interrupted `eval` keeps: results appear only when complete (earlier ones stay)."""
    from alignlens.results.writer import has_content

    had_results = out is not None and has_content(out)

    def kept() -> str:
        if out is None:
            return "eval stopped; nothing was saved (no --out)"
        if had_results:
            return f"eval stopped; the earlier results in {out} are unchanged (the new run was discarded)"
        if has_content(out):
            return f"eval stopped while writing {out}; its files are incomplete: run the command again with --force"
        return f"eval stopped; nothing was written to {out}; run the command again to evaluate"
    return kept


def _train_kept(out: Path) -> Callable[[], str]:
    """What a `train` interrupted before its loop keeps (the loop itself saves a checkpoint and says so)."""
    def kept() -> str:
        from alignlens.distributed import env_world
        from alignlens.train.manifest import resume_command

        last = out / "checkpoints" / "last.pt"
        if last.is_file():
            return (f"training stopped before its first step; no new checkpoint was saved; {last} is kept "
                    f"(continue it with: {resume_command(out, env_world().size)})")
        return "training stopped before its first step; no checkpoint was saved; run the command again to train"
    return kept


def progress_bar():
    """A rich bar on a terminal; plain lines with counts and ETA when output is redirected
    (ALIGNLENS_PROGRESS=bar|lines|off overrides)."""
    from alignlens.progress import LineProgress, progress_mode

    mode = progress_mode(console.is_terminal)
    if mode == "lines":
        return LineProgress()
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False, disable=mode == "off",
    )


def report_progress():
    """A callback for render_report: one dim line per page when on a terminal, else plain lines."""
    from alignlens.progress import progress_mode

    if progress_mode(console.is_terminal) == "off":
        return None

    def show(done: int, total: int, what: str) -> None:
        console.print(f"[dim]report {done}/{total}: {what}[/dim]", highlight=False)
    return show


@contextmanager
def status(message: str):
    t0 = time.time()
    with console.status(message):
        yield
    console.print(f"[dim]{message.rstrip('.')} ({time.time() - t0:.1f}s)[/dim]")


THREADS_HELP = ("torch CPU threads (default: torch's, one per core). 1 is much faster when other jobs share the "
                "cores; float results differ in the last bits between thread counts (the manifest records it).")


def _set_threads(threads: Optional[int]) -> None:
    """torch's CPU thread count for this process (None: torch's default)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _load(spec: str, device: str, dtype: str, device_map: Optional[str] = None, max_memory: Optional[str] = None):
    from alignlens.distributed import is_main
    from alignlens.model import load_model

    if not is_main():  # under torchrun only rank 0 talks
        return load_model(spec, device=device, dtype=dtype, device_map=device_map, max_memory=max_memory)
    with status(f"loading model {spec}..."):
        return load_model(spec, device=device, dtype=dtype, device_map=device_map, max_memory=max_memory)


@contextmanager
def _process_group(device: str):
    """Under torchrun (WORLD_SIZE > 1): join the group (gloo on CPU, nccl on this rank's GPU) for
    the block and yield this process's `World`; alone: rank 0 of 1, nothing started."""
    from alignlens.distributed import process_group, rank_device
    from alignlens.model import resolve_device

    with process_group(rank_device(resolve_device(device))) as world:
        yield world


def _progress_for(world):
    """The progress bar on rank 0; nothing on the other ranks."""
    from contextlib import nullcontext

    return progress_bar() if world.is_main else nullcontext(None)


def print_accuracy_table(summary: dict, title: str = "accuracy", trained: list[str] | None = None) -> None:
    """Languages as rows (20 fit on a screen), tasks as columns, the mean over languages last."""
    from alignlens.evaluate import accuracy_table

    tasks, langs, cells = accuracy_table(summary)
    table = Table(title=title)
    table.add_column("lang")
    for t in tasks:
        table.add_column(t, justify="right")
    for lang in langs:
        mark = "*" if trained and lang in trained else ""
        table.add_row(lang + mark, *[f"{cells[(t, lang)]:.3f}" if (t, lang) in cells else "" for t in tasks])
    table.add_row("mean", *[f"{summary['tasks'][t]['mean_accuracy']:.3f}" for t in tasks], style="bold")
    out_console.print(table)
    if trained:
        out_console.print("* trained language")


def print_comparison_table(base: dict, aligned: dict, trained: list[str] | None, title: str) -> None:
    """Per language and task: base, aligned and the difference; means last."""
    from alignlens.evaluate import accuracy_table

    tasks, langs, a = accuracy_table(base)
    _, _, b = accuracy_table(aligned)
    table = Table(title=title)
    table.add_column("lang")
    for t in tasks:
        table.add_column(f"{t} base", justify="right")
        table.add_column("aligned", justify="right")
        table.add_column("Δ", justify="right")

    def cells(x: float | None, y: float | None) -> list[str]:
        if x is None or y is None:
            return ["", "", ""]
        d = y - x
        colour = "green" if d > 0 else "red" if d < 0 else ""
        return [f"{x:.3f}", f"{y:.3f}", f"[{colour}]{d:+.3f}[/{colour}]" if colour else f"{d:+.3f}"]

    for lang in langs:
        row = [lang + ("*" if trained and lang in trained else "")]
        for t in tasks:
            row += cells(a.get((t, lang)), b.get((t, lang)))
        table.add_row(*row)
    row = ["mean"]
    for t in tasks:
        row += cells(base["tasks"][t]["mean_accuracy"], aligned["tasks"].get(t, {}).get("mean_accuracy"))
    table.add_row(*row, style="bold")
    out_console.print(table)
    if trained:
        out_console.print("* trained language")


@app.command("eval")
def eval_cmd(
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help=MODEL_HELP),
    tasks: str = typer.Option(",".join(EvalConfig.tasks), "--tasks", "-t", help=TASKS_HELP),
    languages: Optional[str] = typer.Option(None, "--languages", "-l", help="Comma-separated language codes; default: all of each task."),
    limit: int = typer.Option(EvalConfig.limit, "--limit", "-n", min=1, help="Items per language: the first N of each test file (a fixed subset)."),
    all_items: bool = typer.Option(False, "--all", help="Use every item (ignores --limit)."),
    items: Optional[str] = typer.Option(EvalConfig.items, "--items", help=ITEMS_HELP),
    balanced: bool = typer.Option(EvalConfig.balanced, "--balanced", help=BALANCED_HELP + " With --all: as many per label as the rarest label has."),
    batch_size: int = typer.Option(EvalConfig.batch_size, "--batch-size", "-b", min=1, help="Queries per forward pass."),
    seed: int = typer.Option(EvalConfig.seed, "--seed", help="Seed (torch; bootstrap intervals)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write predictions.jsonl, summary.json, manifest.json here."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", "--dtype", help=DTYPE_HELP),
    no_prefix_cache: bool = typer.Option(False, "--no-prefix-cache", help="Re-encode the few-shot prefix for every item (slower; same result)."),
    device_map: Optional[str] = typer.Option(None, "--device-map", help=DEVICE_MAP_HELP),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help=MAX_MEMORY_HELP),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
) -> None:
    """Few-shot multilingual evaluation with the paper's constrained decoding.

    For each item: prompt = demonstrations + newline + query; one forward pass; the probabilities of
    each English label word's token set are summed at the last position; the largest wins.
    """
    from alignlens.evaluate import evaluate
    from contextlib import nullcontext

    from alignlens.results import OutputFolder

    _start(_eval_kept(out))
    cfg = EvalConfig(tasks=_csv(tasks), languages=_csv(languages), limit=None if all_items else limit,
                     batch_size=batch_size, seed=seed, prefix_cache=not no_prefix_cache, items=items,
                     balanced=balanced)
    plan = _check_inputs(cfg, [model], device, dtype, device_map, max_memory)
    folder = OutputFolder(out, "eval", force) if out is not None else None
    if folder is not None:
        folder.check()  # before loading the model
    _set_threads(threads)
    with _process_group(device) as world, folder.writing() if folder is not None else nullcontext():
        m = _load(model, device, dtype, device_map, max_memory)  # with --out locked: one run at a time there
        with _progress_for(world) as progress:
            summary = evaluate(m, cfg, out, force=force, progress=progress, command=_command_line(), plan=plan)
    if not world.is_main:
        return
    print_accuracy_table(summary, f"accuracy — {model}", m.info.get("trained_languages"))
    if out is not None:
        console.print(f"wrote {out}/predictions.jsonl, summary.json, manifest.json")


def _check_inputs(cfg, models: list[str], device: str, dtype: str, device_map: Optional[str] = None,
                  max_memory: Optional[str] = None):
    """Everything checkable without a model: device, dtype, --device-map/--max-memory, the run's data
    (`plan.resolve_plan`: tasks and their data files, languages, the item selection (--items,
    --limit, --balanced), that no model was trained on the items evaluated and, for analyze, the
    lens prompts and PCA languages) and the models. Returns the `RunPlan` the run then follows."""
    from alignlens.model import check_dtype, check_model_spec, check_placement
    from alignlens.plan import resolve_plan

    check_dtype(dtype, device)
    check_placement(device_map, max_memory, device)
    plan = resolve_plan(cfg, models)
    for spec in models:
        check_model_spec(spec)
    return plan


_NEURON_DEFAULTS = NeuronOptions()


@app.command("analyze")
def analyze_cmd(
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help=MODEL_HELP + " Written to OUT/base."),
    compare: Optional[str] = typer.Option(None, "--compare", "-c", help="A second model (e.g. the aligned one), written to OUT/aligned; the report compares the two."),
    tasks: str = typer.Option(",".join(AnalyzeConfig.tasks), "--tasks", "-t", help=TASKS_HELP),
    languages: Optional[str] = typer.Option(None, "--languages", "-l", help="Comma-separated language codes (include en for similarity); default: all 20."),
    limit: int = typer.Option(AnalyzeConfig.limit, "--limit", "-n", min=1, help="Items per language: the first N of each test file (a fixed subset)."),
    items: Optional[str] = typer.Option(AnalyzeConfig.items, "--items", help=ITEMS_HELP),
    balanced: bool = typer.Option(AnalyzeConfig.balanced, "--balanced", help=BALANCED_HELP),
    batch_size: int = typer.Option(AnalyzeConfig.batch_size, "--batch-size", "-b", min=1, help="Queries per forward pass."),
    seed: int = typer.Option(AnalyzeConfig.seed, "--seed", help="Seed (torch; bootstrap intervals)."),
    out: Path = typer.Option(Path("runs/analyze"), "--out", "-o", help="Output folder."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out from its finished shards (implies --save-activations); the model(s) and options must be the same (checked)."),
    save_activations: bool = typer.Option(False, "--save-activations", help="Keep the reduced per-item tensors as safetensors shards (re-analysable without the model; needed for --resume)."),
    pair_layers: Optional[str] = typer.Option(None, "--pair-layers", help="Hidden-state layers of the language x language similarity matrices, e.g. 4,9,18 (0 = the embedding output, l = the output of block l, as HF hidden_states; default: after 1/4, 1/2, 3/4 and all of the blocks)."),
    similarity_pooling: str = typer.Option(AnalyzeConfig.similarity_pooling, "--similarity-pooling", help="States compared across languages: prompt (mean over all prompt tokens, BOS and demonstrations included, as the paper), query (mean over the item's own tokens) or last (the last prompt token)."),
    pca_languages: Optional[str] = typer.Option(None, "--pca-languages", help="Languages the PCA's first component is fitted on, jointly (must include en); the others are projected on it. Default: the paper's en,de,fr,hi,th,sw,ms when all are analysed, else all languages."),
    scatter_layers: Optional[str] = typer.Option(None, "--scatter-layers", help="Hidden-state layers of the 2-D PCA scatter plots (en/de/fr/hi), e.g. 0,9,18 (default: 0, 1/3, 2/3, last)."),
    similarity_resamples: int = typer.Option(AnalyzeConfig.similarity_resamples, "--similarity-resamples", min=0, help="Bootstrap resamples of the items for the similarity intervals and the paired base-vs-aligned changes (the same resamples in every language and run; 0: no intervals)."),
    similarity_robust: str = typer.Option(AnalyzeConfig.similarity_robust, "--similarity-robust", help="Robust variant computed beside the paper's measures: drop-outliers (zero the residual dimensions holding >= 20/d_model of the pooled states' squared norm), standardize (z-score every dimension over items and languages) or none."),
    top_rate: float = typer.Option(_NEURON_DEFAULTS.top_rate, "--top-rate", help="Language-specific neurons: fraction of all neurons kept, lowest LAPE entropy first (Tang et al.'s code: 0.01)."),
    filter_rate: float = typer.Option(_NEURON_DEFAULTS.filter_rate, "--filter-rate", help="Candidate neurons: max activation probability above this quantile."),
    activation_bar: float = typer.Option(_NEURON_DEFAULTS.activation_bar_ratio, "--activation-bar", help="A selected neuron is specific to a language when its probability there exceeds this quantile."),
    lens_overlap: str = typer.Option(AnalyzeConfig.lens_overlap, "--lens-overlap", help="Logit lens drops items whose gold label's English and target words collide: token-set (their prefix token sets share a token; strict) or first-token (same first token, as Wendler et al.)."),
    lens_prompts: str = typer.Option(AnalyzeConfig.lens_prompts, "--lens-prompts", help="Prompts of the capture pass (logit lens, similarity, neurons): target-labels (demonstrations with the language's label words, as the paper's lens; accuracy still from a second pass on the English-label prompts) or english-labels (the evaluation prompts; one pass)."),
    report: bool = typer.Option(True, "--report/--no-report", help="Render OUT/report.pdf at the end."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", "--dtype", help=DTYPE_HELP),
    device_map: Optional[str] = typer.Option(None, "--device-map", help=DEVICE_MAP_HELP),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help=MAX_MEMORY_HELP),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
) -> None:
    """The main job: an evaluation pass, a capture pass and all analyses (logit lens, representation
    similarity, language-specific neurons) for a model and optionally a second one, then a PDF report.

    Writes OUT/base (and OUT/aligned): predictions.jsonl, summary.json, similarity.json,
    logit_lens.json, neurons.json, neurons.safetensors, manifest.json; OUT/comparison.json; OUT/report.pdf;
    OUT/manifest.json (every file the run wrote: what a later --force may replace).
    """
    from alignlens.pipeline import analyze

    _start(lambda: "analyze stopped before any results were written")  # later the pipeline says what it kept
    cfg = AnalyzeConfig(
        tasks=_csv(tasks), languages=_csv(languages), limit=limit, batch_size=batch_size, seed=seed,
        pair_layers=pair_layers,
        neurons=NeuronOptions(filter_rate=filter_rate, top_rate=top_rate, activation_bar_ratio=activation_bar),
        save_activations=save_activations, lens_overlap=lens_overlap, items=items, balanced=balanced,
        lens_prompts=lens_prompts, similarity_pooling=similarity_pooling, pca_languages=_csv(pca_languages),
        scatter_layers=scatter_layers, similarity_resamples=similarity_resamples, similarity_robust=similarity_robust,
    )
    plan = _check_inputs(cfg, [model] + ([compare] if compare else []), device, dtype, device_map, max_memory)
    _set_threads(threads)
    t0 = time.time()
    with _process_group(device) as world, _progress_for(world) as progress:
        res = analyze(cfg, model, compare, out, force=force, resume=resume, device=device, dtype=dtype, report=report,
                      device_map=device_map, max_memory=max_memory, plan=plan, progress=progress,
                      command=_command_line(),
                      log=(lambda s: console.print(f"[dim]{s}[/dim]")) if world.is_main else (lambda s: None),
                      report_progress=report_progress() if world.is_main else None)
    if not world.is_main:
        return
    if compare:
        print_comparison_table(res["runs"]["base"], res["runs"]["aligned"], res["trained_languages"],
                               f"accuracy — base: {model}, aligned: {compare}")
    else:
        print_accuracy_table(res["runs"]["base"], f"accuracy — {model}")
    console.print(f"wrote {out} in {time.time() - t0:.0f}s" + (f"; report: {res['report']}" if res["report"] else ""))


_LOCALIZE = LocalizeConfig()


@app.command("localize")
def localize_cmd(
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help=MODEL_HELP + " The base model (receiver of a2b, steered, dosed)."),
    compare: str = typer.Option(..., "--compare", "-c", help="The aligned model (e.g. an `alignlens train` output; with a LoRA adapter/ the weight-scale dose response runs too)."),
    control: Optional[str] = typer.Option(None, "--control", help="A copy-control model (e.g. `alignlens train --control copy`): a negative source for patching (c2b) and a control direction for steering."),
    tasks: str = typer.Option(",".join(_LOCALIZE.tasks), "--tasks", "-t", help=TASKS_HELP),
    languages: Optional[str] = typer.Option(None, "--languages", "-l", help="Comma-separated language codes; default: all of each task (slow: patching runs every site for every language)."),
    limit: int = typer.Option(_LOCALIZE.limit, "--limit", "-n", min=1, help="Items per language: the first N of each test file (a fixed subset)."),
    items: Optional[str] = typer.Option(None, "--items", help=ITEMS_HELP),
    balanced: bool = typer.Option(False, "--balanced", help=BALANCED_HELP),
    sites: str = typer.Option(",".join(_LOCALIZE.sites), "--sites", help="Patching sites: resid (the residual stream entering block l; layer n_layers: the last block's output), attn, mlp (block l's attention / MLP output)."),
    positions: str = typer.Option(",".join(_LOCALIZE.positions), "--positions", help="Patched positions: last (the prompt's last token), query (the item's own tokens after the few-shot prefix), all (every prompt token)."),
    layers: str = typer.Option("all", "--layers", help="Patching layers, e.g. 0,3,6, or all (resid 0..n_layers, attn/mlp 0..n_layers-1)."),
    directions: Optional[str] = typer.Option(None, "--directions", help="Patching directions: a2b (aligned -> base: does this site carry the gain?), b2a (base -> aligned: does removing it undo the gain?), c2b (control -> base, needs --control). Default: a2b,b2a (and c2b with --control)."),
    steer: bool = typer.Option(True, "--steer/--no-steer", help="Steer the base model with the alignment direction (mean aligned − base residual over training-split questions) and its controls."),
    steer_layers: Optional[str] = typer.Option(None, "--steer-layers", help="Hidden-state layers steered, e.g. 4,9,13 (0 the embedding output, l the output of block l-1; default n/4, n/2, 3n/4)."),
    steer_scales: str = typer.Option(",".join(f"{s:g}" for s in _LOCALIZE.steer_scales), "--steer-scales", help="Steering scales s (s·v added at the query positions)."),
    random_directions: int = typer.Option(_LOCALIZE.random_directions, "--random-directions", min=0, max=100, help="Random control directions (same norm per layer), one per seed."),
    direction_items: int = typer.Option(_LOCALIZE.direction_items, "--direction-items", min=1, help="Training-split items per language averaged into the steering direction (never evaluated items)."),
    dose: bool = typer.Option(True, "--dose/--no-dose", help="Weight-scale dose response W + α·ΔW (only when --compare is a LoRA `alignlens train` output)."),
    alphas: str = typer.Option(",".join(f"{a:g}" for a in _LOCALIZE.alphas), "--alphas", help="α values of the dose response (0 = base, 1 = aligned)."),
    batch_size: int = typer.Option(_LOCALIZE.batch_size, "--batch-size", "-b", min=1, help="Items per forward pass."),
    seed: int = typer.Option(_LOCALIZE.seed, "--seed", help="Seed of the bootstrap intervals and the random directions."),
    bootstrap_resamples: int = typer.Option(_LOCALIZE.bootstrap_resamples, "--bootstrap-resamples", min=2, help="Bootstrap resamples of every interval."),
    out: Path = typer.Option(Path("runs/localize"), "--out", "-o", help="Output folder."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out from its finished (task, language) parts; the models, options and --threads must be the same (checked)."),
    report: bool = typer.Option(True, "--report/--no-report", help="Render OUT/report.pdf at the end."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", "--dtype", help=DTYPE_HELP),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
) -> None:
    """Where does alignment act? Cross-model activation patching, steering with the alignment direction
    and the weight-scale dose response, with paired statistics (`alignlens.localize.localize`).

    Per (task, language) and item: the receiver model's activation at one site (residual stream,
    attention or MLP output of one layer) and positions is replaced by the source model's on the
    same prompt; recovery = mean(patched − receiver) / mean(source − receiver) of the gold-vs-other
    label log-odds, per language and language group, with label-stratified item-cluster bootstrap
    intervals, reported only where the gap itself is significant. Same item selection and checks
    as `analyze` (held-out items only).

    Writes OUT/patching.jsonl, steering.jsonl, dose.jsonl (per-item rows), localize.json
    (aggregates), manifest.json and report.pdf ("Causal localisation").
    """
    from alignlens.localize.run import localize

    _start(lambda: "localize stopped before any results were written")  # later the run says what it kept
    cfg = LocalizeConfig(
        tasks=_csv(tasks), languages=_csv(languages), limit=limit, items=items, balanced=balanced,
        batch_size=batch_size, seed=seed, bootstrap_resamples=bootstrap_resamples, sites=_csv(sites),
        positions=_csv(positions), layers=None if layers.strip() == "all" else layers, directions=_csv(directions),
        steer=steer, steer_layers=steer_layers, steer_scales=_csv(steer_scales), random_directions=random_directions,
        direction_items=direction_items, dose=dose, alphas=_csv(alphas))
    _set_threads(threads)
    t0 = time.time()
    with progress_bar() as progress:
        res = localize(cfg, model, compare, out, control=control, force=force, resume=resume, device=device,
                       dtype=dtype, report=report, progress=progress, command=_command_line(),
                       log=lambda s: console.print(f"[dim]{escape(s)}[/dim]"), report_progress=report_progress())
    from alignlens.report.localize import summary_lines

    for line in summary_lines(res)[1:]:
        out_console.print(line, highlight=False, markup=False, soft_wrap=True)
    console.print(f"wrote {out} in {time.time() - t0:.0f}s" + (f"; report: {res['report']}" if res["report"] else ""))


def _given(ctx: typer.Context, names: list[str]) -> list[str]:
    """Which of the parameters `names` were given on the command line (not left at their defaults).
    (Sources are compared by name: typer ships its own copy of click's `ParameterSource`.)"""
    sources = {n: ctx.get_parameter_source(n) for n in names}
    return [n for n, src in sources.items() if src is not None and src.name not in ("DEFAULT", "DEFAULT_MAP")]


@app.command("train")
def train_cmd(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", "-o", help="Output model folder (merged/ HF model, adapter/, manifest.json, train_log.jsonl); loads with --model OUT."),
    model: str = typer.Option("gemma-3-270m", "--model", "-m", help=MODEL_HELP),
    preset: str = typer.Option("default", "--preset", help="default: sized for a 2-core CPU (zh+de, 600 each, 1 epoch, LoRA lr 5e-4); paper: lr 5e-5, 3 epochs, batch 16, 10k per language (GPU)."),
    task: Optional[str] = typer.Option(None, "--task", help="Train on this task's own questions (emotion, snli, paws or a task folder): X -> English pairs of its parallel test files, questions only, no answers (same-task alignment). Without it: the bundled SNLI question-translation set (cross-task when you read emotion or paws)."),
    train_items: Optional[str] = typer.Option(None, "--train-items", help="With --task: the item indices trained on, e.g. 250-499 or 1,5,10-19. Default: the second half of the task's items (emotion and paws 250-499 of 500, snli 300-599 of 600), so evaluate the first half (--items 0-249); eval/analyze refuse trained items."),
    control: Optional[str] = typer.Option(None, "--control", help="copy: the control run, English -> English pairs of the same questions (\"<English question>\\nTranslate the input from English to English:\\n\" -> the English question), same items, split, steps and settings, to tell alignment from generic fine-tuning."),
    languages: Optional[str] = typer.Option(None, "--languages", "-l", help="Source languages (default zh,de): any of the task's languages except en with --task, else the bundled SNLI question-translation languages (de, es, it, sw, zh)."),
    per_language: Optional[int] = typer.Option(None, "--per-language", min=1, help="Examples sampled per language (preset: 600 / 10000); with --task, at most this many of the split's items (all of them when the split is smaller)."),
    data_files: Optional[list[Path]] = typer.Option(None, "--data", help="Your own JSONL file(s): {input, answer} or {lang, text, english}; repeatable."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (cosine schedule with warm-up)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", min=1, help="Examples per forward pass."),
    grad_accum: Optional[int] = typer.Option(None, "--grad-accum", min=1, help="Forward passes per optimizer step."),
    max_len: Optional[int] = typer.Option(None, "--max-len", help="Max tokens per example (prompt + target)."),
    max_drop_fraction: Optional[float] = typer.Option(None, "--max-drop-fraction", help="Refuse when more of a language's examples would be dropped (prompt alone fills --max-len); default 0.05. Kept/truncated/dropped counts are printed and recorded in the manifest."),
    full: bool = typer.Option(False, "--full", help="Full fine-tuning instead of LoRA."),
    fsdp: bool = typer.Option(False, "--fsdp", help="Under torchrun: shard weights, gradients and optimizer state over the processes (FSDP2) instead of replicating them (DDP); for models larger than one device."),
    lora_r: Optional[int] = typer.Option(None, "--lora-r"),
    lora_alpha: Optional[int] = typer.Option(None, "--lora-alpha"),
    lora_targets: Optional[str] = typer.Option(None, "--lora-targets", help="Comma-separated module names (default q_proj,v_proj)."),
    bf16: bool = typer.Option(False, "--bf16", help="bfloat16 autocast (GPU)."),
    val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="Held-out fraction per language (default 0.05)."),
    eval_every: Optional[int] = typer.Option(None, "--eval-every", help="Optimizer steps between validation losses."),
    save_every: Optional[int] = typer.Option(None, "--save-every", help="Optimizer steps between checkpoints."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    batching: Optional[str] = typer.Option(None, "--batching", help="bucketed (default): each optimizer step takes examples of similar length from a window of 50 steps of the seeded shuffle (~1% padding); random: the shuffle's own steps (~23% padding, as HF Trainer without group_by_length). Recorded in the manifest (training.batching)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads (1 is faster when other jobs share the cores)."),
    keep_checkpoints: bool = typer.Option(False, "--keep-checkpoints", help="Keep OUT/checkpoints after success."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out exactly where it stopped, with its saved options: omit them (an option given with another value than the saved run's is refused); only --threads and --keep-checkpoints may change."),
    force: bool = typer.Option(False, "--force", help="Start again in an --out holding an earlier training run: removes only the files its alignlens manifest lists (other files are kept; a folder of another command or without an alignlens manifest is refused), once every check has passed and the model has loaded."),
) -> None:
    """Question-translation alignment (the paper's step 1): fine-tune on questions only, translated
    X -> English ("<question in X>\\nTranslate the input from <Language> to English:\\n" -> the English
    question). Loss on the English target tokens only. Ctrl-C saves a checkpoint; --resume continues.
    Data: with --task, the task's own questions (its query template filled with an item's fields,
    ending at the answer's opening quote) for --train-items (default: the second half of its items);
    without it, the bundled SNLI question-translation set. The manifest records which (source, task,
    train_items, control). Long questions (emotion) need a larger --max-len, e.g. 640.
    """
    from alignlens.train import TrainConfig, train

    _start(_train_kept(out))  # from its first step on, training saves a checkpoint and says so itself
    overrides = dict(task=task, train_items=train_items, control=control, languages=_csv(languages), per_language=per_language,
                     data_files=[str(p) for p in data_files] if data_files else None, epochs=epochs, lr=lr,
                     batch_size=batch_size, grad_accum=grad_accum, max_len=max_len, max_drop_fraction=max_drop_fraction, full=full or None, fsdp=fsdp or None,
                     lora_r=lora_r, lora_alpha=lora_alpha, lora_targets=_csv(lora_targets), bf16=bf16 or None,
                     val_fraction=val_fraction, eval_every=eval_every, save_every=save_every, seed=seed, batching=batching, device=device,
                     threads=threads, keep_checkpoints=keep_checkpoints or None)
    if resume:  # the saved run's options and model; those given must equal them (runtime options may change)
        values = {**overrides, "preset": preset}
        given = {name: values[name] for name in _given(ctx, list(values))}
        result = train(None, model if _given(ctx, ["model"]) else None, out, resume=True, progress=True,
                       command=_command_line(), options=given)
    else:
        cfg = TrainConfig.from_preset(preset, **overrides)
        result = train(cfg, model, out, force=force, progress=True, command=_command_line())
    from alignlens.distributed import is_main

    if is_main():  # under torchrun, one closing line
        console.print(f"trained {result.steps} steps in {result.wall_seconds / 60:.1f} min "
                      f"({result.tokens_per_second:.0f} tok/s); val loss {result.initial_val_loss} -> best "
                      f"{result.best_val_loss} (step {result.best_step}); model: {result.out_dir}")


@app.command("report")
def report_cmd(
    run_dir: Path = typer.Argument(..., help="A results folder (one model), e.g. OUT/base of `alignlens analyze`."),
    compare: Optional[Path] = typer.Option(None, "--compare", "-c", help="A second results folder, e.g. OUT/aligned."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="PDF path (default: next to the results)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing PDF."),
    names: Optional[str] = typer.Option(
        None, "--names", "-n", metavar="A,B",
        help="What the report calls RUN_DIR and the --compare run, e.g. aligned,control (default: base,aligned; one "
             "name without --compare). Two distinct names of at most 20 letters, digits (any script: 基础,对齐) or _ . + -. Results are "
             "phrased as a test of the paper's claim only for base,aligned; other names get the same numbers as "
             "B − A, with no verdict."),
) -> None:
    """Render the PDF report (with PNG/SVG figures and CSV tables) from saved results; no model needed.

    Every Δ is the --compare run minus RUN_DIR; texts, tables, figures and CSV columns name the runs by --names."""
    from alignlens.report import render_report
    from alignlens.report.runs import check_names

    _start(lambda: "report stopped; nothing was written (a report already there is unchanged)", home=False)
    run_names = check_names(names.split(","), 1 + (compare is not None)) if names is not None else None
    path = render_report(run_dir, compare, out, force=force, progress=report_progress(), names=run_names)
    console.print(f"wrote {path}")


@data_app.command("list")
def data_list() -> None:
    """List bundled tasks with their labels, shots, languages and item counts."""
    from alignlens import data

    table = Table(title="bundled tasks")
    for col in ("task", "labels", "shots", "languages", "items/lang", "source (licence)"):
        table.add_column(col)
    for name in data.list_tasks():
        spec = data.load_task(name)
        n = len(data.load_items(spec, "en"))
        table.add_row(name, ", ".join(spec.labels), str(spec.shots), " ".join(spec.languages), str(n),
                      f"{spec.source} ({spec.licence})")
    out_console.print(table)
    out_console.print("question-translation training sets (SNLI): " + " ".join(data.QT_LANGUAGES) + ", 10,000 each")
    out_console.print(f"data folder: {data.data_root()} (see its README.md for attribution)")


@data_app.command("show")
def data_show(
    task: str = typer.Argument(..., help="Task name or folder."),
    lang: str = typer.Argument(..., help="Language code."),
    n: int = typer.Option(1, "--n", min=1, help="How many items to show."),
    prompts: str = typer.Option("evaluation", "--prompts", help="Which prompt to show: evaluation (English label words in the demonstrations; gives accuracy), target-labels (the logit lens's prompt, what analyze's capture pass uses by default: the demonstrations with this language's label_words) or both."),
) -> None:
    """Show the full prompt of the first items of TASK in LANG, with their gold labels."""
    from alignlens import AlignlensError, data

    kinds = {"evaluation": ("evaluation",), "target-labels": ("target-labels",), "both": ("evaluation", "target-labels")}
    if prompts not in kinds:
        raise AlignlensError(f"--prompts: unknown prompt {prompts!r} (use evaluation, target-labels or both)")
    spec = data.load_task(task)
    items = data.load_items(spec, lang, limit=n)
    specs = {"evaluation": spec}
    if "target-labels" in kinds[prompts]:
        specs["target-labels"] = data.target_label_spec(spec, lang)  # refuses what it cannot build
    for it in items:
        for kind in kinds[prompts]:
            out_console.rule(f"{spec.name} {lang} item {it.index} — gold: {it.label} — {kind} prompt")
            out_console.print(data.build_prompt(specs[kind], lang, it), markup=False, highlight=False, soft_wrap=True)
    out_console.rule()
    out_console.print(f"labels: {', '.join(spec.labels)}; {len(data.load_items(spec, lang))} items in {lang}",
                      markup=False, highlight=False)
    if "target-labels" in kinds[prompts]:
        words = data.target_label_words(spec, lang)
        why = {"identical": "the English word itself: the logit lens drops these items",
               "same first character": "starts like the English word: the default token-set lens rule drops these items"}
        clash = data.label_word_collisions(spec, lang)
        out_console.print("target-language label words: " + ", ".join(
            f"{lab} -> {words[lab]}" + (f" ({why[clash[lab]]})" if lab in clash else "") for lab in spec.labels),
            markup=False, highlight=False, soft_wrap=True)


STUDY_FILE_HELP = "A study file (.toml) or the name of a bundled study (quick, paper)."


@study_app.command("check")
def study_check(
    file: str = typer.Argument(..., help=STUDY_FILE_HELP),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="A study folder: show each step's status there (finished, partial, stale, missing)."),
) -> None:
    """Validate a study file and print its plan: every step with its hash, status and estimated time.

    Nothing is written and no model weights load (the models' tokenizers do: the training data are
    tokenized to check --max-len and to estimate the training cost)."""
    from alignlens.study.plan import resolve
    from alignlens.study.runner import plan_rows
    from alignlens.study.spec import load_study

    study = load_study(file)
    plan = resolve(study)
    rows = plan_rows(plan, out)
    table = Table(title=f"study {study.name}: {len(study.arms)} arm(s), {len(rows)} steps")
    for col in ("step", "hash", "status", "est. time"):
        table.add_column(col, justify="right" if col == "est. time" else "left", no_wrap=col == "step")
    for r in rows:
        table.add_row(r["step"], r["hash"], r["status"], _minutes(r["seconds"]))
    out_console.print(table)
    todo = [r for r in rows if r["status"] != "finished"]
    out_console.print(f"{len(todo)} of {len(rows)} steps to run, about {_minutes(sum(r['seconds'] for r in todo))} "
                      "(at Gemma-3-270m speed on one thread of a busy 2-core CPU; a run re-measures it)")


def _minutes(seconds: float) -> str:
    if seconds >= 7200:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


@study_app.command("run")
def study_run(
    file: str = typer.Argument(..., help=STUDY_FILE_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="The study folder (created; steps already finished there with the same hash are kept)."),
    arm: Optional[str] = typer.Option(None, "--arm", help="Run only this arm's steps (training and evaluation of each seed); 'base' runs the base model's evaluation. Cells run in several sittings or on several machines (copy the folders back) and `study report` joins them."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, help="Run only this training seed (of --arm, or of every arm)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help=THREADS_HELP),
    force: bool = typer.Option(False, "--force", help="Run the selected steps again even when finished (only alignlens's files in their folders are replaced); also lets --out be a non-empty folder that holds no study (its files are kept)."),
) -> None:
    """Run the steps of a study not finished with their current hash, then write study.json and study.pdf.

    Trains each arm and seed and evaluates every model on the same held-out items. A step interrupted earlier resumes (training from its checkpoint, evaluation at the next (task,
    language)); a step whose folder holds another hash (its arm was edited) runs again. Ctrl-C or
    SIGTERM stops with the command that continues. Under torchrun each step's training and evaluation
    run data-parallel: torchrun --nproc_per_node=N -m alignlens study run FILE --out DIR [--arm A --seed S]."""
    from alignlens.distributed import is_main
    from alignlens.study.runner import run_study

    summary = run_study(file, out, arm=arm, seed=seed, threads=threads, force=force, progress=True,
                        command=_command_line())
    if not is_main():
        return
    console.print(f"ran {len(summary.ran)} step(s), kept {len(summary.kept)} finished before "
                  f"({summary.seconds / 60:.1f} min)")
    if summary.study_json is not None:
        console.print(f"wrote {summary.study_json} and {summary.study_json.with_name('study.pdf')}")
    else:
        console.print(f"{len(summary.missing)} step(s) of the study are not finished yet (first: {summary.missing[0]}); "
                      f"run them (`alignlens study check {shlex.quote(file)} --out {shlex.quote(str(out))}` lists them), "
                      f"then `alignlens study report {shlex.quote(str(out))}`")


@study_app.command("report")
def study_report(
    out: Path = typer.Argument(..., help="A study folder (`alignlens study run ... --out DIR`)."),
) -> None:
    """Write DIR/study.json and DIR/study.pdf from the finished steps of a study folder (no model needed).

    Effects, contrasts, trends, diagnostics and a verdict on each of the paper's claims; the PDF shows
    the plan, the claims, forest plots, per-language heatmaps, dose-response, seeds and label shares
    (figures and CSV tables beside it in study_figures/ and study_tables/). Steps not finished are
    listed with the command that runs each."""
    from alignlens.study.collect import write_study_json
    from alignlens.results import read_json

    path = write_study_json(out, progress=report_progress())
    doc = read_json(path)
    table = Table(title=f"study {doc['name']}: the paper's claims")
    for col in ("claim", "verdict", "text"):
        table.add_column(col)
    for c in doc["claims"]:
        table.add_row(str(c["id"]), c["verdict"], c["text"])
    out_console.print(table)
    for s in doc["steps"]:
        if s["status"] != "finished":
            console.print(f"{s['status']}: {s['name']}: {s['command']}", highlight=False, markup=False)
    console.print(f"wrote {path}")
    console.print(f"wrote {path.with_name('study.pdf')} (figures: study_figures/, tables: study_tables/)")


@app.command("models")
def models_cmd(
    model: str = typer.Option("gemma-3-270m", "--model", "-m", help=MODEL_HELP),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", "--dtype", help=DTYPE_HELP),
    device_map: Optional[str] = typer.Option(None, "--device-map", help=DEVICE_MAP_HELP),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help=MAX_MEMORY_HELP),
) -> None:
    """Prepare (convert once, cached) and describe a model; shows the label token sets."""
    from alignlens import data
    from alignlens.labels import label_token_ids, vocab_kind
    from alignlens.model import alignlens_home, check_placement

    _start(lambda: "models stopped; nothing was written (a model conversion appears complete or not at all)")
    check_placement(device_map, max_memory, device)
    m = _load(model, device, dtype, device_map, max_memory)
    table = Table(title=f"model {model}", show_header=False)
    for k, v in m.describe().items():
        table.add_row(k, str(v))
    table.add_row("vocabulary", f"{len(m.tokenizer)} ({vocab_kind(m.tokenizer)})")
    table.add_row("cache folder", str(alignlens_home()))
    out_console.print(table)
    for t in data.list_tasks():
        spec = data.load_task(t)
        for w in spec.labels:
            toks = m.tokenizer.convert_ids_to_tokens(label_token_ids(m.tokenizer, w))
            out_console.print(f"{t:8s} {w:14s} {len(toks):3d} tokens: {' '.join(toks)}", markup=False, highlight=False)


_signal_received: list[int] = []


def _on_signal(signum, frame) -> None:  # noqa: ARG001
    """SIGINT/SIGTERM: remember which (the exit code) and stop as on Ctrl-C."""
    _signal_received.append(signum)
    raise KeyboardInterrupt


def _reflow(doc: str) -> str:
    """A docstring for --help: its paragraphs' hard line breaks joined (the help is wrapped to the
    terminal; a break inside a paragraph made ragged lines below 105 columns); lines that start a list
    item ("- ") or are indented stay on their own line."""
    paragraphs = []
    for para in inspect.cleandoc(doc).split("\n\n"):
        lines: list[str] = []
        for line in para.split("\n"):
            if lines and not line.startswith(("- ", " ")):
                lines[-1] += " " + line.strip()
            else:
                lines.append(line)
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def _reflow_help(app_: typer.Typer) -> None:
    """`_reflow` every command's docstring (of `app_` and its sub-apps) before typer reads it."""
    for info in app_.registered_commands:
        if info.help is None and info.callback is not None and info.callback.__doc__:
            info.callback.__doc__ = _reflow(info.callback.__doc__)
    for group in app_.registered_groups:
        _reflow_help(group.typer_instance)


def main() -> None:
    """Console entry point: one clear `error:` line for every failure, no traceback (set
    ALIGNLENS_DEBUG=1 to see one). Exit codes: see `alignlens --help`.

    Under torchrun (WORLD_SIZE > 1) the process ends with `os._exit` once its output is flushed:
    every file is written and closed and the process group destroyed by then, and skipping the
    interpreter's teardown avoids gloo's intermittent abort there ("terminate called without an
    active exception", SIGABRT), which torchrun would report as a failed run. An interrupted run
    (130, 143) ends the same way: under `python -m`, CPython turns any exit after a
    KeyboardInterrupt that passed through exec()'d code (e.g. a dataclass being created when the
    signal came) into death by SIGINT, which would lose the exit code."""
    code: int | str | None = 0
    _reflow_help(app)
    try:
        _run()
    except SystemExit as exc:
        code = exc.code
    if os.environ.get("WORLD_SIZE", "1") not in ("", "1") or code in (130, 143):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else (0 if code is None else 1))
    sys.exit(code)


def _error(text: str, code: int) -> NoReturn:
    console.print(f"[bold red]error:[/bold red] {escape(text)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def _interrupted(text: str, code: int) -> NoReturn:
    """The `interrupted:` line (what was kept); exit 143 after SIGTERM, else `code` (130 for Ctrl-C)."""
    console.print(f"[bold yellow]interrupted:[/bold yellow] {escape(text)}", highlight=False, soft_wrap=True)
    sys.exit(143 if signal.SIGTERM in _signal_received else code)


def _click_exceptions():
    """The module of click's usage errors as typer's commands raise them (recent typers vendor click
    as typer._click; `typer.Exit`/`typer.Abort` are the ones they raise in every version)."""
    return sys.modules[typer.BadParameter.__module__]


def _invoke(args: list[str]) -> None:
    """Parse `args` and run the command, with click's standalone handling left out: usage errors,
    interruptions and failures propagate to `_run` (typer's would print a boxed panel for a usage
    error and turn Ctrl-C into a silent exit 130)."""
    exceptions = _click_exceptions()
    command = typer.main.get_command(app)
    try:
        with command.make_context("alignlens", args) as ctx:
            command.invoke(ctx)
    except getattr(exceptions, "NoArgsIsHelpError", ()) as exc:  # `alignlens`, `alignlens data`: help shown
        sys.exit(exc.exit_code)
    except typer.Exit as exc:  # --help
        sys.exit(exc.exit_code)
    except typer.Abort:
        raise KeyboardInterrupt from None


def _run(args: list[str] | None = None) -> None:
    """Run the command line `args` (default: sys.argv[1:]) and print what went wrong as one line:
    `error: ...` (usage errors exit 2, `AlignlensError` its code, an OSError 2 with its path, anything
    else 1) or `interrupted: <what was kept>` (Ctrl-C 130, SIGTERM 143)."""
    from alignlens import RunInterrupted

    exceptions = _click_exceptions()
    signal.signal(signal.SIGTERM, _on_signal)  # train installs its own for its loop (a checkpoint first)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when started with SIGINT ignored
        signal.signal(signal.SIGINT, _on_signal)
    try:
        _invoke(list(sys.argv[1:] if args is None else args))
    except exceptions.UsageError as exc:  # bad range or type, missing or unknown option or command
        where = exc.ctx.command_path if exc.ctx is not None else "alignlens"
        _error(f"{' '.join(exc.format_message().split()).rstrip('.')} (see `{where} --help`)", exc.exit_code)
    except exceptions.ClickException as exc:
        _error(" ".join(exc.format_message().split()), exc.exit_code)
    except RunInterrupted as exc:
        _interrupted(str(exc), exc.exit_code)
    except AlignlensError as exc:
        _error(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _interrupted(_interrupt_note[0]() if _interrupt_note else "nothing was written", 130)
    except OSError as exc:  # e.g. a folder made read-only or a full disk during a run
        if exc.errno == errno.EPIPE:  # output piped into a program that stopped reading (`| head`), as click
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        _error(str(exc.strerror or exc) + where, 2)
    except Exception as exc:  # noqa: BLE001
        if os.environ.get("ALIGNLENS_DEBUG"):
            raise
        msg = " ".join(str(exc).split())[:300]
        _error(f"internal error: {type(exc).__name__}: {msg} (set ALIGNLENS_DEBUG=1 for the traceback)", 1)


if __name__ == "__main__":
    main()
