"""Effects of training arms with a label-stratified item × seed bootstrap (pure numpy/scipy).

Runs, arms and the metrics resampled here are `weighted`'s (`RunData`; every metric a function of
item weights w [R, n]; its names are re-exported here). An *arm* is a list of replicate runs
(training seeds); a base model is an arm of one run.

**Resampling** (`Resampler`, one per (task, language group), so every effect, contrast and trend of the
group uses the same draws and their differences are paired). Items: the item ids shared by every
language of the group and every run; within each gold-label stratum, the stratum's size is drawn
with replacement (label-stratified: every resample keeps the label counts, so AUC and balanced
accuracy are always defined and label-share noise does not enter); the same draw serves every
language and every run (clustered: item i is the same question in every language, so the errors of
one item are correlated across languages and runs). Seeds: for every arm of ≥ 2 replicates, its
seeds are drawn with replacement and the arm's metric is the mean over the drawn seeds (base runs
have no seed level; one seed makes it a no-op). Draws are deterministic given `seed` (the item
draws do not depend on which arms are in the plan); they are generated in blocks of `chunk`
resamples, so memory is O(chunk · n) plus R floats per (run, language, metric).

**Effects** (`Effect`): Δ = mean over the languages of metric(arm a) − metric(arm b) ("macro");
a contrast is the difference of two effects on the same draws; a trend is the OLS slope of effects
against x (e.g. log2 of the number of training languages), slope = Σ (x−x̄) Δ / Σ (x−x̄)², per draw.
Each carries: estimate (on the observed data, every seed once), ci95 (2.5 and 97.5 percentiles of the
R draws), se (their standard deviation), p = 2 min(P*(Δ ≤ 0), P*(Δ ≥ 0)) floored at 1/R and capped
at 1 (two-sided bootstrap), mde80 = (z_0.975 + z_0.80) se ≈ 2.80 se (the true effect that a test at
α = 0.05 detects with 80 % power, normal approximation).

**Verdict** (`Effect.verdict(direction)`, the claim being "Δ has the sign of `direction`"):
"not testable" when fewer than `MIN_ITEMS` shared items, fewer than two gold labels among them, the
metric undefined (e.g. AUC of > 2 labels, calibrated accuracy without content-free probabilities) or
a zero-width interval (every resample gave the same Δ, e.g. two runs with identical answers);
else "supported" when the whole interval lies on the claimed side of 0 (0 excluded), "contradicted"
when it lies wholly on the other side, "inconclusive" when it contains 0: the data cannot tell,
effects smaller than ±mde80 would go undetected (never a refutation).

Undefined values are None (JSON null), never NaN.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import norm

from alignlens import AlignlensError
from alignlens.weighted import (METRICS, LangData, RunCell, RunData, check_metric, draw_counts, index_rows, label_id,
                                mcnemar_by_language, percentile_ci, point_metrics, primary_metric, run_data,
                                task_metrics, weighted_accuracy, weighted_auc, weighted_balanced_accuracy)

__all__ = [
    "Resampler", "Effect", "compare_groups", "MIN_ITEMS", "Z_MDE80", "LEVEL_ITEMS", "LEVEL_SEEDS",
    # runs as arrays and their metrics (`weighted`), re-exported: the names a study of effects uses
    "LangData", "RunData", "index_rows", "label_id", "run_data",
    "draw_counts", "percentile_ci", "weighted_accuracy", "weighted_balanced_accuracy", "weighted_auc",
    "METRICS", "task_metrics", "primary_metric", "point_metrics", "mcnemar_by_language",
]  # fmt: skip

_BATCH_BYTES = 64 << 20  # metric functions (AUC pair kernels) held during one pass over the draws
#: Fewer shared items than this: every effect is "not testable".
MIN_ITEMS = 10
#: MDE80 = Z_MDE80 · se: z_{0.975} + z_{0.80} (two-sided α = 0.05, power 0.80).
Z_MDE80 = float(norm.ppf(0.975) + norm.ppf(0.80))
LEVEL_ITEMS = "items (label-stratified, clustered over languages)"
LEVEL_SEEDS = "training seeds"


def _num(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


# --------------------------------------------------------------------------------------------------
# Effects
# --------------------------------------------------------------------------------------------------


@dataclass
class Effect:
    """An effect (macro Δ of arm a − arm b over languages), a contrast (effect − effect) or a trend
    (OLS slope of effects against x), with its bootstrap distribution `draws` [R] on one
    `Resampler`'s draws. Statistics are None where undefined; `not_testable` says why the verdict is
    "not testable" (None: testable)."""

    kind: str  # "effect" | "contrast" | "trend"
    label: str  # "zh-de vs base", "(zh-de vs base) − (copy vs base)", "slope of ..."
    metric: str
    languages: list[str]
    estimate: float | None
    ci95: list[float] | None
    se: float | None
    p: float | None
    mde80: float | None
    n_items: int
    n_resamples: int
    seeds: dict[str, list[int]]  # arm -> its replicate seeds (arms whose runs have seeds)
    levels: list[str]  # what was resampled, in words
    not_testable: str | None
    a: str | None = None  # effect: the two arms
    b: str | None = None
    values: dict[str, float | None] = field(default_factory=dict)  # effect: macro metric of a and of b
    per_seed: list[dict] = field(default_factory=list)  # effect: [{seed, estimate, ci95, se}] of a's seeds alone
    missing_languages: list[str] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)  # contrast, trend: labels of the effects combined
    x: list[float] | None = None  # trend
    draws: np.ndarray | None = field(default=None, repr=False, compare=False)
    plan: int = field(default=-1, repr=False, compare=False)

    def verdict(self, direction: int = 1) -> str:
        """For the claim "Δ has the sign of `direction`" (+1 or −1): "not testable" when
        `not_testable`; "supported" when direction·lo > 0 (the whole 95% interval on the claimed side,
        0 excluded); "contradicted" when direction·hi < 0; else "inconclusive" (0 in the interval)."""
        if direction not in (1, -1):
            raise ValueError(f"direction must be +1 or -1, got {direction!r}")
        if self.not_testable or self.ci95 is None:
            return "not testable"
        lo, hi = sorted(direction * v for v in self.ci95)
        return "supported" if lo > 0 else "contradicted" if hi < 0 else "inconclusive"

    def sentence(self, direction: int = 1) -> str:
        """One sentence saying what the test shows (an inconclusive result is never a refutation)."""
        v = self.verdict(direction)
        if v == "not testable":
            return f"{self.label}: not testable ({self.not_testable})."
        what = (f"{self.label}: {'slope' if self.kind == 'trend' else 'Δ'} {self.metric} {self.estimate:+.3f} "
                f"(95% CI {self.ci95[0]:+.3f} to {self.ci95[1]:+.3f}, p = {self.p:.2g}, {self.n_items} items)")
        if v == "inconclusive":
            return (f"{what}: cannot tell at this n, the interval includes 0; effects smaller than "
                    f"±{self.mde80:.3f} (MDE80) would go undetected.")
        side = "above" if (self.estimate > 0) else "below"
        return f"{what}: {side} 0, {'as claimed' if v == 'supported' else 'against the claim'}."

    def to_json(self, direction: int = 1) -> dict:
        """JSON-able dict (no NaN): every field but draws/plan, plus n_languages, verdict and text
        for the claim direction."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("draws", "plan")}
        out.update(n_languages=len(self.languages), verdict=self.verdict(direction), text=self.sentence(direction))
        return out


