"""Frozen, validated run options shared by the CLI and the Python API.

The CLI takes its defaults from these classes (`EvalConfig.limit`, ...), builds one, and calls
the library; every option is checked when the config is built, before any file is touched or a
model is loaded. Lists are stored as tuples; a repeated or empty list is an error. The option types
of an analysis live here too (`NeuronOptions`, re-exported by `neurons`), so that nothing here
imports upward; what the options resolve to in data is `plan.resolve_plan`'s.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Iterable, Literal, Sequence

from alignlens import AlignlensError

LENS_OVERLAP_RULES = ("token-set", "first-token")
#: Prompts of the capture pass (lens, similarity, neurons): demonstrations with the target-language
#: label words (the paper's lens prompts) or the English-label evaluation prompts.
LENS_PROMPTS = ("target-labels", "english-labels")
#: Pooling of the states the similarity analysis compares: all prompt tokens (BOS and demonstrations
#: included, as the paper's knowledge_finding.ipynb), the item's own tokens after the shared few-shot
#: prefix, or the last prompt token.
SIMILARITY_POOLINGS = ("prompt", "query", "last")
#: The robust variant computed beside the paper's similarity measures (`similarity.robust_states`).
SIMILARITY_ROBUST = ("drop-outliers", "standardize", "none")


def _unique(values: Iterable[Any] | None, what: str, allow_none: bool = True) -> tuple | None:
    """Tuple of `values`; None stays None (the default); empty or repeated entries are errors."""
    if values is None:
        if allow_none:
            return None
        raise AlignlensError(f"{what}: give at least one")
    if isinstance(values, str):
        values = [v.strip() for v in values.split(",")]
    values = tuple(values)
    if not values or any(v == "" for v in values):
        raise AlignlensError(f"{what}: empty list or empty entry ({','.join(map(str, values))!r})")
    seen: set = set()
    dup = [v for v in values if v in seen or seen.add(v)]
    if dup:
        raise AlignlensError(f"{what}: {', '.join(map(str, dict.fromkeys(dup)))} given more than once")
    return values


def _positive(value: int | None, what: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise AlignlensError(f"{what} must be a whole number >= 1 (got {value!r})")


#: The largest seed: torch.manual_seed and numpy's generators take any whole number 0..2**63-1.
SEED_MAX = 2**63 - 1


def check_seed(value: Any, what: str = "seed", high: int = SEED_MAX) -> int:
    """`value` if it is a whole number 0..`high` (default `SEED_MAX`; training, which also seeds
    `np.random.seed`, may pass 2**32-1), else an AlignlensError naming `what` and the range."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
        raise AlignlensError(f"{what} must be a whole number from 0 to {high} (got {value!r})")
    return value


def parse_layers(text: str | Iterable[int] | None, what: str = "--pair-layers") -> tuple[int, ...] | None:
    """'3,7,11' -> (3, 7, 11); each a layer index >= 0 (checked against the model once it is known)."""
    if text is None:
        return None
    raw = _unique(text, what)
    out = []
    for v in raw:
        try:
            n = int(v)
        except (TypeError, ValueError):
            raise AlignlensError(f"{what}: {v!r} is not a layer number (use e.g. 3,7,11)") from None
        if n < 0:
            raise AlignlensError(f"{what}: layer {n} is negative")
        out.append(n)
    return tuple(out)


