"""`alignlens localize`: a base/aligned pair in, a causal map with paired statistics out.

`localize(LocalizeConfig(...), "gemma-3-270m", "runs/aligned", "runs/localize", control="runs/copy")`
checks everything it can without a model (`plan_localize`: options, tasks, data, item selection,
models, held-out items, layers, the direction's training items, the LoRA adapter), loads the
models, then per (task, language) runs

1. cross-model patching (`patching.patch_language`) at every site x positions x direction;
2. steering the base model with the alignment direction and its controls (`steering`), the
   direction averaged once per task over the analysed languages' training-split items;
3. the weight-scale dose response W + α·ΔW (`dose`), when the compared model is a LoRA
   `alignlens train` output (its `adapter/`),

and writes into `out` (an `OutputFolder` of kind "localize"):

    patching.jsonl  steering.jsonl  dose.jsonl   per-item rows (only those of the analyses run)
    localize.json   aggregates: recovery per cell, language and group (`recovery`), the steering
                    and dose summaries (`steering_summary`, `dose_summary`)
    manifest.json   models, data hashes, options, seed, versions, commit, the files written
    report.pdf      the "Causal localisation" report (`report.localize`), unless report=False

Resume: every finished (task, language) is kept as `parts/<task>__<lang>.json` while the run works
(a manifest with "status": "running" records the models and options); `resume=True` continues an
interrupted run exactly (same models by hash, options, data and torch threads, else refused before
any model runs), redoing only the unfinished parts; the parts are removed when the run ends.
Runs in one process (under torchrun patching refuses).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignlens import AlignlensError, NumericalError, RunInterrupted, data
from alignlens.config import LocalizeConfig, format_items
from alignlens.results import now_iso, read_json, write_json, write_jsonl
from alignlens.results.manifest import eval_data, ownership, provenance
from alignlens.results.schema import LOCALIZE_FORMAT
from alignlens.results.writer import LOCALIZE_FILES, OutputFolder, files_under, read_manifest

ROLES = ("base", "aligned", "control")
#: The files of a finished run besides the report (written only for the analyses run).
ROW_FILES = {"patching": "patching.jsonl", "steering": "steering.jsonl", "dose": "dose.jsonl"}


@dataclass
class Cell:
    """One (task, language) of the run and its selected items."""

    spec: data.TaskSpec
    lang: str
    items: list[data.Item]

    @property
    def part(self) -> str:
        return f"parts/{self.spec.name}__{self.lang}.json"


@dataclass
class Plan:
    """Everything `localize` runs, checked without a model."""

    config: LocalizeConfig
    models: dict[str, str]  # role -> model spec
    cells: list[Cell]
    directions: tuple[str, ...]
    trained_languages: list[str]
    alignment: dict = field(default_factory=dict)  # the aligned model's training split (`read_training_split`)
    direction_items: dict[str, dict[str, list[data.Item]]] = field(default_factory=dict)  # task -> lang -> items
    adapter: Any = None  # train.adapters.LoraAdapter when the dose response runs
    dose_note: str | None = None  # why it does not


def _model_folder(spec: str) -> Path | None:
    """The `alignlens train` output folder of a model spec (its merged/ given: the parent), or None."""
    p = Path(spec).expanduser()
    if p.name == "merged" and (p.parent / "manifest.json").is_file():
        p = p.parent
    return p if p.is_dir() else None


def plan_localize(config: LocalizeConfig, model: str, compare: str, control: str | None = None, *,
                  device: str = "auto", dtype: str = "auto") -> Plan:
    """Every check that needs no model, in the order a user fixes them: device and dtype, models,
    tasks and their data, the item selection (--items, --balanced, --limit), held-out items
    (`plan.resolve_plan`, also for the control), layers against the models' config
    (when local), directions, the steering direction's training items (disjoint from the evaluated
    ones), the LoRA adapter of the dose response. AlignlensError on the first problem."""
    from alignlens.model import check_dtype, check_model_spec
    from alignlens.pipeline import _peek_n_layers
    from alignlens.plan import resolve_plan
    from alignlens.results.schema import read_training, read_training_split

    if not isinstance(config, LocalizeConfig):
        raise AlignlensError(f"localize needs a LocalizeConfig, got {type(config).__name__}")
    if not compare:
        raise AlignlensError("localize compares two models: give --compare ALIGNED")
    from alignlens.distributed import env_world

    if env_world().distributed:
        raise AlignlensError("alignlens localize runs in one process; run it without torchrun")
    check_dtype(dtype, device)
    models = {"base": model, "aligned": compare, **({"control": control} if control else {})}
    for spec in models.values():
        check_model_spec(spec)
    selecting = config.items is not None or config.balanced
    data.validate_tasks(list(config.tasks), list(config.languages) if config.languages else None,
                        None if selecting else config.limit)
    cells = []
    for t in config.tasks:
        spec = data.load_task(t)
        for lang in data.task_languages(spec, config.languages):
            cells.append(Cell(spec, lang, config.select_items(data.load_items(spec, lang), spec.labels,
                                                              f"task {spec.name}, language {lang}")))
    resolve_plan(config.eval_config(), list(models.values()))  # held-out items of every trained model
    for spec in models.values():
        n_layers = _peek_n_layers(spec)
        if n_layers is not None:
            config.check_layers(n_layers)
    directions = config.patch_directions(control is not None)
    folder = _model_folder(compare)
    alignment = read_training_split(folder) if folder is not None else {}
    trained = list(read_training(folder).get("trained_languages", [])) if folder is not None else []
    plan = Plan(config, models, cells, directions, trained, alignment)
    if config.steer:
        from alignlens.localize.steering import direction_items

        for spec in dict.fromkeys(c.spec.name for c in cells):
            task_cells = [c for c in cells if c.spec.name == spec]
            evaluated = sorted({it.index for c in task_cells for it in c.items})
            plan.direction_items[spec] = direction_items(task_cells[0].spec, [c.lang for c in task_cells],
                                                         alignment=alignment, exclude=evaluated,
                                                         limit=config.direction_items)
    if config.dose:
        from alignlens.train.adapters import adapter_folder, read_adapter

        if folder is None:
            plan.dose_note = (f"no weight-scale dose response: --compare {compare} is not a local folder (it needs an "
                              "`alignlens train` LoRA output with adapter/)")
        else:
            try:
                adapter_folder(folder)
            except AlignlensError as exc:
                plan.dose_note = f"no weight-scale dose response: {exc}"
            else:
                plan.adapter = read_adapter(folder)
    else:
        plan.dose_note = "no weight-scale dose response (--no-dose)"
    return plan


# ---- resume --------------------------------------------------------------------------------


def _running(out: Path) -> dict | None:
    """The manifest of an unfinished localize run in `out`, else None."""
    m, _ = read_manifest(out / "manifest.json")
    return m if m is not None and m.get("kind") == "localize" and m.get("status") == "running" else None


def _resume_command(command: str, out: Path) -> str:
    import shlex

    try:
        args = [a for a in shlex.split(command) if a != "--force"]
    except ValueError:
        args = []
    if len(args) < 2 or args[1] != "localize":
        return f"alignlens localize ... --out {shlex.quote(str(out))} --resume (with the run's options)"
    return shlex.join(args + ([] if "--resume" in args else ["--resume"]))


def check_resume(out: Path, plan: Plan) -> dict:
    """The saved running manifest of `out` when `plan` continues it exactly (same model specs,
    options, task data and torch threads), else AlignlensError saying what differs."""
    import torch

    saved = _running(out)
    if saved is None:
        m, _ = read_manifest(out / "manifest.json")
        if m is not None and m.get("kind") == "localize":
            raise AlignlensError(f"{out} holds a finished localize run: nothing to resume (use --force to run again)")
        raise AlignlensError(f"{out} holds no interrupted localize run to resume (start one without --resume)")
    why = []
    if saved.get("models") != plan.models:
        why.append(f"models {saved.get('models')} vs {plan.models}")
    diff = plan.config.resume_mismatch(saved.get("options") or {})
    if diff:
        why.append("options " + ", ".join(diff))
    if (saved.get("data") or {}).get("tasks") != eval_data(plan.config.to_dict())["tasks"]:
        why.append("the task data (its files changed)")
    if saved.get("torch_threads") != torch.get_num_threads():
        why.append(f"torch threads {saved.get('torch_threads')} vs {torch.get_num_threads()} (pass --threads "
                   f"{saved.get('torch_threads')})")
    if why:
        raise AlignlensError(f"cannot resume {out}: it differs from the interrupted run in {'; '.join(why)}")
    return saved


def _check_hashes(saved: dict, loaded: Mapping[str, Any], out: Path) -> None:
    for role, m in loaded.items():
        was = ((saved.get("model") or {}).get(role) or {}).get("hash")
        if was and m.hash and was != m.hash:
            raise AlignlensError(f"cannot resume {out}: the {role} model {m.spec} changed since the interrupted run "
                                 f"(weights hash {m.hash[:12]} vs {was[:12]}); use --force to start again")


# ---- the run -------------------------------------------------------------------------------


def _manifest(plan: Plan, loaded: Mapping[str, Any], command: str, started: str, files: list[str], **extra: Any) -> dict:
    """manifest.json: provenance (`results.manifest.provenance`: the models described, task data
    hashes, options, seed, versions, commit, torch threads, times), the models by role, the
    trained languages, the adapter of the dose response, `extra` (status, ...) and the files."""
    opts = plan.config.to_dict()
    return {**provenance(command=command, model={r: m.describe() for r, m in loaded.items()}, data=eval_data(opts),
                         options=opts, seed=plan.config.seed, started=started, finished=None),
            "models": dict(plan.models), "trained_languages": plan.trained_languages,
            "adapter": str(plan.adapter.path) if plan.adapter is not None else None, **extra,
            **ownership("localize", files)}


class _Bars:
    """The run's progress bars (rich Progress or `progress.LineProgress`; None: silent)."""

    def __init__(self, progress: Any, plan: Plan, n_steer_passes: int, todo: list[Cell]) -> None:
        self.p = progress
        self.bars: dict[str, Any] = {}
        if progress is None:
            return
        n = sum(len(c.items) for c in todo)
        self.bars["patching"] = progress.add_task("patching", total=n)
        if plan.config.steer:
            self.bars["steering"] = progress.add_task("steering", total=n * n_steer_passes)
        if plan.adapter is not None:
            self.bars["dose"] = progress.add_task("dose", total=n * len(plan.config.alphas))

    def advance(self, what: str) -> Callable[[int], None] | None:
        if self.p is None or what not in self.bars:
            return None
        return lambda n: self.p.advance(self.bars[what], n)

    def describe(self, what: str, text: str) -> None:
        if self.p is not None and what in self.bars:
            self.p.update(self.bars[what], description=f"{what} {text}")


