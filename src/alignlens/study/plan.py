"""A study resolved into steps (design §2): what runs, where its files go, its content hash, its cost.

Steps, in run order: per base model (the study's `model` and every arm's `model`, keyed by
`model_key`) `eval/base/<key>` (+ `irrelevant/base/<key>` with irrelevant labels, + `analysis/base/<key>`
with analyses); then per arm and seed `train/<arm>/seed<S>`, `eval/<arm>/seed<S>`
(+ `irrelevant/...`, + `analysis/...` for the analysed seeds). Folders:

    base/<key>/{eval, irrelevant, analysis}/
    arms/<arm>/seed<S>/{train, eval, irrelevant, analysis}/

Each step's **hash** is the sha256 of the canonical JSON (sorted keys) of everything that
determines its numbers (`Step.content`): the step format; the model (the default's name, a hub
name, or the sha256 of a folder's config and weights: `model.folder_hash`); for training the
resolved `TrainConfig` minus runtime options (threads, keep_checkpoints, device), with the task by
name, and the sha256 of the training pairs themselves; for evaluation the training step's hash (or
the base model), the variant, the evaluation options, the item indices per task and
`capture.shards.shard_data_hash` of every (task, language) (prompts, labels, items: the irrelevant
variant's words enter through its prompts and labels). No commit, thread count or path enters a
hash: editing one arm changes only its steps' hashes.

Beside each step folder lies its record `<folder>.step.json` (e.g. `arms/zh-de/seed0/train.step.json`;
outside the folder, so a training step's folder holds only what `alignlens train` writes there)
{"format", "step", "hash", "status": "running"|"finished", "started", "finished", "wall_s",
"content"}; `step_status` reads it: "finished" (same hash, finished),
"partial" (same hash, interrupted: resumable), "stale" (another hash: re-run) or "missing".

**Cost** (for progress and `study check`): training = token passes (training tokens x epochs, from
the model's tokenizer), evaluation = prompts scored (items x languages x tasks; an analysis step
2.5x: the capture pass and the analyses); seconds = cost x `RATES` (measured on Gemma-3-270m, one
thread of this 2-core CPU), replaced by the speeds measured during a run.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from alignlens import AlignlensError, data
from alignlens.capture.shards import shard_data_hash
from alignlens.config import format_items
from alignlens.model import DEFAULT_MODEL, folder_hash, model_source
from alignlens.results import read_json
from alignlens.study.spec import Arm, Study, train_config
from alignlens.train.config import RUNTIME_OPTIONS, TrainConfig

STEP_FORMAT = "alignlens.study.step/1"
KINDS = ("train", "eval", "irrelevant", "analysis")
#: Seconds per cost unit (training token pass; evaluated prompt) on Gemma-3-270m, float32, one thread
#: of a 2-core CPU shared with other jobs: measured with studies/quick.toml (sentiment; training
#: 21-32 ms per token at max_len 640, evaluation 0.66-1.10 s per item); an idle CPU with two threads
#: is about twice as fast. A run replaces them by the speeds it measures.
RATES = {"train": 2.7e-2, "eval": 0.9, "irrelevant": 0.9, "analysis": 0.9}
ANALYSIS_FACTOR = 2.5


@dataclass(frozen=True)
class Step:
    """One step of a study. `arm` None: a base model's step (`model_key`); `train_step`: the name of
    the training step whose model an evaluation uses (None: the base model `model`)."""

    name: str
    kind: str  # "train" | "eval" | "irrelevant" | "analysis"
    arm: str | None
    seed: int | None
    model_key: str
    model: str
    folder: str
    hash: str
    content: dict = field(compare=False, repr=False)
    train_step: str | None = None
    cost: float = 0.0

    @property
    def variant(self) -> str | None:
        """The evaluation variant: "standard" (eval, analysis), "irrelevant"; None for training."""
        return None if self.kind == "train" else "irrelevant" if self.kind == "irrelevant" else "standard"

    @property
    def run(self) -> str:
        """The run this step belongs to: "<arm>/seed<S>" or "base/<key>"."""
        return f"base/{self.model_key}" if self.arm is None else f"{self.arm}/seed{self.seed}"


@dataclass
class Plan:
    """A resolved study: its steps in run order, each training step's TrainConfig, the base models
    by key, and the evaluated item indices per task."""

    study: Study
    steps: list[Step]
    train_configs: dict[str, TrainConfig]
    models: dict[str, str]
    items: dict[str, tuple[int, ...]]

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    def select(self, arm: str | None = None, seed: int | None = None) -> list[Step]:
        """The steps of `arm` ("base": the base models' steps) and/or `seed` (every arm's steps of that
        seed; base steps have no seed), all when both are None. Refused: an unknown arm or seed."""
        names = [a.name for a in self.study.arms]
        if arm is not None and arm != "base" and arm not in names:
            raise AlignlensError(f"--arm {arm}: no such arm (arms: {', '.join(names)}; base: the base model)")
        if seed is not None:
            if arm == "base":
                raise AlignlensError("--seed selects an arm's training replicate; the base model has none")
            have = sorted({s for a in self.study.arms for s in a.seeds if arm in (None, a.name)})
            if seed not in have:
                raise AlignlensError(f"--seed {seed}: {'arm ' + arm if arm else 'no arm'} has no seed {seed} "
                                     f"(seeds: {', '.join(map(str, have))})")
        out = []
        for s in self.steps:
            if arm is not None and (s.arm or "base") != arm:
                continue
            if seed is not None and s.seed != seed:
                continue
            out.append(s)
        return out

    def consumers(self, train_step: str) -> list[Step]:
        """The steps that evaluate the model of `train_step`."""
        return [s for s in self.steps if s.train_step == train_step]


def digest(content: dict) -> str:
    """sha256 of the canonical JSON of `content` (sorted keys, no spaces, UTF-8)."""
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def model_identity(spec: str) -> dict:
    """What names a model's weights in a hash, independent of where it lies: the default's name, a
    hub name, or the sha256 of a local folder's config and weight files."""
    kind, path = model_source(spec)
    if kind == "default":
        return {"default": DEFAULT_MODEL}
    if kind == "hub":
        return {"hub": spec}
    return {"folder_sha256": folder_hash(path)}


