"""PDF report rendered from saved results folders only (no model needed).

``render_report(run_dir, compare_dir, out)`` reads one run folder (the *base* model) and optionally a
second one (the *aligned* model) and writes:

- ``out`` (default ``report.pdf``): A4-landscape pages -- title + run manifest, contents, summary of
  what changed, accuracy table per task, accuracy bar charts, logit-lens curves, similarity curves
  and heatmaps, language-specific-neuron figures. Sections whose result files are absent are listed
  on the title page instead.
- ``<out_stem>_figures/NN_name.png|svg``: every page as PNG and SVG.
- ``<out_stem>_tables/*.csv``: the numbers behind the pages (+ ``summary.txt``, ``contents.csv``).

Only ``manifest.json`` and ``summary.json`` are required in a run folder; ``logit_lens.json``,
``similarity.json`` and ``neurons.json`` are optional. ``check_results`` validates a folder and raises
:class:`alignlens.AlignlensError` with a one-line message naming the missing file or key.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile
import textwrap
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from alignlens import AlignlensError, __version__, fonts, results
from alignlens.data import PAPER_LANGUAGES

# --------------------------------------------------------------------------------------------------
# Languages
# --------------------------------------------------------------------------------------------------

#: The 20 study languages in the paper's order.
LANGUAGES: tuple[str, ...] = PAPER_LANGUAGES

#: Native names, shown next to the codes (this is also how the report proves every script renders).
NATIVE_NAMES: dict[str, str] = {
    "en": "English", "zh": "中文", "de": "Deutsch", "fr": "français", "es": "español",
    "it": "italiano", "nl": "Nederlands", "ja": "日本語", "ru": "русский", "sv": "svenska",
    "sl": "slovenščina", "pl": "polski", "bg": "български", "no": "norsk", "ms": "Bahasa Melayu",
    "is": "íslenska", "hi": "हिन्दी", "th": "ไทย", "sw": "Kiswahili", "bn": "বাংলা",
}  # fmt: skip

# Resource groups, following the paper's convention (Zhang et al., 2024): the "high-resource"
# languages are the majority languages of LLM pre-training corpora, the "low-resource" ones are the
# minority languages. Languages outside the 20 fall into "other".
HIGH_RESOURCE: tuple[str, ...] = ("en", "zh", "de", "fr", "es", "it", "nl", "ja", "ru", "sv", "pl")
LOW_RESOURCE: tuple[str, ...] = ("sl", "bg", "no", "ms", "is", "hi", "th", "sw", "bn")


def resource_group(lang: str) -> str:
    return "high" if lang in HIGH_RESOURCE else "low" if lang in LOW_RESOURCE else "other"


def lang_label(lang: str) -> str:
    """'hi हिन्दी' (code + native name); the bare code for languages outside the 20."""
    name = NATIVE_NAMES.get(lang)
    return f"{lang} {name}" if name else lang


def order_languages(langs) -> list[str]:
    """High-resource first, then low-resource, then others; the paper's order within a group."""
    langs = list(dict.fromkeys(langs))
    rank = {l: i for i, l in enumerate(HIGH_RESOURCE + LOW_RESOURCE)}
    return sorted(langs, key=lambda l: (rank.get(l, len(rank)), l))


# --------------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------------

REQUIRED_FILES = ("manifest.json", "summary.json")
OPTIONAL_FILES = {"logit_lens.json": "logit lens", "similarity.json": "similarity", "neurons.json": "neurons"}

#: Similarity metrics plotted, in order of preference (those present in the file are used).
SIM_METRICS = ("cosine_mean_centered", "cka_mean", "retrieval_mean", "cosine_mean", "cka_last", "cosine_last")


def _fail(path: Path, what: str) -> None:
    raise AlignlensError(f"{path}: {what}")


def _load_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise AlignlensError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise AlignlensError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None


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
    val = _get(obj, keys, path, list)
    for v in val:
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
            ci = _get(s, f"tasks.{t}.languages.{l}.ci95", path, list)
            if len(ci) != 2:
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
        per = _get(d, f"tasks.{t}.per_language", path, dict)
        for l in per:
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
    if "mean_abs_activation_probability_change_per_layer" in d:
        _check_series(d, "mean_abs_activation_probability_change_per_layer", path)


_CHECKERS: dict[str, Callable[[Any, Path], None]] = {
    "summary.json": _check_summary,
    "logit_lens.json": _check_lens,
    "similarity.json": _check_similarity,
    "neurons.json": _check_neurons,
}


@dataclass
class Run:
    """One run folder, loaded."""

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
    def predictions(self) -> dict[tuple[str, str], dict[int, bool]]:
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


def _load_run(run_dir: Path) -> Run:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise AlignlensError(f"{run_dir}: results folder does not exist")
    if not run_dir.is_dir():
        raise AlignlensError(f"{run_dir}: not a folder (expected a results folder)")
    for name in REQUIRED_FILES:
        if not (run_dir / name).is_file():
            raise AlignlensError(f"{run_dir}: missing required file {name}")
    manifest = _load_json(run_dir / "manifest.json")
    if not isinstance(manifest, dict):
        _fail(run_dir / "manifest.json", "should be a JSON object")
    _get(manifest, "model", run_dir / "manifest.json", dict)
    _get(manifest, "data", run_dir / "manifest.json", dict)
    summary = _load_json(run_dir / "summary.json")
    _check_summary(summary, run_dir / "summary.json")
    run = Run(run_dir, manifest, summary)
    for name, label in OPTIONAL_FILES.items():
        p = run_dir / name
        if not p.exists():
            run.absent.append(label)
            continue
        data = _load_json(p)
        _CHECKERS[name](data, p)
        setattr(run, {"logit_lens.json": "lens", "similarity.json": "similarity", "neurons.json": "neurons"}[name], data)
    return run


def read_predictions(path: Path, summary: dict | None = None) -> dict[tuple[str, str], dict[int, bool]]:
    """predictions.jsonl -> {(task, lang): {item index: gold == pred}}, in file order.

    Raises AlignlensError naming the file and line for a missing file, bad JSON, a missing key or a
    repeated item; and naming the task and language when the counts disagree with `summary`.
    """
    if not path.is_file():
        raise AlignlensError(f"{path}: missing (needed to compare two runs item by item)")
    out: dict[tuple[str, str], dict[int, bool]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise AlignlensError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
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
            n = len(out.get((task, lang), {}))
            if n != e["n"]:
                raise AlignlensError(f"{path}: {n} items of {task} {lang}, but summary.json says n={e['n']}")
    return out


def check_results(run_dir: Path) -> None:
    """Validate a run folder; raise AlignlensError (one line naming the missing file/key) if bad.

    Required: manifest.json (with 'model' and 'data') and summary.json (tasks -> languages ->
    accuracy/n/ci95). Optional files (logit_lens.json, similarity.json, neurons.json) are checked only
    when present.
    """
    _load_run(Path(run_dir))


# --------------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------------


def _arr(v) -> np.ndarray:
    return np.array([np.nan if x is None else float(x) for x in (v or [])], dtype=float)


def _fmt(x, pct: bool = True, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x * 100:+.1f}" if sign else f"{x * 100:.1f}" if pct else f"{x:.3g}"


def _clip_ci(ci, lo: float = 0.0, hi: float = 1.0) -> list[float]:
    """An interval [l, u] clipped to [lo, hi] (None/NaN kept as NaN)."""
    return [math.nan if v is None or v != v else min(max(float(v), lo), hi) for v in ci]


def diff_ci(a: float, a_ci, b: float, b_ci) -> tuple[float, float, float]:
    """b - a with Newcombe's (method 10) interval built from the two models' own 95% intervals,
    clipped to [-1, 1] (a difference of two proportions).

    Treats the two accuracies as independent, which is conservative for paired items.
    """
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in (a, b)):
        return (math.nan, math.nan, math.nan)
    (la, ua), (lb, ub) = _clip_ci(a_ci), _clip_ci(b_ci)
    d = b - a
    lo = d - math.sqrt((b - lb) ** 2 + (ua - a) ** 2)
    hi = d + math.sqrt((ub - b) ** 2 + (a - la) ** 2)
    return d, max(lo, -1.0), min(hi, 1.0)


Cell = tuple[str, str]  # (task, language)


@dataclass
class ItemOverlap:
    """What two runs have in common, item by item (from their predictions.jsonl).

    shared: (task, lang) -> item indices present in both runs; only_a / only_b: (task, lang) -> count
    of items in one run only; same: cells whose item sets are identical; acc: (task, lang) ->
    ({"accuracy", "n", "ci95"} of run a, the same of run b), both on the shared items.
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


def _accuracy_on(run: Run, cell: Cell, items: list[int]) -> dict:
    """{"accuracy", "n", "ci95"} of `run` on `items` of `cell`: summary.json's entry when `items` is
    the run's whole item set, else recomputed from predictions.jsonl (bootstrap interval with the
    run's own seed and resamples, as `evaluate.summarize`)."""
    from alignlens.stats import bootstrap_ci

    pred = run.predictions[cell]
    entry = run.summary["tasks"][cell[0]]["languages"][cell[1]]
    if len(items) == len(pred):
        return {"accuracy": entry["accuracy"], "n": entry["n"], "ci95": _clip_ci(entry["ci95"])}
    keep = set(items)
    correct = np.array([float(c) for i, c in pred.items() if i in keep])
    opts = run.manifest.get("options") or {}
    lo, hi = bootstrap_ci(correct, n_resamples=int(opts.get("bootstrap_resamples") or 2000),
                          seed=int(run.manifest.get("seed") or 0))  # fmt: skip
    return {"accuracy": float(correct.mean()), "n": len(correct), "ci95": _clip_ci([lo, hi])}


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
            f"{a.path} and {b.path} have no item in common (tasks × languages: {_cells_text({c: len(v) for c, v in pa.items()})} "
            f"vs {_cells_text({c: len(v) for c, v in pb.items()})}): nothing to compare")  # fmt: skip
    acc = {cell: (_accuracy_on(a, cell, items), _accuracy_on(b, cell, items)) for cell, items in shared.items()}
    return ItemOverlap(shared, only_a, only_b, same, acc, (a.n_layers, b.n_layers))


def _cells_text(cells: dict[Cell, int], max_cells: int = 12) -> str:
    """'emotion: de 20, th 20; paws: en 5' (at most `max_cells` cells, then '… N more')."""
    if not cells:
        return "none"
    by_task: dict[str, list[str]] = {}
    for k, ((task, lang), n) in enumerate(cells.items()):
        if k < max_cells:
            by_task.setdefault(task, []).append(f"{lang} {n}")
    text = "; ".join(f"{t}: {', '.join(v)}" for t, v in by_task.items())
    return text + (f"; … {len(cells) - max_cells} more" if len(cells) > max_cells else "")


