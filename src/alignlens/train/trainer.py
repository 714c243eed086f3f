"""The training loop: `train` (checks, then a `Trainer`) and `Trainer` (step / validate /
checkpoint / finish).

`train` top to bottom:

1. checks that change nothing: options, the output folder (`checkpoint.check_out_dir`), a
   checkpoint to resume (`Checkpoint.load`; options given and the model must match the saved
   ones, `_resume_options`), the LoRA targets against the model's modules (`check_lora_targets`,
   a meta-device skeleton, no weights);
2. `setup`: seeds, data (`examples.load_pairs`/`build_data`: split, tokens, drop counts), the
   model (`model.load_hf`, float32, never the TransformerLens bridge; LoRA via peft, default
   r=8, alpha=16, dropout 0, q_proj+v_proj, or full fine-tuning), AdamW and a cosine schedule
   with linear warm-up: still nothing written;
3. `Trainer.start`: the first change to the output folder (a forced run removes the previous
   run's files here, only those its manifest lists, `checkpoint.start_writing`), or the checkpoint
   restored exactly; manifest.json says the run is running and lists its files
   (`checkpoint.running_manifest`). The folder is locked from before the model loads to the end
   (`results.writer.OutputFolder.writing`): a second run wanting it is refused at once;
4. `Trainer.run`: `step()` until done; validation every `eval_every` steps (the best, lowest
   validation loss, trainable weights are kept), `checkpoint()` every `save_every` steps and on
   Ctrl-C/SIGTERM (then `TrainInterrupted`, exit 130/143, naming the checkpoint and the resume
   command); gradient clipping, optional bf16 autocast. Batches (`TrainConfig.batching`, default
   "bucketed", `alignlens train --batching`): each
   epoch's seeded shuffle is cut into windows of `examples.BUCKET_WINDOW` (50) optimizer steps,
   each window sorted by length and cut into steps of `batch_size` x `grad_accum` (x processes)
   examples, and the steps shuffled (`examples.epoch_order`), so a micro-batch right-padded to its
   longest example holds ~1% padding (random batches: ~23% on the default data). Every example is
   still seen once per epoch and the loss of a step is still the mean over its target tokens, but
   which examples share a step (hence the optimizer's trajectory) differs from a plain shuffle
   ("random": the seeded shuffle's own steps, the order before bucketing, as HF Trainer without
   `group_by_length`). The manifest records it (`training.batching`, with the
   planned padding share);
5. `Trainer.finish`: `merged/` (full HF model + tokenizer, the BEST-validation weights,
   float32), `adapter/` (peft adapter of the same weights, LoRA only), `manifest.json`
   (`training_manifest`, with every file the run wrote), `train_log.jsonl`; the checkpoint files
   are deleted unless `keep_checkpoints`.

Process-wide state set for a run (torch's thread count, SIGINT/SIGTERM handlers, the global
RNGs it seeds) is restored when `train` returns or raises.

Under torchrun (`torchrun --nproc_per_node=N -m alignlens train ...`; see `alignlens.distributed`)
every process runs `train`; the loss goes through the wrapped `TargetLossModel` (DDP, or FSDP2
with `fsdp`). Global batch = `batch_size` x `grad_accum` x N: each optimizer step takes the same
examples in the same order as one process with `grad_accum` x N, rank r the r-th share of them
(`no_sync` on its accumulation passes; gradients are summed over ranks, the loss is divided by
the step's target-token count over all ranks). Logged losses and validation losses are collected
exactly (one addend per entry) and summed in one process's order. Rank 0 alone prepares the
output folder and writes the log, checkpoints (with every rank's RNG state), the merge and the
manifest (with the world size); with `fsdp` rank 0 alone loads the model (the others build it
on the meta device and receive their shards), every rank writes its own shard files of a
checkpoint (torch.distributed.checkpoint) and `merged/` is streamed into sharded safetensors in
the base model's dtype. A stop request (Ctrl-C/SIGTERM on any rank) is all-reduced after every
step, so all ranks stop after the same step.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import inspect
import math
import os
import random
import shlex
import shutil
import signal
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from alignlens import AlignlensError, RunInterrupted, distributed
from alignlens.model import (DEFAULT_MODEL, ensure_default_model, load_hf, load_tokenizer, model_source,
                             resolve_device)
from alignlens.results import TEMP_PREFIX, OutputFolder, clean_stale_temps, now_iso, write_json
from alignlens.results.manifest import ownership, provenance
from alignlens.results.writer import TRAIN_FILES, files_under, remove_owned
from alignlens.train.checkpoint import (FORMAT, Checkpoint, NoLog, TrainLog, TrainState, atomic_save,
                                        check_out_dir, listed_files, load_trainable, load_weights, rng_state,
                                        running_manifest, save_folder, set_rng_state, start_writing,
                                        trainable_state, write_safetensors_shards)
from alignlens.train.config import RUNTIME_OPTIONS, TrainConfig
from alignlens.train.examples import (BUCKET_WINDOW, COUNT_KEYS, TrainData, build_data, collate, data_source,
                                      epoch_order, load_pairs, micro_batches, padding_share)
from alignlens.train.loss import TargetLossModel, hf_causal_lm, validation_loss


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


def model_skeleton(source: str) -> torch.nn.Module:
    """The HF causal LM of `source` (a model folder or hub name) built from its config on the meta
    device: every module, no weights, no memory."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf_config = AutoConfig.from_pretrained(source)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)


