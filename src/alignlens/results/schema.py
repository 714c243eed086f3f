"""Typed, checked readers of result folders: the one way the report, model loading and scripts
read what alignlens wrote.

A run folder (`alignlens eval`, or OUT/base and OUT/aligned of `alignlens analyze`) holds
`manifest.json` and `summary.json` (required); `logit_lens.json`, `similarity.json`,
`neurons.json` (+ `neurons.safetensors`) are optional and checked when present;
`predictions.jsonl` is read item by item when two runs are compared. Every problem is an
AlignlensError with one line naming the file and the key (or line) at fault.

Shapes of the JSON files (keys that readers rely on):
- summary.json: tasks.<task>.{labels, mean_accuracy, languages.<lang>.{accuracy, n, ci95, confusion}}
- predictions.jsonl: one row per item {task, lang, index, gold, pred, probs: {label: p}}
- logit_lens.json: tasks.<task>.{n_layers, per_language.<lang>.{p_en, p_target, entropy_bits}.{mean, lo, hi}[layer]}
- similarity.json: tasks.<task>.{per_language.<lang>.<metric>[layer], pairwise.{layers, languages, ...}}
- neurons.json: {n_layers, languages, specific.<lang>.{count, count_per_layer, neurons}, overlap}
- comparison.json: {accuracy: paired.compare_runs output (tasks.<task>.{languages.<lang>.{n, acc_a, acc_b, delta,
  delta_ci95, mcnemar, p_holm, p_bh, ...}, groups.<group>.{accuracy, balanced_accuracy}}),
  neurons: per_language.<lang>.{count_a, count_b, count_per_layer_a, count_per_layer_b}, ...}
- manifest.json: {alignlens_version, command, model{spec, name, hash, n_layers, ...}, data{tasks.<task>.hash, ...},
  options, seed, versions, git_commit, started, finished}
- study.json (`alignlens study report`, schema "alignlens.study/1", written by `study.collect`): {name, study,
  arms, steps, missing, resampling, tasks.<task>.{labels, languages, primary_metric, runs, effects, per_language,
  contrasts, trends, diagnostics}, variants.<variant>.<task> (the same), claims[{id, claim, verdict, text}]}
- localize.json (`alignlens localize`, format "alignlens-localize/1", written by `localize.run.aggregates`):
  {format, models.{base, aligned, control?}, trained_languages, n_layers, tasks.<task>: [languages], items,
  groups.<group>: [languages], options, patching.{directions.<name>.{source, receiver}, sites, positions, clean,
  recovery: [`localize.recovery.recovery` rows]}, steering ({skipped} or {layers, scales, directions, base,
  conditions, ...}: `steering_summary`), dose ({skipped} or `dose_summary`)}
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignlens import AlignlensError
from alignlens.results.io import read_json

REQUIRED_FILES = ("manifest.json", "summary.json")
OPTIONAL_FILES = {"logit_lens.json": "logit lens", "similarity.json": "similarity", "neurons.json": "neurons"}
_ATTRIBUTE = {"logit_lens.json": "lens", "similarity.json": "similarity", "neurons.json": "neurons"}

#: Similarity metrics plotted, in order of preference (those present in the file are used).
SIM_METRICS = ("cosine_mean_centered", "cka_mean", "retrieval_mean", "cosine_mean", "cka_last", "cosine_last")

Cell = tuple[str, str]  # (task, language)


# ---- reading --------------------------------------------------------------------------------


def _fail(path: Path, what: str) -> None:
    raise AlignlensError(f"{path}: {what}")


def read_predictions(path: Path, summary: dict | None = None) -> dict[Cell, dict[int, bool]]:
    """predictions.jsonl -> {(task, lang): {item index: gold == pred}}, in file order.

    Raises AlignlensError naming the file and line for a missing file, bad JSON, a missing key or a
    repeated item; and naming the task and language when the counts disagree with `summary`.
    """
    if not path.is_file():
        raise AlignlensError(f"{path}: missing (needed to compare two runs item by item)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise AlignlensError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    out: dict[Cell, dict[int, bool]] = {}
    for no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise AlignlensError(f"{path}:{no}: not valid JSON ({e.msg})") from None
        for key in ("task", "lang", "index", "gold", "pred"):
            if not isinstance(row, dict) or key not in row:
                raise AlignlensError(f"{path}:{no}: missing key '{key}'")
        cell = out.setdefault((str(row["task"]), str(row["lang"])), {})
        if row["index"] in cell:
            raise AlignlensError(f"{path}:{no}: item {row['index']} of {row['task']} {row['lang']} appears twice")
        cell[row["index"]] = row["gold"] == row["pred"]
    for task, t in ((summary or {}).get("tasks") or {}).items():
        for lang, e in t["languages"].items():
            if len(out.get((task, lang), {})) != e["n"]:
                raise AlignlensError(f"{path}: {len(out.get((task, lang), {}))} items of {task} {lang}, "
                                     f"but summary.json says n={e['n']}")  # fmt: skip
    return out


# ---- checking -------------------------------------------------------------------------------


def _get(obj: Any, keys: str, path: Path, kind: type | tuple | None = None) -> Any:
    """Walk dotted `keys` in `obj`; raise naming the first missing key and the file."""
    cur = obj
    done: list[str] = []
    for k in keys.split("."):
        if not isinstance(cur, dict) or k not in cur:
            _fail(path, f"missing key '{'.'.join(done + [k])}'")
        cur = cur[k]
        done.append(k)
    if kind is not None and not isinstance(cur, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(t.__name__ for t in kind)
        _fail(path, f"key '{keys}' should be a {names}, got {type(cur).__name__}")
    return cur


def _check_series(obj: Any, keys: str, path: Path) -> None:
    for v in _get(obj, keys, path, list):
        if v is not None and not isinstance(v, (int, float)):
            _fail(path, f"key '{keys}' should be a list of numbers/null")


def _check_summary(s: Any, path: Path) -> None:
    tasks = _get(s, "tasks", path, dict)
    if not tasks:
        _fail(path, "key 'tasks' is empty (no task results)")
    for t in tasks:
        langs = _get(s, f"tasks.{t}.languages", path, dict)
        if not langs:
            _fail(path, f"key 'tasks.{t}.languages' is empty")
        for l in langs:
            _get(s, f"tasks.{t}.languages.{l}.accuracy", path, (int, float))
            _get(s, f"tasks.{t}.languages.{l}.n", path, int)
            if len(_get(s, f"tasks.{t}.languages.{l}.ci95", path, list)) != 2:
                _fail(path, f"key 'tasks.{t}.languages.{l}.ci95' should be [lo, hi]")


def _check_lens(d: Any, path: Path) -> None:
    for t in _get(d, "tasks", path, dict):
        _get(d, f"tasks.{t}.n_layers", path, int)
        for l in _get(d, f"tasks.{t}.per_language", path, dict):
            for q in ("p_en", "p_target", "entropy_bits"):
                for s in ("mean", "lo", "hi"):
                    _check_series(d, f"tasks.{t}.per_language.{l}.{q}.{s}", path)


def _check_similarity(d: Any, path: Path) -> None:
    for t in _get(d, "tasks", path, dict):
        for l in _get(d, f"tasks.{t}.per_language", path, dict):
            entry = _get(d, f"tasks.{t}.per_language.{l}", path, dict)
            if not any(m in entry for m in SIM_METRICS):
                _fail(path, f"key 'tasks.{t}.per_language.{l}' has none of the metrics {', '.join(SIM_METRICS[:3])}")
            for m in SIM_METRICS:
                if m in entry:
                    _check_series(d, f"tasks.{t}.per_language.{l}.{m}", path)
        if "pairwise" in d["tasks"][t]:
            _get(d, f"tasks.{t}.pairwise.layers", path, list)
            _get(d, f"tasks.{t}.pairwise.languages", path, list)


def _check_neurons(d: Any, path: Path) -> None:
    _get(d, "n_layers", path, int)
    langs = _get(d, "languages", path, list)
    _get(d, "specific", path, dict)
    for l in langs:
        _get(d, f"specific.{l}.count", path, int)
        _check_series(d, f"specific.{l}.count_per_layer", path)
        _get(d, f"specific.{l}.neurons", path, list)
    for kind in ("active", "specific"):
        if "overlap" in d and kind in d["overlap"]:
            _get(d, f"overlap.{kind}.overall", path, list)


def _check_comparison(d: Any, path: Path) -> None:
    for l in _get(d, "neurons.per_language", path, dict):
        for k in ("count_a", "count_b"):
            _get(d, f"neurons.per_language.{l}.{k}", path, int)
        for k in ("count_per_layer_a", "count_per_layer_b"):
            _check_series(d, f"neurons.per_language.{l}.{k}", path)
    if "mean_abs_activation_probability_change_per_layer" in d["neurons"]:
        _check_series(d, "neurons.mean_abs_activation_probability_change_per_layer", path)
    for t in _get(d, "accuracy.tasks", path, dict):
        for l in _get(d, f"accuracy.tasks.{t}.languages", path, dict):
            for k in ("n", "acc_a", "acc_b", "delta", "delta_ci95", "mcnemar", "p_holm"):
                _get(d, f"accuracy.tasks.{t}.languages.{l}.{k}", path)


_CHECKERS: dict[str, Callable[[Any, Path], None]] = {
    "logit_lens.json": _check_lens,
    "similarity.json": _check_similarity,
    "neurons.json": _check_neurons,
}


# ---- one run --------------------------------------------------------------------------------


@dataclass
class Run:
    """One run folder, loaded and checked."""

    path: Path
    manifest: dict
    summary: dict
    lens: dict | None = None
    similarity: dict | None = None
    neurons: dict | None = None
    absent: list[str] = field(default_factory=list)  # names of optional analyses not in the folder
    _predictions: dict | None = None

    @property
    def name(self) -> str:
        m = self.manifest.get("model", {})
        return str(m.get("name") or m.get("spec") or self.path.name)

    @property
    def predictions(self) -> dict[Cell, dict[int, bool]]:
        """{(task, lang): {item index: correct}} from predictions.jsonl (read on first use)."""
        if self._predictions is None:
            self._predictions = read_predictions(self.path / "predictions.jsonl", self.summary)
        return self._predictions

    @property
    def n_layers(self) -> int | None:
        """The model's layer count: manifest model.n_layers, else what an analysis file says."""
        n = self.manifest.get("model", {}).get("n_layers")
        if isinstance(n, int):
            return n
        if self.neurons:
            return self.neurons["n_layers"]
        for d in (self.lens, self.similarity):
            for t in ((d or {}).get("tasks") or {}).values():
                if isinstance(t.get("n_layers"), int):
                    return t["n_layers"]
        return None


