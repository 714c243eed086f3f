"""A training run: `train` (checks, then a `trainer.Trainer`) and what it sets up.

`train` top to bottom:

1. checks that change nothing: options, the output folder (`checkpoint.check_out_dir`), a
   checkpoint to resume (`Checkpoint.load`; options given and the model must match the saved
   ones, `_resume_options`), the LoRA targets against the model's modules (`check_lora_targets`,
   a meta-device skeleton, no weights), the processes torchrun started (`check_world`);
2. `setup`: seeds, data (`examples.load_pairs`/`build_data`: split, tokens, drop counts), the
   model (`model.load_hf`, float32, never the TransformerLens bridge; LoRA via peft, default
   r=8, alpha=16, dropout 0, q_proj+v_proj, or full fine-tuning; with FSDP rank 0 alone loads it,
   `load_model_to_shard`), AdamW and a cosine schedule with linear warm-up: still nothing written;
3. `Trainer.start`, `Trainer.run`, `Trainer.finish` (`trainer`): the loop, the checkpoints and
   the outputs (`merged/`, `adapter/`, `manifest.json`, `train_log.jsonl`). The folder is locked
   from before the model loads to the end (`results.writer.OutputFolder.writing`): a second run
   wanting it is refused at once.

Process-wide state set for a run (torch's thread count, SIGINT/SIGTERM handlers, the global
RNGs it seeds) is restored when `train` returns or raises.

Under torchrun (`torchrun --nproc_per_node=N -m alignlens train ...`; see `alignlens.distributed`)
every process runs `train` with the same arguments; the checks run on every rank before the
process group starts, and a failure of the setup on any rank stops all (`distributed.agree`).
"""

from __future__ import annotations

import dataclasses
import random
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from alignlens import AlignlensError, distributed
from alignlens.model import DEFAULT_MODEL, ensure_default_model, load_hf, load_tokenizer, model_source, resolve_device
from alignlens.results import OutputFolder
from alignlens.train.checkpoint import Checkpoint, check_out_dir, rng_state, set_rng_state
from alignlens.train.config import RUNTIME_OPTIONS, TrainConfig
from alignlens.train.examples import build_data, load_pairs
from alignlens.train.manifest import resume_command, session_record
from alignlens.train.trainer import Trainer, TrainResult


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
    weights and buffers arrive from rank 0 once sharded (`parallel.parallelize`), so no rank but 0 ever
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


# ---- entry point ----------------------------------------------------------------------------


def saved_batching(saved: dict) -> str:
    """The batching (`config.BATCHINGS`) of a checkpoint's saved options (`Trainer.checkpoint` always
    records "batching"): a checkpoint saved before bucketing existed has none and resumes "random",
    the order it was started with."""
    return saved.get("batching") or "random"


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
