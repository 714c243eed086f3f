"""Frozen, validated run options shared by the CLI and the Python API.

The CLI takes its defaults from these classes (`EvalConfig.limit`, ...), builds one, and calls
the library; every option is checked when the config is built, before any file is touched or a
model is loaded. Lists are stored as tuples; a repeated or empty list is an error.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Iterable

from alignlens import AlignlensError
from alignlens.neurons import NeuronOptions

LENS_OVERLAP_RULES = ("token-set", "first-token")


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


def check_layers(layers: Iterable[int] | None, n_layers: int, what: str = "--pair-layers") -> None:
    bad = [x for x in layers or () if x >= n_layers]
    if bad:
        raise AlignlensError(f"{what}: layer {bad[0]} does not exist (the model has layers 0..{n_layers - 1})")


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

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", _unique(self.tasks, "tasks", allow_none=False))
        object.__setattr__(self, "languages", _unique(self.languages, "languages"))
        _positive(self.limit, "limit", allow_none=True)
        _positive(self.batch_size, "batch size")
        _positive(self.bootstrap_resamples, "bootstrap resamples")


@dataclass(frozen=True)
class AnalyzeConfig:
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

    def __post_init__(self) -> None:
        base = self.eval_config()  # validates the shared options
        object.__setattr__(self, "tasks", base.tasks)
        object.__setattr__(self, "languages", base.languages)
        object.__setattr__(self, "pair_layers", parse_layers(self.pair_layers))
        if isinstance(self.neurons, dict):
            object.__setattr__(self, "neurons", NeuronOptions(**self.neurons))
        if self.lens_overlap not in LENS_OVERLAP_RULES:
            raise AlignlensError(f"unknown lens overlap rule {self.lens_overlap!r} (use {' or '.join(LENS_OVERLAP_RULES)})")

    def eval_config(self) -> EvalConfig:
        return EvalConfig(tasks=self.tasks, languages=self.languages, limit=self.limit, batch_size=self.batch_size,
                          seed=self.seed, prefix_cache=True, bootstrap_resamples=self.bootstrap_resamples)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able options (lists, not tuples) as recorded in manifests."""
        import json

        return json.loads(json.dumps(asdict(self)))

    #: Options that may differ when a run is resumed (they do not change any number).
    RESUMABLE = ("save_activations",)

    def resume_mismatch(self, saved: dict[str, Any]) -> list[str]:
        """Names of options that differ from a saved run's (manifest `options`)."""
        mine = self.to_dict()
        return [f.name for f in fields(self) if f.name not in self.RESUMABLE and saved.get(f.name) != mine[f.name]]


def defaults(cls: type) -> dict[str, Any]:
    """{field: default} of a config class, for CLI option defaults."""
    return {f.name: f.default for f in fields(cls) if f.default is not MISSING}