def load_run(run_dir: Path) -> Run:
    """Load and check one run folder (AlignlensError naming the missing file or key). An `alignlens
    analyze` folder (OUT, not OUT/base) or an unfinished analyze run is refused with what to run
    instead (`AnalyzeFolder.report_hint`, `resume_command`)."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise AlignlensError(f"{run_dir}: results folder does not exist")
    if not run_dir.is_dir():
        raise AlignlensError(f"{run_dir}: not a folder (expected a results folder)")
    if not (run_dir / "summary.json").is_file():
        outer = read_analyze_folder(run_dir)
        if outer is not None:
            raise AlignlensError(outer.report_hint())
    if (run_dir / "manifest.json").is_file() and not (run_dir / "summary.json").is_file():
        m = read_json(run_dir / "manifest.json")
        if isinstance(m, dict) and m.get("status") == "running":
            raise AlignlensError(
                f"{run_dir}: unfinished `alignlens analyze` run (it was interrupted; no results yet): continue it "
                f"with `{resume_command(str(m.get('command') or ''), run_dir.parent)}`, which also writes the report")
    for name in REQUIRED_FILES:
        if not (run_dir / name).is_file():
            raise AlignlensError(f"{run_dir}: missing required file {name}")
    manifest = read_json(run_dir / "manifest.json")
    if not isinstance(manifest, dict):
        _fail(run_dir / "manifest.json", "should be a JSON object")
    _get(manifest, "model", run_dir / "manifest.json", dict)
    _get(manifest, "data", run_dir / "manifest.json", dict)
    summary = read_json(run_dir / "summary.json")
    _check_summary(summary, run_dir / "summary.json")
    run = Run(run_dir, manifest, summary)
    for name, label in OPTIONAL_FILES.items():
        p = run_dir / name
        if not p.exists():
            run.absent.append(label)
            continue
        data = read_json(p)
        _CHECKERS[name](data, p)
        setattr(run, _ATTRIBUTE[name], data)
    return run


def check_results(run_dir: Path) -> None:
    """Validate a run folder; raise AlignlensError (one line naming the missing file/key) if bad.

    Required: manifest.json (with 'model' and 'data') and summary.json (tasks -> languages ->
    accuracy/n/ci95). Optional files (logit_lens.json, similarity.json, neurons.json) are checked only
    when present.
    """
    load_run(Path(run_dir))




# ---- an `alignlens analyze` output folder ----------------------------------------------------


def resume_command(command: str, out: Path) -> str:
    """The command that continues an interrupted `alignlens analyze` run in `out`: its recorded
    command line `command` with --resume (and without --force, which --resume excludes)."""
    import shlex

    try:
        args = shlex.split(command)
    except ValueError:
        args = []
    if len(args) < 2 or args[1] != "analyze":
        return f"alignlens analyze ... --out {shlex.quote(str(out))} --resume (with the run's options)"
    args = [a for a in args if a != "--force"]
    return shlex.join(args + ([] if "--resume" in args else ["--resume"]))


@dataclass
class AnalyzeFolder:
    """What an `alignlens analyze` output folder holds, from its role manifests (OUT/base,
    OUT/aligned; `status` "running" until a role is finished)."""

    path: Path
    manifests: dict[str, dict | None]  # role -> its manifest.json, None when the role was not started

    @property
    def records_models(self) -> bool:
        """True when the base manifest records the run's models (`run_models`, written since resumed
        runs check --compare), so a role not started yet is known."""
        return isinstance((self.manifests.get("base") or {}).get("run_models"), dict)

    @property
    def models(self) -> dict[str, str]:
        """role -> model spec of the run as started (`run_models`, recorded since roles are checked on
        resume), else of the roles started."""
        recorded = (self.manifests.get("base") or {}).get("run_models")
        if isinstance(recorded, dict):
            return {str(k): str(v) for k, v in recorded.items()}
        return {r: str((m.get("model") or {}).get("spec")) for r, m in self.manifests.items() if m is not None}

    @property
    def unfinished(self) -> list[str]:
        """Roles of the run not finished: started and interrupted ("running"), or not started yet."""
        return [r for r in self.models
                if self.manifests.get(r) is None or self.manifests[r].get("status") == "running"]

    @property
    def finished(self) -> bool:
        """Every role finished and, with two models, comparison.json written (the report may be absent)."""
        return not self.unfinished and ("aligned" not in self.models or (self.path / "comparison.json").is_file())

    @property
    def command(self) -> str:
        return str(next((m.get("command") for m in self.manifests.values() if m and m.get("command")), ""))

    def resume_command(self) -> str:
        return resume_command(self.command, self.path)

    def report_command(self) -> str:
        """`alignlens report OUT/base [--compare OUT/aligned]`: the report of this run."""
        import shlex

        cmd = f"alignlens report {shlex.quote(str(self.path / 'base'))}"
        if "aligned" in self.models:
            cmd += f" --compare {shlex.quote(str(self.path / 'aligned'))}"
        return cmd

    def report_hint(self) -> str:
        """Why `alignlens report` refuses this folder, and what to run instead."""
        if not self.finished:
            what = ", ".join(self.unfinished) if self.unfinished else "the comparison"
            return (f"{self.path} holds an unfinished `alignlens analyze` run ({what} not finished): continue it "
                    f"with `{self.resume_command()}`, which also writes the report")
        pdf = self.path / "report.pdf"
        return (f"{self.path} is an `alignlens analyze` folder, not one run: use `{self.report_command()}`"
                + (f" (its report is {pdf})" if pdf.is_file() else ""))


def read_analyze_folder(out: Path) -> AnalyzeFolder | None:
    """The analyze run in `out` (None when `out` has no OUT/base/manifest.json)."""
    out = Path(out)
    if not (out / "base" / "manifest.json").is_file():
        return None
    manifests: dict[str, dict | None] = {}
    for role in ("base", "aligned"):
        path = out / role / "manifest.json"
        m = read_json(path) if path.is_file() else None
        if m is not None and not isinstance(m, dict):
            _fail(path, "should be a JSON object")
        manifests[role] = m
    return AnalyzeFolder(out, manifests)


def _training_manifest(model_folder: Path) -> tuple[Path, dict | None]:
    """(path, the JSON object) of a model folder's manifest.json; None when there is none."""
    path = Path(model_folder) / "manifest.json"
    if not path.is_file():
        return path, None
    m = read_json(path)
    if not isinstance(m, dict):
        _fail(path, "should be a JSON object")
    return path, m


