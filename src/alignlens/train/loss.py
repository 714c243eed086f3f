"""The training objective: cross-entropy of the target tokens only, computed through a module.

The decoder body gives hidden states (already final-normed); the LM head (`engine.Unembed.head`:
head + Gemma-style final-logit soft-cap) is applied ONLY at the positions that predict target
tokens (with Gemma's 262k vocabulary the head is most of the cost). The summed loss is divided by
the number of target tokens of the whole optimizer step by the trainer (so gradient accumulation
equals one big batch).

Everything runs inside `TargetLossModel.forward`, so a wrapper around that module (DDP, FSDP)
sees the whole computation and syncs the gradients of every parameter the loss used.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from alignlens import distributed
from alignlens.engine import Unembed, decoder_body
from alignlens.train.examples import Example, collate


def hf_causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The HF causal LM inside a peft model (LoRA layers injected in place) or the model itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


class TargetLossModel(torch.nn.Module):
    """`forward(input_ids [B, T], target_mask [B, T] bool) -> (loss_sum (scalar tensor), n_tokens)`.

    Summed cross-entropy of the target tokens and their count: position t is scored when token
    t+1 is a target. Equals HF's loss with labels = -100 outside the targets, times the number
    of target tokens. `model` is the trained model (HF causal LM or its peft wrap, already
    wrapped: the unembedding holds the model's own modules) and is this module's only child, so
    `train()`/`eval()`/`parameters()` act on it.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.unembed = Unembed.from_hf(hf_causal_lm(model))  # a plain object: its modules are the model's

    def body(self) -> torch.nn.Module:
        """The decoder body (not stored: as an attribute it would be registered twice)."""
        return decoder_body(hf_causal_lm(self.model))

    def forward(self, input_ids: torch.Tensor, target_mask: torch.Tensor) -> tuple[torch.Tensor, int]:
        # the last position predicts nothing: it is left out (causal: no other position depends on it)
        hidden = self.body()(input_ids=input_ids[:, :-1], use_cache=False).last_hidden_state  # [B, T-1, D], normed
        predicts_target = target_mask[:, 1:]  # position t predicts token t+1
        rows = hidden[predicts_target]  # [N, D]
        labels = input_ids[:, 1:][predicts_target]  # [N]
        logits = self.unembed.head(rows)  # [N, vocab]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> float32; float64 kept
        return F.cross_entropy(logits, labels, reduction="sum"), int(labels.numel())


def target_loss(model: torch.nn.Module, input_ids: torch.Tensor, target_mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """`TargetLossModel(model)(input_ids, target_mask)`: summed target cross-entropy and its count."""
    return TargetLossModel(model)(input_ids, target_mask)


@torch.no_grad()
def validation_loss(loss_model: TargetLossModel | Any, examples: list[Example], batch_size: int, pad_id: int,
                    device: torch.device, bf16: bool = False, lockstep: bool = False) -> float | None:
    """Mean target-token loss over `examples` in eval mode (deterministic; no RNG used); None
    without examples. `loss_model`: a `TargetLossModel` (or a wrapper with the same forward).

    Batches: the examples sorted by length (stable), `batch_size` at a time, so little padding
    (the loss is a sum over examples: the order changes only float rounding).
    Under torchrun, batch i (of `batch_size` examples, in that order) is computed by rank i % world
    size. The batches' loss sums are collected with `distributed.exact_float_sums` (each entry
    has one non-zero addend, so it arrives bit for bit) and their token counts as int64, then
    summed in batch order exactly as one process sums them: the result equals one process's, bit
    for bit. `lockstep`: every rank runs the same number of forward passes (FSDP, whose forward
    gathers parameters from all ranks); a rank without a batch in a round computes batch 0 again
    and discards it."""
    if not examples:
        return None
    world = distributed.world()
    examples = sorted(examples, key=lambda e: len(e.ids))
    starts = list(range(0, len(examples), batch_size))
    sums: list[float | None] = [None] * len(starts)
    counts = [0] * len(starts)
    rounds = math.ceil(len(starts) / world.size) if lockstep else len(range(world.rank, len(starts), world.size))
    was_training = loss_model.training
    loss_model.eval()
    for r in range(rounds):
        i = r * world.size + world.rank
        ids, tgt = collate(examples[starts[i if i < len(starts) else 0]:][:batch_size], pad_id)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, n = loss_model(ids.to(device), tgt.to(device))
        if i < len(starts):
            sums[i], counts[i] = float(loss), n
    loss_model.train(was_training)
    if world.distributed:
        sums, counts = distributed.exact_float_sums(sums), distributed.sum_ints(counts)
    total, count = 0.0, 0
    for s, n in zip(sums, counts):
        total += s
        count += n
    return total / max(count, 1)
