"""The study file (TOML, design §1): parsed with the stdlib `tomllib` into frozen dataclasses and
validated whole before anything runs.

Each refusal is one AlignlensError line naming the table it is about: `[study]`, `[train]`,
`[study.irrelevant_words]`, `[[arm]] 3 (name zh)`, `[[arm]] 3 (name zh) [arm.train]` or
`[[contrast]] 1`: unknown keys, types, tasks and languages (`data.validate_tasks`,
`data.task_languages`), the item selection (`config.EvalConfig.select_items`: balanced limit
feasible), arm names (unique, `[A-Za-z0-9_.+-]`, not "base"), seeds, models
(`model.check_model_spec`), every arm's resolved `train.TrainConfig` (`TrainConfig.from_preset`:
target language, copy control, question source), its training items disjoint from the evaluated
items of the same task (`alignlens.plan.check_held_out`), the irrelevant label words of every task
when `irrelevant_labels` is on (`data.irrelevant_label_spec`), the analysis options (the capture
prompts and PCA languages of `alignlens.plan.resolve_plan`) and the contrasts.

`load_study(source)` reads a file or a bundled study name (`studies/<name>.toml`, shipped as
`alignlens.studies`); `parse_study(raw, ...)` validates an already parsed table. The steps and their
hashes are built from a `Study` by `study.plan.resolve`.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

from alignlens import AlignlensError, data
from alignlens.config import AnalyzeConfig, EvalConfig
from alignlens.model import DEFAULT_MODEL, check_model_spec
from alignlens.plan import check_held_out, resolve_plan
from alignlens.train.config import MAX_SEED, RUNTIME_OPTIONS, TrainConfig

#: Question sources of an arm besides a task name: the evaluated task's own questions, or the
#: bundled SNLI question-translation set.
QUESTIONS_SAME, QUESTIONS_SNLI = "same", "snli-qt"
CONTROLS = ("none", "copy")
ANALYSIS_SEEDS = ("first", "all")
ARM_NAME = re.compile(r"[A-Za-z0-9_.+-]{1,40}")
#: `[train]` / `[arm.train]` keys the study sets itself (the key that sets each, in words).
STUDY_SET = {"task": "the arm's questions", "languages": "the arm's languages", "control": "the arm's control",
             "target_language": "the arm's target", "seed": "the arm's seeds", "threads": "--threads of study run",
             "keep_checkpoints": "the study (checkpoints go once a step is done)", "device": "the study (auto)",
             "data_files": "nothing (a study trains on task or bundled questions only)"}
STUDY_KEYS = ("name", "model", "tasks", "languages", "items", "limit", "balanced", "seeds", "batch_size", "analyses",
              "analysis_seeds", "irrelevant_labels", "irrelevant_words", "bootstrap_resamples", "seed", "keep_merged")
ARM_KEYS = ("name", "languages", "target", "questions", "control", "seeds", "model", "train", "analyses",
            "irrelevant_labels")
CONTRAST_KEYS = ("a", "b")
TOP_KEYS = ("study", "train", "arm", "contrast")


@dataclass(frozen=True)
class Arm:
    """One training arm: source `languages` -> `target`, questions from `questions_task` (a task
    name or folder; None: the bundled SNLI set), `control` "none" or "copy", replicate `seeds`, base
    `model`, `train`: its TrainConfig overrides (after the study's `[train]`); `analyses` and
    `irrelevant_labels`: whether its models get the study's analysis and irrelevant-label steps (an
    arm may leave out what `[study]` turns on, to save time; not add what the base model lacks)."""

    name: str
    index: int  # 1-based position in the file
    languages: tuple[str, ...]
    target: str
    questions: str  # as written: "same", a task, or "snli-qt"
    questions_task: str | None
    control: str
    seeds: tuple[int, ...]
    model: str
    train: dict
    analyses: bool = False
    irrelevant_labels: bool = False

    @property
    def where(self) -> str:
        return f"[[arm]] {self.index} (name {self.name})"

    def describe(self) -> dict:
        """study.json's entry of the arm."""
        return {"name": self.name, "languages": list(self.languages), "target": self.target,
                "questions": self.questions, "control": self.control, "seeds": list(self.seeds), "model": self.model,
                "train": dict(self.train), "analyses": self.analyses, "irrelevant_labels": self.irrelevant_labels}