def training_finished(model_folder: Path) -> bool:
    """The folder's manifest.json exists and does not say a training run is still writing there
    (`"status": "running"`, `train.checkpoint.running_manifest`)."""
    from alignlens.results.writer import read_manifest

    m, _ = read_manifest(Path(model_folder) / "manifest.json")
    return (Path(model_folder) / "manifest.json").is_file() and (m is None or m.get("status") != "running")


def read_training(model_folder: Path) -> dict[str, Any]:
    """What an `alignlens train` output folder's manifest.json says about its training:
    {"trained_languages", "base_model", "alignment" (which data: `read_training_split`)} ({} for a
    folder without one). Analysis manifests record it under `model`."""
    path, m = _training_manifest(model_folder)
    if m is None:
        return {}
    data = m.get("data") if isinstance(m.get("data"), dict) else {}
    base = m.get("base_model") or m.get("model")
    return {"trained_languages": list(data.get("languages", [])),
            "base_model": base.get("spec") if isinstance(base, dict) else None,
            "alignment": read_training_split(model_folder)}


def read_training_split(model_folder: Path) -> dict[str, Any]:
    """Which task items an `alignlens train` output was trained on, for the leakage check:
    {"task": name or None, "task_folder": str or None, "train_items": sorted tuple of item indices
    or None, "source", "control"} ({} for a folder without manifest.json).

    Read from the manifest's `data` section (`data.task`, `data.train_items`), else from the
    options the run recorded (`options.task`, `options.train_items`). A value of the wrong type or
    an unreadable item list is an AlignlensError naming the file and the key."""
    from alignlens.config import parse_items

    path, m = _training_manifest(model_folder)
    if m is None:
        return {}
    data = m.get("data") if isinstance(m.get("data"), dict) else {}
    options = m.get("options") if isinstance(m.get("options"), dict) else {}
    section, where = (data, "data") if "task" in data else (options, "options")
    task, items = section.get("task"), section.get("train_items")
    if task is not None and not isinstance(task, str):
        _fail(path, f"key '{where}.task' should be a str, got {type(task).__name__}")
    if items is not None and not isinstance(items, str):
        _fail(path, f"key '{where}.train_items' should be a str such as '250-499', got {type(items).__name__}")
    try:
        indices = parse_items(items, f"key '{where}.train_items'") if task is not None else None
    except AlignlensError as exc:
        raise AlignlensError(f"{path}: {exc}") from None
    folder = data.get("task_folder") if where == "data" else (task if task and Path(task).is_dir() else None)
    return {"task": task, "task_folder": folder if isinstance(folder, str) else None, "train_items": indices,
            "source": data.get("source"), "control": section.get("control")}


