"""Training over several processes: the model wrapped for them (DDP, or FSDP2 sharding) and the
sharded state of its checkpoints.

`parallelize` returns what the training passes call: the `TargetLossModel` itself (one process), a
DistributedDataParallel wrapper (gradients averaged over ranks; the trainer scales each rank's loss
by the world size, so the result is their sum) or, with `--fsdp`, the model sharded in place with
FSDP2 `fully_shard` (each decoder block, then the rest; plain gradient sums). With FSDP a
checkpoint's trainable weights and optimizer state are written by every rank as its own shards
(torch.distributed.checkpoint: `save_sharded`, `load_sharded`); `full_tensor` gathers one whole
parameter (the merged weights' export streams them, `export.merged_tensors`).
"""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path

import torch

from alignlens import AlignlensError, distributed
from alignlens.results import TEMP_PREFIX
from alignlens.train.config import TrainConfig
from alignlens.train.loss import TargetLossModel, hf_causal_lm


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
        full = loss_model.state_dict() if world.is_main else {}  # rank 0's whole weights (see run.load_model_to_shard)
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


def full_tensor(p: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (possibly FSDP-sharded) parameter or buffer, detached (a collective
    for a DTensor: every rank must call it in the same order)."""
    return (p.full_tensor() if hasattr(p, "full_tensor") else p).detach()


def sharded_state(loss_model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """The trainable weights (and, with `optimizer`, its state) of the FSDP-sharded `loss_model` as
    this rank's shards, keyed for torch.distributed.checkpoint (frozen base weights are left out)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, get_model_state_dict

    opts = StateDictOptions(ignore_frozen_params=True)
    if optimizer is not None:
        model_sd, optim_sd = get_state_dict(loss_model, optimizer, options=opts)
        return {"model": model_sd, "optim": optim_sd}
    return {"model": get_model_state_dict(loss_model, options=opts)}


def save_sharded(loss_model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, ckpt_dir: Path, name: str) -> str:
    """Every rank writes its shards (`sharded_state`) to `ckpt_dir/<temporary>`
    (torch.distributed.checkpoint), then rank 0 renames the folder to `ckpt_dir/name`. Returns `name`."""
    import torch.distributed.checkpoint as dcp

    tmp = ckpt_dir / f"{TEMP_PREFIX}{name}"
    distributed.on_main(lambda: shutil.rmtree(tmp, ignore_errors=True))
    dcp.save(sharded_state(loss_model, optimizer), checkpoint_id=str(tmp))

    def commit() -> None:
        final = ckpt_dir / name
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)

    distributed.on_main(commit)
    return name


def load_sharded(loss_model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, folder: Path) -> None:
    """Restore `save_sharded` output in `folder` into this rank's shards (and, with `optimizer`, its state)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_state_dict

    state = sharded_state(loss_model, optimizer)
    dcp.load(state, checkpoint_id=str(folder))
    opts = StateDictOptions(ignore_frozen_params=True, strict=False)
    if optimizer is not None:
        set_state_dict(loss_model, optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"], options=opts)
    else:
        set_model_state_dict(loss_model, state["model"], options=opts)