@dataclass(frozen=True)
class Study:
    """A validated study: `[study]` options, the `[train]` defaults, the arms and the declared
    contrasts. `text`: the file as read (copied to DIR/study.toml by each run); `source`: the file
    or bundled name given."""

    name: str
    source: str
    text: str
    model: str
    tasks: tuple[str, ...]
    languages: tuple[str, ...] | None  # None: every language of each task
    items: str | None
    limit: int | None
    balanced: bool
    seeds: tuple[int, ...]
    batch_size: int
    analyses: bool
    analysis_seeds: str
    irrelevant_labels: bool
    irrelevant_words: dict
    bootstrap_resamples: int
    seed: int
    keep_merged: bool
    train: dict
    arms: tuple[Arm, ...]
    contrasts: tuple[tuple[str, str], ...]

    def eval_config(self) -> EvalConfig:
        """The evaluation options of every step (seed 0 and 2000 resamples for each step's summary.json;
        the study's own `seed`/`bootstrap_resamples` serve study.json's effects)."""
        return EvalConfig(tasks=self.tasks, languages=self.languages, limit=self.limit, batch_size=self.batch_size,
                          items=self.items, balanced=self.balanced)

    def analyze_config(self) -> AnalyzeConfig:
        """The options of the analysis steps (`pipeline.analyze_model`; shards kept, so resumable)."""
        return AnalyzeConfig(tasks=self.tasks, languages=self.languages, limit=self.limit, batch_size=self.batch_size,
                             items=self.items, balanced=self.balanced, save_activations=True)

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)

    def options(self) -> dict:
        """study.json's `study`: the resolved [study] options."""
        return {"name": self.name, "model": self.model, "tasks": list(self.tasks),
                "languages": "all" if self.languages is None else list(self.languages), "items": self.items,
                "limit": self.limit, "balanced": self.balanced, "seeds": list(self.seeds), "batch_size": self.batch_size,
                "analyses": self.analyses, "analysis_seeds": self.analysis_seeds,
                "irrelevant_labels": self.irrelevant_labels, "irrelevant_words": dict(self.irrelevant_words),
                "bootstrap_resamples": self.bootstrap_resamples, "seed": self.seed, "keep_merged": self.keep_merged,
                "train": dict(self.train)}


# ---- files ------------------------------------------------------------------------------------------


def bundled_studies() -> dict[str, Path]:
    """{name: path} of the studies shipped with alignlens (`studies/*.toml`)."""
    try:
        folder = resources.files("alignlens.studies")
    except ModuleNotFoundError:
        return {}
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".toml")}


