"""The training loop: `train` (checks, then a `Trainer`) and `Trainer` (step / validate /
checkpoint / finish).

`train` top to bottom:

1. checks that change nothing: options, the output folder (`checkpoint.check_out_dir`), a
   checkpoint to resume (`Checkpoint.load`, options and model must match the saved ones);
2. `setup`: seeds, data (`examples.load_pairs`/`build_data`: split, tokens, drop counts), the
   model (`model.load_hf`, float32, never the TransformerLens bridge; LoRA via peft, default
   r=8, alpha=16, dropout 0, q_proj+v_proj, or full fine-tuning), AdamW and a cosine schedule
   with linear warm-up: still nothing written;
3. `Trainer.start`: the first change to the output folder (a forced run removes the previous
   run's files here, only `checkpoint.ARTIFACTS`), or the checkpoint restored exactly;
4. `Trainer.run`: `step()` until done; validation every `eval_every` steps (the best, lowest
   validation loss, trainable weights are kept), `checkpoint()` every `save_every` steps and on
   Ctrl-C/SIGTERM (then `TrainInterrupted`, exit 130/143, naming the checkpoint and the resume
   command); gradient clipping, optional bf16 autocast;
5. `Trainer.finish`: `merged/` (full HF model + tokenizer, the BEST-validation weights,
   float32), `adapter/` (peft adapter of the same weights, LoRA only), `manifest.json`
   (`training_manifest`), `train_log.jsonl`; `checkpoints/` is deleted unless `keep_checkpoints`.

Process-wide state set for a run (torch's thread count, SIGINT/SIGTERM handlers, the global
RNGs it seeds) is restored when `train` returns or raises.
"""

from __future__ import annotations

import dataclasses
import math
import random
import shlex
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from alignlens import AlignlensError, RunInterrupted
from alignlens.model import DEFAULT_MODEL, load_hf, load_tokenizer, model_source, resolve_device
from alignlens.results import now_iso, write_json
from alignlens.results.manifest import provenance
from alignlens.train.checkpoint import (FORMAT, Checkpoint, TrainLog, TrainState, atomic_save,
                                        check_out_dir, load_trainable, load_weights, rng_state, save_folder,
                                        set_rng_state, start_writing, trainable_state)
from alignlens.train.config import TrainConfig
from alignlens.train.examples import COUNT_KEYS, TrainData, build_data, collate, epoch_order, load_pairs
from alignlens.train.loss import TargetLossModel, validation_loss


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


# ---- process-wide state of a run -----------------------------------------------------------


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's CPU thread count set to `n` (None: unchanged) inside, restored after."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def global_rng_restored() -> Iterator[None]:
    """The global RNGs (python, numpy, torch, CUDA) as they were before, after the block: a run
    seeds them with its own seed."""
    before = rng_state()
    try:
        yield
    finally:
        set_rng_state(before)


class StopRequest:
    """Ctrl-C / SIGTERM ask the loop to stop at the next safe point (a second one stops at once)."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int = signal.SIGINT

    def _on_signal(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.requested:
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum

    @contextmanager
    def installed(self) -> Iterator["StopRequest"]:
        """SIGINT/SIGTERM handlers set inside (main thread only), the previous ones restored after."""
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, self._on_signal)
        try:
            yield self
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)


# ---- the model to train ---------------------------------------------------------------------

#: The keys of `model.load_hf`'s info that a training manifest's `base_model` keeps.
BASE_MODEL_KEYS = ("spec", "path", "hash", "architecture", "n_params")


def load_training_tokenizer(model_spec: str) -> Any:
    """The tokenizer of the model to train (`model.load_tokenizer`), loaded before the weights
    so the data are checked first. A spec that is no existing folder, not the default and not a
    hub name gets training's own wording ("no such model folder"), as before the loaders merged."""
    try:
        model_source(model_spec)
    except AlignlensError:
        if Path(model_spec).expanduser().exists():
            raise
        raise AlignlensError(f"cannot load model {model_spec!r}: not the default ({DEFAULT_MODEL}) and no such "
                             f"model folder") from None
    return load_tokenizer(model_spec)


def wrap_lora(model: torch.nn.Module, config: TrainConfig) -> torch.nn.Module:
    """`model` with peft LoRA adapters on `config.lora_targets` (AlignlensError when they do not fit)."""
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.lora_targets), task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, lcfg)
    except ValueError as exc:
        raise AlignlensError(f"LoRA targets {','.join(config.lora_targets)} do not fit this model "
                             f"({str(exc).splitlines()[0]}); choose other targets or full fine-tuning") from None