def model_key(spec: str) -> str:
    """A folder-safe name of a base model: the default's name, a folder's name, a hub name with '_'."""
    if spec == DEFAULT_MODEL:
        return spec
    kind, path = model_source(spec)
    name = spec.replace("/", "_") if path is None else (path.parent.name if path.name == "merged" else path.name)
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)[:60] or "model"


def train_content(cfg: TrainConfig, model: str, pairs: list) -> dict:
    """What a training step's numbers depend on (see the module docstring)."""
    options = cfg.to_dict()
    for key in (*RUNTIME_OPTIONS, "device"):
        options.pop(key, None)
    if cfg.task is not None:
        options["task"] = data.load_task(cfg.task).name
    pairs_text = json.dumps([[p.lang, p.input, p.answer] for p in pairs], ensure_ascii=False, separators=(",", ":"))
    return {"format": STEP_FORMAT, "kind": "train", "model": model_identity(model), "config": options,
            "pairs_sha256": hashlib.sha256(pairs_text.encode("utf-8")).hexdigest(), "n_pairs": len(pairs)}


def eval_items(study: Study) -> dict[str, dict[str, list]]:
    """{task: {lang: the selected items}} of every evaluated (task, language), in run order."""
    cfg = study.eval_config()
    out: dict[str, dict[str, list]] = {}
    for t in study.tasks:
        spec = data.load_task(t)
        langs = data.task_languages(spec, list(study.languages) if study.languages else None)
        out[spec.name] = {lang: cfg.select_items(data.load_items(spec, lang), spec.labels,
                                                 f"task {spec.name}, language {lang}") for lang in langs}
    return out


def variant_task(study: Study, task: str, variant: str) -> data.TaskSpec:
    """The task spec an evaluation of `variant` runs (the irrelevant-label spec for "irrelevant")."""
    spec = data.load_task(task)
    return data.irrelevant_label_spec(spec, study.irrelevant_words) if variant == "irrelevant" else spec


def variant_items(study: Study, items: list, variant: str) -> list:
    """The items of `variant` (gold labels relabelled by position for "irrelevant")."""
    return data.relabel_items(items, study.irrelevant_words) if variant == "irrelevant" else items


def _task_by_name(study: Study) -> dict[str, str]:
    """{task name: as the study file gives it (name or folder)}."""
    return {data.load_task(t).name: t for t in study.tasks}


def eval_content(study: Study, selected: dict[str, dict[str, list]], variant: str, kind: str) -> dict:
    """What an evaluation (or analysis) step's numbers depend on, besides its model."""
    tasks = _task_by_name(study)
    hashes = {}
    for name, per_lang in selected.items():
        spec = variant_task(study, tasks[name], variant)
        hashes[name] = {lang: shard_data_hash(spec, lang, variant_items(study, items, variant))
                        for lang, items in per_lang.items()}
    cfg = study.eval_config()
    out = {"format": STEP_FORMAT, "kind": kind, "variant": variant, "data": hashes,
           "items": {name: format_items(_indices(per_lang)) for name, per_lang in selected.items()},
           "eval": {"batch_size": cfg.batch_size, "prefix_cache": cfg.prefix_cache, "seed": cfg.seed,
                    "bootstrap_resamples": cfg.bootstrap_resamples}}
    if kind == "analysis":
        options = study.analyze_config().to_dict()
        options.pop("save_activations", None)
        options["tasks"] = list(selected)
        out["analyze"] = options
    return out


def _indices(per_lang: dict[str, list]) -> tuple[int, ...]:
    """The item indices of a task (the same in every language: item i is the same question)."""
    sets = {tuple(it.index for it in items) for items in per_lang.values()}
    if len(sets) != 1:
        raise AlignlensError("the selected items differ between languages (the test files are not parallel)")
    return next(iter(sets))


