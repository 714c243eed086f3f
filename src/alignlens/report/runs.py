"""Loading and checking result folders for the report, and what two runs have in common.

A run folder needs ``manifest.json`` and ``summary.json``; ``logit_lens.json``, ``similarity.json``
and ``neurons.json`` are optional (checked when present); ``predictions.jsonl`` is read when two
runs are compared, item by item. Every problem is an :class:`alignlens.AlignlensError` with one
line naming the file and the key (or line) at fault.

Two runs are compared only on the (task, language, item index) triples both have
(:func:`item_overlap`); both runs' accuracies are then taken on those shared items.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alignlens import AlignlensError
from alignlens.stats import bootstrap_ci, clip_interval

REQUIRED_FILES = ("manifest.json", "summary.json")
OPTIONAL_FILES = {"logit_lens.json": "logit lens", "similarity.json": "similarity", "neurons.json": "neurons"}
_ATTRIBUTE = {"logit_lens.json": "lens", "similarity.json": "similarity", "neurons.json": "neurons"}

#: Similarity metrics plotted, in order of preference (those present in the file are used).
SIM_METRICS = ("cosine_mean_centered", "cka_mean", "retrieval_mean", "cosine_mean", "cka_last", "cosine_last")

Cell = tuple[str, str]  # (task, language)


# ---- reading --------------------------------------------------------------------------------


def _fail(path: Path, what: str) -> None:
    raise AlignlensError(f"{path}: {what}")


def read_json(path: Path) -> Any:
    """A results JSON file; AlignlensError '<path>: cannot read (...)' / '<path>: not valid JSON (line N: ...)'.

    (Minimal reader kept here because `alignlens.results.read_json` words its errors differently.)"""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise AlignlensError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise AlignlensError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None


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
    for l in _get(d, "per_language", path, dict):
        for k in ("count_a", "count_b"):
            _get(d, f"per_language.{l}.{k}", path, int)
        for k in ("count_per_layer_a", "count_per_layer_b"):
            _check_series(d, f"per_language.{l}.{k}", path)
    if "mean_abs_activation_probability_change_per_layer" in d:
        _check_series(d, "mean_abs_activation_probability_change_per_layer", path)


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
    """Load and check one run folder (AlignlensError naming the missing file or key)."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise AlignlensError(f"{run_dir}: results folder does not exist")
    if not run_dir.is_dir():
        raise AlignlensError(f"{run_dir}: not a folder (expected a results folder)")
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


# ---- two runs: what they share --------------------------------------------------------------


@dataclass
class ItemOverlap:
    """What two runs have in common, item by item (from their predictions.jsonl).

    shared: (task, lang) -> item indices present in both runs; only_a / only_b: (task, lang) -> count
    of items in one run only; same: cells whose item sets are identical; acc: (task, lang) ->
    ({"accuracy", "n", "ci95"} of run a, the same of run b), both on the shared items; n_layers:
    the two models' layer counts.
    """

    shared: dict[Cell, list[int]]
    only_a: dict[Cell, int]
    only_b: dict[Cell, int]
    same: set[Cell]
    acc: dict[Cell, tuple[dict, dict]]
    n_layers: tuple[int | None, int | None]

    @property
    def n_shared(self) -> int:
        return sum(len(v) for v in self.shared.values())

    @property
    def same_depth(self) -> bool:
        """True when both models have the same number of layers (per-layer values line up)."""
        return self.n_layers[0] == self.n_layers[1]

    def same_items(self, task: str, langs) -> bool:
        """True when every (task, lang) of `langs` has identical item sets in both runs."""
        return all((task, l) in self.same for l in langs)


def accuracy_on(run: Run, cell: Cell, items: list[int]) -> dict:
    """{"accuracy", "n", "ci95"} of `run` on `items` of `cell`: summary.json's entry when `items` is
    the run's whole item set, else recomputed from predictions.jsonl (bootstrap interval with the
    run's own seed and resamples, as `evaluate.summarize`). Intervals are clipped to [0, 1]."""
    pred = run.predictions[cell]
    entry = run.summary["tasks"][cell[0]]["languages"][cell[1]]
    if len(items) == len(pred):
        return {"accuracy": entry["accuracy"], "n": entry["n"], "ci95": clip_interval(entry["ci95"])}
    keep = set(items)
    correct = np.array([float(c) for i, c in pred.items() if i in keep])
    opts = run.manifest.get("options") or {}
    lo, hi = bootstrap_ci(correct, n_resamples=int(opts.get("bootstrap_resamples") or 2000),
                          seed=int(run.manifest.get("seed") or 0))  # fmt: skip
    return {"accuracy": float(correct.mean()), "n": len(correct), "ci95": clip_interval([lo, hi])}