def lora_adaptable(module: torch.nn.Module) -> bool:
    """Whether peft's LoRA can adapt `module` (a linear, embedding, convolution or attention layer)."""
    from transformers.pytorch_utils import Conv1D

    nn = torch.nn
    return isinstance(module, (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MultiheadAttention, Conv1D))


def check_lora_targets(config: TrainConfig, model_spec: str) -> None:
    """Refuse `config.lora_targets` that name no module LoRA can adapt in `model_spec`, before any
    data or weights load: the model is built from its config on the meta device (`model_skeleton`),
    and each target must match a module as peft matches a list of names (the module's full name or
    its last dotted parts, e.g. q_proj or self_attn.q_proj). The message lists the model's Linear
    modules. Skipped for full fine-tuning and when the model's config cannot be read here (the
    loader then says why)."""
    if config.full:
        return
    try:
        kind, path = model_source(model_spec)
        skeleton = model_skeleton(str(ensure_default_model(progress=False) if kind == "default" else path or model_spec))
    except Exception:  # noqa: BLE001 - a bad model is reported by the loader, in its own words
        return
    names = [name for name, m in skeleton.named_modules() if name and lora_adaptable(m)]
    bad = [t for t in config.lora_targets if not any(n == t or n.endswith(f".{t}") for n in names)]
    if bad:
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in skeleton.named_modules()
                         if isinstance(m, torch.nn.Linear)})
        raise AlignlensError(f"--lora-targets {','.join(bad)}: no such module in {model_spec} (its Linear modules: "
                             f"{', '.join(linear)}); choose among them, or use --full")


def load_model_to_train(config: TrainConfig, model_spec: str, device: torch.device, tokenizer: Any
                        ) -> tuple[torch.nn.Module, dict]:
    """(the model in train mode, float32 on `device`, LoRA-wrapped unless `config.full`; its
    `base_model` description for the manifest, see `BASE_MODEL_KEYS`)."""
    model, _, info = load_hf(model_spec, device, torch.float32, tokenizer=tokenizer)
    return _trainable(model, config), {k: info[k] for k in BASE_MODEL_KEYS}


def _trainable(model: torch.nn.Module, config: TrainConfig) -> torch.nn.Module:
    """`model` LoRA-wrapped (or, with `config.full`, every parameter trainable), in train mode."""
    if not config.full:
        model = wrap_lora(model, config)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    model.train()
    return model


