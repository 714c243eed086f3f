"""Question-translation alignment training: a minimal, readable fine-tuning loop.

The paper's training step: fine-tune on questions only, translated X -> English (no task
answers). One training example is `prompt = <question in X>\\nTranslate the input from X to
English:\\n` followed by `target = <English question><eos>`.

The loop, top to bottom (`train`):

1. data: bundled question-translation sets and/or user JSONL files, a seeded per-language
   validation split (`val_fraction`, paper: 5%);
2. tokens: `tokenizer(prompt)` (BOS as the tokenizer adds it) + `tokenizer(target, no specials)`
   + EOS (`append_eos`, so the model also learns where the translation stops). Sequences longer
   than `max_len` are cut from the right (the prompt is kept: "truncated"); a pair whose prompt
   alone fills `max_len` is "dropped". Counts per language and split are printed and kept in the
   manifest (`data.examples`); more than `max_drop_fraction` dropped in a language is refused
   before the model loads;
3. model: a plain HF causal LM (never the TransformerLens bridge), float32 weights, LoRA via peft
   (default r=8, alpha=16, dropout 0, q_proj+v_proj) or full fine-tuning;
4. loss (`target_loss`): the decoder body gives hidden states; the LM head is applied ONLY at the
   positions that predict target tokens (with Gemma's 262k vocabulary the head is most of the
   cost), then token-level cross-entropy summed and divided by the number of target tokens of
   the whole optimizer step (so gradient accumulation equals one big batch);
5. AdamW, cosine schedule with linear warm-up, gradient clipping, optional bf16 autocast;
6. validation loss every `eval_every` steps, the best (lowest validation loss) trainable weights
   are kept; checkpoints every `save_every` steps and on Ctrl-C/SIGTERM (then `TrainInterrupted`,
   exit 130/143, names the checkpoint and the resume command); `resume=True` continues exactly
   (same weights as an uninterrupted run with the same seed);
7. output folder: `merged/` (full HF model + tokenizer, the BEST-validation weights, float32),
   `adapter/` (peft adapter of the same weights, LoRA only), `manifest.json`, `train_log.jsonl`.
   `checkpoints/` is deleted after a successful run unless `keep_checkpoints=True`. `force`
   replaces only these files (and `train_log.jsonl`), and only once everything was checked and
   the model is ready to train; other files in the folder are never touched.

Batches are right-padded: with causal attention no real token can attend to a later pad, so no
attention mask is needed (positions are 0..n-1 for every row) and pad positions never enter the
loss.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import shlex
import shutil
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from alignlens import AlignlensError, RunInterrupted, __version__
from alignlens.results import TEMP_PREFIX, atomic_path, clean_stale_temps, git_commit, now_iso, versions, write_json

log = logging.getLogger(__name__)

FORMAT = "alignlens-train/1"

# ---- options --------------------------------------------------------------------------------

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


@dataclass
class TrainConfig:
    """Every training option. Build with `TrainConfig.from_preset(name, **overrides)`."""

    preset: str = "default"
    # data
    languages: list[str] | None = None  # bundled QT languages; None -> zh,de unless data_files are given
    per_language: int | None = 600  # sampled per bundled language (None = all 10,000)
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
    grad_accum: int = 1  # forward passes per optimizer step (effective batch = batch_size * grad_accum)
    warmup: float = 0.05  # linear warm-up, as a fraction of all optimizer steps
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # gradient clipping (0 = off)
    bf16: bool = False  # bfloat16 autocast (GPU; slow on CPU)
    seed: int = 0
    # model
    full: bool = False  # full fine-tuning instead of LoRA
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
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def resolved_languages(self) -> list[str]:
        if self.languages is None:
            return [] if self.data_files else list(DEFAULT_LANGUAGES)
        return list(self.languages)

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise AlignlensError(msg)

        if isinstance(self.languages, str):
            self.languages = [x.strip() for x in self.languages.split(",") if x.strip()]
        if isinstance(self.lora_targets, str):
            self.lora_targets = [x.strip() for x in self.lora_targets.split(",") if x.strip()]
        self.data_files = [str(p) for p in self.data_files]
        need(self.epochs >= 1, f"epochs must be >= 1 (got {self.epochs})")
        need(self.lr > 0, f"lr must be > 0 (got {self.lr})")
        need(self.batch_size >= 1, f"batch size must be >= 1 (got {self.batch_size})")
        need(self.grad_accum >= 1, f"grad accumulation must be >= 1 (got {self.grad_accum})")
        need(0 <= self.warmup < 1, f"warmup is a fraction of the steps in [0, 1) (got {self.warmup})")
        need(0 <= self.val_fraction < 1, f"val fraction must be in [0, 1) (got {self.val_fraction})")
        need(self.max_len >= 8, f"max length must be >= 8 (got {self.max_len})")
        need(0 <= self.max_drop_fraction <= 1,
             f"max drop fraction must be in [0, 1] (got {self.max_drop_fraction})")
        need(self.per_language is None or self.per_language >= 1,
             f"per-language must be >= 1 (got {self.per_language})")
        need(self.full or self.lora_r >= 1, f"LoRA r must be >= 1 (got {self.lora_r})")
        need(self.full or bool(self.lora_targets), "LoRA needs at least one target module")
        need(0 <= self.lora_dropout < 1, f"LoRA dropout must be in [0, 1) (got {self.lora_dropout})")
        need(self.eval_every >= 0 and self.save_every >= 0, "eval/save intervals must be >= 0")
        need(self.max_grad_norm >= 0, "max grad norm must be >= 0")
        need(self.threads is None or self.threads >= 1, f"threads must be >= 1 (got {self.threads})")
        need(bool(self.resolved_languages()) or bool(self.data_files),
             "no training data: give languages or data files")


@dataclass
class TrainResult:
    """What `train` did. `out_dir` loads with `alignlens.model.load_model(out_dir)`."""

    out_dir: Path
    steps: int
    total_steps: int
    epochs: int
    n_train: int
    n_val: int
    initial_val_loss: float | None
    best_val_loss: float | None
    best_step: int
    final_val_loss: float | None
    final_train_loss: float | None
    wall_seconds: float
    tokens_per_second: float
    resumed: bool
    manifest: dict


class TrainInterrupted(RunInterrupted):
    """Ctrl-C / SIGTERM: a checkpoint was saved; `train(..., resume=True)` continues.
    `exit_code` is 130 (SIGINT) or 143 (SIGTERM); the message names the checkpoint and the
    command that resumes."""


# ---- data -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """Token ids of prompt + target; ids[n_prompt:] are the target tokens."""

    ids: tuple[int, ...]
    n_prompt: int
    lang: str = ""


def load_pairs(config: TrainConfig) -> list:
    """All training pairs: bundled question translation (seeded sample) + user files."""
    from alignlens import data

    pairs = []
    langs = config.resolved_languages()
    if langs:
        pairs += data.load_question_translation(langs, config.per_language, seed=config.seed)
    for path in config.data_files:
        pairs += data.load_translation_file(path)
    return pairs


def split_pairs(pairs: list, val_fraction: float, seed: int) -> tuple[list, list]:
    """Seeded validation split, per language (order of first appearance), `val_fraction` of each."""
    groups: dict[str, list] = {}
    for p in pairs:
        groups.setdefault(p.lang, []).append(p)
    rng = random.Random(seed)
    train, val = [], []
    for lang, group in groups.items():
        idx = list(range(len(group)))
        rng.shuffle(idx)
        n_val = round(len(group) * val_fraction)
        if val_fraction > 0 and n_val == 0 and len(group) >= 2:
            n_val = 1
        held = set(idx[:n_val])
        val += [group[i] for i in sorted(held)]
        train += [group[i] for i in range(len(group)) if i not in held]
    return train, val


#: Per-language example counts from `encode`: total, kept (total - dropped), truncated (kept but cut
#: to max_len), dropped (the prompt alone fills max_len), longest and longest_prompt (tokens, uncut).
COUNT_KEYS = ("total", "kept", "truncated", "dropped", "longest", "longest_prompt")


def _lang_key(lang: str) -> str:
    return lang or "(no lang)"


def encode(tokenizer: Any, pairs: list, max_len: int, append_eos: bool = True
           ) -> tuple[list[Example], dict[str, dict[str, int]]]:
    """Tokenise pairs; returns (examples, counts per language, see `COUNT_KEYS`).

    An example longer than `max_len` tokens is cut from the right: the prompt is kept and the
    target loses its end (`truncated`). A pair whose prompt alone fills `max_len` keeps no target
    token and is left out (`dropped`)."""
    eos = tokenizer.eos_token_id
    if append_eos and eos is None:
        raise AlignlensError("the tokenizer has no EOS token (train with append_eos off)")
    prompts = tokenizer([p.input for p in pairs])["input_ids"] if pairs else []
    targets = tokenizer([p.answer for p in pairs], add_special_tokens=False)["input_ids"] if pairs else []
    out: list[Example] = []
    counts: dict[str, dict[str, int]] = {}
    for p, pr, tg in zip(pairs, prompts, targets):
        c = counts.setdefault(_lang_key(p.lang), dict.fromkeys(COUNT_KEYS, 0))
        ids = list(pr) + list(tg) + ([eos] if append_eos else [])
        c["total"] += 1
        c["longest"] = max(c["longest"], len(ids))
        c["longest_prompt"] = max(c["longest_prompt"], len(pr))
        if len(ids) > max_len:
            ids = ids[:max_len]
            if len(ids) <= len(pr):
                c["dropped"] += 1
                continue
            c["truncated"] += 1
        c["kept"] += 1
        out.append(Example(tuple(ids), len(pr), p.lang))
    return out, counts


def check_drops(counts: dict[str, dict[str, dict[str, int]]], max_len: int, max_fraction: float) -> None:
    """Refuse (AlignlensError) when, in any language, more than `max_fraction` of the examples
    (train and validation together) were dropped by `encode`. `counts`: {"train": .., "val": ..}."""
    langs = list(dict.fromkeys([*counts["train"], *counts["val"]]))
    zero = dict.fromkeys(COUNT_KEYS, 0)
    for lang in langs:
        tr, va = counts["train"].get(lang, zero), counts["val"].get(lang, zero)
        total, dropped = tr["total"] + va["total"], tr["dropped"] + va["dropped"]
        if total and dropped / total > max_fraction:
            need = max(tr["longest_prompt"], va["longest_prompt"]) + 1
            whole = max(tr["longest"], va["longest"])
            raise AlignlensError(
                f"training data, language {lang}: {dropped} of {total} examples would be dropped (train "
                f"{tr['dropped']}/{tr['total']}, val {va['dropped']}/{va['total']}) because their prompt alone "
                f"fills --max-len {max_len}, more than the allowed {max_fraction:.0%} (max_drop_fraction); "
                f"raise --max-len to at least {need} ({whole} keeps every {lang} example whole)")


def _report_examples(counts: dict[str, dict[str, dict[str, int]]], max_len: int, progress: bool) -> None:
    """One line per language: examples kept, truncated and dropped (logged; on stderr with progress)."""
    zero = dict.fromkeys(COUNT_KEYS, 0)
    for lang in dict.fromkeys([*counts["train"], *counts["val"]]):
        tr, va = counts["train"].get(lang, zero), counts["val"].get(lang, zero)
        truncated, dropped = tr["truncated"] + va["truncated"], tr["dropped"] + va["dropped"]
        line = (f"training data {lang}: {tr['kept']}/{tr['total']} train and {va['kept']}/{va['total']} val "
                f"examples kept; {truncated} truncated to --max-len {max_len} (target cut), {dropped} dropped "
                f"(prompt alone fills it)")
        log.info(line)  # (not a warning: logging's fallback handler would print it twice)
        if progress:
            print(line, file=sys.stderr, flush=True)


def collate(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids [B, T] and a bool mask of target tokens [B, T]."""
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    target = torch.zeros((len(examples), width), dtype=torch.bool)
    for i, e in enumerate(examples):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        target[i, e.n_prompt: len(e.ids)] = True
    return ids, target


