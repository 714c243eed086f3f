"""Loading and checking result folders for the report, and what two runs have in common.

A run folder needs ``manifest.json`` and ``summary.json``; ``logit_lens.json``, ``similarity.json``
and ``neurons.json`` are optional (checked when present); ``predictions.jsonl`` is read when two
runs are compared, item by item. Every problem is an :class:`alignlens.AlignlensError` with one
line naming the file and the key (or line) at fault.

Two runs are compared only on the (task, language, item index) triples both have
(:func:`item_overlap`); both runs' accuracies are then taken on those shared items. Their paired
statistics (`paired.compare_runs`) come from comparison.json when it belongs to the two runs
(:func:`paired_mismatch`), else from :func:`compute_paired` on their predictions.jsonl.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alignlens import AlignlensError
from alignlens.paired import BOOTSTRAP
from alignlens.report.layout import short_path
from alignlens.results.io import read_json, read_jsonl
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


def find_comparison(a: Run, b: Run) -> tuple[dict | None, str]:
    """(comparison.json of the runs' common parent folder, checked; or None, and why not).

    A file of an older format (without the "accuracy" and "neurons" parts that `alignlens analyze
    --compare` writes now) is not used; a file of the current format that fails its checks is an error."""
    pa, pb = a.path.resolve().parent, b.path.resolve().parent
    path = pa / "comparison.json"
    if pa != pb or not path.is_file():
        return None, ""
    raw = read_json(path)
    if not isinstance(raw, dict) or "accuracy" not in raw or "neurons" not in raw:
        return None, f"{short_path(path)} is of an older format (no paired accuracy statistics) and was not used"
    return read_comparison_file(path), ""


def neurons_match(comp: dict | None, a: Run, b: Run) -> dict | None:
    """comparison.json's "neurons" part when its per-language counts match both runs' neurons.json
    (so it belongs to them), else None."""
    if comp is None or not a.neurons or not b.neurons:
        return None
    for l, v in comp["neurons"]["per_language"].items():
        if (l not in a.neurons["specific"] or l not in b.neurons["specific"]
                or v["count_a"] != a.neurons["specific"][l]["count"] or v["count_b"] != b.neurons["specific"][l]["count"]):  # fmt: skip
            return None
    return comp["neurons"]


def expected_groups(overlap: ItemOverlap, trained: list[str]) -> dict[str, dict[str, list[str]]]:
    """task -> the language groups (`paired.language_groups`, with the aligned run's trained
    languages) restricted to the languages the two runs share items in; empty groups left out."""
    from alignlens.paired import language_groups
    from alignlens.report.languages import order_languages

    langs = order_languages(l for _, l in overlap.shared)
    out: dict[str, dict[str, list[str]]] = {}
    for task in dict.fromkeys(t for t, _ in overlap.shared):
        have = {l for t, l in overlap.shared if t == task}
        groups = {g: [l for l in ls if l in have] for g, ls in language_groups(langs, trained).items()}
        out[task] = {g: ls for g, ls in groups.items() if ls}
    return out


def paired_mismatch(acc: dict, overlap: ItemOverlap, trained: list[str]) -> str:
    """Why comparison.json's "accuracy" part does not belong to these two runs ("" when it does):
    it must cover exactly the shared (task, language) cells, with the same item counts and both
    accuracies on the shared items, and the same language groups."""
    cells = {(t, l) for t, e in acc["tasks"].items() for l in e["languages"]}
    if cells != set(overlap.shared):
        extra, missing = cells - set(overlap.shared), set(overlap.shared) - cells
        return f"its task × language cells differ from the runs' shared ones ({cells_text({c: 0 for c in sorted(extra | missing)})})"
    for (t, l), items in overlap.shared.items():
        e = acc["tasks"][t]["languages"][l]
        ra, rb = overlap.acc[t, l]
        if e["n"] != len(items) or abs(e["acc_a"] - ra["accuracy"]) > 1e-9 or abs(e["acc_b"] - rb["accuracy"]) > 1e-9:
            return f"{t} {l}: n={e['n']}, accuracies {e['acc_a']:.4f}/{e['acc_b']:.4f} there vs n={len(items)}, {ra['accuracy']:.4f}/{rb['accuracy']:.4f} in the runs"
    for t, groups in expected_groups(overlap, trained).items():
        have = {g: v["accuracy"]["languages"] for g, v in (acc["tasks"][t].get("groups") or {}).items() if v["accuracy"]["languages"]}
        if {g: set(v) for g, v in have.items()} != {g: set(v) for g, v in groups.items()}:
            return f"{t}: its language groups ({', '.join(have)}) differ from the runs' ({', '.join(groups)}; trained: {' '.join(trained) or 'none'})"
    return ""


def prediction_rows(run: Run) -> list[dict]:
    """predictions.jsonl of `run`, row by row ({task, lang, index, gold, pred, probs})."""
    return read_jsonl(run.path / "predictions.jsonl")


def compute_paired(a: Run, b: Run, overlap: ItemOverlap, trained: list[str]) -> dict:
    """`paired.compare_runs` of the two runs' prediction rows, with the groups of `expected_groups`
    and run a's bootstrap resamples and seed (as `evaluate.summarize` used them)."""
    from alignlens.paired import compare_runs, language_groups
    from alignlens.report.languages import order_languages

    langs = order_languages(l for _, l in overlap.shared)
    opts = a.manifest.get("options") or {}
    try:
        return compare_runs(prediction_rows(a), prediction_rows(b), language_groups(langs, trained),
                            n_resamples=int(opts.get("bootstrap_resamples") or 2000), seed=int(a.manifest.get("seed") or 0))  # fmt: skip
    except AlignlensError as e:
        raise AlignlensError(f"{a.path / 'predictions.jsonl'} (run a) vs {b.path / 'predictions.jsonl'} (run b): {e}") from None


# ---- the runs of one report -----------------------------------------------------------------


#: Run names when none are given (run a, run b): the paper's comparison.
DEFAULT_NAMES = ("base", "aligned")
NAME_MAX = 20  # characters
_NAME_PUNCT = set("_.+-")


def name_char_ok(c: str) -> bool:
    """True for a character allowed in a run name: a letter, mark or digit of any script (Unicode
    categories L*, M*, N*: 基础, संरेखित, Ångström) or one of _ . + -. Whitespace, control characters,
    path separators and other punctuation or symbols are not (names go into CSV column names and
    figure file names)."""
    return c in _NAME_PUNCT or unicodedata.category(c)[0] in "LMN"


def check_names(names, n_runs: int) -> list[str]:
    """The names of a report's `n_runs` runs (run a first), checked: DEFAULT_NAMES when `names` is
    None; else exactly `n_runs` distinct (case-insensitively), non-empty names of at most NAME_MAX
    letters or digits of any script or _ . + - (`name_char_ok`), NFC-normalized. AlignlensError
    (one line) otherwise."""
    if names is None:
        return list(DEFAULT_NAMES[:n_runs])
    names = [unicodedata.normalize("NFC", str(x).strip()) for x in names]
    given = ",".join(names)
    want = "two names A,B (run, --compare run)" if n_runs == 2 else "one name (no --compare run)"
    if len(names) != n_runs:
        raise AlignlensError(f"--names {given!r}: {len(names)} name(s) given, needs {want}")
    for x in names:
        if not x:
            raise AlignlensError(f"--names {given!r}: empty name; needs {want}")
        bad = [c for c in x if not name_char_ok(c)]
        if len(x) > NAME_MAX or bad or unicodedata.category(x[0])[0] == "M":
            why = (f"has {len(x)} characters" if len(x) > NAME_MAX else f"contains {bad[0]!r} (U+{ord(bad[0]):04X})" if bad
                   else "starts with a combining mark")  # fmt: skip
            raise AlignlensError(f"--names {given!r}: {x!r} {why}; a name is at most {NAME_MAX} letters, digits or _ . + - "
                                 "(letters and digits of any script; no spaces, slashes or other symbols)")  # fmt: skip
    if len({x.casefold() for x in names}) != len(names):
        raise AlignlensError(f"--names {given!r}: the two names must differ")
    return names


@dataclass
class Runs:
    """The run folders of one report -- one, or two compared (run a, run b) -- and, for two, what they
    share. `names`: what the report calls the runs (DEFAULT_NAMES, base and aligned, when None)."""

    runs: list[Run]
    overlap: ItemOverlap | None = None
    neuron_comparison: dict | None = None  # comparison.json["neurons"] of these two runs, when found
    paired: dict | None = None  # paired.compare_runs of the two runs (comparison.json["accuracy"] or computed)
    paired_source: str = ""  # where `paired` comes from, in words
    notes: list[str] = field(default_factory=list)  # what the summary should say about the inputs
    names: list[str] | None = None  # see `roles`
    _metrics: dict = field(default_factory=dict, repr=False)  # run index -> computed metrics per cell

    @property
    def compare(self) -> bool:
        return len(self.runs) > 1

    @property
    def roles(self) -> list[str]:
        """The runs' names as the report writes them (run a first): `names`, else DEFAULT_NAMES."""
        return list(self.names or DEFAULT_NAMES)[: len(self.runs)]

    @property
    def paper_pair(self) -> bool:
        """True when the runs carry the default names (base vs aligned): only then are the results
        phrased as a test of the paper's claim."""
        return self.roles == list(DEFAULT_NAMES[: len(self.runs)])

    @property
    def diff_label(self) -> str:
        """'aligned − base': the direction of every Δ (run b − run a)."""
        return f"{self.roles[1]} − {self.roles[0]}" if self.compare else ""

    def style(self, i: int) -> str:
        """Run i's key in layout.COLOR / LINESTYLE (by position, whatever its name)."""
        return DEFAULT_NAMES[i]

    @property
    def column_names(self) -> list[str]:
        """Suffixes of the per-run CSV columns (two, also for a single run, whose second set stays empty)."""
        if self.compare:
            return self.roles
        own = self.roles[0]
        return [own, next(x for x in (DEFAULT_NAMES[1], "other") if x != own)]

    @property
    def trained(self) -> list[str]:
        """Trained languages of any run (from the manifests), in order of appearance."""
        out: list[str] = []
        for r in self.runs:
            out += [l for l in (r.manifest.get("trained_languages") or []) if l not in out]
        return out

    def role_label(self, i: int) -> str:
        """'aligned (…/refrun/aligned-emotion)': run i's name and its model (`layout.short_path`:
        never an absolute local path)."""
        return f"{self.roles[i]} ({short_path(self.runs[i].name)})"

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

    def metrics(self, i: int, task: str, lang: str) -> dict:
        """Run i's {balanced_accuracy, macro_f1, roc_auc, predicted_distribution, gold_distribution}
        on all its items of (task, lang): from summary.json, or, for a summary written before these
        metrics existed, computed from predictions.jsonl (every value None without it)."""
        entry = self.runs[i].summary["tasks"][task]["languages"][lang]
        if all(k in entry for k in METRIC_KEYS):
            return {k: entry[k] for k in METRIC_KEYS}
        if i not in self._metrics:
            self._metrics[i] = metrics_from_predictions(self.runs[i])
        return self._metrics[i].get((task, lang)) or dict.fromkeys(METRIC_KEYS)


#: Per-language metrics beside accuracy (summary.json keys, `metrics.classification_metrics`).
METRIC_KEYS = ("balanced_accuracy", "macro_f1", "roc_auc", "predicted_distribution", "gold_distribution")


def metrics_from_predictions(run: Run) -> dict[Cell, dict]:
    """(task, lang) -> `metrics.classification_metrics` of the run's predictions.jsonl rows (pred as
    recorded), {} when the run has no predictions.jsonl."""
    from alignlens.metrics import classification_metrics

    if not (run.path / "predictions.jsonl").is_file():
        return {}
    cells: dict[Cell, list[dict]] = {}
    for row in prediction_rows(run):
        cells.setdefault((str(row["task"]), str(row["lang"])), []).append(row)
    out = {}
    for (task, lang), rows in cells.items():
        labels = list(run.summary["tasks"].get(task, {}).get("labels") or rows[0]["probs"])
        ids = {lab: j for j, lab in enumerate(labels)}
        try:
            gold = [ids[r["gold"]] if isinstance(r["gold"], str) else int(r["gold"]) for r in rows]
            pred = [ids[r["pred"]] if isinstance(r["pred"], str) else int(r["pred"]) for r in rows]
            probs = [[float(r["probs"][lab]) for lab in labels] for r in rows]
        except (KeyError, TypeError, ValueError) as e:
            raise AlignlensError(f"{run.path / 'predictions.jsonl'}: {task} {lang}: label {e} is not one of {labels}") from None
        m = classification_metrics(gold, probs, labels, pred=pred)
        out[task, lang] = {k: m[k] for k in METRIC_KEYS}
    return out


def written_for(a: Run, b: Run) -> str:
    """"" when the runs are the folders `alignlens analyze --compare` writes comparison.json for
    (<parent>/base and <parent>/aligned, in this order), else how they differ from them, in words."""
    pa, pb = a.path.resolve(), b.path.resolve()
    if (pa.name, pb.name) == ("base", "aligned"):
        return ""
    if (pa.name, pb.name) == ("aligned", "base"):
        return "these two folders in the other order"
    return "another pair of run folders"


def load_runs(run_dir: Path, compare_dir: Path | None = None, names=None) -> Runs:
    """Load one run, or two to compare (AlignlensError when two runs share no item); `names`: what the
    report calls them (`check_names`; default base, aligned).

    For two runs the paired statistics are read from comparison.json when it belongs to them
    (`paired_mismatch`), else computed once here from their predictions.jsonl (`compute_paired`). A
    comparison.json written for another pair of folders (`written_for`) is only named in one clause."""
    names = check_names(names, 1 + (compare_dir is not None))
    runs = [load_run(Path(run_dir))] + ([load_run(Path(compare_dir))] if compare_dir is not None else [])
    if len(runs) == 1:
        return Runs(runs, names=names)
    a, b = runs
    overlap = item_overlap(a, b)
    trained = list(b.manifest.get("trained_languages") or [])
    comp, why = find_comparison(a, b)
    notes = [why] if why else []
    paired, source, other = None, "", ""
    older = comp is not None and comp["accuracy"].get("bootstrap") != BOOTSTRAP
    if older:
        notes.append(f"{short_path(a.path.resolve().parent / 'comparison.json')} was written by an older alignlens (no "
                     "label-stratified bootstrap, no ROC-AUC group Δs); the paired statistics were recomputed from the "
                     "runs' predictions.jsonl")
    if comp is not None and not older:
        why = paired_mismatch(comp["accuracy"], overlap, trained)
        other = written_for(a, b) if why else ""
        if other:  # the file is another pair's: not theirs to use, nothing wrong with it
            comp = None
        elif why:
            notes.append(f"{short_path(a.path.resolve().parent / 'comparison.json')} does not belong to these runs ({why}); its paired statistics were not used")
        else:
            paired, source = comp["accuracy"], "read from comparison.json (written by alignlens analyze --compare)"
    if paired is None:
        paired, source = compute_paired(a, b, overlap, trained), "computed by this report from the two runs' predictions.jsonl"
        source += f" (the comparison.json beside them is for {other})" if other else ""
    return Runs(runs, overlap, neurons_match(comp, a, b), paired, source, notes, names=names)


def arr(values) -> np.ndarray:
    """A JSON list of numbers/null as a float array (null -> NaN)."""
    return np.array([math.nan if x is None else float(x) for x in (values or [])], dtype=float)
