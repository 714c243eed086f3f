"""Training options: `TrainConfig` (every option, validated) and the named presets."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignlens import AlignlensError

#: Preset values; every other option keeps its dataclass default.
PRESETS: dict[str, dict[str, Any]] = {
    # Sized for a 2-core CPU and the default Gemma-3-270m: 143 LoRA steps of ~3.2 s on an idle
    # machine (~8-9 minutes in all). With other processes on the cores, use threads=1 (2 threads
    # then fall to ~29 s/step; 1 thread keeps ~6-7 s/step).
    "default": dict(per_language=600, epochs=1, lr=5e-4, batch_size=8, grad_accum=1, warmup=0.05,
                    max_len=128, eval_every=25, save_every=50),
    # The paper's recipe, for GPUs: effective batch 16, 3 epochs, 10k questions per language.
    "paper": dict(per_language=10000, epochs=3, lr=5e-5, batch_size=16, grad_accum=1, warmup=0.03,
                  max_len=256, eval_every=200, save_every=500),
}
DEFAULT_LANGUAGES: tuple[str, ...] = ("zh", "de")
#: Training controls: None (X -> English alignment) or "copy" (English -> English, same questions).
CONTROLS: tuple[str | None, ...] = (None, "copy")

#: How the trainer forms optimizer steps (`examples.epoch_order`): "bucketed" (examples of similar
#: length together, ~1% padding) or "random" (a plain seeded shuffle, as HF Trainer's default).
BATCHINGS: tuple[str, ...] = ("bucketed", "random")

#: Options that may change between the sessions of one run (everything else must match to resume).
RUNTIME_OPTIONS: tuple[str, ...] = ("keep_checkpoints", "threads")

#: Options without an `alignlens train` flag (library only): messages name them by their field name.
LIBRARY_ONLY: tuple[str, ...] = ("append_eos", "warmup", "weight_decay", "max_grad_norm", "lora_dropout",
                                 "target_language")

#: Largest seed: numpy's global RNG (seeded by a run) takes 0 .. 2**32 - 1.
MAX_SEED = 2 ** 32 - 1


def option_flag(name: str) -> str:
    """How a message names the option of `TrainConfig` field `name`: its `alignlens train` flag
    (lr -> --lr, batch_size -> --batch-size, data_files -> --data), the field name for `LIBRARY_ONLY`."""
    if name in LIBRARY_ONLY:
        return name
    return "--data" if name == "data_files" else "--" + name.replace("_", "-")


@dataclass
class TrainConfig:
    """Every training option. Build with `TrainConfig.from_preset(name, **overrides)`."""

    preset: str = "default"
    # data
    #: A task (bundled name or folder): train on its own questions, X -> English, from its parallel
    #: test files (same-task alignment). None: the bundled SNLI question-translation set.
    task: str | None = None
    #: The task's item indices trained on ("250-499", "1,5,10-19"); None -> the task's default split
    #: (`data.default_train_items`: the second half, e.g. 250-499 of 500), resolved by `validate`.
    train_items: str | None = None
    #: "copy": the control run, English -> English pairs of the same questions (same items, split,
    #: steps and settings), to tell alignment from generic fine-tuning. None: X -> English.
    control: str | None = None
    #: The translation target: the answer of each pair is the item's question in this language (with
    #: a task: any language it has items in, not a source language; the bundled SNLI set and the
    #: copy control: English only). The paper varies it (e.g. zh).
    target_language: str = "en"
    languages: list[str] | None = None  # source languages; None -> zh,de unless only data_files are given
    per_language: int | None = 600  # sampled per language (bundled: None = all 10,000; with a task: at
    # most this many of the split's items, all of them when the split is smaller)
    data_files: list[str] = field(default_factory=list)  # user JSONL files (used whole)
    val_fraction: float = 0.05  # held out per language
    max_len: int = 128  # tokens per example (prompt + target), longer ones are cut from the right
    max_drop_fraction: float = 0.05  # refuse when more of a language's examples would be dropped
    # (their prompt alone fills max_len, so no target token is left)
    append_eos: bool = True  # EOS after the English target
    # optimisation
    epochs: int = 1
    lr: float = 5e-4
    batch_size: int = 8  # examples per forward pass
    grad_accum: int = 1  # forward passes per optimizer step and process (global batch = batch_size * grad_accum
    # * the number of torchrun processes)
    warmup: float = 0.05  # linear warm-up, as a fraction of all optimizer steps
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # gradient clipping (0 = off)
    bf16: bool = False  # bfloat16 autocast (GPU; slow on CPU)
    seed: int = 0
    batching: str = "bucketed"  # `BATCHINGS`: which examples share an optimizer step
    # model
    full: bool = False  # full fine-tuning instead of LoRA
    fsdp: bool = False  # under torchrun: shard parameters, gradients and optimizer state (FSDP2) instead of DDP
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    device: str = "auto"
    threads: int | None = None  # torch CPU threads for this run (None = torch's default); 1 is far
    # faster than 2 on a 2-core machine that other processes also use
    # bookkeeping
    eval_every: int = 25  # optimizer steps between validation losses (0 = only at the end)
    save_every: int = 50  # optimizer steps between checkpoints (0 = only on interruption)
    keep_checkpoints: bool = False  # keep OUT/checkpoints after success

    @classmethod
    def from_preset(cls, name: str = "default", **overrides: Any) -> "TrainConfig":
        """The preset's values, then `overrides` (keys are field names; None values are ignored)."""
        if name not in PRESETS:
            raise AlignlensError(f"unknown preset {name!r} (use {', '.join(PRESETS)})")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise AlignlensError(f"unknown training option(s) {', '.join(unknown)}")
        values = {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
        values["preset"] = name
        cfg = cls(**values)
        cfg.validate()
        return cfg

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """From `to_dict` output (unknown keys are ignored; not validated)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def resolved_languages(self) -> list[str]:
        """The source languages of the task's or the bundled pairs: `languages`, else zh,de (with
        data files and no task: none)."""
        if self.languages is None:
            return [] if self.data_files and self.task is None else list(DEFAULT_LANGUAGES)
        return list(self.languages)

    def resume_differences(self, given: dict[str, Any]) -> list[str]:
        """The options in `given` (field name -> value: those given for a resumed session, e.g. on
        the command line) whose values differ from this config's, the saved run's, as
        "FLAG VALUE (saved: VALUE)" (`option_flag`); `RUNTIME_OPTIONS` are skipped (they may
        change). Values are compared as the run uses them: languages resolved (None = the default
        zh,de), comma-separated strings split, item ranges as indices, files as absolute paths;
        None in `given` is a value too (e.g. no task). Unknown names are an AlignlensError."""
        names = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise AlignlensError(f"unknown training option(s) {', '.join(unknown)}")
        out = []
        for name in names:  # in the fields' order
            if name not in given or name in RUNTIME_OPTIONS:
                continue
            value, saved = self._comparable(name, given[name]), self._comparable(name, getattr(self, name))
            if value != saved:
                out.append(f"{option_flag(name)} {_shown(given[name])} (saved: {_shown(getattr(self, name))})")
        return out

    def _comparable(self, name: str, value: Any) -> Any:
        """`value` of option `name` in the form `resume_differences` compares."""
        from alignlens.config import parse_items

        if name in ("languages", "lora_targets") and isinstance(value, str):
            value = [x.strip() for x in value.split(",") if x.strip()]
        if name == "languages":
            return dataclasses.replace(self, languages=value).resolved_languages()
        if name == "train_items":
            return None if value is None else parse_items(value, "--train-items")
        if name == "data_files":
            return [str(Path(p).expanduser().resolve()) for p in value or []]
        if name == "lora_targets":  # peft adapts the matching modules in the model's order
            return sorted(value or [])
        return value

    def validate(self) -> None:
        """Normalise comma-separated strings to lists; raise AlignlensError naming a bad option."""
        from alignlens.config import _unique
        from alignlens.model import check_device

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise AlignlensError(msg)

        if isinstance(self.languages, str):
            self.languages = [x.strip() for x in self.languages.split(",") if x.strip()]
        if isinstance(self.lora_targets, str):
            self.lora_targets = [x.strip() for x in self.lora_targets.split(",") if x.strip()]
        self.data_files = [str(p) for p in self.data_files]
        self._check_types()
        need(self.preset in PRESETS, f"unknown preset {self.preset!r} (use {', '.join(PRESETS)})")
        need(self.batching in BATCHINGS,
             f"unknown batching {self.batching!r} (use {', '.join(BATCHINGS)})")
        need(self.epochs >= 1, f"epochs must be >= 1 (got {self.epochs})")
        need(math.isfinite(self.lr) and self.lr > 0, f"lr must be a finite number > 0 (got {self.lr})")
        need(self.batch_size >= 1, f"batch size must be >= 1 (got {self.batch_size})")
        need(self.grad_accum >= 1, f"grad accumulation must be >= 1 (got {self.grad_accum})")
        need(0 <= self.warmup < 1, f"warmup is a fraction of the steps in [0, 1) (got {self.warmup})")
        need(math.isfinite(self.weight_decay) and self.weight_decay >= 0,
             f"weight decay must be a finite number >= 0 (got {self.weight_decay})")
        need(0 <= self.seed <= MAX_SEED, f"seed must be in 0..{MAX_SEED} (got {self.seed})")
        need(0 <= self.val_fraction < 1, f"val fraction must be in [0, 1) (got {self.val_fraction})")
        need(self.max_len >= 8, f"max length must be >= 8 (got {self.max_len})")
        need(0 <= self.max_drop_fraction <= 1,
             f"max drop fraction must be in [0, 1] (got {self.max_drop_fraction})")
        need(self.per_language is None or self.per_language >= 1,
             f"per-language must be >= 1 (got {self.per_language})")
        need(self.full or self.lora_r >= 1, f"LoRA r must be >= 1 (got {self.lora_r})")
        need(self.full or self.lora_alpha > 0, f"LoRA alpha must be > 0 (got {self.lora_alpha})")
        need(self.full or bool(self.lora_targets), "LoRA needs at least one target module")
        if self.lora_targets:  # an empty or repeated name is a typo
            self.lora_targets = list(_unique(self.lora_targets, "--lora-targets"))
        need(0 <= self.lora_dropout < 1, f"LoRA dropout must be in [0, 1) (got {self.lora_dropout})")
        need(self.eval_every >= 0, f"--eval-every must be >= 0 (got {self.eval_every}; 0 = only at the end)")
        need(self.save_every >= 0, f"--save-every must be >= 0 (got {self.save_every}; 0 = only on interruption)")
        need(math.isfinite(self.max_grad_norm) and self.max_grad_norm >= 0,
             f"max grad norm must be a finite number >= 0 (got {self.max_grad_norm}; 0 = no clipping)")
        need(self.threads is None or self.threads >= 1, f"threads must be >= 1 (got {self.threads})")
        check_device(self.device)  # an unknown device, or cuda without a GPU
        need(bool(self.resolved_languages()) or bool(self.data_files),
             "no training data: give languages or data files")
        need(self.control in CONTROLS, f"unknown control {self.control!r} (use {' or '.join(map(str, CONTROLS[1:]))})")
        need(self.control is None or not self.data_files,
             "--control copy builds English copies of the task's or the bundled questions; it cannot be "
             "combined with --data files")
        need(self.task is not None or self.train_items is None, "--train-items needs --task (the task whose items they are)")
        need(isinstance(self.target_language, str) and bool(self.target_language.strip()),
             f"target_language must be a language code (got {self.target_language!r})")
        if self.target_language != "en":
            need(self.task is not None, f"target language {self.target_language} needs a task (the bundled SNLI "
                 "question-translation set has English targets only)")
            need(self.control is None, f"the copy control copies the English questions: it needs target language en "
                 f"(got {self.target_language})")
        if self.task is not None:
            self._resolve_task()

    def _check_types(self) -> None:
        """Each whole-number option an int, each switch a bool, each fraction or rate a number (a
        config built in Python or read back from a file may hold anything)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", "int | None"):
                ok = (value is None and f.type == "int | None") or (isinstance(value, int) and not isinstance(value, bool))
                kind = "a whole number"
            elif f.type == "bool":
                ok, kind = isinstance(value, bool), "true or false"
            elif f.type == "float":
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                kind = "a number"
            else:
                continue
            if not ok:
                raise AlignlensError(f"{option_flag(f.name)} must be {kind} (got {value!r})")

    def _resolve_task(self) -> None:
        """Check the task and its languages; set `train_items` to its canonical form (the task's
        default split when None), so manifests and resumed runs record the exact items."""
        from alignlens import data
        from alignlens.config import format_items, parse_items

        spec = data.load_task(self.task)
        if self.train_items is None:
            indices = data.default_train_items(spec)
        else:
            indices = parse_items(self.train_items, "--train-items")
            data.default_train_items(spec)  # the task needs an English file (the target)
            have = {it.index for it in data.load_items(spec, "en")}
            missing = [i for i in indices if i not in have]
            if missing:
                raise AlignlensError(f"--train-items: {len(missing)} item(s) are not in task {spec.name} "
                                     f"({format_items(missing, 5)}; it has items {format_items(have, 5)})")
        self.train_items = format_items(indices)
        langs = self.resolved_languages()
        target = self.target_language
        if target in langs:
            copy = "; for English -> English pairs use --control copy" if target == "en" else ""
            raise AlignlensError(f"--languages: {'English' if target == 'en' else target} is the translation target, "
                                 f"not a source language (task {spec.name}{copy})")
        data.task_languages(spec, langs)
        if target not in spec.languages:
            raise AlignlensError(f"target language {target}: task {spec.name} has no {target} items to translate into "
                                 f"(it has: {', '.join(spec.languages)})")

    def train_indices(self) -> tuple[int, ...]:
        """The task's item indices trained on (empty without a task)."""
        from alignlens.config import parse_items

        if self.task is None or self.train_items is None:
            return ()
        return parse_items(self.train_items, "--train-items") or ()


def _shown(value: Any) -> str:
    """An option's value as a message shows it (lists comma-separated, None as "none", switches as
    on/off)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "none"
    return str(value)