def _data_digest(examples: list[Example]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(np.asarray(e.ids, dtype=np.int64).tobytes())
        h.update(str(e.n_prompt).encode())
    return h.hexdigest()[:16]


# ---- the loss: LM head at target positions only ---------------------------------------------


def _hf_model(model: torch.nn.Module) -> torch.nn.Module:
    """The HF causal LM inside a peft model (LoRA layers injected in place) or the model itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def target_loss(model: torch.nn.Module, input_ids: torch.Tensor, target_mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of the target tokens and their count.

    Runs the decoder body for hidden states, keeps the rows at positions t whose next token
    t+1 is a target, and applies the LM head (and Gemma-2-style final-logit soft-capping, if the
    config has it) to those rows only. Equals HF's loss with labels = -100 outside the targets
    (times the number of target tokens).
    """
    hf = _hf_model(model)
    hidden = hf.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state  # [B, T, D]
    predicts_target = target_mask[:, 1:]  # position t predicts token t+1
    rows = hidden[:, :-1][predicts_target]  # [N, D]
    labels = input_ids[:, 1:][predicts_target]  # [N]
    logits = hf.get_output_embeddings()(rows)
    cap = getattr(hf.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return F.cross_entropy(logits.float(), labels, reduction="sum"), int(labels.numel())


@torch.no_grad()
def evaluate(model: torch.nn.Module, examples: list[Example], batch_size: int, pad_id: int,
             device: torch.device, bf16: bool = False) -> float | None:
    """Mean target-token loss over `examples` (deterministic; no RNG used)."""
    if not examples:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        ids, tgt = collate(examples[i: i + batch_size], pad_id)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, n = target_loss(model, ids.to(device), tgt.to(device))
        total += float(loss)
        count += n
    model.train(was_training)
    return total / max(count, 1)


# ---- model ----------------------------------------------------------------------------------


def _model_source(model_spec: str) -> Path | None:
    """The local HF folder of `model_spec` (None for a hub name); refuses a missing local path."""
    from alignlens.model import DEFAULT_MODEL, ensure_default_model

    if model_spec == DEFAULT_MODEL:
        return ensure_default_model()
    candidate = Path(model_spec).expanduser()
    if candidate.is_dir():
        path = candidate / "merged" if (candidate / "merged" / "config.json").is_file() else candidate
        if not (path / "config.json").is_file():
            raise AlignlensError(f"cannot load model {model_spec!r}: {candidate} has no config.json")
        return path
    if candidate.exists() or "/" not in model_spec or model_spec.startswith((".", "~", "/")):
        raise AlignlensError(f"cannot load model {model_spec!r}: not the default ({DEFAULT_MODEL}) and no such model folder")
    return None


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def load_tokenizer(model_spec: str) -> Any:
    """The tokenizer of `model_spec` (see `load_base`), without loading the weights."""
    from transformers import AutoTokenizer

    path = _model_source(model_spec)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoTokenizer.from_pretrained(str(path) if path is not None else model_spec)
    except Exception as exc:  # noqa: BLE001 - one clear line for the user
        raise AlignlensError(f"cannot load the tokenizer of {model_spec!r} for training: {_first_line(exc)}") from None


def load_base(model_spec: str, device: torch.device, tokenizer: Any = None) -> tuple[torch.nn.Module, Any, dict]:
    """A plain HF causal LM (float32) + tokenizer + a JSON-able description.

    `model_spec`: `gemma-3-270m` (embedded default), a local HF folder (an `alignlens train`
    output trains on from its merged model), or a hub name. `tokenizer`: reuse one already loaded.
    """
    from transformers import AutoModelForCausalLM

    from alignlens.model import folder_hash

    path = _model_source(model_spec)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_spec)
    source = str(path) if path is not None else model_spec
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - one clear line for the user
        raise AlignlensError(f"cannot load model {model_spec!r} for training: {_first_line(exc)}") from None
    model.to(device)
    info = {"spec": model_spec, "path": str(path) if path else None,
            "hash": folder_hash(path) if path is not None else None,
            "architecture": type(model).__name__,
            "n_params": int(sum(p.numel() for p in model.parameters()))}
    return model, tokenizer, info


def wrap_lora(model: torch.nn.Module, config: TrainConfig) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.lora_targets), task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, lcfg)
    except ValueError as exc:
        raise AlignlensError(f"LoRA targets {','.join(config.lora_targets)} do not fit this model "
                             f"({str(exc).splitlines()[0]}); choose other targets or full fine-tuning") from None


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    if missing or any(n not in params for n in state):
        raise AlignlensError("checkpoint does not match the model (different LoRA/full settings?)")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)