def load_model_to_train(config: TrainConfig, model_spec: str, device: torch.device, tokenizer: Any
                        ) -> tuple[torch.nn.Module, dict]:
    """(the model in train mode, float32 on `device`, LoRA-wrapped unless `config.full`; its
    `base_model` description for the manifest, see `BASE_MODEL_KEYS`)."""
    model, _, info = load_hf(model_spec, device, torch.float32, tokenizer=tokenizer)
    if not config.full:
        model = wrap_lora(model, config)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    model.train()
    return model, {k: info[k] for k in BASE_MODEL_KEYS}


# ---- the trainer ----------------------------------------------------------------------------


class Trainer:
    """One training run over prepared data and model (see `setup`).

    `start(checkpoint)` makes the first change to the output folder (or restores a checkpoint);
    then `step()` runs one optimizer step, `validate()` one validation pass, `checkpoint()` saves
    `checkpoints/last.pt`, `finish()` writes the outputs; `run()` drives these until done,
    handling Ctrl-C/SIGTERM. `state` (a `TrainState`) is everything that changes as it runs.
    """

    def __init__(self, config: TrainConfig, model_spec: str, out: Path, data: TrainData, model: torch.nn.Module,
                 tokenizer: Any, base_info: dict, device: torch.device, session_start: float | None = None):
        from transformers import get_cosine_schedule_with_warmup

        self.config, self.model_spec, self.out, self.data = config, model_spec, out, data
        self.model, self.tokenizer, self.base_info, self.device = model, tokenizer, base_info, device
        self.loss_model = TargetLossModel(model)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.n_trainable = sum(p.numel() for p in self.params)
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.per_step = config.batch_size * config.grad_accum  # examples per optimizer step
        self.steps_per_epoch = math.ceil(len(data.train) / self.per_step)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, round(config.warmup * self.total_steps),
                                                         self.total_steps)
        self.state = TrainState(started=now_iso())
        self.best_weights: dict[str, torch.Tensor] | None = None  # trainable weights at the best validation
        self._best_saved = False  # best_weights are in checkpoints/best.pt
        self.ckpt_dir = out / "checkpoints"
        self.log: TrainLog | None = None
        self.stop = StopRequest()
        self.resumed = False
        self.session_start = time.perf_counter() if session_start is None else session_start
        self._loop_start = time.perf_counter()  # reset by run()
        self._tokens_session = 0
        self.command = ""  # the command line, recorded in the manifest (set by `train`)

    # -- start ---------------------------------------------------------------------------------

    def start(self, ckpt: Checkpoint | None = None) -> None:
        """The first change to the output folder: a fresh run removes the previous run's files;
        with `ckpt`, weights, optimizer, schedule, state, log and RNG are restored exactly."""
        start_writing(self.out, fresh=ckpt is None)
        if ckpt is not None:
            load_trainable(self.model, ckpt.trainable)
            self.optimizer.load_state_dict(ckpt.optimizer)
            self.scheduler.load_state_dict(ckpt.scheduler)
            self.state = dataclasses.replace(ckpt.state, sessions=ckpt.state.sessions + 1)
            if (self.ckpt_dir / "best.pt").is_file():
                self.best_weights = load_weights(self.ckpt_dir / "best.pt")
            set_rng_state(ckpt.state.rng)
            self.resumed = True
        self.log = TrainLog(self.out / "train_log.jsonl", truncate_to=ckpt.log_offset if ckpt else None)
        self.log.write({"event": "resume" if ckpt else "start", "time": now_iso(), "step": self.state.step,
                        "total_steps": self.total_steps, "n_train": len(self.data.train),
                        "n_val": len(self.data.val), "trainable_params": self.n_trainable, "model": self.model_spec})
        self.ckpt_dir.mkdir(exist_ok=True)
        self._best_saved = self.best_weights is not None
        self.state.rng = rng_state()

    # -- the four operations -------------------------------------------------------------------

    def step(self) -> dict:
        """One optimizer step: `grad_accum` forward/backward passes of `batch_size` examples, the
        loss of each divided by the step's target-token count, clipping, AdamW, schedule. Returns
        (and logs) the step's record. Raises KeyboardInterrupt when a stop was requested."""
        cfg, st = self.config, self.state
        epoch, k = divmod(st.step, self.steps_per_epoch)
        order = epoch_order(len(self.data.train), cfg.seed, epoch)
        chunk = [self.data.train[i] for i in order[k * self.per_step: (k + 1) * self.per_step]]
        n_target = sum(len(e.ids) - e.n_prompt for e in chunk)  # target tokens of this step
        t0 = time.perf_counter()
        loss_sum, n_tok = 0.0, 0
        for j in range(0, len(chunk), cfg.batch_size):
            batch = chunk[j: j + cfg.batch_size]
            ids, tgt = collate(batch, self.data.pad_id)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                loss, _ = self.loss_model(ids.to(self.device), tgt.to(self.device))
            (loss / n_target).backward()
            loss_sum += float(loss.detach())
            n_tok += sum(len(e.ids) for e in batch)
            if self.stop.requested:
                raise KeyboardInterrupt
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        st.step += 1
        st.rng = rng_state()
        dt = time.perf_counter() - t0
        st.tokens += n_tok
        self._tokens_session += n_tok
        st.train_loss = loss_sum / n_target
        record = {"event": "step", "step": st.step, "epoch": epoch + (k + 1) / self.steps_per_epoch,
                  "loss": st.train_loss, "lr": lr, "grad_norm": float(grad_norm), "tokens": n_tok,
                  "target_tokens": n_target, "tok_per_s": n_tok / dt, "seconds": dt}
        self.log.write(record)
        return record

    def validate(self) -> float | None:
        """Validation loss now (None without validation data); at step 0 it is the base model's,
        later a new lowest one keeps the trainable weights as the best."""
        cfg, st = self.config, self.state
        val = validation_loss(self.loss_model, self.data.val, cfg.batch_size, self.data.pad_id, self.device, cfg.bf16)
        st.last_eval_step = st.step
        if val is None:
            return None
        st.last_val = val
        if st.step == 0:
            st.initial_val = val
        elif st.best_val is None or val < st.best_val:
            st.best_val, st.best_step = val, st.step
            self.best_weights, self._best_saved = trainable_state(self.model), False
        self.log.write({"event": "val", "step": st.step, "val_loss": val, "best_val_loss": st.best_val})
        return val

    def checkpoint(self) -> None:
        """Save `checkpoints/last.pt` (and new best weights to `checkpoints/best.pt`)."""
        if self.best_weights is not None and not self._best_saved:
            atomic_save(self.best_weights, self.ckpt_dir / "best.pt")
            self._best_saved = True
        state = dataclasses.replace(self.state, elapsed=self.state.elapsed + time.perf_counter() - self._loop_start)
        Checkpoint(self.config.to_dict(), self.model_spec, self.data.digest, trainable_state(self.model),
                   self.optimizer.state_dict(), self.scheduler.state_dict(), self.log.offset(),
                   state).save(self.ckpt_dir / "last.pt")

    def finish(self, loop_seconds: float) -> TrainResult:
        """Load the best weights (the final ones without validation data), write `adapter/` (LoRA),
        `merged/`, the manifest and the log's last line; remove `checkpoints/` unless kept."""
        cfg, st = self.config, self.state
        if self.best_weights is not None:
            load_trainable(self.model, self.best_weights)
        else:  # no validation data: the final weights
            st.best_step = st.step
        self._save_model()
        elapsed = st.elapsed + loop_seconds
        manifest = training_manifest(cfg, self.base_info, self.data, st, total_steps=self.total_steps,
                                     steps_per_epoch=self.steps_per_epoch, n_trainable=self.n_trainable,
                                     device=self.device, elapsed=elapsed, best_weights=self.best_weights is not None,
                                     command=self.command)
        self.log.write({"event": "done", "time": now_iso(), "step": st.step, "best_val_loss": st.best_val,
                        "best_step": st.best_step, "wall_seconds": round(elapsed, 1)})
        self.log.close()
        write_json(self.out / "manifest.json", manifest)
        if not cfg.keep_checkpoints:
            shutil.rmtree(self.ckpt_dir, ignore_errors=True)
        return TrainResult(out_dir=self.out, steps=st.step, total_steps=self.total_steps, epochs=cfg.epochs,
                           n_train=len(self.data.train), n_val=len(self.data.val), initial_val_loss=st.initial_val,
                           best_val_loss=st.best_val, best_step=st.best_step, final_val_loss=st.last_val,
                           final_train_loss=st.train_loss, wall_seconds=time.perf_counter() - self.session_start,
                           tokens_per_second=manifest["training"]["tokens_per_second"] or 0.0,
                           resumed=self.resumed, manifest=manifest)

    # -- the loop ------------------------------------------------------------------------------

    def run(self, progress: bool = False, callback: Callable[[dict], None] | None = None) -> TrainResult:
        """Steps until done (after `start`), then `finish`. `callback(record)` after every step
        (raising KeyboardInterrupt there behaves like Ctrl-C). Ctrl-C/SIGTERM: a checkpoint,
        then `TrainInterrupted`."""
        with self.stop.installed():
            bar = _Progress(progress, self.total_steps, self.state.step)
            self._loop_start = time.perf_counter()
            self._tokens_session = 0
            try:
                self._validate_if_due()
                while self.state.step < self.total_steps:
                    self._after_step(self.step(), bar, callback)
            except KeyboardInterrupt:
                raise self._interrupted(bar) from None
            except BaseException:
                self.log.close()
                raise
            finally:
                bar.close()
        return self.finish(time.perf_counter() - self._loop_start)

    def _validate_if_due(self) -> None:
        """At the start of a session: the base model's validation loss, or one an interruption skipped."""
        cfg, st = self.config, self.state
        if self.data.val and st.last_eval_step < 0 and st.step == 0:
            self.validate()
        elif cfg.eval_every and st.step % cfg.eval_every == 0 and st.last_eval_step != st.step:
            self.validate()

    def _after_step(self, record: dict, bar: "_Progress", callback: Callable[[dict], None] | None) -> None:
        cfg, st = self.config, self.state
        last = st.step == self.total_steps
        if self.data.val and ((cfg.eval_every and st.step % cfg.eval_every == 0) or last):
            self.validate()
        if cfg.save_every and st.step % cfg.save_every == 0 and not last:
            self.checkpoint()
        rate = self._tokens_session / (time.perf_counter() - self._loop_start)
        bar.update(st.step, st.train_loss, rate, st.last_val)
        if callback is not None:
            callback(record)
        if self.stop.requested:
            raise KeyboardInterrupt

    def _interrupted(self, bar: "_Progress") -> TrainInterrupted:
        """Save a checkpoint and say what was kept and how to resume."""
        self.optimizer.zero_grad(set_to_none=True)
        self.log.write({"event": "interrupted", "time": now_iso(), "step": self.state.step})
        self.checkpoint()
        self.log.close()
        bar.close()
        step, total = self.state.step, self.total_steps
        return TrainInterrupted(
            f"training of {self.out} interrupted ({signal.Signals(self.stop.signum).name}) at step {step} of {total}; "
            f"kept: checkpoint at step {step} of {total} in {self.ckpt_dir / 'last.pt'} and the log; resume with: "
            f"alignlens train --out {shlex.quote(str(self.out))} --resume", self.stop.signum)

    def _save_model(self) -> None:
        """`adapter/` (LoRA only) and `merged/` (float32 HF model + tokenizer), each atomically."""
        if self.config.full:
            merged = self.model
        else:
            save_folder(self.out / "adapter", self.model.save_pretrained)
            merged = self.model.merge_and_unload()
        merged.to("cpu", dtype=torch.float32)

        def save_merged(folder: Path) -> None:
            merged.save_pretrained(folder)
            self.tokenizer.save_pretrained(folder)

        save_folder(self.out / "merged", save_merged)