def _directions(plan: Plan, loaded: Mapping[str, Any], task: str, spec: data.TaskSpec, exclude: list[int]) -> list:
    """The steering directions of `task`: alignment (aligned − base), control (when given) and
    `random_directions` random ones with the alignment direction's norms."""
    from alignlens.localize.steering import alignment_directions, random_directions

    n = loaded["base"].n_layers
    layers = plan.config.default_steer_layers(n)
    lang_items = plan.direction_items[task]
    bs = plan.config.batch_size
    main = alignment_directions(loaded["base"], loaded["aligned"], spec, lang_items, layers, exclude=exclude, batch_size=bs)
    out = [main]
    if "control" in loaded:
        out.append(alignment_directions(loaded["base"], loaded["control"], spec, lang_items, layers, kind="control",
                                        exclude=exclude, batch_size=bs))
    seeds = [plan.config.seed * 1000 + i for i in range(plan.config.random_directions)]
    return out + random_directions(main, seeds)


def _run_cell(plan: Plan, loaded: Mapping[str, Any], cell: Cell, directions: list, bars: _Bars) -> dict:
    """Patching, steering and dose rows of one (task, language)."""
    from alignlens.localize.dose import dose_language
    from alignlens.localize.patching import directions_by_name, make_sites, patch_language
    from alignlens.localize.steering import steer_language

    cfg = plan.config
    where = f"{cell.spec.name} {cell.lang}"
    n_layers = loaded["base"].n_layers
    bars.describe("patching", where)
    out = {"task": cell.spec.name, "lang": cell.lang, "items": [it.index for it in cell.items]}
    out["patching"] = patch_language(loaded, cell.spec, cell.lang, cell.items,
                                     sites=make_sites(cfg.sites, n_layers, cfg.layers), positions=cfg.positions,
                                     directions=directions_by_name(plan.directions), batch_size=cfg.batch_size,
                                     progress=bars.advance("patching"))
    if cfg.steer:
        bars.describe("steering", where)
        out["steering"] = steer_language(loaded["base"], cell.spec, cell.lang, cell.items, directions,
                                         cfg.default_steer_layers(n_layers), cfg.steer_scales,
                                         batch_size=cfg.batch_size, on_pass_done=bars.advance("steering"))
    if plan.adapter is not None:
        bars.describe("dose", where)
        out["dose"] = dose_language(loaded["base"], plan.adapter, cell.spec, cell.lang, cell.items, cfg.alphas,
                                    batch_size=cfg.batch_size, on_pass_done=bars.advance("dose"))
    return out