def cells_text(cells: dict[Cell, int], max_cells: int = 12) -> str:
    """'emotion: de 20, th 20; paws: en 5' (at most `max_cells` cells, then '… N more')."""
    if not cells:
        return "none"
    by_task: dict[str, list[str]] = {}
    for k, ((task, lang), n) in enumerate(cells.items()):
        if k < max_cells:
            by_task.setdefault(task, []).append(f"{lang} {n}")
    text = "; ".join(f"{t}: {', '.join(v)}" for t, v in by_task.items())
    return text + (f"; … {len(cells) - max_cells} more" if len(cells) > max_cells else "")


def item_overlap(a: Run, b: Run) -> ItemOverlap:
    """Intersect two runs by (task, language, item index); raise AlignlensError when they share no item."""
    pa, pb = a.predictions, b.predictions
    shared, only_a, only_b, same = {}, {}, {}, set()
    for cell in list(pa) + [c for c in pb if c not in pa]:
        ia, ib = pa.get(cell, {}), pb.get(cell, {})
        common = [i for i in ia if i in ib]
        if common:
            shared[cell] = common
        if len(ia) > len(common):
            only_a[cell] = len(ia) - len(common)
        if len(ib) > len(common):
            only_b[cell] = len(ib) - len(common)
        if common and len(common) == len(ia) == len(ib):
            same.add(cell)
    if not shared:
        raise AlignlensError(
            f"{a.path} and {b.path} have no item in common (tasks × languages: "
            f"{cells_text({c: len(v) for c, v in pa.items()})} vs {cells_text({c: len(v) for c, v in pb.items()})}): "
            "nothing to compare")  # fmt: skip
    acc = {cell: (accuracy_on(a, cell, items), accuracy_on(b, cell, items)) for cell, items in shared.items()}
    return ItemOverlap(shared, only_a, only_b, same, acc, (a.n_layers, b.n_layers))


def read_comparison(a: Run, b: Run) -> dict | None:
    """comparison.json written by `alignlens analyze --compare` for exactly these two runs, else None.

    It is looked for in the runs' common parent folder and used only when its per-language counts
    match both runs' neurons.json (so it belongs to them)."""
    pa, pb = a.path.resolve().parent, b.path.resolve().parent
    path = pa / "comparison.json"
    if pa != pb or not path.is_file() or not a.neurons or not b.neurons:
        return None
    comp = read_json(path)
    _check_comparison(comp, path)
    for l, v in comp["per_language"].items():
        if (l not in a.neurons["specific"] or l not in b.neurons["specific"]
                or v["count_a"] != a.neurons["specific"][l]["count"] or v["count_b"] != b.neurons["specific"][l]["count"]):  # fmt: skip
            return None
    return comp


# ---- the runs of one report -----------------------------------------------------------------


@dataclass
class Runs:
    """The run folders of one report -- one, or base and aligned -- and, for two, what they share."""

    runs: list[Run]
    overlap: ItemOverlap | None = None
    comparison: dict | None = None  # comparison.json of these two runs, when found

    @property
    def compare(self) -> bool:
        return len(self.runs) > 1

    @property
    def roles(self) -> list[str]:
        return ["base", "aligned"][: len(self.runs)]

    @property
    def trained(self) -> list[str]:
        """Trained languages of any run (from the manifests), in order of appearance."""
        out: list[str] = []
        for r in self.runs:
            out += [l for l in (r.manifest.get("trained_languages") or []) if l not in out]
        return out

    def role_label(self, i: int) -> str:
        return f"{self.roles[i]} ({self.runs[i].name})"

    @property
    def depth_axis(self) -> bool:
        """True when two runs' models differ in layer count: per-layer overlays use relative depth."""
        return self.overlap is not None and not self.overlap.same_depth

    def layer_x(self, n: int) -> np.ndarray:
        """x positions of `n` layers: indices, or relative depth layer / (n - 1) (see `depth_axis`)."""
        return np.arange(n) / max(n - 1, 1) if self.depth_axis else np.arange(n, dtype=float)

    def tasks(self, key: str = "summary") -> list[str]:
        """Tasks of any run's `key` file (summary, lens, similarity), in order of appearance."""
        seen: list[str] = []
        for r in self.runs:
            d = getattr(r, key)
            seen += [t for t in ((d or {}).get("tasks") or {}) if t not in seen]
        return seen

    def absent(self) -> list[str]:
        return sorted({a for r in self.runs for a in r.absent})


def load_runs(run_dir: Path, compare_dir: Path | None = None) -> Runs:
    """Load one run, or two to compare (AlignlensError when two runs share no item)."""
    runs = [load_run(Path(run_dir))] + ([load_run(Path(compare_dir))] if compare_dir is not None else [])
    if len(runs) == 1:
        return Runs(runs)
    return Runs(runs, item_overlap(*runs), read_comparison(*runs))


def arr(values) -> np.ndarray:
    """A JSON list of numbers/null as a float array (null -> NaN)."""
    return np.array([math.nan if x is None else float(x) for x in (values or [])], dtype=float)