def training_manifest(config: TrainConfig, base_info: dict, data: TrainData, state: TrainState, *, total_steps: int,
                      steps_per_epoch: int, n_trainable: int, device: torch.device, elapsed: float,
                      best_weights: bool, command: str = "") -> dict:
    """`manifest.json` of a finished run: the provenance keys every alignlens manifest shares
    (`results.manifest.provenance`: model = the base model, data, options, seed, versions, commit,
    times) plus training's own. `elapsed`: training-loop seconds over all sessions; `best_weights`:
    the outputs hold the best-validation weights (else the final ones)."""
    counts = data.counts
    data_section = {
        "languages": data.languages, "per_language": config.per_language if config.resolved_languages() else None,
        "bundled": config.resolved_languages(), "files": list(config.data_files),
        "n_train": len(data.train), "n_val": len(data.val),
        "n_cut_to_max_len": sum(c["truncated"] + c["dropped"] for split in counts.values() for c in split.values()),
        "max_len": config.max_len,
        "examples": {split: {lang: {k: c[k] for k in COUNT_KEYS} for lang, c in rows.items()}
                     for split, rows in counts.items()},
        "train_tokens": sum(len(e.ids) for e in data.train), "seed": config.seed,
        "format": "prompt = <X question>\\nTranslate the input from <X> to English:\\n; "
                  "target = <English question>" + (" + EOS" if config.append_eos else "")}
    return {
        **provenance(command=command, model=base_info, data=data_section, options=config.to_dict(),
                     seed=config.seed, started=state.started, finished=now_iso()),
        "format": FORMAT,
        "base_model": base_info,  # the same as "model": the model that was fine-tuned
        "training": {"steps": state.step, "total_steps": total_steps, "steps_per_epoch": steps_per_epoch,
                     "trainable_params": n_trainable, "method": "full" if config.full else "lora",
                     "device": str(device), "tokens_seen": state.tokens, "sessions": state.sessions,
                     "wall_seconds": round(elapsed, 1),
                     "tokens_per_second": round(state.tokens / elapsed, 1) if elapsed > 0 else None},
        "initial_val_loss": state.initial_val,
        "best_val_loss": state.best_val,
        "best_step": state.best_step,
        "final_val_loss": state.last_val,
        "final_train_loss": state.train_loss,
        "weights": "best validation loss" if best_weights else "final (no validation split)",
        "outputs": {"merged": "merged", "adapter": None if config.full else "adapter",
                    "checkpoints": "checkpoints" if config.keep_checkpoints else None},
    }


