"""The training loop: `Trainer` (step / validate / checkpoint / finish) over prepared data and model.

`Trainer.start` makes the first change to the output folder (a forced run removes the previous
run's files here, only those its manifest lists, `checkpoint.start_writing`), or restores a
checkpoint exactly; manifest.json says the run is running and lists its files
(`checkpoint.running_manifest`). `Trainer.run` then calls `step()` until done; validation every
`eval_every` steps (the best, lowest validation loss, trainable weights are kept), `checkpoint()`
every `save_every` steps and on Ctrl-C/SIGTERM (then `TrainInterrupted`, exit 130/143, naming the
checkpoint and the resume command); gradient clipping, optional bf16 autocast. Batches
(`TrainConfig.batching`, default "bucketed", `alignlens train --batching`): each epoch's seeded
shuffle is cut into windows of `examples.BUCKET_WINDOW` (50) optimizer steps, each window sorted by
length and cut into steps of `batch_size` x `grad_accum` (x processes) examples, and the steps
shuffled (`examples.epoch_order`), so a micro-batch right-padded to its longest example holds ~1%
padding (random batches: ~23% on the default data). Every example is still seen once per epoch and
the loss of a step is still the mean over its target tokens, but which examples share a step
(hence the optimizer's trajectory) differs from a plain shuffle ("random": the seeded shuffle's own
steps, the order before bucketing, as HF Trainer without `group_by_length`). The manifest records
it (`training.batching`, with the planned padding share). `Trainer.finish` writes `merged/` and
`adapter/` of the BEST-validation weights (`export`), `manifest.json` (`manifest.training_manifest`,
with every file the run wrote) and the log's last line, and deletes the checkpoint files unless
`keep_checkpoints`.

Under torchrun every rank runs the same operations (collectives): the loss goes through the
wrapped `TargetLossModel` (`parallel.parallelize`: DDP, or FSDP2 with `fsdp`). Global batch =
`batch_size` x `grad_accum` x N: each optimizer step takes the same examples in the same order as
one process with `grad_accum` x N, rank r the r-th share of them (`no_sync` on its accumulation
passes; gradients are summed over ranks, the loss is divided by the step's target-token count over
all ranks). Logged losses and validation losses are collected exactly (one addend per entry) and
summed in one process's order. Rank 0 alone prepares the output folder and writes the log,
checkpoints (with every rank's RNG state), the merge and the manifest (with the world size); with
`fsdp` every rank writes its own shard files of a checkpoint (`parallel.save_sharded`). A stop
request (Ctrl-C/SIGTERM on any rank) is all-reduced after every step, so all ranks stop after the
same step. The run around the loop (checks, setup, resume): `train.run`.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from alignlens import RunInterrupted, distributed
from alignlens.results import clean_stale_temps, now_iso, write_json
from alignlens.results.manifest import ownership
from alignlens.results.writer import TRAIN_FILES, files_under, remove_owned
from alignlens.train.checkpoint import (Checkpoint, NoLog, TrainLog, TrainState, atomic_save, listed_files,
                                        load_trainable, load_weights, rng_state, running_manifest, set_rng_state,
                                        start_writing, trainable_state)
from alignlens.train.config import TrainConfig
from alignlens.train.examples import BUCKET_WINDOW, TrainData, collate, epoch_order, micro_batches, padding_share
from alignlens.train.export import save_model, save_model_sharded
from alignlens.train.loss import TargetLossModel, validation_loss
from alignlens.train.manifest import resume_command, training_manifest
from alignlens.train.parallel import load_sharded, parallelize, save_sharded


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


class StopRequest:
    """Ctrl-C / SIGTERM ask the loop to stop at the next safe point (a second one stops at once,
    except under torchrun: Ctrl-C reaches a worker twice there, from the terminal and from
    torchrun, and torchrun itself kills workers that do not stop within its grace period)."""

    def __init__(self, repeat_stops: bool = True) -> None:
        self.requested = False
        self.signum: int = signal.SIGINT
        self.repeat_stops = repeat_stops

    def request(self, signum: int) -> None:
        """Ask for a stop (the first request's signal is kept)."""
        if not self.requested:
            self.requested, self.signum = True, signum

    def _on_signal(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.requested and self.repeat_stops:
            raise KeyboardInterrupt
        self.request(signum)

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


# ---- the trainer ----------------------------------------------------------------------------


class Trainer:
    """One training run over prepared data and model (see `run.setup`).

    `start(checkpoint)` makes the first change to the output folder (or restores a checkpoint);
    then `step()` runs one optimizer step, `validate()` one validation pass, `checkpoint()` saves
    `checkpoints/last.pt`, `finish()` writes the outputs; `run()` drives these until done,
    handling Ctrl-C/SIGTERM. `state` (a `TrainState`) is everything that changes as it runs.
    Under torchrun every rank builds a `Trainer` and calls the same operations (they are
    collectives); rank 0 alone writes the shared files.
    """

    def __init__(self, config: TrainConfig, model_spec: str, out: Path, data: TrainData, model: torch.nn.Module,
                 tokenizer: Any, base_info: dict, device: torch.device, session_start: float | None = None):
        from transformers import get_cosine_schedule_with_warmup

        self.config, self.model_spec, self.out, self.data = config, model_spec, out, data
        self.model, self.tokenizer, self.base_info, self.device = model, tokenizer, base_info, device
        self.world = distributed.world()
        self.fsdp = bool(config.fsdp and self.world.distributed)
        self.loss_model = TargetLossModel(model)
        self.forward_model = parallelize(self.loss_model, config, device)  # what training passes call
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.n_trainable = sum(p.numel() for p in self.params)
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.per_rank = config.batch_size * config.grad_accum  # examples per optimizer step and rank
        self.per_step = self.per_rank * self.world.size  # examples per optimizer step (global batch)
        self.steps_per_epoch = math.ceil(len(data.train) / self.per_step)
        self.total_steps = self.steps_per_epoch * config.epochs
        self._orders: dict[int, list[int]] = {}  # epoch -> `epoch_order` (the last one computed)
        self.scheduler = get_cosine_schedule_with_warmup(self.optimizer, round(config.warmup * self.total_steps),
                                                         self.total_steps)
        self.state = TrainState(started=now_iso())
        self.best_weights: dict[str, torch.Tensor] | None = None  # trainable weights at the best validation (rank 0)
        self._best_saved = False  # best_weights are in checkpoints/best.pt
        self._best_dir: str | None = None  # fsdp: the checkpoints/ folder holding the best weights' shards
        self.ckpt_dir = out / "checkpoints"
        self.log: TrainLog | NoLog | None = None
        self.stop = StopRequest(repeat_stops=not self.world.distributed)
        self.resumed = False
        self.session_start = time.perf_counter() if session_start is None else session_start
        self._loop_start = time.perf_counter()  # reset by run()
        self._tokens_session = 0
        self.command = ""  # the command line, recorded in the manifest (set by `train`)
        self.files: set[str] = set(TRAIN_FILES)  # files of this run in `out` (relative; the manifest lists them)

    # -- start ---------------------------------------------------------------------------------

    def start(self, ckpt: Checkpoint | None = None) -> None:
        """The first change to the output folder: a fresh run removes the previous run's files;
        with `ckpt`, weights, optimizer, schedule, state, log and RNG (this rank's) are restored
        exactly. Under torchrun rank 0 alone changes the folder; the others wait."""
        if ckpt is not None:
            self._restore(ckpt)

        def prepare() -> None:
            start_writing(self.out, fresh=ckpt is None)
            if ckpt is not None:  # what earlier sessions of this run wrote stays this run's
                self.files |= listed_files(self.out)
            self._record_files()
            self.log = TrainLog(self.out / "train_log.jsonl", truncate_to=ckpt.log_offset if ckpt else None)
            self.log.write({"event": "resume" if ckpt else "start", "time": now_iso(), "step": self.state.step,
                            "total_steps": self.total_steps, "n_train": len(self.data.train),
                            "n_val": len(self.data.val), "trainable_params": self.n_trainable,
                            "model": self.model_spec, **self._world_record()})
            self.ckpt_dir.mkdir(exist_ok=True)

        self.log = NoLog()
        distributed.on_main(prepare)
        self._best_saved = self.best_weights is not None
        self.state.rng = rng_state()

    def _record_files(self, *more: str) -> None:
        """Rank 0: the running manifest with this run's files (`checkpoint.running_manifest`);
        `more` are added, listed ones that are gone (older sharded checkpoints) dropped."""
        self.files = {f for f in self.files | set(more) if f in TRAIN_FILES or (self.out / f).exists()}
        running_manifest(self.out, self.files, command=self.command, model_spec=self.model_spec,
                         config=self.config.to_dict(), started=self.state.started)

    def _world_record(self) -> dict:
        """The log's start record keys about processes (none for one process: the log is unchanged)."""
        if not self.world.distributed:
            return {}
        return {"world_size": self.world.size, "parallel": "fsdp" if self.fsdp else "ddp", "global_batch": self.per_step}

    def _restore(self, ckpt: Checkpoint) -> None:
        """Weights, optimizer, schedule, state and this rank's RNG from `ckpt` (no file changes)."""
        if self.fsdp:
            load_sharded(self.loss_model, self.optimizer, self.ckpt_dir / ckpt.sharded["last"])
            self._best_dir = ckpt.sharded.get("best")
        else:
            load_trainable(self.model, ckpt.trainable)
            self.optimizer.load_state_dict(ckpt.optimizer)
            if self.world.is_main and (self.ckpt_dir / "best.pt").is_file():
                self.best_weights = load_weights(self.ckpt_dir / "best.pt")
        self.scheduler.load_state_dict(ckpt.scheduler)
        self.state = dataclasses.replace(ckpt.state, sessions=ckpt.state.sessions + 1)
        set_rng_state(ckpt.rng_for(self.world.rank))
        self.resumed = True

    # -- the four operations -------------------------------------------------------------------

    def step(self) -> dict:
        """One optimizer step: `grad_accum` forward/backward passes of `batch_size` examples (per
        rank), the loss of each divided by the step's target-token count, clipping, AdamW, schedule.
        Returns (and logs) the step's record. One process: raises KeyboardInterrupt when a stop
        was requested (under torchrun the ranks agree on stopping after the step, see `run`)."""
        cfg, st = self.config, self.state
        epoch, k = divmod(st.step, self.steps_per_epoch)
        order = self.epoch_order(epoch)
        chunk = [self.data.train[i] for i in order[k * self.per_step: (k + 1) * self.per_step]]
        n_target = sum(len(e.ids) - e.n_prompt for e in chunk)  # target tokens of this step (all ranks)
        n_tok = sum(len(e.ids) for e in chunk)
        t0 = time.perf_counter()
        if self.world.distributed:
            loss_sum = self._passes_distributed(chunk, n_target)
        else:
            loss_sum = 0.0
            for j in range(0, len(chunk), cfg.batch_size):
                ids, tgt = collate(chunk[j: j + cfg.batch_size], self.data.pad_id)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                    loss, _ = self.forward_model(ids.to(self.device), tgt.to(self.device))
                (loss / n_target).backward()
                loss_sum += float(loss.detach())
                if self.stop.requested:
                    raise KeyboardInterrupt
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        if hasattr(grad_norm, "full_tensor"):  # a DTensor (FSDP)
            grad_norm = grad_norm.full_tensor()
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

    def epoch_order(self, epoch: int) -> list[int]:
        """The order of the training examples in `epoch` (`examples.epoch_order`: bucketed by
        length unless `config.batching` is "random"); the same on every rank and after a resume."""
        if epoch not in self._orders:
            self._orders = {epoch: plan_order(self.data, self.config, epoch, self.per_step)}
        return self._orders[epoch]

    def _passes_distributed(self, chunk: list, n_target: int) -> float:
        """This rank's forward/backward passes of one step; returns the step's summed loss over all
        ranks. Rank r takes examples [r * per_rank, (r + 1) * per_rank) of the step's `chunk` (the
        micro-batches one process with grad_accum x world size would run, in the same order);
        gradients are synchronised on its last pass only (summed over ranks). A rank left without examples (the end of
        an epoch) runs one pass with weight 0, and with FSDP every rank runs `grad_accum` passes:
        every collective is reached by every rank."""
        cfg, rank = self.config, self.world.rank
        # DDP averages the ranks' gradients: x world size makes that their sum (exact for a power of two)
        scale = 1.0 if self.fsdp else float(self.world.size)
        mine = chunk[rank * self.per_rank: (rank + 1) * self.per_rank]
        batches = [mine[j: j + cfg.batch_size] for j in range(0, len(mine), cfg.batch_size)]
        n_passes = cfg.grad_accum if self.fsdp else max(1, len(batches))
        losses: list[float | None] = [None] * (cfg.grad_accum * self.world.size)  # by global micro-batch
        for a in range(n_passes):
            real = a < len(batches)
            ids, tgt = collate(batches[a] if real else chunk[:1], self.data.pad_id)
            with self._sync(a == n_passes - 1):
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                    loss, _ = self.forward_model(ids.to(self.device), tgt.to(self.device))
                if real:
                    (loss * scale / n_target).backward()
                    losses[rank * cfg.grad_accum + a] = float(loss.detach())
                else:
                    (loss * 0.0).backward()
        total = 0.0
        for value in distributed.exact_float_sums(losses):  # one process's order of additions
            total += value
        return total

    @contextmanager
    def _sync(self, sync: bool) -> Iterator[None]:
        """Gradient synchronisation over ranks on (`sync`) or off (accumulation passes: `no_sync`)."""
        if sync or not self.world.distributed:
            yield
        elif self.fsdp:
            self.loss_model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                self.loss_model.set_requires_gradient_sync(True)
        else:
            with self.forward_model.no_sync():
                yield

    def validate(self) -> float | None:
        """Validation loss now (None without validation data); at step 0 it is the base model's,
        later a new lowest one keeps the trainable weights as the best."""
        cfg, st = self.config, self.state
        val = validation_loss(self.loss_model, self.data.val, cfg.batch_size, self.data.pad_id, self.device, cfg.bf16,
                              lockstep=self.fsdp)
        st.last_eval_step = st.step
        if val is None:
            return None
        st.last_val = val
        if st.step == 0:
            st.initial_val = val
        elif st.best_val is None or val < st.best_val:
            st.best_val, st.best_step = val, st.step
            if self.fsdp:
                self._best_dir = save_sharded(self.loss_model, None, self.ckpt_dir, f"best-step{st.step}.dcp")
            elif self.world.is_main:
                self.best_weights, self._best_saved = trainable_state(self.model), False
        self.log.write({"event": "val", "step": st.step, "val_loss": val, "best_val_loss": st.best_val})
        return val

    def checkpoint(self) -> None:
        """Save `checkpoints/last.pt` (and new best weights to `checkpoints/best.pt`). Under
        torchrun: every rank's RNG state is gathered, rank 0 writes (with FSDP every rank first
        writes its shards of the weights and optimizer state)."""
        rngs = distributed.gather_objects(self.state.rng) if self.world.distributed else None
        sharded = None
        if self.fsdp:
            sharded = {"last": save_sharded(self.loss_model, self.optimizer, self.ckpt_dir, f"last-step{self.state.step}.dcp"),
                       "best": self._best_dir}
        state = dataclasses.replace(self.state, elapsed=self.state.elapsed + time.perf_counter() - self._loop_start)

        def write() -> None:
            if self.best_weights is not None and not self._best_saved:
                atomic_save(self.best_weights, self.ckpt_dir / "best.pt")
                self._best_saved = True
            trainable, optimizer = ({}, {}) if self.fsdp else (trainable_state(self.model), self.optimizer.state_dict())
            Checkpoint(self.config.to_dict(), self.model_spec, self.data.digest, trainable, optimizer,
                       self.scheduler.state_dict(), self.log.offset(), state, self.world.size, rngs,
                       sharded).save(self.ckpt_dir / "last.pt")
            if sharded is not None:  # shard folders no checkpoint names any more
                for old in self.ckpt_dir.glob("*.dcp"):
                    if old.name not in sharded.values():
                        shutil.rmtree(old)
                self._record_files(*(f"checkpoints/{f}" for f in files_under(self.ckpt_dir, [n for n in sharded.values() if n])))

        distributed.on_main(write)

    def finish(self, loop_seconds: float) -> TrainResult:
        """Load the best weights (the final ones without validation data), write `adapter/` (LoRA),
        `merged/`, the manifest and the log's last line; remove `checkpoints/` unless kept.
        Under torchrun rank 0 writes; every rank returns the same result."""
        cfg, st = self.config, self.state
        best = st.best_val is not None  # the best-validation weights exist (else: no validation data)
        if not best:
            st.best_step = st.step
        if self.fsdp:
            if best:
                load_sharded(self.loss_model, None, self.ckpt_dir / self._best_dir)
            save_model_sharded(self.model, self.tokenizer, self.out, self.base_info, cfg.full, self._record_files)
        elif self.world.is_main and best:
            load_trainable(self.model, self.best_weights)
        elapsed = st.elapsed + loop_seconds
        manifest = training_manifest(cfg, self.base_info, self.data, st, total_steps=self.total_steps,
                                     steps_per_epoch=self.steps_per_epoch, n_trainable=self.n_trainable,
                                     device=self.device, elapsed=elapsed, best_weights=best,
                                     batching=batching_record(self.data, cfg, self.per_step), command=self.command,
                                     world_size=self.world.size,
                                     parallel="fsdp" if self.fsdp else ("ddp" if self.world.distributed else None))

        def write() -> None:
            if not self.fsdp:
                save_model(self.model, self.tokenizer, self.out, cfg.full, self._record_files)
            self.log.write({"event": "done", "time": now_iso(), "step": st.step, "best_val_loss": st.best_val,
                            "best_step": st.best_step, "wall_seconds": round(elapsed, 1)})
            self.log.close()
            checkpoints = {f for f in self.files if f.startswith("checkpoints/")}
            kept = {f for f in self.files if (self.out / f).exists()} - (set() if cfg.keep_checkpoints else checkpoints)
            write_json(self.out / "manifest.json", {**manifest, "status": "finished", **ownership("train", kept)})
            if not cfg.keep_checkpoints:  # this run's checkpoint files; other files in checkpoints/ stay
                clean_stale_temps(self.ckpt_dir, max_depth=0)
                remove_owned(self.out, checkpoints)

        distributed.on_main(write)
        manifest = distributed.broadcast_object(manifest)
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
            try:
                callback(record)
            except KeyboardInterrupt:
                if not self.world.distributed:
                    raise
                self.stop.request(signal.SIGINT)  # under torchrun: a stop the ranks agree on below
        if self._stop_agreed():
            raise KeyboardInterrupt

    def _stop_agreed(self) -> bool:
        """Whether to stop now. Under torchrun the requests are all-reduced after every step (the
        largest signal number wins), so every rank stops after the same step."""
        if not self.world.distributed:
            return self.stop.requested
        signum = distributed.max_int(int(self.stop.signum) if self.stop.requested else 0)
        if signum:
            self.stop.requested, self.stop.signum = True, signum
        return bool(signum)

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
            f"{resume_command(self.out, self.world.size)}", self.stop.signum)

    def close(self) -> None:
        """Release the model, its DDP/FSDP wrapping and the optimizer, and collect them now: their
        references to the process group must go while Python is fully alive (else gloo's threads
        may outlive it and abort the process at exit). The trainer cannot be used afterwards."""
        self.forward_model = self.loss_model = self.model = None
        self.optimizer = self.scheduler = None
        self.params, self.best_weights = [], None
        gc.collect()


def plan_order(data: TrainData, config: TrainConfig, epoch: int, per_step: int) -> list[int]:
    """`examples.epoch_order` of `data.train` in `epoch` for `config`'s seed and batching."""
    lengths = [len(e.ids) for e in data.train] if config.batching == "bucketed" else None
    return epoch_order(len(data.train), config.seed, epoch, lengths, per_step)


def batching_record(data: TrainData, config: TrainConfig, per_step: int) -> dict:
    """The manifest's `training.batching`: scheme, window (steps sorted together), and the padding
    of the planned micro-batches over all epochs (token slots, real tokens, padded share)."""
    lengths = [len(e.ids) for e in data.train]
    real = slots = 0
    for epoch in range(config.epochs):
        r, s = padding_share(lengths, micro_batches(plan_order(data, config, epoch, per_step), per_step,
                                                    config.batch_size))
        real, slots = real + r, slots + s
    scheme = config.batching
    return {"scheme": scheme, "window_steps": BUCKET_WINDOW if scheme == "bucketed" else None,
            "description": (f"each window of {BUCKET_WINDOW} optimizer steps' examples (in the seeded epoch order) sorted by "
                            "length and cut into steps, the steps shuffled; micro-batches right-padded to "
                            "their longest example" if scheme == "bucketed" else
                            "seeded shuffle; micro-batches right-padded to their longest example"),
            "token_slots": slots, "real_tokens": real, "padding_share": round(1 - real / slots, 4) if slots else 0.0}


class _Progress:
    """Training progress (steps, loss, tokens/s, ETA): a rich bar on a terminal, plain lines when
    output is redirected (`alignlens.progress`: ALIGNLENS_PROGRESS=bar|lines|off), or nothing."""

    def __init__(self, enabled: bool, total: int, done: int):
        self.p = None
        self.lines = None
        if not enabled:
            return
        import sys

        from alignlens.progress import LineProgress, progress_mode

        mode = progress_mode(sys.stderr.isatty())
        if mode == "off":
            return
        if mode == "lines":
            self.lines = LineProgress()
            self.task = self.lines.add_task("train", total=total)
            self.lines.tasks[self.task].completed = done
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
        val_text = "-" if val is None else f"{val:.3f}"
        if self.p is not None:
            self.p.update(self.task, completed=step, loss=f"{loss:.3f}", tps=f"{tps:.0f}", val=val_text)
        elif self.lines is not None:
            self.lines.update(self.task, completed=step,
                              description=f"train steps (loss {loss:.3f}, val {val_text}, {tps:.0f} tok/s)")

    def close(self) -> None:
        if self.p is not None:
            self.p.stop()
            self.p = None
        self.lines = None