def _stats(estimate: float | None, draws: np.ndarray | None) -> tuple[dict, str | None]:
    """({ci95, se, p, mde80}, why not testable) of an estimate and its draws [R] (None: not computable)."""
    if draws is None or estimate is None:
        return {"ci95": None, "se": None, "p": None, "mde80": None}, None
    if not np.all(np.isfinite(draws)):
        return {"ci95": None, "se": None, "p": None, "mde80": None}, "the metric was undefined in some resample"
    ci = percentile_ci(draws)
    se = float(np.std(draws, ddof=1))
    p = 2 * min(np.mean(draws <= 0), np.mean(draws >= 0))
    zero = ci[1] - ci[0] <= 1e-12 * max(1.0, abs(estimate))
    return ({"ci95": ci, "se": se, "p": float(min(1.0, max(1.0 / draws.size, p))), "mde80": Z_MDE80 * se},
            f"zero-width interval: every resample gave {estimate:+.4g}" if zero else None)


def _effect(kind: str, label: str, metric: str, langs: list[str], estimate: float | None,
            draws: np.ndarray | None, reason: str | None, n_items: int, **extra) -> Effect:
    """An Effect from its point estimate and draws [R] (None: not computable); `reason`: why it is
    not testable (a zero-width interval or undefined draws add theirs)."""
    stats, why = _stats(estimate, draws)
    return Effect(kind=kind, label=label, metric=metric, languages=langs, estimate=_num(estimate),
                  n_items=n_items, not_testable=reason or why, draws=draws if stats["se"] is not None else None,
                  **stats, **extra)