# ---- entry point ----------------------------------------------------------------------------


def _resume_options(config: TrainConfig | None, model_spec: str | None, ckpt: Checkpoint) -> tuple[TrainConfig, str]:
    """The saved options and model of `ckpt`; given ones must equal them (except `RUNTIME_OPTIONS`,
    which the given config may change)."""
    saved = TrainConfig.from_dict(ckpt.config)
    if config is not None:
        diff = config.differences(saved)
        if diff:
            raise AlignlensError(f"cannot resume with different options ({', '.join(diff)}); "
                                 f"omit them to use the saved ones")
        saved.keep_checkpoints, saved.threads = config.keep_checkpoints, config.threads
    if model_spec is not None and model_spec != ckpt.model_spec:
        raise AlignlensError(f"cannot resume with a different model ({model_spec!r}, saved: {ckpt.model_spec!r})")
    return saved, ckpt.model_spec


def setup(config: TrainConfig, model_spec: str, out: Path, ckpt: Checkpoint | None, progress: bool,
          session_start: float | None = None) -> Trainer:
    """Seeds, data, tokens (checked before the model loads), the model and optimizer: a `Trainer`
    ready to `start`. Nothing in `out` changes here."""
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)  # LoRA's initial weights
    pairs = load_pairs(config)
    device = resolve_device(config.device)
    tokenizer = load_training_tokenizer(model_spec)
    data = build_data(config, pairs, tokenizer, progress)
    if ckpt is not None and ckpt.data_digest != data.digest:
        raise AlignlensError("cannot resume: the training data differ from the checkpoint's")
    model, base_info = load_model_to_train(config, model_spec, device, tokenizer)
    return Trainer(config, model_spec, out, data, model, tokenizer, base_info, device, session_start)