def parse_items(text: str | Iterable[int] | None, what: str = "--items") -> tuple[int, ...] | None:
    """Item indices from '0-249' or '1,5,10-19' (ranges inclusive) or ints -> sorted tuple; None stays None.

    A negative index, a reversed range, a non-number or an index given twice is an AlignlensError."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")] if isinstance(text, str) else list(text)
    if not parts or any(p == "" for p in parts):
        raise AlignlensError(f"{what}: empty list or empty entry ({text!r}; use e.g. 0-249 or 1,5,10-19)")
    out: list[int] = []
    for p in parts:
        text_p = str(p).strip()
        m = re.fullmatch(r"(-?\d+)(?:\s*-\s*(-?\d+))?", text_p) if not isinstance(p, bool) else None
        if m is None:
            raise AlignlensError(f"{what}: {p!r} is not an item index or a range (use e.g. 0-249 or 1,5,10-19)")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if lo < 0:
            raise AlignlensError(f"{what}: item index {lo} is negative")
        if hi < lo:
            raise AlignlensError(f"{what}: range {p!r} ends before it starts")
        if hi - lo >= 10_000_000:
            raise AlignlensError(f"{what}: range {p!r} is too large (more than 10 million items)")
        out.extend(range(lo, hi + 1))
    seen: set[int] = set()
    dup = [i for i in out if i in seen or seen.add(i)]
    if dup:
        raise AlignlensError(f"{what}: item {dup[0]} is given more than once")
    return tuple(sorted(out))


def format_items(indices: Iterable[int], max_runs: int | None = None) -> str:
    """Sorted item indices as ranges: (0, 1, 2, 5, 7, 8) -> '0-2,5,7-8' (the inverse of `parse_items`);
    with `max_runs`, only the first `max_runs` ranges, then ',...' when there are more (for messages)."""
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    more = max_runs is not None and len(runs) > max_runs
    text = ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs[:max_runs])
    return text + (",..." if more else "")


def select_items(items: Sequence[Any], labels: Sequence[str], *, indices: Iterable[int] | None = None,
                 limit: int | None = None, balanced: bool = False, where: str = "items") -> list[Any]:
    """The items a run uses, from all items of one (task, language) in file order (objects with
    `.index` and `.label`, the English gold label; e.g. `data.Item`), in file order:

    1. `indices` (None: all) keeps the items with those indices; an index not in the file is an error;
    2. `limit` keeps the first `limit` of them; with `balanced`, the first `limit / len(labels)` of
       each label instead (so every label has the same count), and without a limit as many per
       label as the rarest label has. A limit that is not a multiple of the label count, or a label
       with too few items, is an AlignlensError naming `where` (e.g. "task emotion, language de")."""
    items = list(items)
    if indices is not None:
        wanted = set(indices)
        have = {it.index for it in items}
        missing = sorted(wanted - have)
        if missing:
            raise AlignlensError(f"{where}: --items lists {len(missing)} item(s) not in the test file "
                                 f"({format_items(missing, 5)}; the file has items {format_items(have, 5)})")
        items = [it for it in items if it.index in wanted]
    if not balanced:
        return items if limit is None else items[:limit]
    by_label = {lab: [it for it in items if it.label == lab] for lab in labels}
    counts = {lab: len(v) for lab, v in by_label.items()}
    if limit is None:
        per = min(counts.values())
        if per == 0:
            empty = [lab for lab, n in counts.items() if n == 0]
            raise AlignlensError(f"{where}: --balanced is impossible: label {empty[0]!r} has no items "
                                 f"among the selected ones ({', '.join(f'{k} {v}' for k, v in counts.items())}); "
                                 f"{'widen --items' if indices is not None else 'drop --balanced'}")
    else:
        if limit % len(labels):
            lo = limit - limit % len(labels)
            hint = f"{lo} or {lo + len(labels)}" if lo else str(len(labels))
            raise AlignlensError(f"{where}: --balanced needs --limit to be a multiple of the {len(labels)} labels "
                                 f"(got {limit}; use {hint})")
        per = limit // len(labels)
        short = [lab for lab in labels if counts[lab] < per]
        if short:
            lab = short[0]
            rarest = min(counts.values())
            widen = "widen --items" if indices is not None else "drop --balanced"
            if rarest == 0:  # no limit can balance them: never suggest --limit 0
                empty = next(k for k, v in counts.items() if v == 0)
                hint = f"the selected items cannot be balanced at any --limit (label {empty!r} has none); {widen}"
            else:
                hint = f"lower --limit to {rarest * len(labels)} or {widen}"
            raise AlignlensError(
                f"{where}: --balanced --limit {limit} needs {per} items of each label, but label {lab!r} has only "
                f"{counts[lab]} among the selected items ({', '.join(f'{k} {v}' for k, v in counts.items())}); "
                f"{hint}")
    keep = {id(it) for v in by_label.values() for it in v[:per]}
    return [it for it in items if id(it) in keep]


def check_rows(rows: Iterable[int] | None, n_layers: int, what: str = "--pair-layers") -> None:
    """Hidden-state layers of the similarity analysis: 0 (the embedding output) .. n_layers (after the last block)."""
    bad = [x for x in rows or () if x > n_layers]
    if bad:
        raise AlignlensError(f"{what}: layer {bad[0]} does not exist (the similarity layers of this model are "
                             f"0..{n_layers}: 0 the embedding output, l the output of block l)")


def check_layers(layers: Iterable[int] | None, n_layers: int, what: str = "--pair-layers") -> None:
    bad = [x for x in layers or () if x >= n_layers]
    if bad:
        raise AlignlensError(f"{what}: layer {bad[0]} does not exist (the model has layers 0..{n_layers - 1})")


@dataclass(frozen=True)
class NeuronOptions:
    """LAPE options of `neurons.neuron_report` (defaults and their sources are recorded in the report).

    filter_rate: candidate quantile of all activation probabilities (Tang et al.: 0.95).
    top_rate: fraction of neurons kept by lowest entropy (our issue: 0.05; Tang et al.'s code: 0.01).
    top_rate_of: "all" -> round(top_rate * all neurons), as Tang's code; "candidates" -> of candidates.
    activation_bar_ratio: quantile of all probabilities a selected neuron's p[lang] must exceed
        to be specific to lang (Tang et al.: 0.95).
    active_threshold: a neuron is "active" for a language if p > this value. None (default) uses
        the activation bar itself, i.e. "strongly active" (high-activation sets without the
        entropy filter). A literal 0.0 ("fires at least once") is nearly all neurons for SiLU/GELU
        gates, which makes the active-set overlap uninformative.
    """

    filter_rate: float = 0.95
    top_rate: float = 0.05
    top_rate_of: Literal["all", "candidates"] = "all"
    activation_bar_ratio: float = 0.95
    active_threshold: float | None = None

    def __post_init__(self) -> None:
        for name in ("filter_rate", "top_rate", "activation_bar_ratio"):
            v = getattr(self, name)
            if not 0.0 < v <= 1.0:
                raise AlignlensError(f"NeuronOptions.{name} must be in (0, 1], got {v}")
        if self.top_rate_of not in ("all", "candidates"):
            raise AlignlensError(f"NeuronOptions.top_rate_of must be 'all' or 'candidates', got {self.top_rate_of!r}")


@dataclass(frozen=True)
class EvalConfig:
    """Options of an evaluation run (recorded in the manifest)."""

    tasks: tuple[str, ...] = ("snli",)
    languages: tuple[str, ...] | None = None  # None: every language of each task
    limit: int | None = 50  # items per language: the first N of the test file; None: all
    batch_size: int = 8
    seed: int = 0
    prefix_cache: bool = True
    bootstrap_resamples: int = 2000
    #: Item indices evaluated, e.g. "0-249" or "1,5,10-19" (applied before `limit`); None: all.
    #: Stored in the canonical form of `format_items`.
    items: str | None = None
    #: Take the first limit/len(labels) items of each English gold label (see `select_items`).
    balanced: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", _unique(self.tasks, "tasks", allow_none=False))
        object.__setattr__(self, "languages", _unique(self.languages, "languages"))
        _positive(self.limit, "limit", allow_none=True)
        if self.items is not None:
            object.__setattr__(self, "items", format_items(parse_items(self.items)))
        if not isinstance(self.balanced, bool):
            raise AlignlensError(f"balanced must be true or false (got {self.balanced!r})")
        _positive(self.batch_size, "batch size")
        _positive(self.bootstrap_resamples, "bootstrap resamples")
        check_seed(self.seed)

    def select_items(self, items: Sequence[Any], labels: Sequence[str], where: str = "items") -> list[Any]:
        """This run's items of one (task, language), from all of them in file order: `items`, then
        `limit` (`balanced` per English gold label); see `select_items`."""
        return select_items(items, labels, indices=parse_items(self.items), limit=self.limit,
                            balanced=self.balanced, where=where)


class _SelectsItems:
    """What the configs of commands that select items as `eval` does share (fields tasks, languages,
    limit, batch_size, seed, bootstrap_resamples, items, balanced)."""

    def eval_config(self) -> EvalConfig:
        return EvalConfig(tasks=self.tasks, languages=self.languages, limit=self.limit, batch_size=self.batch_size,
                          seed=self.seed, prefix_cache=True, bootstrap_resamples=self.bootstrap_resamples,
                          items=self.items, balanced=self.balanced)

    def select_items(self, items: Sequence[Any], labels: Sequence[str], where: str = "items") -> list[Any]:
        """This run's items of one (task, language): see `EvalConfig.select_items`."""
        return self.eval_config().select_items(items, labels, where)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able options (lists, not tuples) as recorded in manifests."""
        import json

        return json.loads(json.dumps(asdict(self)))


@dataclass(frozen=True)
class AnalyzeConfig(_SelectsItems):
    """Options of `alignlens analyze` (recorded in each run's manifest)."""

    tasks: tuple[str, ...] = ("snli",)
    languages: tuple[str, ...] | None = None
    limit: int | None = 20
    batch_size: int = 8
    seed: int = 0
    pair_layers: tuple[int, ...] | None = None  # layers of the all-pairs matrices; None: 1/4, 1/2, 3/4, last
    neurons: NeuronOptions = field(default_factory=NeuronOptions)
    save_activations: bool = False
    bootstrap_resamples: int = 2000
    #: When the logit lens drops an item: "token-set" (its gold label's English and target token
    #: sets share a token) or "first-token" (their first tokens are equal, as Wendler et al.).
    lens_overlap: str = "token-set"
    #: Item indices analysed ("0-249", "1,5,10-19"; before `limit`) and label balance: as `EvalConfig`.
    items: str | None = None
    balanced: bool = False
    #: Prompts of the capture pass (see `LENS_PROMPTS`); with "target-labels" accuracy still comes
    #: from a separate pass on the English-label evaluation prompts.
    lens_prompts: str = "target-labels"
    #: Similarity (`similarity.similarity_analysis`): pooling of the states (`SIMILARITY_POOLINGS`);
    #: the languages PC1 is fitted on (None: the paper's en,de,fr,hi,th,sw,ms when all are analysed,
    #: else all); hidden-state layers of the 2-D PCA scatter (0 = embedding output; None: 0, 1/3, 2/3,
    #: last); bootstrap resamples of the intervals (0: none); the robust variant (`SIMILARITY_ROBUST`).
    similarity_pooling: str = "prompt"
    pca_languages: tuple[str, ...] | None = None
    scatter_layers: tuple[int, ...] | None = None
    similarity_resamples: int = 1000
    similarity_robust: str = "drop-outliers"

    def __post_init__(self) -> None:
        base = self.eval_config()  # validates the shared options
        object.__setattr__(self, "tasks", base.tasks)
        object.__setattr__(self, "languages", base.languages)
        object.__setattr__(self, "items", base.items)
        object.__setattr__(self, "pair_layers", parse_layers(self.pair_layers))
        if isinstance(self.neurons, dict):
            object.__setattr__(self, "neurons", NeuronOptions(**self.neurons))
        if self.lens_overlap not in LENS_OVERLAP_RULES:
            raise AlignlensError(f"unknown lens overlap rule {self.lens_overlap!r} (use {' or '.join(LENS_OVERLAP_RULES)})")
        if self.lens_prompts not in LENS_PROMPTS:
            raise AlignlensError(f"unknown lens prompts {self.lens_prompts!r} (use {' or '.join(LENS_PROMPTS)})")
        if self.similarity_pooling not in SIMILARITY_POOLINGS:
            raise AlignlensError(f"unknown similarity pooling {self.similarity_pooling!r} "
                                 f"(use {', '.join(SIMILARITY_POOLINGS)})")
        if self.similarity_robust not in SIMILARITY_ROBUST:
            raise AlignlensError(f"unknown robust similarity variant {self.similarity_robust!r} "
                                 f"(use {', '.join(SIMILARITY_ROBUST)})")
        pca = _unique(self.pca_languages, "--pca-languages")
        if pca is not None and ("en" not in pca or len(pca) < 2):
            raise AlignlensError(f"--pca-languages must include en and at least one other language (got {','.join(pca)})")
        if pca is not None and self.languages is not None and set(pca) - set(self.languages):
            missing = [lang for lang in pca if lang not in self.languages]
            raise AlignlensError(f"--pca-languages {','.join(missing)} not among --languages {','.join(self.languages)}")
        object.__setattr__(self, "pca_languages", pca)
        object.__setattr__(self, "scatter_layers", parse_layers(self.scatter_layers, "--scatter-layers"))
        if (not isinstance(self.similarity_resamples, int) or isinstance(self.similarity_resamples, bool)
                or self.similarity_resamples < 0):
            raise AlignlensError(f"similarity resamples must be a whole number >= 0 (got {self.similarity_resamples!r})")


    #: Options that may differ when a run is resumed (they do not change any number).
    RESUMABLE = ("save_activations",)

    def resume_mismatch(self, saved: dict[str, Any]) -> list[str]:
        """Names of options that differ from a saved run's (manifest `options`)."""
        mine = self.to_dict()
        return [f.name for f in fields(self) if f.name not in self.RESUMABLE and saved.get(f.name) != mine[f.name]]


#: Cross-model patching (`alignlens localize`, `localize.patching`): the sites (each block's residual
#: stream input, attention output, MLP output), the position sets, and the directions by name ->
#: (source, receiver) model roles.
SITE_KINDS = ("resid", "attn", "mlp")
PATCH_POSITIONS = ("last", "query", "all")
PATCH_DIRECTIONS = {"a2b": ("aligned", "base"), "b2a": ("base", "aligned"), "c2b": ("control", "base")}


def parse_floats(values: str | Iterable[float] | None, what: str) -> tuple[float, ...] | None:
    """'-1,0.5,2' or numbers -> a tuple of distinct finite floats (None stays None); anything else
    is an AlignlensError naming `what`."""
    import math

    if values is None:
        return None
    raw = _unique(values, what)
    out: list[float] = []
    for v in raw:
        try:
            x = float(v) if not isinstance(v, bool) else None
        except (TypeError, ValueError):
            x = None
        if x is None or not math.isfinite(x):
            raise AlignlensError(f"{what}: {v!r} is not a finite number")
        if x in out:
            raise AlignlensError(f"{what}: {x:g} is given more than once")
        out.append(x)
    return tuple(out)


@dataclass(frozen=True)
class LocalizeConfig(_SelectsItems):
    """Options of `alignlens localize` (recorded in its manifest): the item selection of `analyze`
    (tasks, languages, items, limit, balanced), then what the three analyses run.

    Patching: `sites` (`SITE_KINDS`), `positions` (`PATCH_POSITIONS`), `layers` (None: every layer;
    resid sites at 0..n_layers, attn/mlp at blocks 0..n_layers-1), `directions` (`PATCH_DIRECTIONS`
    names; None: a2b and b2a, plus c2b when a control model is given). Steering (`steer`): the
    hidden-state `steer_layers` (0 the embedding output, l the output of block l-1; None: n/4, n/2,
    3n/4), `steer_scales`, `random_directions` control seeds, `direction_items` training-split items
    per language averaged into the direction (None: all of the split). Dose (`dose`, only for a
    LoRA-aligned `alignlens train` output): `alphas`. Layers are checked against the model once its
    size is known."""

    tasks: tuple[str, ...] = ("emotion",)
    languages: tuple[str, ...] | None = None
    limit: int | None = 24
    items: str | None = None
    balanced: bool = False
    batch_size: int = 8
    seed: int = 0
    bootstrap_resamples: int = 2000
    sites: tuple[str, ...] = SITE_KINDS
    positions: tuple[str, ...] = PATCH_POSITIONS
    layers: tuple[int, ...] | None = None
    directions: tuple[str, ...] | None = None
    steer: bool = True
    steer_layers: tuple[int, ...] | None = None
    steer_scales: tuple[float, ...] = (1.0, 2.0, 4.0)
    random_directions: int = 3
    direction_items: int | None = 64
    dose: bool = True
    alphas: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0)

    def __post_init__(self) -> None:
        base = self.eval_config()  # validates the shared options
        for name in ("tasks", "languages", "items"):
            object.__setattr__(self, name, getattr(base, name))
        for name, allowed, what in (("sites", SITE_KINDS, "--sites"), ("positions", PATCH_POSITIONS, "--positions"),
                                    ("directions", tuple(PATCH_DIRECTIONS), "--directions")):
            value = _unique(getattr(self, name), what, allow_none=name == "directions")
            bad = [v for v in value or () if v not in allowed]
            if bad:
                raise AlignlensError(f"{what}: unknown {bad[0]!r} (use {', '.join(allowed)})")
            object.__setattr__(self, name, value)
        layers = self.layers
        if isinstance(layers, str) and layers.strip() == "all":
            layers = None
        object.__setattr__(self, "layers", parse_layers(layers, "--layers"))
        object.__setattr__(self, "steer_layers", parse_layers(self.steer_layers, "--steer-layers"))
        object.__setattr__(self, "steer_scales", parse_floats(self.steer_scales, "--steer-scales"))
        object.__setattr__(self, "alphas", parse_floats(self.alphas, "--alphas"))
        for name in ("steer", "dose"):
            if not isinstance(getattr(self, name), bool):
                raise AlignlensError(f"{name} must be true or false (got {getattr(self, name)!r})")
        if (not isinstance(self.random_directions, int) or isinstance(self.random_directions, bool)
                or not 0 <= self.random_directions <= 100):
            raise AlignlensError(f"--random-directions must be a whole number from 0 to 100 (got {self.random_directions!r})")
        _positive(self.direction_items, "--direction-items", allow_none=True)
        if self.bootstrap_resamples < 2:
            raise AlignlensError(f"--bootstrap-resamples must be at least 2 for an interval (got {self.bootstrap_resamples})")

    def patch_directions(self, control: bool) -> tuple[str, ...]:
        """The patching directions run: `directions`, or a2b, b2a (and c2b with a `control` model).
        AlignlensError when c2b is asked for without a control model."""
        if self.directions is None:
            return ("a2b", "b2a") + (("c2b",) if control else ())
        if "c2b" in self.directions and not control:
            raise AlignlensError("--directions c2b patches the copy-control model into the base: give --control")
        return self.directions

    def check_layers(self, n_layers: int) -> None:
        """--layers in 0..n_layers (the resid sites; attn/mlp exist at 0..n_layers-1) and
        --steer-layers in 0..n_layers (hidden-state rows)."""
        for what, values in (("--layers", self.layers), ("--steer-layers", self.steer_layers)):
            bad = [x for x in values or () if x > n_layers]
            if bad:
                raise AlignlensError(f"{what}: layer {bad[0]} does not exist (this model's layers are 0..{n_layers}: "
                                     f"0 the embedding output, l the output of block l - 1)")

    def default_steer_layers(self, n_layers: int) -> tuple[int, ...]:
        """`steer_layers`, or n/4, n/2, 3n/4 of the model's `n_layers` blocks (distinct, >= 1)."""
        if self.steer_layers is not None:
            return tuple(sorted(self.steer_layers))
        return tuple(sorted({max(1, n_layers // 4), max(1, n_layers // 2), max(1, (3 * n_layers) // 4)}))

    def resume_mismatch(self, saved: dict[str, Any]) -> list[str]:
        """Names of options that differ from a saved run's (manifest `options`)."""
        mine = self.to_dict()
        return [f.name for f in fields(self) if saved.get(f.name) != mine[f.name]]


def defaults(cls: type) -> dict[str, Any]:
    """{field: default} of a config class, for CLI option defaults."""
    return {f.name: f.default for f in fields(cls) if f.default is not MISSING}