def load_model_to_shard(config: TrainConfig, model_spec: str, tokenizer: Any) -> tuple[torch.nn.Module, dict]:
    """FSDP under torchrun: rank 0 loads the model (`load_model_to_train`, float32, on the CPU);
    the other ranks build the same modules from its config on the meta device (no memory). Their
    weights and buffers arrive from rank 0 once sharded (`parallelize`), so no rank but 0 ever
    holds the whole model. Returns (model, the manifest's `base_model`, rank 0's)."""
    loaded = distributed.on_main(lambda: load_model_to_train(config, model_spec, torch.device("cpu"), tokenizer))
    base_info = distributed.broadcast_object(loaded[1] if loaded else None)
    if loaded is not None:
        return loaded
    return _trainable(model_skeleton(base_info["path"] or base_info["spec"]), config), base_info


def seed_all(seed: int) -> None:
    """Seed the global RNGs a run uses (python, numpy, torch). numpy takes seeds below 2**32, so it
    gets `seed` modulo 2**32 (the same for every run seed, `config.MAX_SEED`; a rank's `rank_seed`
    may be larger)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank `rank` > 0 under torchrun after the model is built (its LoRA dropout masks
    differ from the other ranks'); rank 0 continues the run's own stream."""
    return (seed * 1_000_003 + rank) % (2 ** 63)