def train(config: TrainConfig | None, model_spec: str | None, out_dir: str | Path, *, resume: bool = False,
          force: bool = False, progress: bool = True,
          callback: Callable[[dict], None] | None = None, command: str = "") -> TrainResult:
    """Fine-tune `model_spec` on question translation and write a model folder to `out_dir`.

    `resume=True` continues from `out_dir/checkpoints/last.pt`; `config` and `model_spec` may
    then be None (the saved ones are used) and must otherwise equal the saved ones. Without
    `resume`, a non-empty `out_dir` is an error unless `force`. `callback(record)` is called after
    every optimizer step with the step's log record (raising KeyboardInterrupt there behaves like
    Ctrl-C). Ctrl-C/SIGTERM saves a checkpoint and raises `TrainInterrupted`.

    Nothing in `out_dir` changes until everything that can be checked was: options, the output
    folder, data files, the model path, the tokenised data (`max_drop_fraction`), loading the
    model and fitting LoRA. Only then does a forced run remove the previous run's files (only
    `checkpoint.ARTIFACTS`, never other files).
    """
    session_start = time.perf_counter()
    out = Path(out_dir).expanduser()
    if config is not None:
        config.validate()
    ckpt_path = check_out_dir(out, resume, force)
    ckpt = Checkpoint.load(ckpt_path) if ckpt_path is not None else None
    if ckpt is not None:
        config, model_spec = _resume_options(config, model_spec, ckpt)
    config = config or TrainConfig.from_preset("default")
    config.validate()
    model_spec = model_spec or DEFAULT_MODEL
    with torch_threads(config.threads), global_rng_restored():
        trainer = setup(config, model_spec, out, ckpt, progress, session_start)
        trainer.command = command
        trainer.start(ckpt)
        return trainer.run(progress, callback)


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
