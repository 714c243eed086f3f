"""Loading and checking result folders for the report, and what two runs have in common.

A run folder needs ``manifest.json`` and ``summary.json``; ``logit_lens.json``, ``similarity.json``
and ``neurons.json`` are optional (checked when present); ``predictions.jsonl`` is read when two
runs are compared, item by item. Every problem is an :class:`alignlens.AlignlensError` with one
line naming the file and the key (or line) at fault.

Two runs are compared only on the (task, language, item index) triples both have
(:func:`item_overlap`); both runs' accuracies are then taken on those shared items.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alignlens import AlignlensError
from alignlens.results.schema import Cell, Run, load_run, read_comparison_file
from alignlens.stats import bootstrap_ci, clip_interval

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
    comp = read_comparison_file(path)
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