def save_tiny_base(folder: str | Path, arch: str = "gemma3", seed: int = 0, vocab_size: int = 1000,
                   **config_overrides: Any) -> Path:
    """Write a plain tiny random HF model + tokenizer folder, usable as `model_spec` in tests and
    smoke runs. The model is `alignlens.model.tiny_hf_model`; the tokenizer is trained on
    question-translation text (de, es, it, en) so examples stay short."""
    from alignlens.data import load_question_translation
    from alignlens.model import tiny_hf_model, tiny_tokenizer

    corpus = []
    for p in load_question_translation(["de", "es", "it"], per_language=300, seed=1234):
        corpus += [p.input, p.answer]
    tok = tiny_tokenizer("sentencepiece", vocab_size=vocab_size, corpus=corpus)
    model = tiny_hf_model(arch, tok, seed, **config_overrides)
    folder = Path(folder)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# ---- checkpoints, RNG, log ------------------------------------------------------------------


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_save(obj: Any, path: Path) -> None:
    """torch.save through a temporary beside `path` (results.TEMP_PREFIX, umask modes), renamed on success."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _save_folder(path: Path, save: Callable[[Path], None]) -> None:
    """`save(tmp)` into a temporary folder beside `path`, then rename it to `path` (replacing a
    partial one of this run). atomic_path gives every file inside the modes a plain open() gives
    under the umask (safetensors writes 0600)."""
    if path.exists():
        shutil.rmtree(path)
    with atomic_path(path, folder=True) as tmp:
        save(tmp)


#: What a checkpoint (`checkpoints/last.pt`) holds.
_CHECKPOINT_KEYS = ("format", "config", "model_spec", "data_digest", "trainable", "optimizer", "scheduler", "rng",
                    "log_offset", "state")

#: Everything `train` writes into its output folder; `force` replaces these and nothing else.
_ARTIFACTS = ("merged", "adapter", "checkpoints", "manifest.json", "train_log.jsonl")


def _has_content(out: Path) -> bool:
    return out.is_dir() and any(p for p in out.iterdir() if not p.name.startswith(TEMP_PREFIX))


def _check_out_dir(out: Path, resume: bool, force: bool) -> Path | None:
    """Check the output folder without changing it; returns the checkpoint to resume from (or None)."""
    if out.exists() and not out.is_dir():
        raise AlignlensError(f"output {out} exists and is not a folder")
    nonempty = _has_content(out)
    last = out / "checkpoints" / "last.pt"
    if resume:
        if last.is_file():
            return last
        if (out / "manifest.json").is_file():
            raise AlignlensError(f"{out} holds a finished training run; nothing to resume (retrain with --force instead of --resume)")
        raise AlignlensError(f"nothing to resume in {out}: no checkpoint ({last} missing); "
                             f"run without --resume to start")
    if nonempty:
        if not force:
            raise AlignlensError(f"output folder {out} is not empty (use --force to overwrite, --resume to continue)")
        resolved = out.resolve()
        for name, danger in (("the current folder", Path.cwd()), ("your home folder", Path.home()),
                             ("the root folder", Path("/"))):
            if resolved == danger.resolve():
                raise AlignlensError(f"refusing --force on {name} ({resolved}); give --out a folder of its own")
    anc = out
    while not anc.exists():
        anc = anc.parent
    if not os.access(anc, os.W_OK | os.X_OK):
        raise AlignlensError(f"cannot write to {out}: {anc} is not writable")
    return None


def _start_writing(out: Path, fresh: bool) -> None:
    """The first change to `out`: create it, remove stale temporaries and, for a fresh run (the
    folder was checked: empty, or `force`), the previous run's `_ARTIFACTS` (nothing else)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(out)
        if fresh:
            for name in _ARTIFACTS:
                p = out / name
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                elif p.exists() or p.is_symlink():
                    p.unlink()
    except OSError as exc:
        raise AlignlensError(f"cannot write to {out}: {exc.strerror or exc}") from None