class Resampler:
    """The bootstrap draws of one (task, language group): every effect, contrast and trend taken from
    one Resampler is computed on the same draws (paired). See the module docstring for what is
    drawn.

    arms: name -> one RunData (a base model: no seed level) or a sequence of replicate runs (an arm's
    training seeds, `RunData.seed` unique; seed level when ≥ 2 and `resample_seeds`). languages: the
    group; those without items in some run go to `missing_languages`, the rest to `languages`.
    Items (`items`, `gold`): the item ids every run has in every language of `languages`, ascending.
    Raises AlignlensError when runs have different labels or an item's gold label differs between
    languages or runs."""

    _count = 0

    def __init__(self, arms: Mapping[str, RunData | Sequence[RunData]], languages: Sequence[str], *,
                 n_resamples: int = 2000, seed: int = 0, resample_seeds: bool = True, chunk: int = 256) -> None:
        for name, v, lo in (("n_resamples", n_resamples, 2), ("seed", seed, 0), ("chunk", chunk, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        self.arms = {a: [r] if isinstance(r, RunData) else list(r) for a, r in arms.items()}
        if not self.arms or not all(self.arms.values()):
            raise ValueError("arms: expected at least one arm, each with at least one run")
        runs = [(a, r) for a, rs in self.arms.items() for r in rs]
        self.labels = runs[0][1].labels
        for a, r in runs:
            if r.labels != self.labels:
                raise AlignlensError(f"run {r.name} (arm {a}) has labels {list(r.labels)}, run {runs[0][1].name} {list(self.labels)}")  # fmt: skip
        for a, rs in self.arms.items():
            if len({r.seed for r in rs}) != len(rs):
                raise ValueError(f"arm {a}: its runs' seeds {[r.seed for r in rs]} are not unique")
        langs = list(dict.fromkeys(languages))
        self.languages = [lang for lang in langs if all(lang in r.langs and r.langs[lang].gold.size for _, r in runs)]
        self.missing_languages = [lang for lang in langs if lang not in self.languages]
        self.n_resamples, self.seed, self.chunk, Resampler._count = n_resamples, seed, chunk, Resampler._count + 1
        self.id = Resampler._count
        cells = [(r, lang, r.langs[lang]) for _, r in runs for lang in self.languages]
        items = np.zeros(0, dtype=np.int64)
        if cells:
            items = cells[0][2].indices
            for _, _, d in cells[1:]:
                items = np.intersect1d(items, d.indices)
        self.items = np.sort(items)
        self._sel = {}
        for r, lang, d in cells:
            order = np.argsort(d.indices)
            self._sel[(id(r), lang)] = order[np.searchsorted(d.indices, self.items, sorter=order)]
        self.gold = cells[0][2].gold[self._sel[(id(cells[0][0]), cells[0][1])]] if cells else items
        for r, lang, d in cells:
            bad = np.flatnonzero(d.gold[self._sel[(id(r), lang)]] != self.gold)
            if bad.size:
                i = int(bad[0])
                raise AlignlensError(f"item {self.items[i]}: gold label {self.labels[d.gold[self._sel[(id(r), lang)]][i]]} in run {r.name} {lang}, {self.labels[self.gold[i]]} in run {cells[0][0].name} {cells[0][1]} (the items of a group must be the same questions)")  # fmt: skip
        self.strata = [np.flatnonzero(self.gold == c) for c in np.unique(self.gold)]
        self._seed_counts = {}
        for a, rs in self.arms.items():
            if resample_seeds and len(rs) > 1:
                rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, zlib.crc32(a.encode()))))
                self._seed_counts[a] = draw_counts(rng.integers(0, len(rs), (n_resamples, len(rs))), len(rs))
        self._cells: dict = {}
        self._cache: dict = {}

    @property
    def n_items(self) -> int:
        return int(self.items.size)

    def levels(self, arms: Iterable[str]) -> list[str]:
        """What the draws of effects between `arms` resample, in words."""
        return [LEVEL_ITEMS] + ([LEVEL_SEEDS] if any(a in self._seed_counts for a in arms) else [])

    def item_weights(self) -> Iterator[np.ndarray]:
        """The item draws in blocks of ≤ chunk resamples: float64 [c, n] counts; every row keeps each
        gold label's count; the same blocks on every call."""
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(0,)))
        for start in range(0, self.n_resamples, self.chunk):
            c = min(self.chunk, self.n_resamples - start)
            idx = [pos[rng.integers(0, len(pos), (c, len(pos)))] for pos in self.strata]
            yield draw_counts(np.concatenate(idx, axis=1), self.n_items) if idx else np.zeros((c, 0))

    def _cell(self, arm: str, k: int, lang: str) -> RunCell:
        key = (arm, k, lang)
        if key not in self._cells:
            r = self.arms[arm][k]
            self._cells[key] = RunCell(r.langs[lang], self._sel[(id(r), lang)], self.labels)
        return self._cells[key]

    def prepare(self, metrics: Sequence[str], arms: Sequence[str] | None = None) -> None:
        """Compute the draws of `metrics` for every run of `arms` (default all) in every language in
        one pass over the item draws (later effects on them cost no resampling)."""
        for m in metrics:
            check_metric(m)
        self._fill([(a, k, lang, m) for a in (arms or self.arms) for k in range(len(self.arms[a]))
                    for lang in self.languages for m in metrics])

    def _fill(self, keys: list[tuple]) -> None:
        """Cache (point, draws [R]) of each (arm, run, lang, metric) key: in batches whose metric
        functions hold at most _BATCH_BYTES, each one pass over the (regenerated) item draws."""
        todo = [k for k in dict.fromkeys(keys) if k not in self._cache and self._cell(*k[:3]).undefined(k[3]) is None]
        if not self.n_items:
            return
        batch, held = [], 0
        for i, k in enumerate(todo):
            fn, nbytes = self._cell(*k[:3]).metric(k[3])
            batch.append((k, fn))
            held += nbytes
            if held < _BATCH_BYTES and i + 1 < len(todo):
                continue
            draws: dict = {k: [] for k, _ in batch}
            for w in self.item_weights():
                for k, fn in batch:
                    draws[k].append(fn(w))
            for k, fn in batch:
                self._cache[k] = (float(fn(np.ones((1, self.n_items)))[0]), np.concatenate(draws[k]))
            batch, held = [], 0

    def _arm(self, arm: str, lang: str, metric: str, seeds: bool = True) -> tuple[float, np.ndarray]:
        """(point: mean over the arm's runs, draws [R]: mean over the drawn seeds, or over all runs
        when `seeds` is False or the arm has no seed level)."""
        got = [self._cache[(arm, k, lang, metric)] for k in range(len(self.arms[arm]))]
        D = np.stack([g[1] for g in got], axis=1)
        counts = self._seed_counts.get(arm) if seeds else None
        draws = D.mean(axis=1) if counts is None else (D * counts).sum(axis=1) / D.shape[1]
        return float(np.mean([g[0] for g in got])), draws

    def _why_not(self, metric: str, langs: list[str], arms: Sequence[str]) -> tuple[str | None, bool]:
        """(why not testable or None, whether the effect can be computed at all)."""
        if not langs:
            return "no language of the group has items in every run", False
        if not self.n_items:
            return "no item is shared by every language and run of the group", False
        for a in arms:
            for k, r in enumerate(self.arms[a]):
                for lang in langs:
                    why = self._cell(a, k, lang).undefined(metric)
                    if why:
                        return f"run {r.name} {lang}: {why}", False
        if self.n_items < MIN_ITEMS:
            return f"{self.n_items} shared items (fewer than {MIN_ITEMS})", True
        if len(self.strata) < 2:
            return f"the shared items hold one gold label only ({self.labels[self.gold[0]]})", True
        return None, True

    def _languages(self, languages: Sequence[str] | None) -> tuple[list[str], list[str]]:
        if languages is None:
            return list(self.languages), list(self.missing_languages)
        unknown = [lang for lang in languages if lang not in self.languages + self.missing_languages]
        if unknown:
            raise ValueError(f"languages {unknown} are not in this Resampler's group")
        return ([lang for lang in self.languages if lang in languages],
                [lang for lang in self.missing_languages if lang in languages])

    def effect(self, a: str, b: str, metric: str, languages: Sequence[str] | None = None,
               label: str | None = None) -> Effect:
        """Macro Δ = mean over `languages` (default the group's) of metric(arm a) − metric(arm b), on
        this Resampler's items; per_seed: each of a's runs alone against b (items only)."""
        check_metric(metric)
        for arm in (a, b):
            if arm not in self.arms:
                raise ValueError(f"arm {arm!r} is not in this Resampler (arms: {', '.join(self.arms)})")
        langs, missing = self._languages(languages)
        reason, computable = self._why_not(metric, langs, (a, b))
        common = dict(n_resamples=self.n_resamples, a=a, b=b, missing_languages=missing, plan=self.id,
                      levels=self.levels((a, b)),
                      seeds={x: [r.seed for r in self.arms[x]] for x in (a, b) if self.arms[x][0].seed is not None})
        label = label or f"{a} vs {b}" + ("" if languages is None else f" ({', '.join(langs + missing)})")
        if not computable:
            return _effect("effect", label, metric, langs, None, None, reason, self.n_items, **common)
        self._fill([(x, k, lang, metric) for x in (a, b) for k in range(len(self.arms[x])) for lang in langs])
        A = [self._arm(a, lang, metric) for lang in langs]
        B = [self._arm(b, lang, metric) for lang in langs]
        B_items = np.mean([self._arm(b, lang, metric, seeds=False)[1] for lang in langs], axis=0)
        per_seed = []
        for k, r in enumerate(self.arms[a] if self.arms[a][0].seed is not None else ()):
            got = [self._cache[(a, k, lang, metric)] for lang in langs]
            est = float(np.mean([g[0] for g in got]) - np.mean([x[0] for x in B]))
            st, _ = _stats(est, np.mean([g[1] for g in got], axis=0) - B_items)
            per_seed.append({"seed": r.seed, "estimate": _num(est), "ci95": st["ci95"], "se": st["se"]})
        va, vb = float(np.mean([x[0] for x in A])), float(np.mean([x[0] for x in B]))
        draws = np.mean([x[1] for x in A], axis=0) - np.mean([x[1] for x in B], axis=0)
        return _effect("effect", label, metric, langs, va - vb, draws, reason, self.n_items,
                       values={a: _num(va), b: _num(vb)}, per_seed=per_seed, **common)

    def _own(self, effects: Sequence[Effect]) -> None:
        if not effects or any(e.plan != self.id for e in effects):
            raise ValueError("contrast/trend: every effect must come from this Resampler (same draws)")
        if len({e.metric for e in effects}) != 1:
            raise ValueError(f"contrast/trend: effects of different metrics {sorted({e.metric for e in effects})}")

    @staticmethod
    def _merged(effects: Sequence[Effect]) -> dict:
        seeds: dict = {}
        for e in effects:
            seeds.update(e.seeds)
        return dict(
            levels=[lv for lv in (LEVEL_ITEMS, LEVEL_SEEDS) if any(lv in e.levels for e in effects)], seeds=seeds,
            parts=[e.label for e in effects], n_resamples=effects[0].n_resamples, plan=effects[0].plan,
            missing_languages=list(dict.fromkeys(x for e in effects for x in e.missing_languages)))

    def contrast(self, e1: Effect, e2: Effect, label: str | None = None) -> Effect:
        """e1 − e2 on the same draws (e.g. aligned vs base − copy-control vs base; trained − untrained)."""
        self._own([e1, e2])
        langs = list(dict.fromkeys(e1.languages + e2.languages))
        reason = e1.not_testable or e2.not_testable
        label = label or f"({e1.label}) − ({e2.label})"
        ok = e1.draws is not None and e2.draws is not None
        return _effect("contrast", label, e1.metric, langs, e1.estimate - e2.estimate if ok else None,
                       e1.draws - e2.draws if ok else None, reason, self.n_items, **self._merged([e1, e2]))

    def trend(self, effects: Sequence[Effect], x: Sequence[float], label: str | None = None) -> Effect:
        """OLS slope of the effects against x (e.g. log2 of each arm's number of training languages),
        per draw: Σ (x−x̄) Δ / Σ (x−x̄)²; two points give their difference over Δx."""
        self._own(effects)
        xs = np.asarray(x, dtype=np.float64)
        if xs.shape != (len(effects),) or np.unique(xs).size < 2 or not np.all(np.isfinite(xs)):
            raise ValueError(f"trend: x must hold one finite value per effect, at least two distinct, got {list(x)}")
        xc = (xs - xs.mean()) / np.sum((xs - xs.mean()) ** 2)
        reason = next((e.not_testable for e in effects if e.not_testable), None)
        ok = all(e.draws is not None for e in effects)
        langs = list(dict.fromkeys(lang for e in effects for lang in e.languages))
        return _effect("trend", label or f"slope of {', '.join(e.label for e in effects)}", effects[0].metric, langs,
                       float(np.dot(xc, [e.estimate for e in effects])) if ok else None,
                       np.stack([e.draws for e in effects], axis=1) @ xc if ok else None, reason, self.n_items,
                       x=[float(v) for v in xs], **self._merged(effects))


