"""The training objective: cross-entropy of the target tokens only, computed through a module.

The decoder body gives hidden states (already final-normed); the LM head (`engine.Unembed.head`:
head + Gemma-style final-logit soft-cap) is applied ONLY at the positions that predict target
tokens (with Gemma's 262k vocabulary the head is most of the cost). The summed loss is divided by
the number of target tokens of the whole optimizer step by the trainer (so gradient accumulation
equals one big batch).

When the head's weight is frozen (LoRA: Gemma's tied embedding is not trained) and the loss needs
a gradient, head and cross-entropy run fused (`_FrozenHeadCrossEntropy`): the gradient of the
rows is computed in the forward pass, chunk by chunk of rows, so the [N, vocab] logits, their
log-softmax and its gradient are never all stored (fewer passes over the largest tensors); the
loss and gradients equal the plain path's (float64 test: 1e-10).

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
        weight = _frozen_head_weight(self.unembed.lm_head)
        if weight is not None and rows.requires_grad and torch.is_grad_enabled() and not torch.is_autocast_enabled():
            loss = _FrozenHeadCrossEntropy.apply(rows, weight, labels, self.unembed.softcap)
            return loss, int(labels.numel())
        logits = self.unembed.head(rows)  # [N, vocab]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> float32; float64 kept
        return F.cross_entropy(logits, labels, reduction="sum"), int(labels.numel())


#: Rows per chunk of the fused head: at most ~2^28 logits (1 GiB in float32) at a time.
FUSED_LOGITS = 2 ** 28


def _frozen_head_weight(lm_head: torch.nn.Module) -> torch.Tensor | None:
    """The [vocab, d_model] weight of a plain frozen bias-free `nn.Linear` LM head (not a LoRA or
    otherwise wrapped layer, not a sharded DTensor), else None (the plain autograd path)."""
    if type(lm_head) is not torch.nn.Linear or lm_head.bias is not None:
        return None
    w = lm_head.weight
    if w.requires_grad or hasattr(w, "full_tensor"):
        return None
    return w


class _FrozenHeadCrossEntropy(torch.autograd.Function):
    """`sum_i CE(cap(rows_i @ weight.T), labels_i)` with `cap(z) = tanh(z / softcap) * softcap`
    (identity without softcap); weight frozen. Forward computes the loss and d loss / d rows
    (softmax - one-hot, times the soft-cap's derivative, @ weight) chunk by chunk of rows;
    backward scales that gradient. Computes in the rows' dtype promoted to at least float32."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,  # noqa: D102
                softcap: float | None) -> torch.Tensor:
        dtype = torch.promote_types(rows.dtype, torch.float32)
        w = weight.to(dtype)
        n, vocab = rows.shape[0], w.shape[0]
        chunk = max(1, FUSED_LOGITS // max(vocab, 1))
        grad = torch.empty(rows.shape, dtype=dtype, device=rows.device)
        total = torch.zeros((), dtype=dtype, device=rows.device)
        for s in range(0, n, chunk):
            x, lab = rows[s: s + chunk].to(dtype), labels[s: s + chunk]
            logits = x @ w.T  # [c, vocab]
            capped = None
            if softcap:
                capped = torch.tanh(logits.div_(softcap))
                logits = capped * softcap
            lse = torch.logsumexp(logits, dim=-1)  # [c]
            total += (lse - logits.gather(1, lab[:, None]).squeeze(1)).sum()
            probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
            probs[torch.arange(len(lab), device=probs.device), lab] -= 1
            if capped is not None:  # d cap(z) / dz = 1 - tanh^2
                probs.mul_(capped.square_().neg_().add_(1))
            grad[s: s + chunk] = probs @ w
        ctx.save_for_backward(grad)
        ctx.rows_dtype = rows.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # noqa: D102
        (grad,) = ctx.saved_tensors
        return (grad * grad_out).to(ctx.rows_dtype), None, None, None


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