def decoder_layers(loss_model: TargetLossModel) -> torch.nn.ModuleList:
    """The decoder blocks (the model's largest ModuleList), the units FSDP shards one by one."""
    lists = [m for m in loss_model.body().modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise AlignlensError(f"{type(hf_causal_lm(loss_model.model)).__name__}: cannot find the decoder blocks to shard")
    return max(lists, key=len)


def parallelize(loss_model: TargetLossModel, config: TrainConfig, device: torch.device) -> torch.nn.Module:
    """What the training passes call: `loss_model` itself (one process), a DistributedDataParallel
    wrapper around it (it averages the ranks' gradients: `Trainer` scales each rank's loss by the
    world size, so the result is their sum), or (`config.fsdp`) `loss_model` sharded in place with
    FSDP2 `fully_shard` (each decoder block, then the rest; gradients summed over ranks, bf16
    parameters and float32 reductions with `bf16`). Parameters and buffers are the same on every
    rank afterwards (DDP broadcasts rank 0's)."""
    world = distributed.world()
    if not world.distributed:
        return loss_model
    if config.fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

        if not hasattr(FSDPModule, "set_force_sum_reduction_for_comms"):
            raise AlignlensError(f"--fsdp needs a newer torch than {torch.__version__} "
                                 f"(FSDPModule.set_force_sum_reduction_for_comms is missing)")
        full = loss_model.state_dict() if world.is_main else {}  # rank 0's whole weights (see load_model_to_shard)
        mesh = init_device_mesh(device.type, (world.size,))
        mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if config.bf16
              else MixedPrecisionPolicy())
        for layer in decoder_layers(loss_model):
            fully_shard(layer, mesh=mesh, mp_policy=mp)
        fully_shard(loss_model, mesh=mesh, mp_policy=mp)
        for m in loss_model.modules():
            if isinstance(m, FSDPModule):  # plain sums (no averaging, no PREMUL_SUM: gloo has none)
                m.set_gradient_divide_factor(1.0)
                m.set_force_sum_reduction_for_comms(True)
        if not world.is_main:  # meta modules: real (uninitialised) shards, filled from rank 0 below
            loss_model.to_empty(device=device)
        set_model_state_dict(loss_model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        del full
        with torch.no_grad():  # buffers too (rotary tables, embedding scale: not in the state dict)
            for buf in loss_model.buffers():
                torch.distributed.broadcast(buf, src=0)
        return loss_model
    from torch.nn.parallel import DistributedDataParallel

    # buffers (rotary tables) are constants: no broadcast before every forward
    no_buffer_sync = ({"forward_sync_buffers": False}
                      if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                      else {"broadcast_buffers": False})
    # (no Python communication hook: gloo's threads would hold Python objects)
    return DistributedDataParallel(loss_model, device_ids=[device.index] if device.type == "cuda" else None,
                                   **no_buffer_sync)


# ---- the trainer ----------------------------------------------------------------------------


class Trainer:
    """One training run over prepared data and model (see `setup`).

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
            self._load_sharded(self.ckpt_dir / ckpt.sharded["last"], optimizer=True)
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
                self._best_dir = self._save_sharded(f"best-step{st.step}.dcp", optimizer=False)
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
            sharded = {"last": self._save_sharded(f"last-step{self.state.step}.dcp", optimizer=True),
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
                self._load_sharded(self.ckpt_dir / self._best_dir, optimizer=False)
            self._save_model_sharded()
        elif self.world.is_main and best:
            load_trainable(self.model, self.best_weights)
        elapsed = st.elapsed + loop_seconds
        manifest = training_manifest(cfg, self.base_info, self.data, st, total_steps=self.total_steps,
                                     steps_per_epoch=self.steps_per_epoch, n_trainable=self.n_trainable,
                                     device=self.device, elapsed=elapsed, best_weights=best,
                                     command=self.command, world_size=self.world.size,
                                     parallel="fsdp" if self.fsdp else ("ddp" if self.world.distributed else None),
                                     per_step=self.per_step)

        def write() -> None:
            if not self.fsdp:
                self._save_model()
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

    def _save_model(self) -> None:
        """`adapter/` (LoRA only) and `merged/` (float32 HF model + tokenizer), each atomically."""
        if self.config.full:
            merged = self.model
        else:
            self._record_files(*(f"adapter/{f}" for f in save_folder(self.out / "adapter", self.model.save_pretrained)))
            merged = self.model.merge_and_unload()
        merged.to("cpu", dtype=torch.float32)

        def save_merged(folder: Path) -> None:
            merged.save_pretrained(folder)
            self.tokenizer.save_pretrained(folder)

        self._record_files(*(f"merged/{f}" for f in save_folder(self.out / "merged", save_merged)))

    def close(self) -> None:
        """Release the model, its DDP/FSDP wrapping and the optimizer, and collect them now: their
        references to the process group must go while Python is fully alive (else gloo's threads
        may outlive it and abort the process at exit). The trainer cannot be used afterwards."""
        self.forward_model = self.loss_model = self.model = None
        self.optimizer = self.scheduler = None
        self.params, self.best_weights = [], None
        gc.collect()

    # -- FSDP: sharded checkpoints and the streamed merge --------------------------------------

    def _sharded_state(self, optimizer: bool) -> dict:
        """The trainable weights (and optimizer state) as this rank's shards, keyed for
        torch.distributed.checkpoint (frozen base weights are left out)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, get_model_state_dict

        opts = StateDictOptions(ignore_frozen_params=True)
        if optimizer:
            model_sd, optim_sd = get_state_dict(self.loss_model, self.optimizer, options=opts)
            return {"model": model_sd, "optim": optim_sd}
        return {"model": get_model_state_dict(self.loss_model, options=opts)}

    def _save_sharded(self, name: str, optimizer: bool) -> str:
        """Every rank writes its shards to `checkpoints/<temporary>` (torch.distributed.checkpoint),
        then rank 0 renames the folder to `checkpoints/name`. Returns `name`."""
        import torch.distributed.checkpoint as dcp

        tmp = self.ckpt_dir / f"{TEMP_PREFIX}{name}"
        distributed.on_main(lambda: shutil.rmtree(tmp, ignore_errors=True))
        dcp.save(self._sharded_state(optimizer), checkpoint_id=str(tmp))

        def commit() -> None:
            final = self.ckpt_dir / name
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)

        distributed.on_main(commit)
        return name

    def _load_sharded(self, folder: Path, optimizer: bool) -> None:
        """Restore `_save_sharded` output into this rank's shards (and the optimizer)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_state_dict

        state = self._sharded_state(optimizer)
        dcp.load(state, checkpoint_id=str(folder))
        opts = StateDictOptions(ignore_frozen_params=True, strict=False)
        if optimizer:
            set_state_dict(self.loss_model, self.optimizer, model_state_dict=state["model"],
                           optim_state_dict=state["optim"], options=opts)
        else:
            set_model_state_dict(self.loss_model, state["model"], options=opts)

    def _save_model_sharded(self) -> None:
        """FSDP: `merged/` as sharded safetensors in the base model's dtype, gathered one tensor at a
        time (LoRA merged layer by layer: W + B @ A * scaling in float32, then cast), so no rank
        ever holds the whole model; `adapter/` (LoRA) from the gathered adapter weights. Rank 0
        writes; every rank takes part in the gathers."""
        hf = hf_causal_lm(self.model)
        dtype = saved_dtype(self.base_info)
        main = self.world.is_main
        if not self.config.full:
            lora = {n: _full(p) for n, p in self.model.named_parameters() if p.requires_grad}
            if main:
                self._record_files(*(f"adapter/{f}" for f in save_folder(
                    self.out / "adapter",
                    lambda folder: self.model.save_pretrained(folder, state_dict={n: t.cpu() for n, t in lora.items()}))))
            del lora

        def save_merged(folder: Path) -> None:  # rank 0
            write_safetensors_shards(folder, merged_tensors(hf, dtype, keep=True))
            config = copy.deepcopy(hf.config)
            config.dtype = dtype
            config.save_pretrained(folder)
            if getattr(hf, "generation_config", None) is not None:
                hf.generation_config.save_pretrained(folder)
            self.tokenizer.save_pretrained(folder)

        if main:
            self._record_files(*(f"merged/{f}" for f in save_folder(self.out / "merged", save_merged)))
        else:
            for _ in merged_tensors(hf, dtype, False):  # the same gathers as rank 0, nothing kept
                pass
        distributed.barrier()


def _full(p: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (possibly FSDP-sharded) parameter or buffer, detached (a collective
    for a DTensor: every rank must call it in the same order)."""
    return (p.full_tensor() if hasattr(p, "full_tensor") else p).detach()