def study_path(source: str | Path) -> Path:
    """The file of `source`: an existing path, else a bundled study name ("quick", "paper")."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    bundled = bundled_studies()
    if str(source) in bundled:
        return bundled[str(source)]
    if path.exists():
        raise AlignlensError(f"study file {source} is a folder; give a .toml file")
    raise AlignlensError(f"no study file {source} (and no bundled study of that name; bundled: "
                         f"{', '.join(sorted(bundled)) or 'none'})")


def load_study(source: str | Path, *, default_name: str | None = None, given: str | None = None) -> Study:
    """Read and validate a study file or bundled study (see the module docstring). `default_name`:
    the study's name when [study] gives none (default: the file's stem); `given`: how the user named
    the file (recorded as `Study.source`, used in the commands printed; default `source`)."""
    path = study_path(source)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise AlignlensError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise AlignlensError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AlignlensError(f"{path}: invalid TOML: {exc}") from None
    return parse_study(raw, default_name=default_name or path.stem, source=str(given or source), text=text)


# ---- checks ---------------------------------------------------------------------------------------


def _kind(v: Any) -> str:
    return {bool: "true/false", int: "a whole number", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(v), type(v).__name__)


def _unknown(table: dict, allowed: tuple[str, ...] | set[str], where: str) -> None:
    bad = [k for k in table if k not in allowed]
    if bad:
        raise AlignlensError(f"{where}: unknown key {bad[0]!r} (known: {', '.join(sorted(allowed))})")


def _table(raw: Any, where: str) -> dict:
    if not isinstance(raw, dict):
        raise AlignlensError(f"{where}: must be a table, not {_kind(raw)}")
    return raw


def _str(v: Any, key: str, where: str) -> str:
    if not isinstance(v, str) or not v.strip():
        raise AlignlensError(f"{where}: key {key!r} must be a non-empty string (got {v!r})")
    return v.strip()


def _bool(v: Any, key: str, where: str) -> bool:
    if not isinstance(v, bool):
        raise AlignlensError(f"{where}: key {key!r} must be true or false (got {v!r})")
    return v


def _int(v: Any, key: str, where: str, lo: int, hi: int | None = None) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise AlignlensError(f"{where}: key {key!r} must be a whole number {rng} (got {v!r})")
    return v


def _strings(v: Any, key: str, where: str) -> tuple[str, ...]:
    if not isinstance(v, list) or not v or not all(isinstance(x, str) and x.strip() for x in v):
        raise AlignlensError(f"{where}: key {key!r} must be a non-empty list of strings (got {v!r})")
    out = tuple(x.strip() for x in v)
    dup = [x for i, x in enumerate(out) if x in out[:i]]
    if dup:
        raise AlignlensError(f"{where}: key {key!r} lists {dup[0]!r} twice")
    return out


def _seeds(v: Any, where: str) -> tuple[int, ...]:
    if not isinstance(v, list) or not v:
        raise AlignlensError(f"{where}: key 'seeds' must be a non-empty list of whole numbers (got {v!r})")
    for s in v:
        _int(s, "seeds", where, 0, MAX_SEED)
    dup = [s for i, s in enumerate(v) if s in v[:i]]
    if dup:
        raise AlignlensError(f"{where}: key 'seeds' lists {dup[0]} twice")
    return tuple(v)


def _train_table(raw: Any, where: str) -> dict:
    """A `[train]` table: TrainConfig fields (with "preset"), minus those the study sets itself."""
    table = _table(raw, where)
    names = {f.name for f in fields(TrainConfig)}
    for key in table:
        if key in STUDY_SET:
            raise AlignlensError(f"{where}: key {key!r} is set by {STUDY_SET[key]}, not here")
        if key not in names:
            raise AlignlensError(f"{where}: unknown key {key!r} (training options: "
                                 f"{', '.join(sorted(names - set(STUDY_SET) - set(RUNTIME_OPTIONS)))})")
    return dict(table)


def _again(exc: AlignlensError, where: str) -> AlignlensError:
    """`exc` with `where` in front (one line), keeping its class."""
    return type(exc)(f"{where}: {exc}")


# ---- parsing ---------------------------------------------------------------------------------------


def parse_study(raw: dict, *, default_name: str = "study", source: str = "", text: str = "") -> Study:
    """Validate a parsed study file (a dict as `tomllib` returns) into a `Study`; see the module
    docstring for what is checked. Nothing is written and no model weights are loaded."""
    _unknown(raw, TOP_KEYS, "study file")
    st = _table(raw.get("study", {}), "[study]")
    _unknown(st, STUDY_KEYS, "[study]")
    where = "[study]"
    name = _str(st.get("name", default_name), "name", where)
    model = _str(st.get("model", DEFAULT_MODEL), "model", where)
    try:
        check_model_spec(model)
    except AlignlensError as exc:
        raise _again(exc, where) from None
    tasks = _strings(st.get("tasks", ["emotion"]), "tasks", where)
    langs_raw = st.get("languages", "all")
    languages = None if langs_raw == "all" else _strings(langs_raw, "languages", where)
    items = st.get("items")
    if items is not None and not isinstance(items, (str, int)) or isinstance(items, bool):
        raise AlignlensError(f"{where}: key 'items' must be a string such as \"0-249\" (got {items!r})")
    limit = st.get("limit")
    if limit is not None:
        _int(limit, "limit", where, 1)
    balanced = _bool(st.get("balanced", False), "balanced", where)
    seeds = _seeds(st.get("seeds", [0]), where)
    batch_size = _int(st.get("batch_size", 8), "batch_size", where, 1)
    analyses = _bool(st.get("analyses", False), "analyses", where)
    analysis_seeds = st.get("analysis_seeds", "first")
    if analysis_seeds not in ANALYSIS_SEEDS:
        raise AlignlensError(f"{where}: key 'analysis_seeds' must be \"first\" or \"all\" (got {analysis_seeds!r})")
    irrelevant = _bool(st.get("irrelevant_labels", False), "irrelevant_labels", where)
    words_raw = _table(st.get("irrelevant_words", dict(data.PAPER_IRRELEVANT_WORDS)), "[study.irrelevant_words]")
    for k, v in words_raw.items():
        _str(v, k, "[study.irrelevant_words]")
    resamples = _int(st.get("bootstrap_resamples", 2000), "bootstrap_resamples", where, 100)
    seed = _int(st.get("seed", 0), "seed", where, 0, MAX_SEED)
    keep_merged = _bool(st.get("keep_merged", False), "keep_merged", where)
    train = _train_table(raw.get("train", {}), "[train]")

    # tasks, languages, items: every data file and the selection, as the steps will use them
    try:
        data.validate_tasks(list(tasks), list(languages) if languages else None)
        eval_cfg = EvalConfig(tasks=tasks, languages=languages, limit=limit, batch_size=batch_size,
                              items=None if items is None else str(items), balanced=balanced)
        resolve_plan(eval_cfg)  # every item file, whole, and the selection of each (task, language)
    except AlignlensError as exc:
        raise _again(exc, where) from None
    words = {k: v.strip() for k, v in words_raw.items()}
    if irrelevant:
        for t in tasks:
            try:
                data.irrelevant_label_spec(data.load_task(t), words)
            except AlignlensError as exc:
                raise _again(exc, "[study.irrelevant_words]") from None
    if analyses:
        acfg = AnalyzeConfig(tasks=tasks, languages=languages, limit=limit, batch_size=batch_size,
                             items=eval_cfg.items, balanced=balanced, save_activations=True)
        try:
            resolve_plan(acfg)  # the capture pass's prompts (--lens-prompts) and the PCA languages too
        except AlignlensError as exc:
            raise _again(exc, where) from None

    arms_raw = raw.get("arm", [])
    if not isinstance(arms_raw, list) or not all(isinstance(a, dict) for a in arms_raw):
        raise AlignlensError("[[arm]]: write each arm as an [[arm]] table")
    arms: list[Arm] = []
    for i, a in enumerate(arms_raw, start=1):
        first = next((b for b in arms if b.name == a.get("name")), None)
        if first is not None:
            raise AlignlensError(f"[[arm]] {i} (name {first.name}): arm name {first.name!r} is already used by "
                                 f"[[arm]] {first.index}; names must be unique")
        arms.append(_parse_arm(a, i, tasks, seeds, model, train, eval_cfg, analyses, irrelevant))
    names = [a.name for a in arms]

    contrasts = []
    cons_raw = raw.get("contrast", [])
    if not isinstance(cons_raw, list) or not all(isinstance(c, dict) for c in cons_raw):
        raise AlignlensError("[[contrast]]: write each contrast as a [[contrast]] table")
    for i, c in enumerate(cons_raw, start=1):
        w = f"[[contrast]] {i}"
        _unknown(c, CONTRAST_KEYS, w)
        pair = tuple(_str(c.get(k), k, w) for k in CONTRAST_KEYS)
        for x in pair:
            if x not in names:
                raise AlignlensError(f"{w}: no arm named {x!r} (arms: {', '.join(names) or 'none'})")
        if pair[0] == pair[1]:
            raise AlignlensError(f"{w}: a and b are the same arm {pair[0]!r}")
        contrasts.append(pair)
    return Study(name=name, source=source, text=text, model=model, tasks=tasks, languages=languages,
                 items=eval_cfg.items, limit=limit, balanced=balanced, seeds=seeds, batch_size=batch_size,
                 analyses=analyses, analysis_seeds=analysis_seeds, irrelevant_labels=irrelevant,
                 irrelevant_words=words, bootstrap_resamples=resamples, seed=seed, keep_merged=keep_merged,
                 train=train, arms=tuple(arms), contrasts=tuple(contrasts))


def _parse_arm(a: dict, i: int, tasks: tuple[str, ...], seeds: tuple[int, ...], model: str, train: dict,
               eval_cfg: EvalConfig, analyses: bool = False, irrelevant: bool = False) -> Arm:
    """One [[arm]] table, with its resolved TrainConfig checked (first seed) and its training items
    held out from the evaluated items of the same task. `analyses`, `irrelevant`: the study's
    settings, the arm's defaults (it may turn them off, not on)."""
    name = a.get("name")
    if not isinstance(name, str) or not ARM_NAME.fullmatch(name):
        raise AlignlensError(f"[[arm]] {i}: key 'name' must be 1-40 letters, digits or _ . + - (got {name!r})")
    where = f"[[arm]] {i} (name {name})"
    if name == "base":
        raise AlignlensError(f"{where}: 'base' names the base model's evaluation; give the arm another name")
    _unknown(a, ARM_KEYS, where)
    if "languages" not in a:
        raise AlignlensError(f"{where}: key 'languages' (the training languages) is missing")
    langs = _strings(a["languages"], "languages", where)
    target = _str(a.get("target", "en"), "target", where)
    questions = _str(a.get("questions", QUESTIONS_SAME), "questions", where)
    control = a.get("control", "none")
    if control not in CONTROLS:
        raise AlignlensError(f"{where}: key 'control' must be \"none\" or \"copy\" (got {control!r})")
    arm_seeds = _seeds(a["seeds"], where) if "seeds" in a else seeds
    arm_model = _str(a.get("model", model), "model", where)
    arm_train = _train_table(a.get("train", {}), f"{where} [arm.train]")
    arm_flags = {}
    for key, on in (("analyses", analyses), ("irrelevant_labels", irrelevant)):
        arm_flags[key] = _bool(a.get(key, on), key, where)
        if arm_flags[key] and not on:
            raise AlignlensError(f"{where}: {key} = true needs {key} = true in [study] (the base model's steps are "
                                 f"compared with it); an arm may only turn off what [study] turns on")
    if questions == QUESTIONS_SAME:
        if len(tasks) != 1:
            raise AlignlensError(f"{where}: questions = \"same\" needs one evaluated task (the study has "
                                 f"{', '.join(tasks)}); name the task whose questions it trains on")
        qtask: str | None = tasks[0]
    elif questions == QUESTIONS_SNLI:
        qtask = None
        if target != "en":
            raise AlignlensError(f"{where}: the bundled SNLI question-translation set (questions = \"snli-qt\") has "
                                 f"English targets only (target = {target!r})")
        bad = [x for x in langs if x not in data.QT_LANGUAGES]
        if bad:
            raise AlignlensError(f"{where}: the bundled SNLI question-translation set has no {bad[0]} "
                                 f"(it has {', '.join(data.QT_LANGUAGES)})")
    else:
        try:
            data.load_task(questions)
        except AlignlensError as exc:
            raise _again(exc, f"{where}: key 'questions'") from None
        qtask = questions
    if target in langs:
        raise AlignlensError(f"{where}: target = {target!r} is one of its training languages; the target is the "
                             "language translated into, not a source")
    if control == "copy" and target != "en":
        raise AlignlensError(f"{where}: control = \"copy\" trains on English copies: it needs target = \"en\" "
                             f"(got {target!r})")
    try:
        check_model_spec(arm_model)
        cfg = train_config(train, arm_train, qtask, langs, control, target, arm_seeds[0])
    except AlignlensError as exc:
        raise _again(exc, where) from None
    if qtask is not None:
        qspec = data.load_task(qtask)
        for t in tasks:
            if data.load_task(t).folder.resolve() == qspec.folder.resolve():
                check_held_out(eval_cfg, t, set(cfg.train_indices()), f"{where} (training items)", flag="items =")
    return Arm(name=name, index=i, languages=langs, target=target, questions=questions, questions_task=qtask,
               control=control, seeds=arm_seeds, model=arm_model, train=arm_train, **arm_flags)


def train_config(defaults: dict, overrides: dict, task: str | None, languages: tuple[str, ...], control: str,
                 target: str, seed: int, threads: int | None = None) -> TrainConfig:
    """The resolved TrainConfig of one (arm, seed): the preset (from `[arm.train]`, else `[train]`,
    else "default"), then `[train]`, then `[arm.train]`, then what the arm sets (validated)."""
    values = {**defaults, **overrides}
    preset = values.pop("preset", "default")
    return TrainConfig.from_preset(preset, **values, task=task, languages=list(languages),
                                   control=None if control == "none" else control, target_language=target,
                                   seed=seed, threads=threads)
