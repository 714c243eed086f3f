"""The resolved plan of one run: the data an `eval` or `analyze` run reads, found and checked once.

`resolve_plan(config, models)` turns a run's options (`config.EvalConfig` or `config.AnalyzeConfig`)
into a frozen `RunPlan`, before any model loads, in this order:

1. each task spec (`data.load_task`) and its languages (`data.task_languages`);
2. every item file of those languages, whole, against the reference file that holds the gold
   labels and the item order (`data.load_items`);
3. the items the run uses per (task, language): --items, --limit, --balanced (`config.select_items`);
4. the training split of each model that is an `alignlens train` output
   (`results.schema.read_training_split`): an evaluated item may not be one it was trained on;
5. `analyze` only: the capture pass's prompts per (task, language) (`capture_spec`, --lens-prompts)
   and the PCA languages of each task (`similarity.resolve_pca_languages`).

Each refusal is one AlignlensError line naming the input and what to do. The plan is then passed
down (`pipeline.analyze` → `capture_run`, the resume checks of `resume`, `evaluate.evaluate`, the
CLI's input checks), so a run loads each task and selects its items once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from alignlens import AlignlensError, data
from alignlens.config import AnalyzeConfig, EvalConfig, format_items
from alignlens.results.schema import read_training_split
from alignlens.similarity import resolve_pca_languages


@dataclass(frozen=True)
class PlanEntry:
    """One (task, language) of a run: the task, the selected items (file order) and the task whose
    prompts the capture pass runs (`capture_spec`; None: the evaluation pass captures too, or no
    capture: `eval`)."""

    spec: data.TaskSpec
    lang: str
    items: tuple[data.Item, ...]
    capture: data.TaskSpec | None = None

    @property
    def where(self) -> str:
        """"task <name>, language <lang>", as messages name the pair."""
        return _where(self.spec, self.lang)


@dataclass(frozen=True)
class RunPlan:
    """What a run reads, resolved from `config` (see the module docstring): the task specs in
    `config.tasks` order, one `PlanEntry` per (task, language) in run order, and the training split
    of each of `models` that is an `alignlens train` output ({model spec: split}; see
    `results.schema.read_training_split`)."""

    config: EvalConfig | AnalyzeConfig
    models: tuple[str, ...]
    tasks: tuple[data.TaskSpec, ...]
    entries: tuple[PlanEntry, ...]
    training: Mapping[str, dict] = field(default_factory=dict)

    def __iter__(self) -> Iterator[PlanEntry]:
        return iter(self.entries)

    def languages(self, task: str) -> list[str]:
        """The languages of task `task` (its name), in run order."""
        return [e.lang for e in self.entries if e.spec.name == task]

    def fits(self, config: EvalConfig | AnalyzeConfig) -> bool:
        """Whether this plan is the one `config` resolves to: the same options choose the data
        (other options, e.g. --save-activations or the batch size, may differ)."""
        return _selection(config) == _selection(self.config)


def _selection(config: EvalConfig | AnalyzeConfig) -> tuple:
    """The options that choose a run's data."""
    analysis = (config.lens_prompts, config.pca_languages) if isinstance(config, AnalyzeConfig) else None
    return (config.tasks, config.languages, config.items, config.limit, config.balanced, analysis)


def capture_spec(spec: data.TaskSpec, lang: str, lens_prompts: str) -> data.TaskSpec | None:
    """The task whose prompts the capture pass of (`spec`, `lang`) runs, when they differ from the
    evaluation prompts: `data.target_label_spec` for "target-labels" (AlignlensError naming the task
    and language if its demonstrations cannot carry the target words); None when the evaluation pass
    can capture too ("english-labels", or target words equal to the English ones, as English or PAWS)."""
    if lens_prompts == "english-labels":
        return None
    target = data.target_label_spec(spec, lang)
    return None if target.prompts[lang].demonstrations == spec.prompts[lang].demonstrations else target


def resolve_plan(config: EvalConfig | AnalyzeConfig, models: Sequence[str] = ()) -> RunPlan:
    """The `RunPlan` of `config` for `models` (model specs; their training splits are read and
    checked against the evaluated items), every check of the module docstring made here, no model
    loaded. Raises AlignlensError (one line) for the first problem found."""
    tasks, files = [], []  # files: (task, language, all its items in file order), run order
    for t in config.tasks:
        spec = data.load_task(t)
        tasks.append(spec)
        for lang in data.task_languages(spec, list(config.languages) if config.languages else None):
            files.append((spec, lang, data.load_items(spec, lang)))
    chosen = [(spec, lang, tuple(config.select_items(items, spec.labels, _where(spec, lang))))
              for spec, lang, items in files]
    training = {m: split for m in models if (split := _training_split(m))}
    for model, split in training.items():
        for given, spec in zip(config.tasks, tasks):
            _check_held_out(model, split, given, spec, [items for s, _, items in files if s is spec],
                            [items for s, _, items in chosen if s is spec])
    analysis = isinstance(config, AnalyzeConfig)
    entries = tuple(PlanEntry(spec, lang, items, capture_spec(spec, lang, config.lens_prompts) if analysis else None)
                    for spec, lang, items in chosen)
    if analysis:
        for spec in tasks:
            _check_pca_languages(spec, [lang for s, lang, _ in files if s is spec], config.pca_languages)
    return RunPlan(config, tuple(models), tuple(tasks), entries, training)