def read_comparison_file(path: Path) -> dict:
    """comparison.json (neuron changes between two models), read and checked."""
    comp = read_json(path)
    _check_comparison(comp, path)
    return comp


#: The schema of study.json this version writes and reads.
STUDY_SCHEMA = "alignlens.study/1"
_STUDY_KEYS = (("name", str), ("study", dict), ("arms", list), ("steps", list), ("missing", list),
               ("resampling", dict), ("tasks", dict), ("variants", dict), ("claims", list))
_STUDY_TASK_KEYS = (("labels", list), ("languages", list), ("primary_metric", str), ("runs", dict), ("effects", list),
                    ("per_language", list), ("contrasts", list), ("trends", list), ("diagnostics", dict))


def read_study_file(path: Path) -> dict:
    """study.json, read and checked: its schema (`STUDY_SCHEMA`) and the keys the study report reads
    (one AlignlensError naming the file and the key otherwise)."""
    d = read_json(path)
    schema = d.get("schema") if isinstance(d, dict) else None
    if schema != STUDY_SCHEMA:
        _fail(path, f"not a study.json of schema {STUDY_SCHEMA} (schema: {schema!r}); write it with `alignlens study report DIR`")
    for key, kind in _STUDY_KEYS:
        _get(d, key, path, kind)
    sections = [("tasks", d["tasks"])] + [(f"variants.{v}", s) for v, s in d["variants"].items()]
    for where, tasks in sections:
        if not isinstance(tasks, dict):
            _fail(path, f"key '{where}' should be a dict, got {type(tasks).__name__}")
        for task, sec in tasks.items():
            for key, kind in _STUDY_TASK_KEYS:
                if not isinstance(sec, dict) or not isinstance(sec.get(key), kind):
                    _fail(path, f"key '{where}.{task}.{key}' missing or not a {kind.__name__}")
    for i, claim in enumerate(d["claims"]):
        for key in ("id", "claim", "verdict", "text"):
            if not isinstance(claim, dict) or key not in claim:
                _fail(path, f"claims[{i}]: missing key '{key}'")
    return d


LOCALIZE_FORMAT = "alignlens-localize/1"
_LOCALIZE_KEYS = (("models", dict), ("tasks", dict), ("groups", dict), ("options", dict), ("patching", dict),
                  ("patching.directions", dict), ("patching.sites", list), ("patching.positions", list),
                  ("patching.recovery", list), ("steering", dict), ("dose", dict))


def read_localize_file(path: Path) -> dict:
    """localize.json, read and checked: its format (`LOCALIZE_FORMAT`) and the keys the localisation
    report reads (one AlignlensError naming the file and the key otherwise)."""
    d = read_json(path)
    fmt = d.get("format") if isinstance(d, dict) else None
    if fmt != LOCALIZE_FORMAT:
        _fail(path, f"not a localize.json of format {LOCALIZE_FORMAT} (format: {fmt!r}); write it with `alignlens "
                    "localize`")
    for key, kind in _LOCALIZE_KEYS:
        _get(d, key, path, kind)
    return d