def saved_dtype(base_info: dict) -> torch.dtype:
    """The dtype the base model was saved in (its config.json `dtype`; float32 when unknown)."""
    from transformers import AutoConfig

    try:
        dt = AutoConfig.from_pretrained(base_info.get("path") or base_info["spec"]).dtype
    except Exception:  # noqa: BLE001 - float32 is always right, only larger
        return torch.float32
    dt = getattr(torch, dt) if isinstance(dt, str) else dt
    return dt if dt in (torch.float32, torch.bfloat16, torch.float16) else torch.float32


def merged_tensors(hf: torch.nn.Module, dtype: torch.dtype, keep: bool) -> Iterator[tuple[str, torch.Tensor | None]]:
    """(name, whole tensor on the CPU in `dtype`) for every weight of the HF model `hf` as a plain
    HF checkpoint names it: LoRA layers merged (base weight + B @ A * scaling, in float32), tied
    weights once, persistent buffers. One tensor is gathered at a time; `keep` False (ranks other
    than 0) yields None after taking part in the gather."""
    from peft.tuners.lora import LoraLayer

    lora = {name: m for name, m in hf.named_modules() if isinstance(m, LoraLayer)}
    for name, p in hf.named_parameters():
        if ".lora_" in name:
            continue
        owner, _, leaf = name.rpartition(".")
        layer = lora.get(owner.removesuffix(".base_layer")) if owner.endswith(".base_layer") else None
        if layer is not None:
            name = f"{owner.removesuffix('.base_layer')}.{leaf}"
        full = _full(p)
        if layer is not None and leaf == "weight":
            merged = full.float()
            for adapter in layer.active_adapters:
                a, b = _full(layer.lora_A[adapter].weight).float(), _full(layer.lora_B[adapter].weight).float()
                delta = b @ a
                merged = merged + (delta.T if layer.fan_in_fan_out else delta) * layer.scaling[adapter]
            full = merged
        yield name, (full.to("cpu", dtype) if keep else None)
    for mod_name, m in hf.named_modules():
        for buf_name, buf in m.named_buffers(recurse=False):
            if buf is not None and buf_name not in m._non_persistent_buffers_set:
                value = buf.detach().to("cpu", dtype if buf.is_floating_point() else buf.dtype)
                yield f"{mod_name}.{buf_name}".lstrip("."), (value if keep else None)