def plan_for(config: EvalConfig | AnalyzeConfig, plan: RunPlan | None = None, models: Sequence[str] = ()) -> RunPlan:
    """`plan` when given (AlignlensError unless it is `config`'s: `RunPlan.fits`), else
    `resolve_plan(config, models)`."""
    if plan is None:
        return resolve_plan(config, models)
    if not plan.fits(config):
        raise AlignlensError("the run plan given was resolved from other tasks, languages or items than the options "
                             "given; resolve it from these options (plan.resolve_plan)")
    return plan


def _where(spec: data.TaskSpec, lang: str) -> str:
    return f"task {spec.name}, language {lang}"


def _training_split(model: str) -> dict:
    """The training split of `model` (`results.schema.read_training_split`, with the manifest's
    folder as "folder") if it is an `alignlens train` output that trained on a task; its `merged/`
    model is read through the output folder's manifest. {} otherwise (a hub name, a base model)."""
    folder = Path(model).expanduser()
    if folder.name == "merged" and not (folder / "manifest.json").is_file():
        folder = folder.parent  # the `merged/` model of an `alignlens train` output
    split = read_training_split(folder) if folder.is_dir() else {}
    return {**split, "folder": str(folder)} if split.get("task") else {}


def _check_held_out(model: str, split: dict, given: str, spec: data.TaskSpec, every: list[Sequence[data.Item]],
                    chosen: list[Sequence[data.Item]]) -> None:
    """Refuse to evaluate items `model` was trained on, when task `spec` (given as `given`: a name
    or folder) is the task of its training `split` (by name or folder): the indices this run
    evaluates in any language (`chosen`, per language; item i is the same question in every
    language, and its English text was the training target) must not meet its `train_items`
    (`refuse_trained`, with `every`: all items of each language)."""
    same = split["task"] in (spec.name, given) or (
        split.get("task_folder") and Path(split["task_folder"]).resolve() == spec.folder.resolve())
    if not same:
        return
    if split.get("train_items") is None:
        raise AlignlensError(f"{Path(split['folder']) / 'manifest.json'}: trained on task {spec.name} but records no "
                             f"train_items; cannot check that the evaluated items are held out")
    refuse_trained(spec, set(split["train_items"]), every, chosen, f"model {model}")


def check_held_out(config: EvalConfig | AnalyzeConfig, task: str, trained: set[int], who: str,
                   flag: str = "--items") -> None:
    """Refuse (AlignlensError) when the items `config` evaluates of `task` (a name or folder), over
    every evaluated language (`config.select_items`), meet `trained`, the item indices `who` (e.g. a
    study's arm) was trained on (`refuse_trained`; held-out items suggested as `flag`). For a check
    before anything trains; a run's models are checked by `resolve_plan`."""
    spec = data.load_task(task)
    langs = data.task_languages(spec, list(config.languages) if config.languages else None)
    every = [data.load_items(spec, lang) for lang in langs]
    chosen = [config.select_items(items, spec.labels, _where(spec, lang)) for lang, items in zip(langs, every)]
    refuse_trained(spec, trained, every, chosen, who, flag)


def refuse_trained(spec: data.TaskSpec, trained: set[int], every: list[Sequence[data.Item]],
                   chosen: list[Sequence[data.Item]], who: str, flag: str = "--items") -> None:
    """AlignlensError when the evaluated items of task `spec` (`chosen`, per language; item i is
    the same question in every language) meet `trained`, the item indices `who` was trained on:
    the message names the overlapping count and first indices and the held-out items among `every`
    (all items of each language) to evaluate instead, as `flag`."""
    evaluated = {it.index for items in chosen for it in items}
    overlap = sorted(trained & evaluated)
    if overlap:
        free = sorted({it.index for items in every for it in items} - trained)
        hint = f"evaluate held-out items, e.g. {flag} {format_items(free)}" if free else \
            "no item of this task is held out"
        raise AlignlensError(
            f"{who} was trained on task {spec.name} items {format_items(trained, 5)}: {len(overlap)} of "
            f"the {len(evaluated)} {spec.name} items this run evaluates overlap (first: "
            f"{', '.join(map(str, overlap[:5]))}); {hint}")


def _check_pca_languages(spec: data.TaskSpec, langs: list[str], requested: Sequence[str] | None) -> None:
    """The PCA languages of a task whose languages `langs` include English must be among them."""
    if "en" in langs:
        try:
            resolve_pca_languages(langs, requested)
        except AlignlensError as e:
            raise AlignlensError(f"task {spec.name}: {e}") from None