# ---- the loop -------------------------------------------------------------------------------


def train(config: TrainConfig | None, model_spec: str | None, out_dir: str | Path, *, resume: bool = False,
          force: bool = False, progress: bool = True,
          callback: Callable[[dict], None] | None = None) -> TrainResult:
    """Fine-tune `model_spec` on question translation and write a model folder to `out_dir`.

    `resume=True` continues from `out_dir/checkpoints/last.pt`; `config` and `model_spec` may
    then be None (the saved ones are used) and must otherwise equal the saved ones. Without
    `resume`, a non-empty `out_dir` is an error unless `force`. `callback(record)` is called after
    every optimizer step with the step's log record (raising KeyboardInterrupt there behaves like
    Ctrl-C). Ctrl-C/SIGTERM saves a checkpoint and raises `TrainInterrupted`.

    Nothing in `out_dir` changes until everything that can be checked was: options, the output
    folder, data files, the model path, the tokenised data (`max_drop_fraction`), loading the
    model and fitting LoRA. Only then does a forced run remove the previous run's files (only
    `_ARTIFACTS`, never other files).
    """
    from alignlens.model import DEFAULT_MODEL

    t_session = time.perf_counter()
    out = Path(out_dir).expanduser()
    if config is not None:
        config.validate()
    ckpt_path = _check_out_dir(out, resume, force)
    ckpt: dict | None = None
    if ckpt_path is not None:
        try:
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
            missing = [k for k in _CHECKPOINT_KEYS if k not in ckpt]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
            saved = TrainConfig.from_dict(ckpt["config"])
        except Exception as exc:  # noqa: BLE001 - one clear line for the user
            raise AlignlensError(f"cannot resume from {ckpt_path}: unreadable checkpoint ({_first_line(exc)}); "
                                 f"start again with --force instead of --resume") from None
        if config is not None:
            runtime = ("keep_checkpoints", "threads")  # may change between sessions
            diff = [k for k, v in config.to_dict().items() if k not in runtime and saved.to_dict().get(k) != v]
            if diff:
                raise AlignlensError(f"cannot resume with different options ({', '.join(diff)}); "
                                     f"omit them to use the saved ones")
            saved.keep_checkpoints, saved.threads = config.keep_checkpoints, config.threads
        if model_spec is not None and model_spec != ckpt["model_spec"]:
            raise AlignlensError(f"cannot resume with a different model ({model_spec!r}, saved: {ckpt['model_spec']!r})")
        config, model_spec = saved, ckpt["model_spec"]
    config = config or TrainConfig.from_preset("default")
    config.validate()
    model_spec = model_spec or DEFAULT_MODEL
    threads_before = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _run(config, model_spec, out, ckpt, t_session, progress, callback)
    finally:
        torch.set_num_threads(threads_before)