def compare_groups(a_rows: Iterable[Mapping], b_rows: Iterable[Mapping], groups: Mapping[str, Sequence[str]] | None = None,
                   *, a_summary: Mapping | None = None, b_summary: Mapping | None = None,
                   metrics: Sequence[str] | None = None, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Macro Δ (run b − run a) per language group, label-stratified item-cluster bootstrap: what
    `paired.compare_runs`'s "groups" need. Rows: parsed predictions.jsonl; summaries: parsed
    summary.json (their p_content_free serve calibrated accuracy). groups=None: {"all": every
    language of the task}. metrics: default `task_metrics` of each task.

    Returns {task: {group: {metric: Effect.to_json() of "b" vs "a" plus "delta" (= estimate),
    "a" and "b" (each run's macro metric)}}} for the tasks both runs have."""
    ra, rb = run_data(a_rows, a_summary, name="a"), run_data(b_rows, b_summary, name="b")
    out: dict = {}
    for task in [t for t in ra if t in rb]:
        if ra[task].labels != rb[task].labels:
            raise AlignlensError(f"task {task}: run a has labels {list(ra[task].labels)}, run b {list(rb[task].labels)}")
        ms = list(metrics or task_metrics(ra[task].labels))
        task_groups = groups or {"all": list(dict.fromkeys([*ra[task].langs, *rb[task].langs]))}
        out[task] = {}
        for group, langs in task_groups.items():
            plan = Resampler({"a": ra[task], "b": rb[task]}, langs, n_resamples=n_resamples, seed=seed)
            plan.prepare(ms)
            entries = {}
            for m in ms:
                e = plan.effect("b", "a", m)
                entries[m] = {**e.to_json(), "delta": e.estimate, "a": e.values.get("a"), "b": e.values.get("b")}
            out[task][group] = entries
    return out