def saved_batching(saved: dict) -> str:
    """The batching (`config.BATCHINGS`) of a checkpoint's saved options (`Trainer.checkpoint` always
    records "batching"): a checkpoint saved before bucketing existed has none and resumes "random",
    the order it was started with."""
    return saved.get("batching") or "random"


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


def resume_command(out: Path, world_size: int) -> str:
    """The command that resumes a run in `out` launched with `world_size` processes."""
    args = f"train --out {shlex.quote(str(out))} --resume"
    if world_size == 1:
        return f"alignlens {args}"
    local = int(os.environ.get("LOCAL_WORLD_SIZE") or world_size)
    nodes = f" --nnodes={world_size // local}" if local != world_size else ""
    return f"torchrun{nodes} --nproc_per_node={local} -m alignlens {args}"


def session_record(state: TrainState, config: TrainConfig, command: str) -> dict:
    """One entry of `TrainState.session_log` (and the manifest's `training.session_log`): this
    session's number, start time, command line and runtime options (`config.RUNTIME_OPTIONS`, the
    only options that may change between sessions)."""
    return {"session": state.sessions, "started": now_iso(), "command": command,
            **{name: getattr(config, name) for name in RUNTIME_OPTIONS}}


def first_command(state: TrainState, command: str) -> str:
    """The command that started the run: the first session's (`state.session_log`); `command` when
    no session was logged; "" when the log starts later (a checkpoint saved before sessions were
    logged)."""
    if not state.session_log:
        return command
    first = state.session_log[0]
    return first["command"] if first["session"] == 1 else ""


def _pair_format(config: TrainConfig) -> str:
    """The manifest's `data.format`: how one pair reads (X -> target, or the English copy control)."""
    from alignlens.languages import language_name

    if config.control == "copy":
        return ("prompt = <English question>\\nTranslate the input from English to English:\\n; target = <English "
                "question>" + (" + EOS" if config.append_eos else ""))
    target = language_name(config.target_language)
    return (f"prompt = <X question>\\nTranslate the input from <X> to {target}:\\n; target = <{target} question>"
            + (" + EOS" if config.append_eos else ""))