def _run(config: TrainConfig, model_spec: str, out: Path, ckpt: dict | None, t_session: float, progress: bool,
         callback: Callable[[dict], None] | None) -> TrainResult:
    """The body of `train` (options resolved, output folder checked but not yet changed)."""
    from alignlens.model import resolve_device

    # 1. data, split, tokens (checked before the model loads and before `out` changes)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    pairs = load_pairs(config)
    train_pairs, val_pairs = split_pairs(pairs, config.val_fraction, config.seed)
    device = resolve_device(config.device)
    tokenizer = load_tokenizer(model_spec)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    train_ex, counts_train = encode(tokenizer, train_pairs, config.max_len, config.append_eos)
    val_ex, counts_val = encode(tokenizer, val_pairs, config.max_len, config.append_eos)
    counts = {"train": counts_train, "val": counts_val}
    _report_examples(counts, config.max_len, progress)
    check_drops(counts, config.max_len, config.max_drop_fraction)
    if not train_ex:
        raise AlignlensError("no training examples left after tokenisation (max length too small?)")
    digest = _data_digest(train_ex)
    if ckpt is not None and ckpt["data_digest"] != digest:
        raise AlignlensError("cannot resume: the training data differ from the checkpoint's")

    # 2. model, optimizer, schedule
    model, tokenizer, base_info = load_base(model_spec, device, tokenizer)
    if not config.full:
        model = wrap_lora(model, config)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    per_step = config.batch_size * config.grad_accum
    steps_per_epoch = math.ceil(len(train_ex) / per_step)
    total_steps = steps_per_epoch * config.epochs
    from transformers import get_cosine_schedule_with_warmup

    scheduler = get_cosine_schedule_with_warmup(optimizer, round(config.warmup * total_steps), total_steps)

    def epoch_order(epoch: int) -> list[int]:  # data order depends only on (seed, epoch)
        g = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        return torch.randperm(len(train_ex), generator=g).tolist()

    # 3. state (fresh or from the checkpoint)
    st = {"step": 0, "best_val": None, "best_step": 0, "initial_val": None, "last_val": None,
          "last_eval_step": -1, "elapsed": 0.0, "tokens": 0, "started": now_iso(), "sessions": 1,
          "train_loss": None}
    best_state: dict | None = None
    log_path = out / "train_log.jsonl"
    _start_writing(out, fresh=ckpt is None)  # the first change to `out`
    if ckpt is not None:
        _load_trainable(model, ckpt["trainable"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        st.update(ckpt["state"])
        st["sessions"] += 1
        if (out / "checkpoints" / "best.pt").is_file():
            best_state = torch.load(out / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)
        if log_path.is_file():
            with log_path.open("r+b") as fh:  # drop log lines written after the checkpoint
                fh.truncate(ckpt["log_offset"])
        _set_rng_state(ckpt["rng"])
    log_fh = log_path.open("a", encoding="utf-8")

    def write_log(record: dict) -> None:
        log_fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        log_fh.flush()

    write_log({"event": "resume" if ckpt else "start", "time": now_iso(), "step": st["step"],
               "total_steps": total_steps, "n_train": len(train_ex), "n_val": len(val_ex),
               "trainable_params": n_trainable, "model": model_spec})
    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)
    best_written = best_state is not None
    rng_at_boundary = _rng_state()

    def save_checkpoint() -> None:
        nonlocal best_written
        if best_state is not None and not best_written:
            _atomic_save(best_state, ckpt_dir / "best.pt")
            best_written = True
        _atomic_save({"format": FORMAT, "config": config.to_dict(), "model_spec": model_spec,
                      "data_digest": digest, "trainable": _trainable_state(model),
                      "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                      "rng": rng_at_boundary, "log_offset": log_fh.tell(),
                      "state": {**st, "elapsed": st["elapsed"] + time.perf_counter() - t_loop}},
                     ckpt_dir / "last.pt")

    def run_eval() -> None:
        nonlocal best_state, best_written
        val = evaluate(model, val_ex, config.batch_size, pad_id, device, config.bf16)
        st["last_eval_step"] = st["step"]
        if val is None:
            return
        st["last_val"] = val
        if st["step"] == 0:
            st["initial_val"] = val
        elif st["best_val"] is None or val < st["best_val"]:
            st["best_val"], st["best_step"] = val, st["step"]
            best_state, best_written = _trainable_state(model), False
        write_log({"event": "val", "step": st["step"], "val_loss": val, "best_val_loss": st["best_val"]})

    # Ctrl-C / SIGTERM: ask the loop to stop at the next safe point (a second Ctrl-C stops at once).
    stop: dict[str, Any] = {"requested": False, "signum": signal.SIGINT}

    def on_signal(signum, frame):  # noqa: ARG001
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"], stop["signum"] = True, signum

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, on_signal)

    bar = _Progress(progress, total_steps, st["step"])
    t_loop = time.perf_counter()
    tokens_session = 0
    try:
        if val_ex and st["last_eval_step"] < 0 and st["step"] == 0:
            run_eval()  # the base model's validation loss
        elif config.eval_every and st["step"] % config.eval_every == 0 and st["last_eval_step"] != st["step"]:
            run_eval()  # an interrupted evaluation
        while st["step"] < total_steps:
            epoch, k = divmod(st["step"], steps_per_epoch)
            order = epoch_order(epoch)
            chunk = [train_ex[i] for i in order[k * per_step: (k + 1) * per_step]]
            n_target = sum(len(e.ids) - e.n_prompt for e in chunk)  # target tokens of this step
            t0 = time.perf_counter()
            loss_sum, n_tok = 0.0, 0
            for j in range(0, len(chunk), config.batch_size):
                ids, tgt = collate(chunk[j: j + config.batch_size], pad_id)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
                    loss, n = target_loss(model, ids.to(device), tgt.to(device))
                (loss / n_target).backward()
                loss_sum += float(loss.detach())
                n_tok += sum(len(e.ids) for e in chunk[j: j + config.batch_size])
                if stop["requested"]:
                    raise KeyboardInterrupt
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm if config.max_grad_norm > 0 else float("inf"))
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            st["step"] += 1
            rng_at_boundary = _rng_state()
            dt = time.perf_counter() - t0
            st["tokens"] += n_tok
            tokens_session += n_tok
            st["train_loss"] = loss_sum / n_target
            record = {"event": "step", "step": st["step"], "epoch": epoch + (k + 1) / steps_per_epoch,
                      "loss": st["train_loss"], "lr": lr, "grad_norm": float(grad_norm),
                      "tokens": n_tok, "target_tokens": n_target, "tok_per_s": n_tok / dt, "seconds": dt}
            write_log(record)
            last = st["step"] == total_steps
            if val_ex and ((config.eval_every and st["step"] % config.eval_every == 0) or last):
                run_eval()
            if config.save_every and st["step"] % config.save_every == 0 and not last:
                save_checkpoint()
            bar.update(st["step"], st["train_loss"], tokens_session / (time.perf_counter() - t_loop), st["last_val"])
            if callback is not None:
                callback(record)
            if stop["requested"]:
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        optimizer.zero_grad(set_to_none=True)
        write_log({"event": "interrupted", "time": now_iso(), "step": st["step"]})
        save_checkpoint()
        log_fh.close()
        bar.close()
        signum = stop["signum"]
        name = signal.Signals(signum).name
        raise TrainInterrupted(
            f"training of {out} interrupted ({name}) at step {st['step']} of {total_steps}; kept: checkpoint at "
            f"step {st['step']} of {total_steps} in {ckpt_dir / 'last.pt'} and the log; resume with: "
            f"alignlens train --out {shlex.quote(str(out))} --resume", signum) from None
    finally:
        for sig, h in handlers.items():
            signal.signal(sig, h)
        bar.close()
    loop_seconds = time.perf_counter() - t_loop

    # 4. the best weights -> adapter + merged model + manifest
    if best_state is not None:
        _load_trainable(model, best_state)
    else:  # no validation data: the final weights
        st["best_step"] = st["step"]
    adapter_dir, merged_dir = out / "adapter", out / "merged"
    if config.full:
        merged = model
    else:
        _save_folder(adapter_dir, model.save_pretrained)
        merged = model.merge_and_unload()
    merged.to("cpu", dtype=torch.float32)

    def save_merged(folder: Path) -> None:
        merged.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    _save_folder(merged_dir, save_merged)
    elapsed = st["elapsed"] + loop_seconds
    langs = list(dict.fromkeys(p.lang for p in pairs if p.lang))
    manifest = {
        "format": FORMAT,
        "alignlens_version": __version__,
        "base_model": base_info,
        "data": {"languages": langs, "per_language": config.per_language if config.resolved_languages() else None,
                 "bundled": config.resolved_languages(), "files": list(config.data_files),
                 "n_train": len(train_ex), "n_val": len(val_ex),
                 "n_cut_to_max_len": sum(c["truncated"] + c["dropped"] for split in counts.values()
                                         for c in split.values()),
                 "max_len": config.max_len,
                 "examples": {split: {lang: {k: c[k] for k in COUNT_KEYS} for lang, c in rows.items()}
                              for split, rows in counts.items()},
                 "train_tokens": sum(len(e.ids) for e in train_ex), "seed": config.seed,
                 "format": "prompt = <X question>\\nTranslate the input from <X> to English:\\n; "
                           "target = <English question>" + (" + EOS" if config.append_eos else "")},
        "options": config.to_dict(),
        "training": {"steps": st["step"], "total_steps": total_steps, "steps_per_epoch": steps_per_epoch,
                     "trainable_params": n_trainable, "method": "full" if config.full else "lora",
                     "device": str(device), "tokens_seen": st["tokens"], "sessions": st["sessions"],
                     "wall_seconds": round(elapsed, 1),
                     "tokens_per_second": round(st["tokens"] / elapsed, 1) if elapsed > 0 else None},
        "initial_val_loss": st["initial_val"],
        "best_val_loss": st["best_val"],
        "best_step": st["best_step"],
        "final_val_loss": st["last_val"],
        "final_train_loss": st["train_loss"],
        "weights": "best validation loss" if best_state is not None else "final (no validation split)",
        "outputs": {"merged": "merged", "adapter": None if config.full else "adapter",
                    "checkpoints": "checkpoints" if config.keep_checkpoints else None},
        "versions": versions(),
        "git_commit": git_commit(),
        "started": st["started"],
        "finished": now_iso(),
    }
    write_log({"event": "done", "time": now_iso(), "step": st["step"], "best_val_loss": st["best_val"],
               "best_step": st["best_step"], "wall_seconds": round(elapsed, 1)})
    log_fh.close()
    write_json(out / "manifest.json", manifest)
    if not config.keep_checkpoints:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return TrainResult(out_dir=out, steps=st["step"], total_steps=total_steps, epochs=config.epochs,
                       n_train=len(train_ex), n_val=len(val_ex), initial_val_loss=st["initial_val"],
                       best_val_loss=st["best_val"], best_step=st["best_step"], final_val_loss=st["last_val"],
                       final_train_loss=st["train_loss"], wall_seconds=time.perf_counter() - t_session,
                       tokens_per_second=manifest["training"]["tokens_per_second"] or 0.0,
                       resumed=ckpt is not None, manifest=manifest)


class _Progress:
    """A rich progress bar (steps, loss, tokens/s, ETA), or nothing."""

    def __init__(self, enabled: bool, total: int, done: int):
        self.p = None
        if not enabled:
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.p = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("loss {task.fields[loss]} val {task.fields[val]}"),
                          TextColumn("{task.fields[tps]} tok/s"), TimeElapsedColumn(), TextColumn("ETA"),
                          TimeRemainingColumn())
        self.p.start()
        self.task = self.p.add_task("train", total=total, completed=done, loss="-", val="-", tps="-")

    def update(self, step: int, loss: float, tps: float, val: float | None) -> None:
        if self.p is not None:
            self.p.update(self.task, completed=step, loss=f"{loss:.3f}", tps=f"{tps:.0f}",
                          val="-" if val is None else f"{val:.3f}")

    def close(self) -> None:
        if self.p is not None:
            self.p.stop()
            self.p = None