@dataclass
class AccRow:
    task: str
    lang: str
    trained: bool
    a: dict | None
    b: dict | None
    comparable: bool = True  # False: both runs have the language but on disjoint items

    @property
    def paired(self) -> bool:
        return bool(self.a and self.b and self.comparable)

    @property
    def diff(self) -> tuple[float, float, float]:
        if not self.paired:
            return (math.nan, math.nan, math.nan)
        return diff_ci(self.a["accuracy"], self.a["ci95"], self.b["accuracy"], self.b["ci95"])


def _trained(runs: list[Run]) -> list[str]:
    out: list[str] = []
    for r in runs:
        out += [l for l in (r.manifest.get("trained_languages") or []) if l not in out]
    return out


def _tasks(runs: list[Run], key: str = "summary") -> list[str]:
    seen: list[str] = []
    for r in runs:
        d = getattr(r, key)
        if d is None:
            continue
        tasks = d["tasks"] if "tasks" in d else {}
        seen += [t for t in tasks if t not in seen]
    return seen


def accuracy_rows(runs: list[Run], task: str, overlap: ItemOverlap | None = None) -> list[AccRow]:
    """One row per language of `task`. With `overlap` (two runs), a language both runs have gets
    both runs' accuracies on their shared items; a language only one run has keeps that run's own
    accuracy and no comparison."""
    trained = _trained(runs)
    per = [r.summary["tasks"].get(task, {}).get("languages", {}) for r in runs]
    langs = order_languages([l for p in per for l in p])
    rows = []
    for l in langs:
        a, b = per[0].get(l), per[1].get(l) if len(per) > 1 else None
        comparable = True
        if overlap is not None and (task, l) in overlap.acc:
            a, b = overlap.acc[task, l]
        elif a is not None and b is not None:  # both ran it, on disjoint items
            comparable = False
        rows.append(AccRow(task, l, l in trained, _with_clipped_ci(a), _with_clipped_ci(b), comparable))
    return rows


def _with_clipped_ci(entry: dict | None) -> dict | None:
    return None if entry is None else {**entry, "ci95": _clip_ci(entry["ci95"])}


def group_means(rows: list[AccRow]) -> list[dict]:
    """Macro means over languages for groups high/low/trained/untrained/all.

    When some rows have both runs, the means of both runs are taken over those paired rows only,
    so that "diff" is exactly "aligned" - "base"; otherwise each run's mean is over its own rows.
    """
    groups = {
        "high-resource": [r for r in rows if resource_group(r.lang) == "high"],
        "low-resource": [r for r in rows if resource_group(r.lang) == "low"],
        "trained": [r for r in rows if r.trained],
        "not trained": [r for r in rows if not r.trained],
        "all": rows,
    }
    out = []
    for g, rs in groups.items():
        if not rs:
            continue
        if any(r.paired for r in rows):
            rs = [r for r in rs if r.paired]
            if not rs:
                continue
        a = [r.a["accuracy"] for r in rs if r.a]
        b = [r.b["accuracy"] for r in rs if r.b]
        paired = [r.b["accuracy"] - r.a["accuracy"] for r in rs if r.paired]
        out.append({
            "group": g,
            "n_languages": len(rs),
            "base": float(np.mean(a)) if a else math.nan,
            "aligned": float(np.mean(b)) if b else math.nan,
            "diff": float(np.mean(paired)) if paired else math.nan,
        })  # fmt: skip
    return out


# --------------------------------------------------------------------------------------------------
# Page plumbing
# --------------------------------------------------------------------------------------------------

A4_LANDSCAPE = (11.69, 8.27)
COLOR = {"base": "#4C72B0", "aligned": "#DD8452", "p_en": "#6A3D9A", "p_target": "#1B9E77", "pos": "#2CA02C", "neg": "#D62728"}
LINESTYLE = {"base": "-", "aligned": "--"}


@dataclass
class Page:
    section: str
    title: str
    slug: str
    draw: Callable[[], Any]  # returns a matplotlib Figure
    export: bool = True  # also save as PNG/SVG (False for the text-only pages)


class _Ctx:
    """What the section builders need: the runs, model roles, and a table writer."""

    def __init__(self, runs: list[Run], tables_dir: Path, overlap: ItemOverlap | None = None):
        self.runs = runs
        self.roles = ["base", "aligned"][: len(runs)]
        self.tables_dir = tables_dir
        self.trained = _trained(runs)
        self.summary_lines: list[str] = []
        self.overlap = overlap

    @property
    def depth_axis(self) -> bool:
        """True when two runs' models differ in layer count: per-layer overlays use relative depth."""
        return self.overlap is not None and not self.overlap.same_depth

    def layer_x(self, n: int) -> np.ndarray:
        """x positions of `n` layers: indices, or relative depth layer / (n - 1) (see `depth_axis`)."""
        return np.arange(n) / max(n - 1, 1) if self.depth_axis else np.arange(n, dtype=float)

    @property
    def compare(self) -> bool:
        return len(self.runs) > 1

    def role_label(self, i: int) -> str:
        return f"{self.roles[i]} ({self.runs[i].name})"

    def write_csv(self, name: str, header: list[str], rows: list[list]) -> None:
        with open(self.tables_dir / name, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            for r in rows:
                w.writerow(["" if (isinstance(x, float) and math.isnan(x)) else x for x in r])


def _new_fig(title: str, subtitle: str | None = None):
    from matplotlib.figure import Figure

    fig = Figure(figsize=A4_LANDSCAPE)
    fig.text(0.03, 0.965, title, fontsize=15, fontweight="bold", va="top")
    if subtitle:
        fig.text(0.03, 0.93, _wrap(subtitle, 175), fontsize=9, va="top", color="#444444", linespacing=1.3)
    fig.content_top = _content_top(subtitle)  # where page content may start (below the subtitle)
    return fig


def _top(fig, top: float) -> float:
    """`top` of a page's grid, lowered when the page's subtitle needs the room."""
    return min(top, getattr(fig, "content_top", top))


def _content_top(subtitle: str | None, width: int = 175) -> float:
    """Figure y (0..1) below which page content may start, given the page's subtitle: the
    subtitle's wrapped lines (9 pt, line spacing 1.3) start at y = 0.93 and grow downwards."""
    n_lines = _wrap(subtitle, width).count("\n") + 1 if subtitle else 0
    axes_title = 0.045  # room for the axes titles above the content
    return min(0.86, 0.93 - n_lines * 0.0215 - axes_title)


def _footer(fig, page_no: int, n_pages: int, note: str) -> None:
    fig.text(0.03, 0.015, note, fontsize=7, color="#777777")
    fig.text(0.97, 0.015, f"{page_no} / {n_pages}", fontsize=7, color="#777777", ha="right")


def _int_layers(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))


def _lang_ticks(ax, langs: list[str], trained: list[str], fontsize: float = 7) -> None:
    """x tick labels 'code native' (rotated, trained ones starred and bold)."""
    ax.set_xticks(range(len(langs)))
    ax.set_xticklabels([f"{lang_label(l)}{' *' if l in trained else ''}" for l in langs], fontsize=fontsize,
                       rotation=35, ha="right", rotation_mode="anchor")  # fmt: skip
    for tl, l in zip(ax.get_xticklabels(), langs):
        if l in trained:
            tl.set_fontweight("bold")


def _offdiag(m: np.ndarray) -> np.ndarray:
    """Copy with the diagonal masked (self-similarity would flatten the colour scale)."""
    m = np.array(m, dtype=float)
    if m.ndim == 2 and m.shape[0] == m.shape[1]:
        np.fill_diagonal(m, np.nan)
    return m


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.fill(p, width) if p else "" for p in str(text).split("\n"))


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------


def _manifest_rows(run: Run) -> list[tuple[str, str]]:
    m = run.manifest
    model, data = m.get("model", {}), m.get("data", {})
    opts = m.get("options") or {}
    vers = m.get("versions") or {}
    limit = data.get("limit")
    tasks = data.get("tasks") or []
    rows = [
        ("folder", str(run.path)),
        ("model", f"{model.get('name', '—')}   spec: {model.get('spec', '—')}"),
        ("model path / hash", f"{model.get('path', '—')}   {str(model.get('hash', '—'))[:16]}"),
        ("architecture / layers", f"{model.get('architecture', '—')} / {model.get('n_layers', '—')}"),
        ("dtype / device", f"{model.get('dtype', '—')} / {model.get('device', '—')}"),
        ("trained languages", ", ".join(lang_label(l) for l in m.get("trained_languages") or []) or "— (none)"),
        ("tasks", ", ".join(map(str, tasks)) or "—"),
        ("languages", " ".join(data.get("languages") or []) or "—"),
        ("items / task×lang", "all" if limit is None else str(limit)),
        ("data hash (sha256)", data_hashes(m)),
        ("options", _options_text(opts)),
        ("seed", str(m.get("seed", "—"))),
        ("versions", ", ".join(f"{k} {v}" for k, v in vers.items()) or "—"),
        ("alignlens / git", f"{m.get('alignlens_version', '—')} / {str(m.get('git_commit') or '—')[:12]}"),
        ("command", str(m.get("command", "—"))),
        ("started → finished", f"{m.get('started', '—')} → {m.get('finished', '—')}"),
        ("analyses absent", ", ".join(run.absent) or "none"),
    ]
    return rows


def data_hashes(manifest: dict, length: int = 12) -> str:
    """'emotion 1a2b3c4d5e6f, snli …': each task's data hash (manifest data.tasks.<task>.hash, as
    `evaluate.make_manifest` writes it), shortened to `length` hex digits; '—' when none is recorded."""
    data = manifest.get("data") or {}
    tasks = data.get("tasks")
    hashes = []
    if isinstance(tasks, dict):
        hashes = [f"{t} {str(v['hash'])[:length]}" for t, v in tasks.items() if isinstance(v, dict) and v.get("hash")]
    if not hashes and data.get("hash"):  # an older single-hash manifest
        hashes = [str(data["hash"])[:length]]
    return ", ".join(hashes) or "—"