def training_manifest(config: TrainConfig, base_info: dict, data: TrainData, state: TrainState, *, total_steps: int,
                      steps_per_epoch: int, n_trainable: int, device: torch.device, elapsed: float,
                      best_weights: bool, command: str = "", world_size: int = 1, parallel: str | None = None,
                      per_step: int | None = None) -> dict:
    """`manifest.json` of a finished run: the provenance keys every alignlens manifest shares
    (`results.manifest.provenance`: model = the base model, data, options, seed, versions, commit,
    times) plus training's own. `command`: the one that started the run (`first_command`; a resumed
    run's sessions are in `training.session_log`, each with its command and runtime options).
    `elapsed`: training-loop seconds over all sessions; `best_weights`:
    the outputs hold the best-validation weights (else the final ones); `world_size`: processes
    (torchrun), `parallel`: "ddp", "fsdp" or None (one process); `per_step`: examples per optimizer
    step (default `batch_size` x `grad_accum` x `world_size`), for `training.batching`."""
    counts = data.counts
    data_section = {
        "languages": data.languages, "per_language": config.per_language if config.resolved_languages() else None,
        "bundled": config.resolved_languages() if config.task is None else [], "files": list(config.data_files),
        **data_source(config),
        "n_train": len(data.train), "n_val": len(data.val),
        "n_cut_to_max_len": sum(c["truncated"] + c["dropped"] for split in counts.values() for c in split.values()),
        "max_len": config.max_len,
        "examples": {split: {lang: {k: c[k] for k in COUNT_KEYS} for lang, c in rows.items()}
                     for split, rows in counts.items()},
        "train_tokens": sum(len(e.ids) for e in data.train), "seed": config.seed,
        "format": _pair_format(config)}
    return {
        **provenance(command=first_command(state, command), model=base_info, data=data_section, options=config.to_dict(),
                     seed=config.seed, started=state.started, finished=now_iso()),
        "format": FORMAT,
        "base_model": base_info,  # the same as "model": the model that was fine-tuned
        "training": {"steps": state.step, "total_steps": total_steps, "steps_per_epoch": steps_per_epoch,
                     "trainable_params": n_trainable, "method": "full" if config.full else "lora",
                     "device": str(device), "world_size": world_size, "parallel": parallel,
                     "global_batch": config.batch_size * config.grad_accum * world_size,
                     "batching": batching_record(data, config, per_step or config.batch_size * config.grad_accum * world_size),
                     "tokens_seen": state.tokens, "sessions": state.sessions, "session_log": list(state.session_log),
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


def same_model(spec: str, saved: str) -> bool:
    """Whether model spec `spec` names the saved run's model `saved` (the same text, or two paths
    to the same folder)."""
    if spec == saved:
        return True
    a, b = Path(spec).expanduser(), Path(saved).expanduser()
    return a.exists() and b.exists() and a.resolve() == b.resolve()


def _resume_options(config: TrainConfig | None, model_spec: str | None, ckpt: Checkpoint,
                    options: dict[str, Any] | None = None) -> tuple[TrainConfig, str]:
    """The saved options and model of `ckpt`. Given ones must equal them: a whole `config`, or
    `options`, only the options the user gave (field name -> value), and `model_spec`; every one
    that differs is named in one AlignlensError (`TrainConfig.resume_differences`), nothing loaded.
    `RUNTIME_OPTIONS` may change: the config's, or those in `options`, replace the saved ones."""
    saved = TrainConfig.from_dict({**ckpt.config, "batching": saved_batching(ckpt.config)})
    diff = []
    if model_spec is not None and not same_model(model_spec, ckpt.model_spec):
        diff.append(f"--model {model_spec} (saved: {ckpt.model_spec})")
    if config is not None:
        diff += saved.resume_differences(config.to_dict())
    if options:
        diff += saved.resume_differences(options)
    if diff:
        raise AlignlensError(f"cannot resume with different options ({'; '.join(diff)}); omit them to continue "
                             f"with the saved ones, or start again with --force")
    runtime = ({name: getattr(config, name) for name in RUNTIME_OPTIONS} if config is not None else {})
    runtime.update({name: v for name, v in (options or {}).items() if name in RUNTIME_OPTIONS})
    return dataclasses.replace(saved, **runtime), ckpt.model_spec


def setup(config: TrainConfig, model_spec: str, out: Path, ckpt: Checkpoint | None, progress: bool,
          session_start: float | None = None, device: torch.device | None = None) -> Trainer:
    """Seeds, data, tokens (checked before the model loads), the model and optimizer: a `Trainer`
    ready to `start`. Nothing in `out` changes here. `device`: None resolves `config.device`.
    Under torchrun every rank loads the model; ranks other than 0 then reseed (`rank_seed`)."""
    seed_all(config.seed)  # LoRA's initial weights
    pairs = load_pairs(config)
    device = device or distributed.rank_device(resolve_device(config.device))
    tokenizer = load_training_tokenizer(model_spec)
    data = build_data(config, pairs, tokenizer, progress)
    if ckpt is not None and ckpt.data_digest != data.digest:
        raise AlignlensError("cannot resume: the training data differ from the checkpoint's")
    if config.fsdp and distributed.world().distributed:  # rank 0 loads, `fully_shard` spreads the shards
        model, base_info = load_model_to_shard(config, model_spec, tokenizer)
    else:
        model, base_info = load_model_to_train(config, model_spec, device, tokenizer)
    rank = distributed.world().rank
    if rank > 0:
        seed_all(rank_seed(config.seed, rank))
    return Trainer(config, model_spec, out, data, model, tokenizer, base_info, device, session_start)


def check_world(config: TrainConfig, ckpt: Checkpoint | None, world: distributed.World, out: Path) -> None:
    """The processes torchrun started fit the run: as many as the checkpoint's (the global batch
    depends on them); FSDP needs at least two."""
    if ckpt is not None and ckpt.world_size != world.size:
        per = config.batch_size * config.grad_accum
        raise AlignlensError(
            f"cannot resume with {world.size} process(es): the checkpoint was saved by {ckpt.world_size} "
            f"(global batch {per * ckpt.world_size} = batch size {config.batch_size} x grad accum "
            f"{config.grad_accum} x {ckpt.world_size}); resume with: {resume_command(out, ckpt.world_size)}")
    if config.fsdp and not world.distributed:
        raise AlignlensError("--fsdp shards the model over the processes of a torchrun launch; start it with "
                             "torchrun --nproc_per_node=N -m alignlens train ... (N >= 2)")


def train(config: TrainConfig | None, model_spec: str | None, out_dir: str | Path, *, resume: bool = False,
          force: bool = False, progress: bool = True,
          callback: Callable[[dict], None] | None = None, command: str = "",
          options: dict[str, Any] | None = None) -> TrainResult:
    """Fine-tune `model_spec` on question translation and write a model folder to `out_dir`.

    `resume=True` continues from `out_dir/checkpoints/last.pt`; `config` and `model_spec` may
    then be None (the saved ones are used) and must otherwise equal the saved ones (all options
    but `config.RUNTIME_OPTIONS`, which change for the session). `options` (with `config` None):
    only the options the user gave (field names -> values, "preset" included), as the command line
    passes them: on resume each must equal the saved run's resolved value (every one that differs
    is named, before anything loads), else the run's config is `TrainConfig.from_preset` of them.
    Without `resume`, a non-empty `out_dir` is an error unless `force`. `callback(record)` is called
    after every optimizer step with the step's log record (raising KeyboardInterrupt there behaves
    like Ctrl-C). Ctrl-C/SIGTERM saves a checkpoint and raises `TrainInterrupted`. `command`: this
    session's command line; the manifest keeps the first session's as `command` and every
    session's, with its runtime options, in `training.session_log`.

    Nothing in `out_dir` changes until everything that can be checked was: options, the output
    folder, the LoRA targets against the model's modules (`check_lora_targets`, no weights
    loaded), data files, the model path, the tokenised data (`max_drop_fraction`), loading the
    model and fitting LoRA. Only then does a forced run remove the previous run's files (only
    those its manifest lists, never other files; a folder of another command or without an
    alignlens manifest is refused). The folder is locked from before the model loads until the
    run ends: a second run wanting it is refused at once.

    Under torchrun (`WORLD_SIZE` > 1) every process calls `train` with the same arguments: the
    checks run on every rank before the process group starts (so no rank writes before all
    checked), a failure of the setup on any rank stops all (`distributed.agree`), then training
    is data-parallel (see the module docstring); the result is the same on every rank.
    """
    session_start = time.perf_counter()
    out = Path(out_dir).expanduser()
    if config is None and options is not None and not resume:
        given = dict(options)
        config = TrainConfig.from_preset(given.pop("preset", None) or "default", **given)
    if config is not None:
        config.validate()
    ckpt_path = check_out_dir(out, resume, force)
    ckpt = Checkpoint.load(ckpt_path) if ckpt_path is not None else None
    if ckpt is not None:
        config, model_spec = _resume_options(config, model_spec, ckpt, options)
    config = config or TrainConfig.from_preset("default")
    config.validate()
    model_spec = model_spec or DEFAULT_MODEL
    check_lora_targets(config, model_spec)
    env = distributed.env_world()
    check_world(config, ckpt, env, out)
    device = distributed.rank_device(resolve_device(config.device))
    with torch_threads(config.threads), global_rng_restored(), distributed.process_group(device) as world, \
            OutputFolder(out, "train", force, resume=resume).writing():  # locked before the model loads
        trainer = distributed.agree(lambda: setup(config, model_spec, out, ckpt, progress and world.is_main,
                                                  session_start, device))
        try:
            trainer.command = command
            trainer.start(ckpt)
            trainer.state.session_log.append(session_record(trainer.state, config, command))
            return trainer.run(progress and world.is_main, callback)
        finally:
            if world.distributed:
                trainer.close()


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
