"""What a finished run leaves to load: `adapter/` (the peft LoRA adapter) and `merged/` (a plain HF
model with the adapter merged in, and the tokenizer), each written atomically into place.

One process (or DDP): `save_model` saves the adapter, merges it with peft (`merge_and_unload`) and
saves the float32 model. FSDP (`save_model_sharded`): the weights are gathered one tensor at a
time (`parallel.full_tensor`) and `merged/` is streamed into sharded safetensors in the base
model's dtype (`merged_tensors`: W + ΔW per LoRA layer in float32, ΔW = `adapters.lora_delta`, the
one merge formula), so no rank ever holds the whole model. `record(*files)` is told the files of
each folder (relative to the output folder) as soon as it is in place, so the run's manifest lists
them before the next one is written.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any, Iterator

import torch

from alignlens import distributed
from alignlens.train.adapters import lora_delta
from alignlens.train.checkpoint import save_folder, write_safetensors_shards
from alignlens.train.loss import hf_causal_lm
from alignlens.train.parallel import full_tensor


def save_model(model: torch.nn.Module, tokenizer: Any, out: Path, full: bool, record: Callable[..., None]) -> None:
    """`out/adapter/` (LoRA only: `model` is a peft model) and `out/merged/` (float32 HF model +
    tokenizer), each atomically; `full`: `model` is the fully fine-tuned HF model itself."""
    if full:
        merged = model
    else:
        record(*(f"adapter/{f}" for f in save_folder(out / "adapter", model.save_pretrained)))
        merged = model.merge_and_unload()
    merged.to("cpu", dtype=torch.float32)

    def save_merged(folder: Path) -> None:
        merged.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    record(*(f"merged/{f}" for f in save_folder(out / "merged", save_merged)))


def save_model_sharded(model: torch.nn.Module, tokenizer: Any, out: Path, base_info: dict, full: bool,
                       record: Callable[..., None]) -> None:
    """FSDP: `out/merged/` as sharded safetensors in the base model's dtype (`saved_dtype` of
    `base_info`), gathered one tensor at a time (`merged_tensors`), so no rank ever holds the whole
    model; `out/adapter/` (LoRA) from the gathered adapter weights. Rank 0 writes (and calls
    `record`); every rank takes part in the gathers (collective)."""
    hf = hf_causal_lm(model)
    dtype = saved_dtype(base_info)
    main = distributed.world().is_main
    if not full:
        lora = {n: full_tensor(p) for n, p in model.named_parameters() if p.requires_grad}
        if main:
            record(*(f"adapter/{f}" for f in save_folder(
                out / "adapter",
                lambda folder: model.save_pretrained(folder, state_dict={n: t.cpu() for n, t in lora.items()}))))
        del lora

    def save_merged(folder: Path) -> None:  # rank 0
        write_safetensors_shards(folder, merged_tensors(hf, dtype, keep=True))
        config = copy.deepcopy(hf.config)
        config.dtype = dtype
        config.save_pretrained(folder)
        if getattr(hf, "generation_config", None) is not None:
            hf.generation_config.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    if main:
        record(*(f"merged/{f}" for f in save_folder(out / "merged", save_merged)))
    else:
        for _ in merged_tensors(hf, dtype, False):  # the same gathers as rank 0, nothing kept
            pass
    distributed.barrier()


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
    HF checkpoint names it: LoRA layers merged (base weight + ΔW, `adapters.lora_delta`, in float32), tied
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
        full = full_tensor(p)
        if layer is not None and leaf == "weight":
            merged = full.float()
            for adapter in layer.active_adapters:
                a, b = full_tensor(layer.lora_A[adapter].weight), full_tensor(layer.lora_B[adapter].weight)
                merged = merged + lora_delta(a, b, layer.scaling[adapter], layer.fan_in_fan_out)
            full = merged
        yield name, (full.to("cpu", dtype) if keep else None)
    for mod_name, m in hf.named_modules():
        for buf_name, buf in m.named_buffers(recurse=False):
            if buf is not None and buf_name not in m._non_persistent_buffers_set:
                value = buf.detach().to("cpu", dtype if buf.is_floating_point() else buf.dtype)
                yield f"{mod_name}.{buf_name}".lstrip("."), (value if keep else None)