def aggregates(plan: Plan, rows: Mapping[str, list[dict]], directions_info: dict, n_layers: int) -> dict:
    """localize.json: recovery per (task, direction, site, layer, positions) cell and language or
    group (`recovery.recovery`), the steering and dose summaries, and what was run."""
    from alignlens.languages import paper_order
    from alignlens.localize.dose import dose_summary
    from alignlens.localize.recovery import recovery
    from alignlens.localize.steering import steering_summary
    from alignlens.paired import language_groups

    cfg = plan.config
    langs = paper_order(list(dict.fromkeys(c.lang for c in plan.cells)))
    groups = language_groups(langs, plan.trained_languages)
    opts = {"n_resamples": cfg.bootstrap_resamples, "seed": cfg.seed}
    doc: dict[str, Any] = {
        "format": LOCALIZE_FORMAT, "models": dict(plan.models), "trained_languages": plan.trained_languages,
        "n_layers": n_layers, "tasks": {t: [c.lang for c in plan.cells if c.spec.name == t]
                                        for t in dict.fromkeys(c.spec.name for c in plan.cells)},
        "items": {f"{c.spec.name}/{c.lang}": format_items(it.index for it in c.items) for c in plan.cells},
        "groups": groups, "options": cfg.to_dict(),
        "patching": {"directions": {d: dict(zip(("source", "receiver"), _roles(d))) for d in plan.directions},
                     "sites": list(cfg.sites), "positions": list(cfg.positions),
                     "clean": clean_summary(rows["patching"]),
                     "recovery": recovery(rows["patching"], groups, **opts)},
    }
    if cfg.steer:
        doc["steering"] = {"layers": list(cfg.default_steer_layers(n_layers)), "scales": list(cfg.steer_scales),
                           "directions": directions_info, **steering_summary(rows["steering"], groups, **opts)}
    else:
        doc["steering"] = {"skipped": "no steering (--no-steer)"}
    doc["dose"] = dose_summary(rows["dose"], groups, **opts) if plan.adapter is not None else {"skipped": plan.dose_note}
    if plan.adapter is not None:
        doc["dose"]["adapter"] = str(plan.adapter.path)
    return doc