def _options_text(opts: dict) -> str:
    """Run options for the title page, without those shown in their own rows (tasks, languages,
    limit); nested options flattened as group.key=value."""
    bits = []
    for k, v in opts.items():
        if k in ("tasks", "languages", "limit"):
            continue
        if isinstance(v, dict):
            bits += [f"{k}.{kk}={vv}" for kk, vv in v.items()]
        else:
            bits.append(f"{k}={v}")
    return ", ".join(bits) or "—"


def _title_pages(ctx: _Ctx) -> list[Page]:
    def draw():
        names = " vs ".join(ctx.role_label(i) for i in range(len(ctx.runs)))
        fig = _new_fig(
            "alignlens report",
            f"{names}\nGenerated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by alignlens "
            f"{__version__} from saved results (no model loaded). Reproduces Zhang et al. (EMNLP 2024), "
            "“Getting More from Less: LLMs are Good Spontaneous Multilingual Learners”.",
        )
        n = len(ctx.runs)
        width = 0.93 / n
        for i, run in enumerate(ctx.runs):
            ax = fig.add_axes([0.03 + i * width, 0.34, width - 0.015, 0.46])
            ax.axis("off")
            ax.set_title(f"Run manifest — {ctx.role_label(i)}", fontsize=10, loc="left", fontweight="bold")
            wrap_at = 62 if n > 1 else 130
            cells = [[k, _wrap(v, wrap_at)] for k, v in _manifest_rows(run)]
            tab = ax.table(cellText=cells, colWidths=[0.3, 0.7], loc="upper left", cellLoc="left")
            tab.auto_set_font_size(False)
            tab.set_fontsize(7.5)
            row_lines = [max(x.count("\n") + 1 for x in row) for row in cells]
            unit = min(0.06, 1.0 / sum(row_lines))
            for (r, c), cell in tab.get_celld().items():
                cell.set_height(unit * row_lines[r])
                cell.set_edgecolor("#cccccc")
                if c == 0:
                    cell.set_text_props(fontweight="bold")
        # language legend: every script of the study, with resource group
        ax = fig.add_axes([0.03, 0.04, 0.94, 0.22])
        ax.axis("off")
        ax.set_title("Languages (code, native name; * = in a model's trained languages)", fontsize=10, loc="left", fontweight="bold")
        for gi, (gname, langs) in enumerate((("high-resource", HIGH_RESOURCE), ("low-resource", LOW_RESOURCE))):
            ax.text(0.0, 0.82 - gi * 0.45, gname, fontsize=9, fontweight="bold", transform=ax.transAxes, va="top")
            for j, l in enumerate(langs):
                mark = "*" if l in ctx.trained else ""
                ax.text(0.12 + (j % 6) * 0.148, 0.82 - gi * 0.45 - (j // 6) * 0.2, f"{lang_label(l)}{mark}",
                        fontsize=10, transform=ax.transAxes, va="top")  # fmt: skip
        return fig

    return [Page("Title", "Title and run manifest", "title", draw, export=False)]


def _summary_page(ctx: _Ctx) -> Page:
    def draw():
        fig = _new_fig("Summary: what changed", "Auto-generated from the numbers in this report.")
        paras = [_wrap(s, 150).replace("\n", "\n   ") for s in ctx.summary_lines] or ["Nothing to summarize."]
        n_lines = sum(p.count("\n") + 1 for p in paras)
        # line height in figure fraction at 9.5 pt with linespacing 1.35; shrink the font to fit the page
        scale = min(1.0, 0.82 / (n_lines * 0.0225 + len(paras) * 0.012))
        y = 0.88
        for p in paras:
            fig.text(0.04, y, p, fontsize=9.5 * scale, va="top", linespacing=1.35)
            y -= ((p.count("\n") + 1) * 0.0225 + 0.012) * scale
        return fig

    return Page("Summary", "Summary of what changed", "summary", draw, export=False)


def _acc_table_pages(ctx: _Ctx) -> list[Page]:
    pages: list[Page] = []
    csv_rows, group_rows = [], []
    for task in _tasks(ctx.runs):
        rows = accuracy_rows(ctx.runs, task, ctx.overlap)
        groups = group_means(rows)
        for r in rows:
            d, dlo, dhi = r.diff
            rec = [task, r.lang, NATIVE_NAMES.get(r.lang, ""), resource_group(r.lang), int(r.trained)]
            for x in (r.a, r.b):
                rec += [x["n"], x["accuracy"], x["ci95"][0], x["ci95"][1]] if x else ["", math.nan, math.nan, math.nan]
            csv_rows.append(rec + [d, dlo, dhi])
        for g in groups:
            group_rows.append([task, g["group"], g["n_languages"], g["base"], g["aligned"], g["diff"]])
        _summarize_accuracy(ctx, task, rows, groups)
        pages.append(Page("Accuracy table", f"Accuracy table — {task}", f"accuracy_table_{task}",
                          lambda task=task, rows=rows, groups=groups: _draw_acc_table(ctx, task, rows, groups)))  # fmt: skip
    if ctx.compare and csv_rows:
        all_rows = [r for t in _tasks(ctx.runs) for r in accuracy_rows(ctx.runs, t, ctx.overlap)]
        g = {x["group"]: x for x in group_means(all_rows)}
        bits = [f"{name} {_fmt(g[name]['diff'], sign=True)}" for name in ("trained", "not trained", "high-resource", "low-resource")
                if name in g and not math.isnan(g[name]["diff"])]  # fmt: skip
        ctx.summary_lines.insert(0,
            f"• Overall (all tasks, macro mean over task × language): accuracy {_fmt(g['all']['base'])}% → "
            f"{_fmt(g['all']['aligned'])}% (Δ {_fmt(g['all']['diff'], sign=True)} points). Mean Δ by group: {', '.join(bits) or '—'}.")  # fmt: skip
    ctx.write_csv(
        "accuracy.csv",
        ["task", "language", "native_name", "resource_group", "trained",
         "n_base", "acc_base", "ci95_lo_base", "ci95_hi_base",
         "n_aligned", "acc_aligned", "ci95_lo_aligned", "ci95_hi_aligned",
         "diff", "diff_ci95_lo", "diff_ci95_hi"],
        csv_rows,
    )  # fmt: skip
    ctx.write_csv("accuracy_groups.csv", ["task", "group", "n_languages", "mean_acc_base", "mean_acc_aligned", "mean_diff"], group_rows)
    return pages


def _draw_acc_table(ctx: _Ctx, task: str, rows: list[AccRow], groups: list[dict]):
    labels = ctx.runs[0].summary["tasks"].get(task, {}).get("labels") or (
        ctx.runs[-1].summary["tasks"].get(task, {}).get("labels") or []
    )
    sub = (
        f"Few-shot accuracy (%) with 95% intervals. Labels: {', '.join(map(str, labels)) or '—'}. "
        "* = trained language of the aligned model. "
    )
    if ctx.compare:
        sub += ("Δ = aligned − base (Newcombe interval from the two intervals; green/red: interval excludes 0). "
                "Compared on the items both runs have (n); a language only one run has is shown without Δ "
                "and left out of the means.")
    fig = _new_fig(f"Accuracy — {task}", _wrap(sub, 170))
    ax = fig.add_axes([0.03, 0.04, 0.94, _top(fig, 0.88) + 0.02 - 0.04])
    ax.axis("off")
    header = ["language", "group", "n", "base", "base 95% CI"]
    if ctx.compare:
        header += ["aligned", "aligned 95% CI", "Δ", "Δ 95% CI"]
    cells, colors = [], []
    white, grey = "#ffffff", "#eeeeee"
    for r in rows:
        c = [lang_label(r.lang) + (" *" if r.trained else ""), resource_group(r.lang)]
        ns = list(dict.fromkeys(str(x["n"]) for x in (r.a, r.b) if x))
        c.append("/".join(ns) or "—")
        for x in [r.a] + ([r.b] if ctx.compare else []):
            c += [_fmt(x["accuracy"]), f"[{_fmt(x['ci95'][0])}, {_fmt(x['ci95'][1])}]"] if x else ["—", "—"]
        if ctx.compare:
            d, lo, hi = r.diff
            c += [_fmt(d, sign=True), f"[{_fmt(lo, sign=True)}, {_fmt(hi, sign=True)}]"]
        col = [white] * len(c)
        if ctx.compare:
            if not math.isnan(lo) and lo > 0:
                col[-2] = col[-1] = "#d8f0d8"
            elif not math.isnan(hi) and hi < 0:
                col[-2] = col[-1] = "#f6d5d5"
        cells.append(c)
        colors.append(col)
    for g in groups:
        c = [f"mean: {g['group']}", f"{g['n_languages']} langs", "", _fmt(g["base"]), ""]
        if ctx.compare:
            c += [_fmt(g["aligned"]), "", _fmt(g["diff"], sign=True), ""]
        cells.append(c)
        colors.append([grey] * len(c))
    widths = [0.2, 0.08, 0.06, 0.08, 0.13] + ([0.08, 0.13, 0.08, 0.14] if ctx.compare else [])
    tab = ax.table(cellText=cells, colLabels=header, cellColours=colors, colWidths=widths, loc="upper center", cellLoc="center")
    tab.auto_set_font_size(False)
    fs = 8.5 if len(cells) <= 26 else 7
    tab.set_fontsize(fs)
    h = min(0.045, 0.98 / (len(cells) + 1))
    for (ri, ci), cell in tab.get_celld().items():
        cell.set_height(h)
        cell.set_edgecolor("#bbbbbb")
        if ri == 0:
            cell.set_text_props(fontweight="bold")
            cell.set_facecolor("#dde4f0")
        if ci == 0 and ri > 0:
            cell.set_text_props(ha="left")
            cell._loc = "left"
        if ri > len(rows):
            cell.set_text_props(fontweight="bold")
    return fig


def _summarize_accuracy(ctx: _Ctx, task: str, rows: list[AccRow], groups: list[dict]) -> None:
    g = {x["group"]: x for x in groups}
    if ctx.compare and not any(r.paired for r in rows):  # only one run has this task (or no shared item)
        sides = [(ctx.roles[i], key) for i, key in ((0, "base"), (1, "aligned")) if not math.isnan(g["all"][key])]
        ctx.summary_lines.append(f"• {task} (not compared: no item in both runs): " + "; ".join(
            f"{role} mean accuracy {_fmt(g['all'][key])}% over {g['all']['n_languages']} languages" for role, key in sides) + ".")  # fmt: skip
        return
    if not ctx.compare:
        ctx.summary_lines.append(
            f"• {task}: mean accuracy {_fmt(g['all']['base'])}% over {g['all']['n_languages']} languages"
            + (f" (high-resource {_fmt(g['high-resource']['base'])}%, low-resource {_fmt(g['low-resource']['base'])}%)."
               if "high-resource" in g and "low-resource" in g else ".")
        )  # fmt: skip
        return
    parts = [f"• {task}: mean accuracy {_fmt(g['all']['base'])}% → {_fmt(g['all']['aligned'])}% (Δ {_fmt(g['all']['diff'], sign=True)} points)"]
    for name in ("high-resource", "low-resource", "trained", "not trained"):
        if name in g and not math.isnan(g[name]["diff"]):
            parts.append(f"{name} Δ {_fmt(g[name]['diff'], sign=True)}")
    both = [(r, *r.diff) for r in rows if r.paired]
    up = [r.lang for r, d, lo, hi in both if lo > 0]
    down = [r.lang for r, d, lo, hi in both if hi < 0]
    line = "; ".join(parts) + "."
    line += f" Significant gains in {len(up)}/{len(both)} languages ({' '.join(up) or 'none'}), losses in {len(down)} ({' '.join(down) or 'none'})."
    if both:
        best = max(both, key=lambda x: x[1])
        worst = min(both, key=lambda x: x[1])
        line += f" Largest gain: {lang_label(best[0].lang)} {_fmt(best[1], sign=True)}; largest drop/smallest gain: {lang_label(worst[0].lang)} {_fmt(worst[1], sign=True)}."
    ctx.summary_lines.append(line)


def _acc_chart_pages(ctx: _Ctx) -> list[Page]:
    tasks = _tasks(ctx.runs)
    pages = []
    for start in range(0, len(tasks), 3):
        chunk = tasks[start : start + 3]
        pages.append(Page("Accuracy charts", f"Accuracy by language — {', '.join(chunk)}", f"accuracy_bars_{'_'.join(chunk)}",
                          lambda chunk=chunk: _draw_acc_bars(ctx, chunk)))  # fmt: skip
    return pages


def _draw_acc_bars(ctx: _Ctx, tasks: list[str]):
    fig = _new_fig("Accuracy by language", "Bars: accuracy with 95% intervals; grey line: high- | low-resource split; * and bold = trained language; dotted: chance (1 / number of labels).")
    gs = fig.add_gridspec(len(tasks), 1, left=0.06, right=0.98, top=_top(fig, 0.87), bottom=0.1, hspace=0.75)
    for ti, task in enumerate(tasks):
        ax = fig.add_subplot(gs[ti])
        rows = accuracy_rows(ctx.runs, task, ctx.overlap)
        x = np.arange(len(rows))
        w = min(0.8 / len(ctx.runs), 0.3 if len(ctx.runs) == 1 else 0.4)
        for i in range(len(ctx.runs)):
            vals = [(r.a if i == 0 else r.b) for r in rows]
            acc = np.array([v["accuracy"] if v else np.nan for v in vals])
            lo = np.array([v["ci95"][0] if v else np.nan for v in vals])
            hi = np.array([v["ci95"][1] if v else np.nan for v in vals])
            err = np.vstack([np.clip(acc - lo, 0, None), np.clip(hi - acc, 0, None)])
            ax.bar(x + (i - (len(ctx.runs) - 1) / 2) * w, acc, w, yerr=err, color=COLOR[ctx.roles[i]],
                   label=ctx.role_label(i), error_kw={"elinewidth": 0.7, "capsize": 1.5})  # fmt: skip
        n_high = sum(resource_group(r.lang) == "high" for r in rows)
        if 0 < n_high < len(rows):
            ax.axvline(n_high - 0.5, color="#888888", lw=1)
        labels = ctx.runs[0].summary["tasks"].get(task, {}).get("labels") or []
        if labels:
            ax.axhline(1 / len(labels), color="#555555", lw=0.8, ls=":")
        _lang_ticks(ax, [r.lang for r in rows], ctx.trained)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        ax.set_title(task, loc="left", fontsize=10, fontweight="bold")
        ax.grid(axis="y", alpha=0.3)
        ax.set_xlim(-0.6, len(rows) - 0.4)
        if ti == 0:
            ax.legend(fontsize=8, loc="upper right", ncols=2)
    return fig


def _lens_plan(ctx: _Ctx, task: str, per: list[dict]) -> tuple[list[tuple[list[int], list[str]]], list[str]]:
    """Which runs share a page and for which languages: ([run indices], languages) groups, and notes.

    Two runs are overlaid only on the languages both have, and only when those items are the same
    in both runs (lens values are saved as means over each run's items, so they cannot be restricted
    to shared items afterwards): otherwise each run gets its own pages."""
    have = [i for i, p in enumerate(per) if p]
    if len(have) < 2:
        note = [f"Only {ctx.role_label(have[0])} has logit-lens results for {task}."] if ctx.compare else []
        return [(have, order_languages(per[have[0]]))], note
    shared = order_languages([l for l in per[0] if l in per[1]])
    notes = []
    one_sided = {ctx.roles[i]: [l for l in per[i] if l not in per[1 - i]] for i in (0, 1)}
    if any(one_sided.values()):
        notes.append("Languages in one run only, not shown: "
                     + "; ".join(f"{r}: {' '.join(ls)}" for r, ls in one_sided.items() if ls) + ".")  # fmt: skip
    if not shared:
        return [([i], order_languages(per[i])) for i in (0, 1)], notes
    if ctx.overlap.same_items(task, shared):
        groups = [([0, 1], shared)]
    else:
        groups = [([0], shared), ([1], shared)]
        notes.append("The two runs evaluated different items here; lens values are saved as means over each run's own "
                     "items, so they cannot be restricted to the shared items: each run is shown on its own page, not overlaid.")  # fmt: skip
    return groups, notes


def _lens_csv_rows(ctx: _Ctx, task: str, per: list[dict]) -> list[list]:
    """Rows of logit_lens.csv for one task (intervals of probabilities clipped to [0, 1], entropy's at 0)."""
    rows = []
    for i, p in enumerate(per):
        for l, e in p.items():
            series = {q: {s: _arr(e[q][s]) for s in ("mean", "lo", "hi")} for q in ("p_en", "p_target", "entropy_bits")}
            for q in ("p_en", "p_target"):
                for s in ("lo", "hi"):
                    series[q][s] = np.clip(series[q][s], 0.0, 1.0)
            for s in ("lo", "hi"):
                series["entropy_bits"][s] = np.clip(series["entropy_bits"][s], 0.0, None)
            for layer in range(len(series["p_en"]["mean"])):
                rows.append([task, ctx.roles[i], l, layer, e.get("n", "")] + [
                    series[q][s][layer] if layer < len(series[q][s]) else math.nan
                    for q in ("p_en", "p_target", "entropy_bits") for s in ("mean", "lo", "hi")])  # fmt: skip
    return rows


def _lens_pages(ctx: _Ctx) -> list[Page]:
    if not any(r.lens is not None for r in ctx.runs):
        return []
    pages, csv_rows = [], []
    for task in _tasks(ctx.runs, "lens"):
        tdicts = [(r.lens or {}).get("tasks", {}).get(task, {}) for r in ctx.runs]
        per = [t.get("per_language", {}) for t in tdicts]
        rule = next((t["overlap_rule"] for t in tdicts if t.get("overlap_rule")), "token-set")
        csv_rows += _lens_csv_rows(ctx, task, per)
        groups, notes = _lens_plan(ctx, task, per)
        if ctx.depth_axis:
            notes.append(f"The models have {ctx.overlap.n_layers[0]} and {ctx.overlap.n_layers[1]} layers: "
                         "the x axis is relative depth, layer / (layers − 1).")  # fmt: skip
        _summarize_lens(ctx, task, per, groups)
        for idxs, langs in groups:
            for start in range(0, len(langs), 20):
                chunk = langs[start : start + 20]
                suffix = f"_{ctx.roles[idxs[0]]}" if len(groups) > 1 and len(idxs) == 1 else ""
                title = f"Logit lens — {task}" + (f" ({ctx.roles[idxs[0]]})" if suffix else "")
                series = [(i, per[i]) for i in idxs]
                pages.append(Page("Logit lens", title, f"logit_lens_{task}{suffix}_{start // 20}",
                                  lambda t=title, s=series, c=chunk, n=" ".join(notes): _draw_lens(ctx, t, s, c, rule, n)))  # fmt: skip
    ctx.write_csv(
        "logit_lens.csv",
        ["task", "model", "language", "layer", "n"] + [f"{q}_{s}" for q in ("p_en", "p_target", "entropy_bits") for s in ("mean", "lo", "hi")],
        csv_rows,
    )
    return pages


def _no_items_text(e: dict, rule: str) -> str:
    """Why a lens panel has no items (n = 0)."""
    dropped = e.get("n_dropped_overlap") or 0
    if dropped:
        return (f"no items: all {dropped} items' gold labels\nhave overlapping English and target\n"
                f"words ({rule} rule), so none is kept")
    return "no items"


def _lens_strip(ctx: _Ctx, strip, rows: list[np.ndarray], ent_max: float):
    """Entropy strip under a lens panel: one row per run, each on its own layer positions."""
    im = None
    for ri, r in enumerate(rows):
        if not len(r):
            continue
        xs = ctx.layer_x(len(r))
        step = xs[1] - xs[0] if len(xs) > 1 else 1.0
        im = strip.imshow(r[None, :], aspect="auto", cmap="viridis", vmin=0, vmax=ent_max, interpolation="nearest",
                          extent=(xs[0] - step / 2, xs[-1] + step / 2, ri + 0.5, ri - 0.5))  # fmt: skip
    strip.set_ylim(len(rows) - 0.5, -0.5)
    return im


def _lens_panel(ctx: _Ctx, ax, strip, l: str, series: list[tuple[int, dict]], rule: str, ent_max: float):
    """One language's lens panel (curves of every run in `series`) and its entropy strip."""
    ent_rows, ns, empty = [], [], []
    x_max = 0.0
    for i, p in series:
        e = p.get(l)
        if e is None:
            continue
        ns.append(f"{e.get('n', '?')}")
        if e.get("n") == 0:
            empty.append((f"{ctx.roles[i]}: " if len(series) > 1 else "") + _no_items_text(e, rule))
        for q in ("p_en", "p_target"):
            m, lo, hi = (_arr(e[q][s]) for s in ("mean", "lo", "hi"))
            xs = ctx.layer_x(len(m))
            x_max = max(x_max, float(xs[-1]) if len(xs) else 0.0)
            ax.plot(xs, m, color=COLOR[q], ls=LINESTYLE[ctx.roles[i]], lw=1.2)
            if len(lo) == len(m) and len(hi) == len(m):
                ax.fill_between(xs, np.clip(lo, 0, 1), np.clip(hi, 0, 1), color=COLOR[q], alpha=0.12, lw=0)
        ent_rows.append(_arr(e["entropy_bits"]["mean"]))
    if empty:
        ax.text(0.5, 0.5, "\n".join(empty), transform=ax.transAxes, ha="center", va="center", fontsize=6.5,
                color="#444444", bbox={"facecolor": "white", "edgecolor": "#bbbbbb", "alpha": 0.9})  # fmt: skip
    ax.set_title(f"{lang_label(l)}{' *' if l in ctx.trained else ''}  (n={'/'.join(ns)})", fontsize=8.5, pad=3)
    return _lens_strip(ctx, strip, ent_rows, ent_max), x_max


def _draw_lens(ctx: _Ctx, title: str, series: list[tuple[int, dict]], langs: list[str], rule: str, note: str = ""):
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig = _new_fig(
        title,
        "Probability of the English label word (purple) vs the target-language label word (green) read out at each layer "
        "(mean with 95% interval). Strip below each panel: mean next-token entropy (bits) per layer"
        + (", rows = base / aligned." if len(series) > 1 else ".") + (f" {note}" if note else ""),
    )
    n = len(langs)
    ncols = 5 if n > 8 else min(max(n, 1), 4)
    nrows = math.ceil(n / ncols)
    outer = fig.add_gridspec(nrows, ncols, left=0.05, right=0.93, top=_top(fig, 0.83), bottom=0.1, hspace=0.55, wspace=0.25)
    ent = [_arr(e["entropy_bits"]["mean"]) for _, p in series for e in p.values()]
    ent_max = max([float(np.nanmax(m)) for m in ent if np.isfinite(m).any()] or [1.0]) or 1.0
    im = None
    xlabel = "relative depth" if ctx.depth_axis else "layer"
    for k, l in enumerate(langs):
        sub = outer[k // ncols, k % ncols].subgridspec(2, 1, height_ratios=[5, 1], hspace=0.08)
        ax = fig.add_subplot(sub[0])
        strip = fig.add_subplot(sub[1], sharex=ax)
        panel_im, x_max = _lens_panel(ctx, ax, strip, l, series, rule, ent_max)
        im = panel_im or im
        ax.set_ylim(-0.02, 1.02)
        ax.tick_params(labelsize=6.5, labelbottom=False, labelleft=(k % ncols == 0))
        ax.grid(alpha=0.25)
        strip.set_yticks([])
        strip.tick_params(labelsize=6.5)
        if not ctx.depth_axis:
            _int_layers(strip)
        if k // ncols == nrows - 1 or k + ncols >= n:
            strip.set_xlabel(xlabel, fontsize=7)
        if x_max:
            pad = 0.5 if not ctx.depth_axis else 0.03
            ax.set_xlim(-pad, x_max + pad)
    handles = [
        Line2D([], [], color=COLOR["p_en"], lw=1.5, label="P(English label)"),
        Line2D([], [], color=COLOR["p_target"], lw=1.5, label="P(target-language label)"),
        Patch(color="#cccccc", alpha=0.6, label="95% interval"),
    ]
    for i, _ in series:
        handles.append(Line2D([], [], color="#333333", ls=LINESTYLE[ctx.roles[i]], label=ctx.role_label(i)))
    fig.legend(handles=handles, loc="lower center", ncols=len(handles), fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.02))
    if im is not None:
        cax = fig.add_axes([0.945, 0.1, 0.01, 0.3])
        fig.colorbar(im, cax=cax).set_label("entropy (bits)", fontsize=7)
        cax.tick_params(labelsize=6.5)
    return fig


def _peak(e: dict, q: str) -> tuple[float, int]:
    m = _arr(e[q]["mean"])
    if not np.isfinite(m).any():
        return math.nan, -1
    i = int(np.nanargmax(m))
    return float(m[i]), i


def _summarize_lens(ctx: _Ctx, task: str, per: list[dict], groups: list[tuple[list[int], list[str]]]) -> None:
    """One summary line per task: each run's mean peak of P(English label) and last-layer P(target),
    over the non-English languages shown on the pages (shared languages when both runs have them)."""
    bits = []
    shown = {i: langs for idxs, langs in groups for i in idxs}
    for i, p in enumerate(per):
        non_en = [p[l] for l in shown.get(i, []) if l in p and l != "en" and p[l].get("n") != 0]
        peaks = [_peak(e, "p_en") for e in non_en]
        peaks = [(v, li, len(_arr(e["p_en"]["mean"]))) for (v, li), e in zip(peaks, non_en) if li >= 0]
        finals = [_arr(e["p_target"]["mean"])[-1] for e in non_en if len(e["p_target"]["mean"])]
        finals = [f for f in finals if np.isfinite(f)]
        if not peaks:
            continue
        rel = np.mean([li / max(L - 1, 1) for _, li, L in peaks])
        bits.append(
            f"{ctx.roles[i]}: English-label probability peaks at {np.mean([v for v, _, _ in peaks]):.2f} on average "
            f"(at {rel * 100:.0f}% depth), target-language label at the last layer {np.mean(finals) if finals else math.nan:.2f}"
        )
    if bits:
        own = " (each run on its own items, not compared)" if len(bits) > 1 and not any(len(ix) > 1 for ix, _ in groups) else ""
        ctx.summary_lines.append(f"• Logit lens, {task} (non-English languages){own}: " + "; ".join(bits) + ".")


def _sim_metrics(per: list[dict]) -> list[str]:
    entries = [e for p in per for e in p.values()]
    return [m for m in SIM_METRICS if entries and all(m in e for e in entries)][:3] or [
        m for m in SIM_METRICS if any(m in e for e in entries)
    ][:3]


def _lang_colors(langs: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    allk = list(HIGH_RESOURCE + LOW_RESOURCE)
    out = {}
    for l in langs:
        idx = allk.index(l) if l in allk else len(allk) + langs.index(l)
        out[l] = cmap(idx % 20)
    return out


def _sim_plan(ctx: _Ctx, task: str, per: list[dict]) -> tuple[list[str], bool, list[str]]:
    """(languages shown, whether aligned − base is drawn, notes) for one task's similarity pages.

    With two runs: the languages both have; the difference only when their items are the same
    (similarity values are saved per run, so they cannot be restricted to shared items) and the
    models have the same number of layers."""
    have = [i for i, p in enumerate(per) if p]
    if len(have) < 2:
        note = [f"Only {ctx.role_label(have[0])} has similarity results for {task}."] if ctx.compare else []
        return order_languages(per[have[0]]), False, note
    langs = order_languages([l for l in per[0] if l in per[1]])
    if not langs:
        return order_languages([l for p in per for l in p]), False, ["The two runs have no language in common here."]
    notes = []
    one_sided = {ctx.roles[i]: [l for l in per[i] if l not in per[1 - i]] for i in (0, 1)}
    if any(one_sided.values()):
        notes.append("Languages in one run only, not shown: "
                     + "; ".join(f"{r}: {' '.join(ls)}" for r, ls in one_sided.items() if ls) + ".")  # fmt: skip
    same_items = ctx.overlap.same_items(task, langs)
    if not same_items:
        notes.append("The two runs evaluated different items here; similarities are saved per run and cannot be "
                     "restricted to the shared items: shown side by side, no difference drawn.")  # fmt: skip
    if ctx.depth_axis:
        notes.append(f"The models have {ctx.overlap.n_layers[0]} and {ctx.overlap.n_layers[1]} layers: side by side "
                     "against relative depth, layer / (layers − 1); no layer-by-layer difference.")  # fmt: skip
    return langs, bool(langs) and same_items and not ctx.depth_axis, notes


def _sim_csv_rows(ctx: _Ctx, task: str, tdicts: list[dict]) -> tuple[list[list], list[list]]:
    """Rows of similarity.csv and similarity_pairwise.csv for one task."""
    rows, pair_rows = [], []
    for i, t in enumerate(tdicts):
        for l, e in t.get("per_language", {}).items():
            L = max(len(v) for v in e.values() if isinstance(v, list))
            for layer in range(L):
                rows.append([task, ctx.roles[i], l, layer] + [
                    (_arr(e[m])[layer] if m in e and layer < len(e[m]) else math.nan) for m in SIM_METRICS])  # fmt: skip
        pw = t.get("pairwise")
        if pw:
            for key in ("cka_mean", "cosine_mean"):
                for layer, mat in zip(pw.get("layers", []), pw.get(key, [])):
                    for a, row in zip(pw["languages"], mat):
                        for b, v in zip(pw["languages"], row):
                            pair_rows.append([task, ctx.roles[i], key, layer, a, b, v])
    return rows, pair_rows


def _similarity_pages(ctx: _Ctx) -> list[Page]:
    if not any(r.similarity is not None for r in ctx.runs):
        return []
    pages, csv_rows, pair_rows = [], [], []
    for task in _tasks(ctx.runs, "similarity"):
        tdicts = [(r.similarity or {}).get("tasks", {}).get(task, {}) for r in ctx.runs]
        per = [t.get("per_language", {}) for t in tdicts]
        langs, diff, notes = _sim_plan(ctx, task, per)
        metrics = _sim_metrics([{l: e for l, e in p.items() if l in langs} for p in per])
        rows, prs = _sim_csv_rows(ctx, task, tdicts)
        csv_rows += rows
        pair_rows += prs
        _summarize_similarity(ctx, task, per, langs, metrics, compared=diff or not ctx.compare)
        note = " ".join(notes)
        pages.append(Page("Similarity", f"Similarity to English by layer — {task}", f"similarity_curves_{task}",
                          lambda task=task, per=per, langs=langs, metrics=metrics, diff=diff, note=note:
                          _draw_sim_curves(ctx, task, per, langs, metrics, diff, note)))  # fmt: skip
        if any(t.get("pairwise") for t in tdicts):
            pages.append(Page("Similarity", f"Language × language similarity — {task}", f"similarity_heatmaps_{task}",
                              lambda task=task, tdicts=tdicts, langs=langs, diff=diff, note=note:
                              _draw_sim_heatmaps(ctx, task, tdicts, langs, diff, note)))  # fmt: skip
    ctx.write_csv("similarity.csv", ["task", "model", "language", "layer", *SIM_METRICS], csv_rows)
    ctx.write_csv("similarity_pairwise.csv", ["task", "model", "metric", "layer", "language_a", "language_b", "value"], pair_rows)
    return pages


def _sim_curve(per: list[dict], col, l: str, m: str) -> np.ndarray | None:
    """One language's curve of metric `m` for run `col`, or aligned − base for col "diff"."""
    if col == "diff":
        if l not in per[0] or l not in per[1] or m not in per[0][l] or m not in per[1][l]:
            return None
        a, b = _arr(per[0][l][m]), _arr(per[1][l][m])
        k = min(len(a), len(b))
        return b[:k] - a[:k]
    if l not in per[col] or m not in per[col][l]:
        return None
    return _arr(per[col][l][m])


def _draw_sim_curves(ctx: _Ctx, task: str, per: list[dict], langs: list[str], metrics: list[str], diff: bool, note: str = ""):
    from matplotlib.lines import Line2D

    cols = [i for i, p in enumerate(per) if p] + (["diff"] if diff else [])
    fig = _new_fig(
        f"Similarity to English by layer — {task}",
        "Each line: one language's representation similarity to the parallel English inputs. Solid: high-resource, "
        "dashed: low-resource." + (" Right column: aligned − base." if diff else "") + (f" {note}" if note else ""),
    )
    gs = fig.add_gridspec(len(metrics), len(cols), left=0.06, right=0.83, top=_top(fig, 0.86), bottom=0.09, hspace=0.38, wspace=0.22)
    colors = _lang_colors(langs)
    for mi, m in enumerate(metrics):
        for ci, col in enumerate(cols):
            ax = fig.add_subplot(gs[mi, ci])
            for l in langs:
                y = _sim_curve(per, col, l, m)
                if y is None:
                    continue
                ls = "-" if resource_group(l) == "high" else "--"
                ax.plot(ctx.layer_x(len(y)), y, color=colors[l], ls=ls, lw=1.6 if l in ctx.trained else 1.0)
            if col == "diff":
                ax.axhline(0, color="#444444", lw=0.7)
            ax.grid(alpha=0.25)
            ax.tick_params(labelsize=7)
            if mi == 0:
                ax.set_title("aligned − base" if col == "diff" else ctx.role_label(col), fontsize=9)
            if ci == 0:
                ax.set_ylabel(m.replace("_", " "), fontsize=8)
            if not ctx.depth_axis:
                _int_layers(ax)
            if mi == len(metrics) - 1:
                ax.set_xlabel("relative depth" if ctx.depth_axis else "layer", fontsize=8)
    handles = [Line2D([], [], color=colors[l], ls="-" if resource_group(l) == "high" else "--",
                      lw=1.6 if l in ctx.trained else 1.0, label=lang_label(l) + (" *" if l in ctx.trained else ""))
               for l in langs]  # fmt: skip
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False, bbox_to_anchor=(0.99, 0.47), title="language", title_fontsize=8)
    return fig


def _pair_matrix(p: dict, key: str, layer: int, keep: list[str]) -> tuple[np.ndarray, list[str]] | None:
    """A run's language × language matrix at `layer` for the languages in `keep` (diagonal masked,
    languages in report order)."""
    if not p or layer not in p.get("layers", []) or key not in p:
        return None
    idx = p["layers"].index(layer)
    m = _offdiag([[np.nan if v is None else v for v in r] for r in p[key][idx]])
    langs = list(p["languages"])
    order = [langs.index(l) for l in order_languages(langs) if l in keep]
    return m[np.ix_(order, order)], [langs[o] for o in order]


def _heatmap_cells(ctx: _Ctx, pws: list[dict], key: str, diff: bool, langs: list[str]) -> tuple[list, dict, tuple[float, float]]:
    """(row keys, {(row, col): (matrix, languages, layer)}, (vmin, vmax)) of the heatmap page.

    Each run's row uses its own chosen layers (at most 4, evenly spaced); the aligned − base row
    needs the same layers and languages in both."""
    rows = [i for i, p in enumerate(pws) if p]
    layers = {i: list(pws[i].get("layers", [])) for i in rows}
    for i in rows:
        if len(layers[i]) > 4:  # keep the page readable: 4 evenly spaced chosen layers
            layers[i] = [layers[i][int(round(x))] for x in np.linspace(0, len(layers[i]) - 1, 4)]
    if diff and len(rows) == 2 and layers[0] == layers[1]:
        rows.append("diff")
        layers["diff"] = layers[0]
    cells: dict = {}
    vmin, vmax = 1.0, 0.0
    for ri, row in enumerate(rows):
        for li, layer in enumerate(layers[row]):
            if row == "diff":
                a, b = _pair_matrix(pws[0], key, layer, langs), _pair_matrix(pws[1], key, layer, langs)
                if a is not None and b is not None and a[1] == b[1]:
                    cells[ri, li] = (b[0] - a[0], a[1], layer)
                continue
            r = _pair_matrix(pws[row], key, layer, langs)
            if r is not None:
                cells[ri, li] = (*r, layer)
                if np.isfinite(r[0]).any():
                    vmin, vmax = min(vmin, float(np.nanmin(r[0]))), max(vmax, float(np.nanmax(r[0])))
    return rows, cells, (vmin, vmax)


def _draw_sim_heatmaps(ctx: _Ctx, task: str, tdicts: list[dict], langs: list[str], diff: bool = True, note: str = ""):
    pws = [t.get("pairwise") or {} for t in tdicts]
    key = "cka_mean" if all("cka_mean" in p for p in pws if p) else "cosine_mean"
    rows, cells, (vmin, vmax) = _heatmap_cells(ctx, pws, key, diff, langs)
    fig = _new_fig(f"Language × language similarity — {task}",
                   f"{key.replace('_', ' ')} between languages' representations at chosen layers (diagonal omitted)."
                   + (" Bottom row: aligned − base." if "diff" in rows else "") + (f" {note}" if note else ""))  # fmt: skip
    n_cols = max([li + 1 for (_, li) in cells] or [1])
    gs = fig.add_gridspec(len(rows), n_cols, left=0.06, right=0.92, top=_top(fig, 0.86), bottom=0.05, hspace=0.3, wspace=0.15)
    diffs = [np.abs(m) for (ri, _), (m, _, _) in cells.items() if rows[ri] == "diff" and np.isfinite(m).any()]
    dmax = max([float(np.nanmax(d)) for d in diffs] or [1e-9])
    im_main = im_diff = None
    for (ri, li), (m, names, layer) in cells.items():
        ax = fig.add_subplot(gs[ri, li])
        if rows[ri] == "diff":
            im_diff = ax.imshow(m, cmap="RdBu_r", vmin=-dmax, vmax=dmax, interpolation="nearest")
        else:
            im_main = ax.imshow(m, cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
        fs = 5.5 if len(names) > 12 else 7
        ax.set_xticks(range(len(names)))
        ax.set_yticks(range(len(names)))
        if ri == len(rows) - 1:
            ax.set_xticklabels(names, fontsize=fs, rotation=90)
        else:
            ax.tick_params(labelbottom=False)
        if li == 0:
            ax.set_yticklabels(names, fontsize=fs)
        else:
            ax.tick_params(labelleft=False)
        top = "aligned − base" if rows[ri] == "diff" else ctx.roles[rows[ri]]
        ax.set_title(f"{top}, layer {layer}", fontsize=8, pad=3)
    if im_main is not None:
        cax = fig.add_axes([0.935, 0.5, 0.01, 0.33])
        fig.colorbar(im_main, cax=cax).ax.tick_params(labelsize=7)
    if im_diff is not None:
        cax = fig.add_axes([0.935, 0.07, 0.01, 0.22])
        fig.colorbar(im_diff, cax=cax).ax.tick_params(labelsize=7)
    return fig


def _summarize_similarity(ctx: _Ctx, task: str, per: list[dict], langs: list[str], metrics: list[str], compared: bool = True) -> None:
    if not metrics:
        return
    m = metrics[0]
    bits = []
    for i, p in enumerate(per):
        vals = []
        for l, e in p.items():
            if l == "en" or l not in langs or m not in e:
                continue
            a = _arr(e[m])
            if len(a):
                mid = a[len(a) // 4 : max(3 * len(a) // 4, len(a) // 4 + 1)]
                if np.isfinite(mid).any():
                    vals.append(float(np.nanmean(mid)))
        if vals:
            bits.append(f"{ctx.roles[i]} {np.mean(vals):.3f}")
    if bits:
        own = " (each run on its own items or layers, not compared)" if len(bits) > 1 and not compared else ""
        ctx.summary_lines.append(f"• Similarity to English, {task} ({m.replace('_', ' ')}, mean over middle layers and non-English languages){own}: " + ", ".join(bits) + ".")


def _neuron_pages(ctx: _Ctx) -> list[Page]:
    nds = [r.neurons for r in ctx.runs]
    if not any(nds):
        return []
    pages = []
    rows = []
    for i, nd in enumerate(nds):
        if not nd:
            continue
        for l in nd["languages"]:
            for layer, c in enumerate(_arr(nd["specific"][l]["count_per_layer"])):
                rows.append([ctx.roles[i], l, layer, c])
    ctx.write_csv("neurons_per_layer.csv", ["model", "language", "layer", "specific_count"], rows)
    ctx.write_csv("neurons_options.csv", ["model", "option", "value"], _neuron_option_rows(ctx))
    pages.append(Page("Neurons", "Language-specific neurons per layer", "neurons_per_layer", lambda: _draw_neuron_counts(ctx)))
    if any(nd and nd.get("overlap") for nd in nds):
        pages.append(Page("Neurons", "Neuron overlap between languages", "neurons_overlap", lambda: _draw_neuron_overlap(ctx)))
    if ctx.compare and all(nds):
        change, why_not = _neuron_change(ctx)
        if change is None:
            ctx.summary_lines.append(f"• Neuron change between the models not shown: {why_not}.")
            return pages
        ctx.write_csv("neurons_change.csv", ["language", "count_base", "count_aligned", "jaccard_specific"],
                      [[l, v["count_a"], v["count_b"], v["jaccard_specific"]] for l, v in change["per_language"].items()])  # fmt: skip
        pages.append(Page("Neurons", "Neuron change between models", "neurons_change", lambda: _draw_neuron_change(ctx, change)))
        ja = [v["jaccard_specific"] for v in change["per_language"].values() if not math.isnan(v["jaccard_specific"])]
        ta = sum(v["count_a"] for v in change["per_language"].values())
        tb = sum(v["count_b"] for v in change["per_language"].values())
        ctx.summary_lines.append(
            f"• Language-specific neurons: {ta} (base) → {tb} (aligned) in total over {len(change['per_language'])} languages; "
            f"mean Jaccard overlap of each language's specific-neuron set between the models {np.mean(ja) if ja else math.nan:.2f}."
            + (f" {change['note']}" if change.get("note") else "")
        )
    else:
        for i, nd in enumerate(nds):
            if nd:
                ctx.summary_lines.append(f"• Language-specific neurons ({ctx.roles[i]}): {sum(nd['specific'][l]['count'] for l in nd['languages'])} in total over {len(nd['languages'])} languages.")
    return pages


#: Neuron options shown on the page (the rest, e.g. sources, go to neurons_options.csv).
NEURON_OPTIONS_SHOWN = ("filter_rate", "top_rate", "top_rate_of", "activation_bar_ratio", "active_threshold")


def _neuron_option_rows(ctx: _Ctx) -> list[list]:
    """neurons_options.csv rows: every option, threshold and source of each run's neuron analysis."""
    rows = []
    for i, r in enumerate(ctx.runs):
        opts = (r.neurons or {}).get("options") or {}
        for k, v in opts.items():
            if isinstance(v, dict):
                rows += [[ctx.roles[i], f"{k}.{kk}", vv] for kk, vv in v.items()]
            else:
                rows.append([ctx.roles[i], k, v])
    return rows


def _neuron_options_text(nd: dict) -> str:
    """Short one-line options of a neuron analysis: the LAPE settings and how many neurons were selected."""
    opts = nd.get("options") or {}
    shown = [f"{k}={opts[k]}" for k in NEURON_OPTIONS_SHOWN if k in opts]
    shown += [f"{k}={v}" for k, v in opts.items() if k not in NEURON_OPTIONS_SHOWN and not isinstance(v, (dict, list))]
    th = opts.get("thresholds") or {}
    if "n_selected" in th and "n_neurons" in th:
        shown.append(f"selected {th['n_selected']} of {th['n_neurons']} neurons")
    return ", ".join(shown) or "—"


def _comparable_neuron_languages(ctx: _Ctx) -> list[str]:
    """Languages whose neuron statistics come from the same items in both runs: every (task,
    language) cell of the language is in both runs with identical item sets."""
    a, b = ctx.runs[0], ctx.runs[1]
    langs = [l for l in a.neurons["languages"] if l in b.neurons["languages"]]
    out = []
    for l in langs:
        cells_a = {c for c in a.predictions if c[1] == l}
        cells_b = {c for c in b.predictions if c[1] == l}
        if cells_a == cells_b and all(c in ctx.overlap.same for c in cells_a):
            out.append(l)
    return order_languages(out)


def _read_comparison(ctx: _Ctx) -> dict | None:
    """comparison.json written by `alignlens analyze --compare` for exactly these two runs, else None.

    It is looked for in the runs' common parent folder and used only when its per-language counts
    match both runs' neurons.json (so it belongs to them)."""
    pa, pb = (r.path.resolve().parent for r in ctx.runs)
    cand = pa / "comparison.json"
    if pa != pb or not cand.is_file():
        return None
    comp = _load_json(cand)
    _check_comparison(comp, cand)
    a, b = ctx.runs[0].neurons, ctx.runs[1].neurons
    per = comp.get("per_language")
    if not isinstance(per, dict) or not per:
        return None
    for l, v in per.items():
        if (l not in a["specific"] or l not in b["specific"] or v.get("count_a") != a["specific"][l]["count"]
                or v.get("count_b") != b["specific"][l]["count"]):  # fmt: skip
            return None
    return comp


def _neuron_change(ctx: _Ctx) -> tuple[dict | None, str]:
    """Per comparable language: counts, per-layer counts and Jaccard of specific-neuron sets, and the
    per-layer activation-probability change, from comparison.json (written by `neurons.compare_neurons`)
    when it belongs to these runs, else from the two neurons.json files. Returns (change, "") or
    (None, why not)."""
    a, b = ctx.runs[0].neurons, ctx.runs[1].neurons
    if (a["n_layers"], a.get("d_mlp")) != (b["n_layers"], b.get("d_mlp")):
        return None, (f"the models' MLPs differ ({a['n_layers']} layers × {a.get('d_mlp')} vs {b['n_layers']} × "
                      f"{b.get('d_mlp')}), so neuron identities do not correspond")  # fmt: skip
    langs = _comparable_neuron_languages(ctx)
    if not langs:
        return None, "no language has the same items in both runs (neuron statistics are per run, not per item)"
    comp = _read_comparison(ctx)
    per = {}
    for l in langs:
        if comp is not None and l in comp["per_language"]:
            v = comp["per_language"][l]
            j = v.get("jaccard_specific")
            per[l] = {"count_a": v["count_a"], "count_b": v["count_b"], "jaccard_specific": math.nan if j is None else j,
                      "count_per_layer_a": _arr(v["count_per_layer_a"]), "count_per_layer_b": _arr(v["count_per_layer_b"])}  # fmt: skip
            continue
        sa = {tuple(x) for x in a["specific"][l]["neurons"]}
        sb = {tuple(x) for x in b["specific"][l]["neurons"]}
        union = sa | sb
        per[l] = {
            "count_a": a["specific"][l]["count"],
            "count_b": b["specific"][l]["count"],
            "jaccard_specific": len(sa & sb) / len(union) if union else math.nan,
            "count_per_layer_a": _arr(a["specific"][l]["count_per_layer"]),
            "count_per_layer_b": _arr(b["specific"][l]["count_per_layer"]),
        }
    out: dict = {"per_language": per, "act_change": None, "note": ""}
    left_out = [l for l in a["languages"] if l in b["languages"] and l not in langs]
    if left_out:
        out["note"] = f"Left out (different items in the two runs): {' '.join(left_out)}."
    key = "mean_abs_activation_probability_change_per_layer"
    if comp is not None and key in comp and set(comp.get("languages") or comp["per_language"]) <= set(langs):
        out["act_change"] = _arr(comp[key])
    return out, ""


def _draw_neuron_counts(ctx: _Ctx):
    nds = [(i, r.neurons) for i, r in enumerate(ctx.runs) if r.neurons]
    texts = [_neuron_options_text(nd) for _, nd in nds]
    opts = texts[0] if len(set(texts)) == 1 else "; ".join(f"{ctx.roles[i]}: {t}" for (i, _), t in zip(nds, texts))
    subtitle = _wrap(f"MLP neurons specific to one language (LAPE; d_mlp = {nds[0][1].get('d_mlp', '?')}). Options: {opts}. "
                     "All options, thresholds and their sources: neurons_options.csv.", 175)  # fmt: skip
    fig = _new_fig("Language-specific neurons per layer", subtitle)
    gs = fig.add_gridspec(2, len(nds), left=0.11, right=0.95, top=_top(fig, 0.86), bottom=0.11, hspace=0.3, wspace=0.3, height_ratios=[3, 2])
    vmax = max(float(np.nanmax(_arr(nd["specific"][l]["count_per_layer"]))) if len(nd["specific"][l]["count_per_layer"]) else 0
               for _, nd in nds for l in nd["languages"]) or 1.0  # fmt: skip
    im = None
    for k, (i, nd) in enumerate(nds):
        langs = order_languages(nd["languages"])
        L = nd["n_layers"]
        mat = np.full((len(langs), L), np.nan)
        for li, l in enumerate(langs):
            c = _arr(nd["specific"][l]["count_per_layer"])[:L]
            mat[li, : len(c)] = c
        ax = fig.add_subplot(gs[0, k])
        im = ax.imshow(mat, aspect="auto", cmap="magma_r", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_yticks(range(len(langs)))
        ax.set_yticklabels([lang_label(l) for l in langs], fontsize=6.5 if len(langs) > 12 else 8)
        ax.set_xlabel("layer", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.set_title(f"{ctx.role_label(i)}: specific neurons per layer", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02).ax.tick_params(labelsize=7)
    ax = fig.add_subplot(gs[1, :])
    langs = order_languages([l for _, nd in nds for l in nd["languages"]])
    x = np.arange(len(langs))
    w = min(0.8 / len(nds), 0.3 if len(nds) == 1 else 0.4)
    for k, (i, nd) in enumerate(nds):
        vals = [nd["specific"][l]["count"] if l in nd["specific"] else np.nan for l in langs]
        ax.bar(x + (k - (len(nds) - 1) / 2) * w, vals, w, color=COLOR[ctx.roles[i]], label=ctx.role_label(i))
    _lang_ticks(ax, langs, ctx.trained)
    ax.set_ylabel("specific neurons (total)", fontsize=8)
    ax.set_xlim(-0.6, len(langs) - 0.4)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2, frameon=False)
    return fig


def _overlap_matrix(nd: dict, kind: str) -> tuple[np.ndarray, list[str]] | None:
    ov = (nd.get("overlap") or {}).get(kind)
    if not ov or "overall" not in ov:
        return None
    langs = list(nd["languages"])
    m = _offdiag([[np.nan if v is None else v for v in r] for r in ov["overall"]])
    if m.shape != (len(langs), len(langs)):
        return None
    order = [langs.index(l) for l in order_languages(langs)]
    return m[np.ix_(order, order)], [langs[o] for o in order]


def _draw_neuron_overlap(ctx: _Ctx):
    nds = [(i, r.neurons) for i, r in enumerate(ctx.runs) if r.neurons]
    kinds = [k for k in ("specific", "active") if any(_overlap_matrix(nd, k) for _, nd in nds)]
    fig = _new_fig("Neuron overlap between languages",
                   "Overlap of language-specific neurons and of active neurons between pairs of languages (all layers; values as saved by the analysis; diagonal omitted).")  # fmt: skip
    gs = fig.add_gridspec(len(kinds), len(nds), left=0.07, right=0.95, top=_top(fig, 0.86), bottom=0.06, hspace=0.35, wspace=0.2)
    for ki, kind in enumerate(kinds):
        for k, (i, nd) in enumerate(nds):
            r = _overlap_matrix(nd, kind)
            if r is None:
                continue
            m, langs = r
            ax = fig.add_subplot(gs[ki, k])
            im = ax.imshow(m, cmap="Blues", interpolation="nearest")
            fs = 6 if len(langs) > 12 else 8
            ax.set_xticks(range(len(langs)))
            ax.set_xticklabels(langs, fontsize=fs, rotation=90)
            ax.set_yticks(range(len(langs)))
            ax.set_yticklabels(langs, fontsize=fs)
            ax.set_title(f"{ctx.role_label(i)}: {kind} neurons", fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=7)
    return fig


def _draw_neuron_change(ctx: _Ctx, change: dict):
    per = change["per_language"]
    langs = list(per)
    fig = _new_fig("Neuron change between models",
                   "Specific-neuron counts per model, their overlap (Jaccard of the (layer, index) sets) per language, and totals per layer.")  # fmt: skip
    has_act = change["act_change"] is not None and len(change["act_change"]) > 0
    gs = fig.add_gridspec(2, 2, left=0.07, right=0.94, top=_top(fig, 0.85), bottom=0.08, hspace=0.6, wspace=0.2)
    x = np.arange(len(langs))
    ax = fig.add_subplot(gs[0, :])
    ax.bar(x - 0.2, [per[l]["count_a"] for l in langs], 0.4, color=COLOR["base"], label=ctx.role_label(0))
    ax.bar(x + 0.2, [per[l]["count_b"] for l in langs], 0.4, color=COLOR["aligned"], label=ctx.role_label(1))
    ax2 = ax.twinx()
    ax2.plot(x, [per[l]["jaccard_specific"] for l in langs], "o-", color="#333333", ms=3, lw=1, label="Jaccard (right axis)")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("Jaccard", fontsize=8)
    _lang_ticks(ax, langs, ctx.trained)
    ax.set_ylabel("specific neurons", fontsize=8)
    ax.set_xlim(-0.6, len(langs) - 0.4)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=3, frameon=False)
    ax.set_title("per language", fontsize=9, loc="left")
    ax = fig.add_subplot(gs[1, 0] if has_act else gs[1, :])
    ta = np.nansum(np.array([per[l]["count_per_layer_a"] for l in langs if len(per[l]["count_per_layer_a"])]), axis=0)
    tb = np.nansum(np.array([per[l]["count_per_layer_b"] for l in langs if len(per[l]["count_per_layer_b"])]), axis=0)
    ax.plot(np.arange(np.size(ta)), ta, color=COLOR["base"], label=ctx.role_label(0))
    ax.plot(np.arange(np.size(tb)), tb, color=COLOR["aligned"], ls="--", label=ctx.role_label(1))
    ax.set_xlabel("layer", fontsize=8)
    _int_layers(ax)
    ax.set_ylabel("specific neurons, all languages", fontsize=8)
    ax.set_title("per layer", fontsize=9, loc="left")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if has_act:
        ax = fig.add_subplot(gs[1, 1])
        ax.plot(np.arange(len(change["act_change"])), change["act_change"], color="#333333")
        ax.set_xlabel("layer", fontsize=8)
        ax.set_ylabel("mean |Δ activation probability|", fontsize=8)
        ax.set_title("activation-probability change (comparison.json)", fontsize=9, loc="left")
        ax.grid(alpha=0.3)
    return fig


def _contents_page(pages: list[Page]) -> Page:
    def draw():
        fig = _new_fig("Contents")
        lines = []
        last = None
        for no, p in enumerate(pages, start=1):
            if p.section != last:
                lines.append(f"{p.section}")
                last = p.section
            lines.append(f"      {p.title}  ·  page {no}")
        ncol = 1 if len(lines) <= 40 else 2
        per_col = math.ceil(len(lines) / ncol)
        for c in range(ncol):
            fig.text(0.05 + c * 0.47, 0.88, "\n".join(lines[c * per_col : (c + 1) * per_col]), fontsize=9, va="top", linespacing=1.45)
        return fig

    return Page("Contents", "Contents", "contents", draw, export=False)


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------


def _default_out(run_dir: Path, compare_dir: Path | None) -> Path:
    if compare_dir is not None and Path(compare_dir).resolve().parent == Path(run_dir).resolve().parent:
        return Path(run_dir).parent / "report.pdf"
    return Path(run_dir) / "report.pdf"


def overlap_lines(ctx: _Ctx) -> list[str]:
    """Summary lines saying what two runs were compared on (nothing for a single run)."""
    ov = ctx.overlap
    if ov is None:
        return []
    tasks = list(dict.fromkeys(t for t, _ in ov.shared))
    langs = order_languages({l for _, l in ov.shared})
    where = f"{len(ov.shared)} task × language cells: {', '.join(tasks)}; {len(langs)} languages: {' '.join(langs)}"
    if not ov.only_a and not ov.only_b:
        lines = [f"• Compared on the same {ov.n_shared} items in both runs ({where})."]
    else:
        lines = [
            f"• Compared on {ov.n_shared} shared items ({where}); every comparison (tables, Δ, this summary) uses only "
            f"these, with both runs' accuracies recomputed on them. {ctx.roles[0]} only: {sum(ov.only_a.values())} items"
            + (f" ({_cells_text(ov.only_a)})" if ov.only_a else "")
            + f"; {ctx.roles[1]} only: {sum(ov.only_b.values())} items" + (f" ({_cells_text(ov.only_b)})" if ov.only_b else "") + "."
        ]  # fmt: skip
    if not ov.same_depth:
        lines.append(f"• The models have different numbers of layers ({ov.n_layers[0]} vs {ov.n_layers[1]}): per-layer "
                     "curves are drawn against relative depth, layer / (layers − 1), and no layer-by-layer difference is shown.")  # fmt: skip
    return lines


ProgressFn = Callable[[int, int, str], None]


def build_pages(ctx: _Ctx) -> list[Page]:
    """Every page of the report in order (drawn lazily); fills ctx.summary_lines and the CSV tables."""
    body: list[Page] = []
    for builder in (_acc_table_pages, _acc_chart_pages, _lens_pages, _similarity_pages, _neuron_pages):
        body += builder(ctx)
    ctx.summary_lines[:0] = overlap_lines(ctx)
    absent = sorted({a for r in ctx.runs for a in r.absent})
    if absent:
        ctx.summary_lines.append(f"• Not in the results (sections omitted): {', '.join(absent)}.")
    front = _title_pages(ctx)
    pages: list[Page] = front + [_summary_page(ctx)] + body
    pages.insert(len(front), _contents_page(pages))  # lazy: lists the final page list, itself included
    return pages


def _render_into(ctx: _Ctx, pdf_path: Path, fig_dir: Path, progress: ProgressFn | None) -> None:
    """Build every section, draw every page into `pdf_path` (and PNG/SVG into `fig_dir`) and write the
    contents and summary tables into ctx.tables_dir. Calls `progress(done, total, what)` per page."""
    import matplotlib
    from matplotlib.backends.backend_pdf import PdfPages

    tick = progress or (lambda done, total, what: None)
    with matplotlib.rc_context(fonts.rc_params()):
        pages = build_pages(ctx)
        total = len(pages) + 1
        tick(0, total, "sections built")
        note = f"alignlens {__version__} · " + " vs ".join(ctx.role_label(i) for i in range(len(ctx.runs)))
        toc_rows = []
        with PdfPages(pdf_path, metadata={"Title": "alignlens report", "Creator": f"alignlens {__version__}"}) as pdf:
            for no, page in enumerate(pages, start=1):
                fig = page.draw()
                _footer(fig, no, len(pages), note)
                pdf.savefig(fig)
                stem = f"{no:02d}_{page.slug}"
                if page.export:
                    fig.savefig(fig_dir / f"{stem}.png", dpi=110)
                    fig.savefig(fig_dir / f"{stem}.svg")
                toc_rows.append([no, page.section, page.title, f"{stem}.png" if page.export else ""])
                tick(no, total, f"page {no}/{len(pages)}: {page.title}")
        ctx.write_csv("contents.csv", ["page", "section", "title", "figure"], toc_rows)
        (ctx.tables_dir / "summary.txt").write_text("\n".join(ctx.summary_lines) + "\n", encoding="utf-8")
        tick(total, total, "tables written")


def render_report(run_dir: Path, compare_dir: Path | None = None, out: Path | None = None, *, force: bool = False,
                  progress: ProgressFn | None = None) -> Path:
    """Render the PDF report for `run_dir` (the base model) optionally compared with `compare_dir`
    (the aligned model). Returns the PDF path.

    Two runs are compared only on the (task, language, item) triples both have (from their
    predictions.jsonl); AlignlensError when they share none. `out` defaults to ``<common
    parent>/report.pdf`` when both run folders share a parent, else ``run_dir/report.pdf``. Figures go
    to ``<out_stem>_figures/`` (PNG + SVG per page), tables to ``<out_stem>_tables/`` (CSV). Raises
    AlignlensError for bad/partial results folders or when an output exists and `force` is False;
    `force` replaces only these three outputs. Everything is rendered to temporary names first and
    swapped in at the end, so a failure leaves a previous report as it was. `progress(done, total,
    what)` is called after each page.
    """
    run_dir = Path(run_dir)
    runs = [_load_run(run_dir)]
    if compare_dir is not None:
        runs.append(_load_run(Path(compare_dir)))
    overlap = item_overlap(runs[0], runs[1]) if len(runs) > 1 else None
    out = Path(out) if out is not None else _default_out(run_dir, compare_dir)
    if out.suffix.lower() != ".pdf":
        raise AlignlensError(f"{out}: report output must end in .pdf")
    finals = [out.with_name(name) for name in results.report_files(out.name)]  # pdf, figures, tables
    if not force:
        for p in finals:
            if p.exists():
                raise AlignlensError(f"{p}: already exists (use --force to overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    results.clean_stale_temps(out.parent, max_depth=0)
    trash: list[Path] = []

    def drop_or_restore_old(exc_type, exc, tb) -> bool:
        """Runs last: drop the old outputs moved aside, or put them back if the swap failed."""
        for folder in trash:
            for old in folder.iterdir() if exc_type is not None else ():
                if not (out.parent / old.name).exists():
                    os.replace(old, out.parent / old.name)
            shutil.rmtree(folder, ignore_errors=True)
        return False

    with ExitStack() as stack:
        stack.push(drop_or_restore_old)
        tmp_pdf = stack.enter_context(results.atomic_path(finals[0]))
        tmp_fig = stack.enter_context(results.atomic_path(finals[1], folder=True))
        tmp_tab = stack.enter_context(results.atomic_path(finals[2], folder=True))
        _render_into(_Ctx(runs, tmp_tab, overlap), tmp_pdf, tmp_fig, progress)
        # Everything rendered. atomic_path cannot rename a folder onto an existing one: move the old
        # figures and tables aside now; the temporaries are renamed into place as the stack unwinds.
        trash.append(Path(tempfile.mkdtemp(prefix=f"{results.TEMP_PREFIX}{out.stem}-old.", dir=out.parent)))
        for p in finals[1:]:
            if p.exists() or p.is_symlink():
                os.replace(p, trash[0] / p.name)
    return out