def resolve(study: Study, *, tokenize: bool = True) -> Plan:
    """The steps of `study` (see the module docstring). `tokenize`: tokenize every arm's training
    pairs with its model's tokenizer (no weights), which refuses data that `max_len` would drop
    (`train.examples.check_drops`) before anything runs and gives the training cost in tokens;
    False estimates 4 characters per token. Raises AlignlensError naming the arm for bad data."""
    from alignlens.train.examples import build_data, load_pairs

    selected = eval_items(study)
    n_prompts = sum(len(items) for per_lang in selected.values() for items in per_lang.values())
    models: dict[str, str] = {}
    keys: dict[str, str] = {}
    for spec in dict.fromkeys([study.model, *[a.model for a in study.arms]]):
        key = model_key(spec)
        while key in models:
            key += "+"
        models[key], keys[spec] = spec, key
    identities = {spec: model_identity(spec) for spec in keys}
    variants = ["eval"] + (["irrelevant"] if study.irrelevant_labels else [])
    contents = {v: eval_content(study, selected, "irrelevant" if v == "irrelevant" else "standard", v) for v in variants}
    if study.analyses:
        contents["analysis"] = eval_content(study, selected, "standard", "analysis")
    eval_kinds = variants + (["analysis"] if study.analyses else [])

    def cost(kind: str) -> float:
        return float(n_prompts) * (ANALYSIS_FACTOR if kind == "analysis" else 1.0)

    steps: list[Step] = []
    for key, spec in models.items():
        for kind in eval_kinds:
            content = {**contents[kind], "model": identities[spec]}
            steps.append(Step(f"{kind}/base/{key}", kind, None, None, key, spec, f"base/{key}/{kind}",
                              digest(content), content, None, cost(kind)))
    configs: dict[str, TrainConfig] = {}
    tokenizers: dict[str, object] = {}
    for arm in study.arms:
        for seed in arm.seeds:
            cfg = train_config(study.train, arm.train, arm.questions_task, arm.languages, arm.control, arm.target, seed)
            pairs = load_pairs(cfg)
            tokens = _train_tokens(arm, cfg, pairs, tokenizers, build_data) if tokenize else \
                sum(len(p.input) + len(p.answer) for p in pairs) / 4 * (1 - cfg.val_fraction)
            content = train_content(cfg, arm.model, pairs)
            train_name = f"train/{arm.name}/seed{seed}"
            run = f"arms/{arm.name}/seed{seed}"
            train_hash = digest(content)
            steps.append(Step(train_name, "train", arm.name, seed, keys[arm.model], arm.model, f"{run}/train",
                              train_hash, content, None, float(tokens) * cfg.epochs))
            configs[train_name] = cfg
            for kind in eval_kinds:
                if kind == "analysis" and (not arm.analyses or study.analysis_seeds == "first" and seed != arm.seeds[0]):
                    continue
                if kind == "irrelevant" and not arm.irrelevant_labels:
                    continue
                econtent = {**contents[kind], "train": train_hash}
                steps.append(Step(f"{kind}/{arm.name}/seed{seed}", kind, arm.name, seed, keys[arm.model], arm.model,
                                  f"{run}/{kind}", digest(econtent), econtent, train_name, cost(kind)))
    return Plan(study, steps, configs, models, {t: _indices(p) for t, p in selected.items()})


def _train_tokens(arm: Arm, cfg: TrainConfig, pairs: list, tokenizers: dict, build_data) -> int:
    """Training tokens of one (arm, seed) with its model's tokenizer; refuses dropped data."""
    from alignlens.train.run import load_training_tokenizer

    if arm.model not in tokenizers:
        tokenizers[arm.model] = load_training_tokenizer(arm.model)
    try:
        td = build_data(cfg, pairs, tokenizers[arm.model], progress=False)
    except AlignlensError as exc:
        raise AlignlensError(f"{arm.where}: {exc}") from None
    return sum(len(e.ids) for e in td.train)


# ---- step state -------------------------------------------------------------------------------------


#: The suffix of a step's record, a file beside its folder (`record_path`).
STEP_FILE = ".step.json"


def record_path(out: Path, step: Step) -> Path:
    """Where the step's record lies: beside its folder, `<folder>.step.json`."""
    return Path(out) / f"{step.folder}{STEP_FILE}"


def step_record(out: Path, step: Step) -> dict | None:
    """The step's record in `out` (None when absent or unreadable)."""
    path = record_path(out, step)
    if not path.is_file():
        return None
    try:
        rec = read_json(path)
    except (OSError, ValueError, AlignlensError):
        return None
    return rec if isinstance(rec, dict) else None


def step_status(out: Path, step: Step) -> str:
    """"finished", "partial" (same hash, interrupted), "stale" (another hash) or "missing"."""
    rec = step_record(out, step)
    if rec is None:
        return "missing"
    if rec.get("hash") != step.hash:
        return "stale"
    if rec.get("status") != "finished":
        return "partial"
    folder = Path(out) / step.folder
    need = ("manifest.json",) if step.kind == "train" else ("predictions.jsonl", "summary.json", "manifest.json")
    return "finished" if all((folder / f).is_file() for f in need) else "partial"