def _roles(direction: str) -> tuple[str, str]:
    from alignlens.config import PATCH_DIRECTIONS

    return PATCH_DIRECTIONS[direction]


def clean_summary(rows: list[dict]) -> dict:
    """{task: {lang: {model: {"n", "accuracy", "mean_logodds"}}}} of the clean runs' rows."""
    import numpy as np

    acc: dict = {}
    for r in rows:
        if r["site"] == "clean":
            acc.setdefault(r["task"], {}).setdefault(r["lang"], {}).setdefault(r["model"], []).append(
                (r["pred"] == r["gold"], r["logodds"]))
    return {t: {lang: {m: {"n": len(v), "accuracy": float(np.mean([x for x, _ in v])),
                           "mean_logodds": float(np.mean([y for _, y in v]))} for m, v in per.items()}
                for lang, per in langs.items()} for t, langs in acc.items()}


def localize(config: LocalizeConfig, model: str, compare: str, out: str | Path, *, control: str | None = None,
             force: bool = False, resume: bool = False, device: str = "auto", dtype: str = "auto", report: bool = True,
             progress: Any = None, command: str = "", log: Callable[[str], None] = lambda s: None,
             report_progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Run `alignlens localize` (see the module docstring); returns localize.json's content with
    "report" (the PDF's path or None) and "out".

    Everything is checked before a model loads or a file is touched (`plan_localize`, the output
    folder: `OutputFolder` kind "localize", `force` replaces only the files its manifest lists, once
    the new ones are complete). An interrupted run in `out` is refused without `resume` (which
    continues it) or `force` (which starts over). Interrupted: RunInterrupted saying what was kept."""
    from alignlens.engine import check_layer_entry
    from alignlens.labels import label_sets
    from alignlens.localize.dose import check_adapter_base
    from alignlens.localize.patching import check_models, directions_by_name
    from alignlens.model import load_model

    plan = plan_localize(config, model, compare, control, device=device, dtype=dtype)
    out = Path(out).expanduser()
    if resume and force:
        raise AlignlensError("--resume continues the run in --out and --force starts it again: give only one of them")
    if not resume and not force and _running(out) is not None:
        raise AlignlensError(f"output folder {out} holds an interrupted localize run: continue it with "
                             f"`{_resume_command(command, out)}`, or pass --force to start over")
    folder = OutputFolder(out, "localize", force, resume=resume)
    folder.check()
    saved = check_resume(out, plan) if resume else None
    with folder.writing():
        loaded: dict[str, Any] = {}
        for role, spec in plan.models.items():
            log(f"loading {role} model {spec}")
            loaded[role] = load_model(spec, device=device, dtype=dtype)
        n_layers = loaded["base"].n_layers
        config.check_layers(n_layers)
        check_models(loaded, directions_by_name(plan.directions))
        for role in dict.fromkeys(d.receiver for d in directions_by_name(plan.directions)):
            check_layer_entry(loaded[role])  # an architecture the patched runs cannot enter is refused here
        for cell in plan.cells:  # every label word must have tokens, before anything is written
            label_sets(loaded["base"].tokenizer, cell.spec.labels, f"task {cell.spec.name}, language {cell.lang}")
        if plan.adapter is not None:
            check_adapter_base(loaded["base"], plan.adapter)
        if saved is not None:
            _check_hashes(saved, loaded, out)
        stage = out if resume else folder.begin()
        started = saved.get("started") if saved else now_iso()
        parts = [c.part for c in plan.cells]
        # what an interrupted run may have left: its parts, and the files written at the end
        planned = parts + list(ROW_FILES.values()) + ["localize.json", "report.pdf"]
        t0 = time.time()
        try:
            write_json(stage / "manifest.json", _manifest(plan, loaded, command, started, planned, status="running",
                                                          finished=None))
            rows, info = _run_all(plan, loaded, stage, progress, log)
            doc = aggregates(plan, rows, info, n_layers)
            for what, name in ROW_FILES.items():
                if rows[what] or (what == "steering" and config.steer) or (what == "dose" and plan.adapter is not None):
                    write_jsonl(stage / name, rows[what])
            doc["timing_s"] = {"total": round(time.time() - t0, 1)}
            write_json(stage / "localize.json", doc)
            report_path = None
            if report:
                from alignlens.report.localize import render_localize

                log("rendering report")
                render_localize(stage / "localize.json", stage / "report.pdf", progress=report_progress)
                report_path = out / "report.pdf"
            for part in parts:
                (stage / part).unlink(missing_ok=True)
            if (stage / "parts").is_dir() and not any((stage / "parts").iterdir()):
                (stage / "parts").rmdir()
            files = sorted(files_under(stage, LOCALIZE_FILES))
            write_json(stage / "manifest.json", _manifest(plan, loaded, command, started, files, status="finished",
                                                          finished=now_iso(), timing_s=doc["timing_s"]))
            folder.commit()
        except KeyboardInterrupt:
            if stage != out:
                folder.abort()
                raise RunInterrupted(f"localize interrupted; the earlier results in {out} are unchanged and the "
                                     "partial new run was discarded") from None
            done = sum((out / p).is_file() for p in parts)
            raise RunInterrupted(f"localize interrupted; {done} of {len(parts)} finished (task, language) parts are "
                                 f"kept in {out}/parts; continue with: {_resume_command(command, out)}") from None
        except NumericalError as exc:
            if stage != out:
                folder.abort()
                raise NumericalError(f"{exc}; the new run was discarded, the earlier results in {out} are "
                                     "unchanged") from None
            raise NumericalError(f"{exc}; no results were written (finished (task, language) parts are kept in "
                                 f"{out}/parts; a --resume would meet the same numbers)") from None
        except BaseException:
            if stage != out:
                folder.abort()
            raise
    return {**doc, "report": report_path, "out": out}


def _run_all(plan: Plan, loaded: Mapping[str, Any], stage: Path, progress: Any,
             log: Callable[[str], None]) -> tuple[dict[str, list[dict]], dict]:
    """Every (task, language) part: read back when finished before (resume), else run and saved."""
    cfg = plan.config
    todo = [c for c in plan.cells if not (stage / c.part).is_file()]
    n_dirs = (1 + ("control" in loaded) + cfg.random_directions) if cfg.steer else 0
    n_steer = 1 + n_dirs * len(cfg.default_steer_layers(loaded["base"].n_layers)) * len(cfg.steer_scales)
    bars = _Bars(progress, plan, n_steer, todo)
    rows: dict[str, list[dict]] = {k: [] for k in ROW_FILES}
    info: dict[str, Any] = {}
    for task in dict.fromkeys(c.spec.name for c in plan.cells):
        cells = [c for c in plan.cells if c.spec.name == task]
        directions: list = []
        if cfg.steer and any(c in todo for c in cells):
            log(f"steering directions of {task}")
            exclude = sorted({it.index for c in cells for it in c.items})
            directions = _directions(plan, loaded, task, cells[0].spec, exclude)
        for cell in cells:
            path = stage / cell.part
            if cell in todo:
                part = _run_cell(plan, loaded, cell, directions, bars)
                part["directions"] = [{"name": d.name, "kind": d.kind, "seed": d.seed, "items": d.item_ids,
                                       "norms": {str(k): v for k, v in d.norms().items()}} for d in directions]
                path.parent.mkdir(exist_ok=True)
                write_json(path, part)
            else:
                log(f"{cell.spec.name} {cell.lang}: finished before, kept")
                part = read_json(path)
                if part.get("items") != [it.index for it in cell.items]:
                    raise AlignlensError(f"{path}: its items differ from this run's; use --force to start again")
            for what in ROW_FILES:
                rows[what] += part.get(what, [])
            if part.get("directions"):
                info[task] = part["directions"]
    return rows, info
